"""The managers' report: every section present, built from data, the high-risk list really the riskiest."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from browser import probe, screenshot

from predictor.config import PACKAGE_DATA
from predictor.contacts.labels import data_end, derive
from predictor.loop.assignment import TREATED, arm
from predictor.loop.outcomes import summarise
from predictor.reports.plan import FollowUpPlan, mine
from predictor.reports.report import ReportConfig, build, wilson, write

ROOT = Path(__file__).parents[1]


@pytest.fixture(scope="module")
def report(trained, settings):
    result, contacts = trained
    predictions = result.model.predict(contacts, contacts)
    labelled = derive(contacts, settings.labels)
    followup = FollowUpPlan.from_yaml(PACKAGE_DATA / "followup_scripts.yaml")
    plan = mine(labelled, followup)
    config = ReportConfig(min_agent_volume=40, high_risk_rows=25)
    return build(labelled, predictions, followup, plan, config, model_version="7"), predictions, labelled


def test_every_section_is_there(report, tmp_path: Path) -> None:
    data, _, labelled = report
    headline = data["headline"]
    assert headline["contacts"] == len(labelled)
    assert headline["fcr"] == pytest.approx(1 - headline["repeat_rate"])
    assert headline["explicit_share"] + headline["implicit_share"] == pytest.approx(1)
    assert headline["open_window"] == int((~labelled["window_complete"]).sum()) > 0
    assert any(w["share_window_open"] > 0 for w in data["weekly"])  # the censored weeks are marked
    assert {r["group"] for r in data["by"]["channel"]} <= {"phone", "chat", "email", "social"}
    assert all(r["ci_low"] <= r["repeat_rate"] <= r["ci_high"] for r in data["by"]["issue"])
    assert data["by"]["agent"][-1].get("grouped")  # small agents grouped, not ranked
    assert data["calibration"] and data["plan"]["primaries"]
    assert data["cost"]["saving"] == pytest.approx(
        data["cost"]["repeats_reached"] * data["config"]["prevention_rate"] * data["config"]["cost_per_contact"]
    )
    html, csv = write(data, tmp_path / "report.html")
    text = html.read_text()
    for anchor in (
        "headline",
        "trend",
        "by-issue",
        "by-channel",
        "by-agent",
        "calibration",
        "high-risk",
        "cost",
        "plan",
        "by-queue",
        "by-time",
        "working",
    ):
        assert f'id="{anchor}"' in text
    assert text.count("data:image/png;base64,") == 6  # plots embedded: opens offline
    assert "http://" not in text and "https://" not in text
    assert len(pd.read_csv(csv)) == len(data["high_risk"])


def test_high_risk_list_is_the_riskiest_recent_customers_in_the_order_to_act(report) -> None:
    """One row per customer (their riskiest contact still inside its window, not yet repeated), the riskiest
    customers, ordered by when the follow-up must go out."""
    data, predictions, labelled = report
    waiting = ~labelled["window_complete"] & ~labelled["is_repeat"].fillna(False).astype(bool)
    recent = labelled.loc[waiting, ["contact_id", "customer_id"]].merge(predictions, on="contact_id")
    riskiest = recent.sort_values("repeat_probability", ascending=False).drop_duplicates("customer_id")
    listed = data["high_risk"]
    assert {h["contact_id"] for h in listed} == set(riskiest["contact_id"].head(len(listed)))
    assert len({h["customer_id"] for h in listed}) == len(listed)
    assert [h["send_by"] for h in listed] == sorted(h["send_by"] for h in listed)
    assert all(h["send_within_hours"] <= 24 and h["send_by"].endswith("UTC") for h in listed)


def test_report_escapes_what_it_shows(report, tmp_path: Path) -> None:
    data, _, _ = report
    data = {**data, "high_risk": [{**data["high_risk"][0], "follow_up": "<script>alert(1)</script>"}]}
    html, _ = write(data, tmp_path / "r.html")
    assert "<script>alert(1)</script>" not in html.read_text()


def test_wilson_interval() -> None:
    low, high = wilson(0, 10)
    assert low == 0 and 0.25 < high < 0.35
    # Always around its rate, exactly at 0 and 1 too (rounding had put the bound past it: a negative error bar).
    assert all(wilson(k, n)[0] <= k / n <= wilson(k, n)[1] for n in range(1, 120) for k in range(n + 1))
    low, high = wilson(50, 100)
    assert low == pytest.approx(0.404, abs=0.01) and high == pytest.approx(0.596, abs=0.01)


def store_like(labelled: pd.DataFrame, predictions: pd.DataFrame) -> pd.DataFrame:
    """What ``ContactStore.scored`` and ``realised`` give, made from a log: every contact scored, a follow-up
    due from 30% risk, half the customers held out, a follow-up sent for each treated one (no effect: the
    outcomes are the log's own)."""
    frame = labelled.merge(predictions[["contact_id", "repeat_probability"]], on="contact_id")
    p = frame["repeat_probability"].to_numpy()
    due = p >= 0.3
    frame["scored"] = True
    frame["risk_band"] = np.where(p >= 0.5, "high", np.where(p >= 0.3, "medium", "low"))
    arms = np.array([arm(c, "report-test", 0.5) for c in frame["customer_id"]], dtype=object)
    frame["arm"] = np.where(due, arms, None)
    frame["experiment"] = np.where(due, "report-test", None)
    sent = frame["closed_at"] + pd.Timedelta(minutes=30)
    frame["sent_at"] = sent.where(due & (arms == TREATED))
    return frame


def test_is_it_working_is_measured_and_renders_in_a_browser(report, trained, settings, tmp_path: Path) -> None:
    """The section the store feeds: live quality, the arms with their interval, and a report that reads at a
    desktop's width and a phone's, in headless Chromium."""
    _, predictions, labelled = report
    frame = store_like(labelled, predictions)
    working = summarise(frame, data_end(labelled, settings.labels))
    assert working.itt is not None and working.itt.difference.low <= 0 <= working.itt.difference.high
    followup = FollowUpPlan.from_yaml(PACKAGE_DATA / "followup_scripts.yaml")
    data = build(labelled, predictions, followup, None, ReportConfig(), model_version="7", outcomes=working)
    assert data["working"]["verdict"].startswith("no effect shown yet")
    assert not data["cost"]["prevention_measured"] and data["cost"]["prevention_rate"] == 0.3
    html, _ = write(data, tmp_path / "report.html")
    text = html.read_text()
    assert 'id="working"' in text and "No live data" not in text and text.count("data:image/png;base64,") == 8

    # In the browser: the section is there with its plots loaded, and nothing is wider than the window.
    layout = """
        const width = document.documentElement.clientWidth;
        const images = [...document.images].filter(i => i.complete && i.naturalWidth > 0).length;
        const wide = [...document.querySelectorAll('table, img, .kpis, p')]
          .filter(e => e.getBoundingClientRect().right > width + 1).length;
        const cut = [...document.querySelectorAll('td, th')].filter(c => c.scrollWidth > c.clientWidth + 1).length;
        return {section: !!document.getElementById('working'), images, wide, cut};
    """
    for width in (1400, 390):  # a desktop, and a phone: no table wider than the page, no cell cut off
        assert probe(html, width, layout) == {"section": True, "images": 8, "wide": 0, "cut": 0}, width
    shot = screenshot(html, tmp_path / "report.png", 1400, 2400)
    assert shot.stat().st_size > 50_000  # a page was drawn, not a blank one
    # Without the store: the section says how to get it, and the cost stays an assumption.
    plain = write(build(labelled, predictions, followup, None, ReportConfig()), tmp_path / "plain.html")[0]
    assert "No live data" in plain.read_text()


def test_agents_are_grouped_by_team_when_a_mapping_gives_one(report, tmp_path: Path) -> None:
    _, predictions, labelled = report
    agents = sorted(labelled["agent_id"].unique())
    teams = {a: ("north" if k % 2 else "south") for k, a in enumerate(agents[:-3])}  # the last three: no team
    followup = FollowUpPlan.from_yaml(PACKAGE_DATA / "followup_scripts.yaml")
    data = build(labelled, predictions, followup, None, ReportConfig(min_agent_volume=40), teams=teams)
    assert {r["group"] for r in data["by"]["team"]} == {"north", "south", "no team"}
    assert sum(r["contacts"] for r in data["by"]["team"]) == len(labelled)
    listed = [r for r in data["by"]["agent"] if not r.get("grouped")]
    assert [(r["team"], r["group"]) for r in listed] == sorted((r["team"], r["group"]) for r in listed)
    text = write(data, tmp_path / "teams.html")[0].read_text()
    assert 'id="by-team"' in text and "<th>team</th>" in text


def test_a_period_the_model_was_trained_on_still_renders(report, tmp_path: Path) -> None:
    """--since/--until inside the training period: no contact can test the model (nothing to calibrate on),
    a week of few contacts has hours with no repeat at all; the report says so instead of failing."""
    _, predictions, labelled = report
    week = labelled[labelled["closed_at"] < labelled["closed_at"].min() + pd.Timedelta(days=7)]
    followup = FollowUpPlan.from_yaml(PACKAGE_DATA / "followup_scripts.yaml")
    unseen_from = labelled["closed_at"].max() + pd.Timedelta(days=1)
    data = build(week, predictions[predictions["contact_id"].isin(week["contact_id"])], followup, None,
                 ReportConfig(), unseen_from=unseen_from)  # fmt: skip
    assert data["calibration"] == [] and any(r["repeat_rate"] == 0 for r in data["by"]["hour"])
    html, _ = write(data, tmp_path / "trained-period.html")
    assert "trained on" in html.read_text()


def test_a_centre_in_several_languages_sees_them_side_by_side(report, tmp_path: Path) -> None:
    _, predictions, labelled = report
    followup = FollowUpPlan.from_yaml(PACKAGE_DATA / "followup_scripts.yaml")
    assert "language" not in build(labelled, predictions, followup, None, ReportConfig())["by"]  # one: no table
    spoken = labelled.assign(language=np.where(labelled["customer_id"].str[-1].isin(list("01234")), "ru", "sr"))
    spoken.loc[spoken.index[:5], "language"] = ""  # too little text to tell
    data = build(spoken, predictions, followup, None, ReportConfig())
    assert {r["group"] for r in data["by"]["language"]} == {"ru", "sr", "unknown"}
    assert sum(r["contacts"] for r in data["by"]["language"]) == len(spoken)
    text = write(data, tmp_path / "languages.html")[0].read_text()
    assert 'id="by-language"' in text
