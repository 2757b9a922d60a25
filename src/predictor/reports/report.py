"""The predicted-repeat report for managers: one self-contained HTML file.

Built as a plain dict first (``build``), which the tests check, then rendered with a Jinja template
shipped in the package (autoescape on), with every plot embedded so the file opens offline.
"""

from __future__ import annotations

import base64
import io
from collections.abc import Callable
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Any

import matplotlib

matplotlib.use("Agg")

import matplotlib.dates
import matplotlib.pyplot as plt
import numpy as np
import pandas as pd
from jinja2 import Environment, select_autoescape

from predictor.contacts.labels import DataEnd
from predictor.contacts.language import ENGLISH, written
from predictor.loop.outcomes import Outcomes
from predictor.model.evaluate import rates_differ, wilson
from predictor.reports.plan import FollowUpPlan


@dataclass(frozen=True)
class ReportConfig:
    cost_per_contact: float = 6.0  # handling cost of one repeat contact, in the currency of the reader
    prevention_rate: float = 0.3  # share of repeats a proactive follow-up prevents (stated assumption)
    top_share: float = 0.1  # follow up on this share of contacts, highest risk first
    min_agent_volume: int = 50  # agents with fewer closed windows are grouped, never ranked
    high_risk_rows: int = 50
    currency: str = "€"
    shift_tolerance: float = 0.05  # flag a repeat-rate shift larger than this (and than sampling noise)
    follow_up_cost: float = 0.5  # what sending one follow-up costs (a message, an agent's minute)
    target_repeat_rate: float | None = None  # drawn on the trend when set


def build(
    labelled: pd.DataFrame,
    predictions: pd.DataFrame,
    followup: FollowUpPlan,
    plan: dict[str, Any] | None,
    config: ReportConfig | None = None,
    model_version: str = "",
    data_end: DataEnd | None = None,
    outcomes: Outcomes | None = None,
    unseen_from: pd.Timestamp | None = None,
    explain: Callable[[list[str]], dict[str, list[str]]] | None = None,
    teams: dict[str, str] | None = None,
) -> dict[str, Any]:
    """Everything the report shows, as data. ``labelled`` comes from labels.derive; ``predictions`` from the
    model (contact_id, repeat_probability, next_issue_1, hours_to_repeat_median, ...); ``outcomes``, from the
    service's contact store, what its answers and follow-ups did (the "Is it working?" section).

    ``unseen_from``: the start of the model's test slice. Predicted-vs-actual figures are computed only on
    contacts closed from then on (the model never learnt from them); on the contacts it was trained on they
    would say nothing about it. ``explain``: the reasons the API gives, for the high-risk list's contacts.
    ``teams``: agent id -> team (an agent without one is in "no team"), for the team breakdown."""
    config = config or ReportConfig()
    data = labelled.merge(predictions, on="contact_id", how="left", validate="one_to_one")
    data["unseen"] = True if unseen_from is None else (data["closed_at"] >= unseen_from).to_numpy()
    data["close_hour"] = data["closed_at"].dt.hour.map(lambda h: f"{h:02d}:00")
    data["close_weekday"] = pd.Categorical(data["closed_at"].dt.day_name(), categories=WEEKDAYS, ordered=True)
    adjacent = _adjacent_pairs(plan)
    if teams:
        data["team"] = data["agent_id"].map(lambda a: teams.get(str(a), NO_TEAM))
    complete = data[data["window_complete"]]
    repeats = complete[complete["is_repeat"].astype(bool)]
    n_complete = len(complete)
    repeat_rate = len(repeats) / n_complete if n_complete else float("nan")
    explicit = float((repeats["repeat_type"] == "explicit").mean()) if len(repeats) else float("nan")
    open_window = data[~data["window_complete"]]

    same_or_adjacent = repeats["next_issue"].astype(str) == repeats["issue"].astype(str)
    if adjacent:
        pairs = list(zip(repeats["issue"].astype(str), repeats["next_issue"].astype(str), strict=True))
        same_or_adjacent |= np.array([pair in adjacent for pair in pairs], dtype=bool)
    related = int(same_or_adjacent.sum())
    headline = {
        "period_start": str(data["closed_at"].min().date()),
        "period_end": str(data["closed_at"].max().date()),
        "contacts": len(data),
        "contacts_with_closed_window": n_complete,
        "repeat_rate": repeat_rate,
        # First-contact resolution as the industry counts it: no return for the same issue or an adjacent one
        # (the mined plan's pairs); "any repeat" counts unrelated returns too.
        "fcr": 1 - related / n_complete if n_complete else float("nan"),
        "fcr_any": 1 - repeat_rate,
        "fcr_adjacent_from_plan": bool(adjacent),
        "explicit_share": explicit,
        "implicit_share": 1 - explicit,
        "open_window": len(open_window),
        "open_window_repeats_seen": int(open_window["is_repeat"].fillna(False).astype(bool).sum()),
        "predicted_repeats_in_open_window": float(open_window["repeat_probability"].sum()),
        "window_days": float((data["window_ends_at"] - data["closed_at"]).dt.total_seconds().median() / 86400),
        "model_version": model_version,
        "data_end": data_end.describe() if data_end is not None else "",
        "unseen_from": str(unseen_from.date()) if unseen_from is not None else None,
        "unseen_closed": int((complete["unseen"]).sum()) if n_complete else 0,
    }
    headline.update(_period_change(complete))

    by = {
        "issue": _by_group(data, "issue"),
        "channel": _by_group(data, "channel"),
        "queue": _by_group(data, "queue"),
        "hour": sorted(_by_group(data, "close_hour"), key=lambda r: r["group"]),
        "weekday": _by_group(data, "close_weekday", ordered=True),
        "agent": _by_agent(data, config.min_agent_volume),
    }
    if "language" in data and data["language"].nunique() > 1:  # a centre working in several languages
        by["language"] = _by_group(data.assign(language=data["language"].replace("", "unknown")), "language")
    if teams:
        by["team"] = _by_group(data, "team")
        team_of = {str(a): teams.get(str(a), NO_TEAM) for a in data["agent_id"].unique()}
        for row in by["agent"]:
            row["team"] = team_of.get(row["group"], "") if not row.get("grouped") else ""
        # Agents by team, then by id: a team lead finds their people together.
        by["agent"].sort(key=lambda r: (bool(r.get("grouped")), r["team"], r["group"]))
    weekly = _weekly(data)
    headline["shift"] = rate_shift(complete, config.shift_tolerance)

    # Act today: contacts inside their window whose customer has not come back yet (those who did are
    # already in someone's queue).
    # One row per customer (the two halves of a transferred call are one customer to call), their riskiest
    # contact; then sorted by when the follow-up must go out, the riskiest first at the same time.
    waiting = open_window[~open_window["is_repeat"].fillna(False).astype(bool)]
    riskiest = waiting.sort_values("repeat_probability", ascending=False).drop_duplicates("customer_id")
    recent = riskiest.head(config.high_risk_rows)
    why = explain(recent["contact_id"].tolist()) if explain is not None and len(recent) else {}
    high_risk = []
    for row in recent.itertuples(index=False):
        advice = followup.recommend(
            repeat_probability=float(row.repeat_probability), next_issue=row.next_issue_1, contact_issue=row.issue,
            contact_channel=row.channel, hours_to_repeat_median=float(row.hours_to_repeat_median),
            language=written(getattr(row, "language", "") or ENGLISH, getattr(row, "transcript", "") or ""),
        )  # fmt: skip
        send_by = (row.closed_at + pd.Timedelta(hours=advice.send_within_hours)).floor("min")
        high_risk.append(
            {
                "contact_id": row.contact_id,
                "customer_id": row.customer_id,
                "closed_at": row.closed_at.strftime("%Y-%m-%d %H:%M"),
                "issue": row.issue,
                "channel": row.channel,
                "agent_id": row.agent_id,
                "repeat_probability": round(float(row.repeat_probability), 4),
                "likely_next_issue": row.next_issue_1,
                "repeat_type": advice.repeat_type,
                "hours_to_repeat_median": round(float(row.hours_to_repeat_median), 1),
                "follow_up": advice.message or f"(no script yet for {row.next_issue_1})",
                "send_within_hours": advice.send_within_hours,
                "send_by": send_by.strftime("%Y-%m-%d %H:%M UTC"),
                "channel_to_use": advice.channel,
                "reasons": "; ".join(why.get(row.contact_id, [])),
            }
        )
    high_risk.sort(key=lambda h: (h["send_by"], -h["repeat_probability"]))

    working = _working(outcomes)
    cost = _cost(complete, config, working)
    # Predicted vs actual on the contacts the model did not learn from, only.
    calibration = [
        {"group": r["group"], "predicted": r["unseen_predicted"], "actual": r["unseen_actual"], "n": r["unseen_closed"]}
        for r in by["issue"]
        if r["unseen_closed"] > 0
    ]
    return {
        "headline": headline,
        "weekly": weekly,
        "by": by,
        "calibration": calibration,
        "high_risk": high_risk,
        "cost": cost,
        "plan": plan,
        "config": config.__dict__,
        "working": working,
    }


NO_TEAM = "no team"
WEEKDAYS = ("Monday", "Tuesday", "Wednesday", "Thursday", "Friday", "Saturday", "Sunday")


def _adjacent_pairs(plan: dict[str, Any] | None) -> set[tuple[str, str]]:
    """The (primary, next issue) pairs the mined plan knows as adjacent: implicit repeats an agent could have
    headed off, which the industry's FCR counts against the first contact."""
    if not plan:
        return set()
    return {
        (str(p["issue"]), str(s["issue"]))
        for p in plan.get("primaries", [])
        for s in p.get("secondaries", [])
        if s.get("repeat_type") == "implicit"
    }


def _period_change(complete: pd.DataFrame) -> dict[str, Any]:
    """The latest full week of closed windows against the four before it (the headline's trend arrow)."""
    if complete.empty:
        return {"week_rate": float("nan"), "previous_4_weeks_rate": float("nan"), "week_change": float("nan")}
    week = complete["closed_at"].dt.tz_convert(None).dt.to_period("W")
    last = week.max()
    latest = complete[week == last]
    before = complete[(week < last) & (week >= last - 4)]
    rate = float(latest["is_repeat"].astype(float).mean()) if len(latest) else float("nan")
    previous = float(before["is_repeat"].astype(float).mean()) if len(before) else float("nan")
    return {
        "week_start": str(last.start_time.date()),
        "week_rate": rate,
        "previous_4_weeks_rate": previous,
        "week_change": rate - previous,
    }


def _working(outcomes: Outcomes | None) -> dict[str, Any] | None:
    """The "Is it working?" figures: live quality and the experiment's measured prevention, as data."""
    if outcomes is None:
        return None
    out = outcomes.as_dict()
    itt = outcomes.itt
    out["verdict"] = outcomes.verdict()
    out["measured_prevention"] = itt.relative if itt is not None and itt.difference.low > 0 else None
    return out


def render(report: dict[str, Any]) -> str:
    plots = {
        "weekly": _png(_plot_weekly(report["weekly"], report["config"].get("target_repeat_rate"))),
        "when": _png(_plot_when(report["by"]["hour"], report["by"]["weekday"])),
        "queue": _png(_plot_groups(report["by"]["queue"], "Repeat rate by queue")),
        "issue": _png(_plot_groups(report["by"]["issue"], "Repeat rate by primary issue")),
        "channel": _png(_plot_groups(report["by"]["channel"], "Repeat rate by channel")),
        "calibration": _png(_plot_calibration(report["calibration"])),
    }
    working = report.get("working")
    if working and working.get("itt"):
        plots["arms"] = _png(_plot_arms(working))
    if working and working.get("by_week"):
        plots["live"] = _png(_plot_live(working["by_week"]))
    env = Environment(autoescape=select_autoescape(default=True, default_for_string=True))
    env.filters["pct"] = lambda v, digits=1: "–" if v is None or v != v else f"{v * 100:.{digits}f}%"
    env.filters["num"] = lambda v: f"{v:,.0f}"
    template = env.from_string(resources.files("predictor.reports.templates").joinpath("report.html.j2").read_text())
    return template.render(r=report, plots=plots)


def write(report: dict[str, Any], out: Path) -> tuple[Path, Path]:
    """The HTML file, the high-risk list as CSV beside it, and every table as CSV in ``<name>_tables/``
    (linked from the page)."""
    out.parent.mkdir(parents=True, exist_ok=True)
    csv = out.with_name(out.stem + "_high_risk.csv")
    pd.DataFrame(report["high_risk"]).to_csv(csv, index=False)
    folder = out.with_name(out.stem + "_tables")
    folder.mkdir(exist_ok=True)
    tables = {"weekly": report["weekly"], **{f"by_{k}": v for k, v in report["by"].items()}}
    working = report.get("working") or {}
    for name in ("by_week", "by_band", "by_group"):
        if working.get(name):
            tables[f"live_{name}"] = working[name]
    links = {}
    for name, rows in tables.items():
        pd.DataFrame(rows).to_csv(folder / f"{name}.csv", index=False)
        links[name.replace("_", " ")] = f"{folder.name}/{name}.csv"
    links["high-risk list"] = csv.name
    out.write_text(render({**report, "tables": links}))
    return out, csv


# -- tables ------------------------------------------------------------------------------------------------


def _group_row(name: str, group: pd.DataFrame) -> dict[str, Any]:
    complete = group[group["window_complete"]]
    n = len(complete)
    k = float(complete["is_repeat"].astype(float).sum()) if n else 0.0
    low, high = wilson(k, n)
    unseen = complete[complete["unseen"]] if "unseen" in complete else complete
    return {
        "unseen_closed": len(unseen),
        "unseen_actual": float(unseen["is_repeat"].astype(float).mean()) if len(unseen) else float("nan"),
        "unseen_predicted": float(unseen["repeat_probability"].mean()) if len(unseen) else float("nan"),
        "group": name,
        "contacts": len(group),
        "closed_windows": n,
        "repeat_rate": k / n if n else float("nan"),
        "ci_low": low,
        "ci_high": high,
        "predicted_rate": float(group["repeat_probability"].mean()),
        "predicted_rate_closed": float(complete["repeat_probability"].mean()) if n else float("nan"),
        "explicit_share": float((complete["repeat_type"] == "explicit").sum() / max(k, 1)),
    }


def _by_group(data: pd.DataFrame, column: str, ordered: bool = False) -> list[dict[str, Any]]:
    rows = [_group_row(str(name), group) for name, group in data.groupby(column, observed=True)]
    return rows if ordered else sorted(rows, key=lambda r: -r["contacts"])


def _by_agent(data: pd.DataFrame, min_volume: int) -> list[dict[str, Any]]:
    volume = data[data["window_complete"]].groupby("agent_id").size()
    big = set(volume[volume >= min_volume].index)
    rows = [_group_row(str(a), g) for a, g in data[data["agent_id"].isin(big)].groupby("agent_id")]
    rows.sort(key=lambda r: r["group"])  # alphabetical: a table to look up, not a league table
    small = data[~data["agent_id"].isin(big)]
    if len(small):
        grouped = _group_row(f"{small['agent_id'].nunique()} agents under {min_volume} closed windows", small)
        grouped["grouped"] = True
        rows.append(grouped)
    return rows


def rate_shift(complete: pd.DataFrame, tolerance: float) -> str | None:
    """A sentence when the repeat rate of the latest quarter of closed windows differs from the earlier
    ones beyond ``tolerance`` (and beyond sampling noise), and how the model's predicted rate compares."""
    if len(complete) < 200:
        return None
    ordered = complete.sort_values("closed_at")
    cut = int(len(ordered) * 0.75)
    early, late = ordered.iloc[:cut], ordered.iloc[cut:]
    a = float(early["is_repeat"].astype(float).mean())
    b = float(late["is_repeat"].astype(float).mean())
    if not rates_differ(a, len(early), b, len(late), tolerance):
        return None
    predicted = float(late["repeat_probability"].mean())
    return (
        f"The repeat rate shifted: {a:.1%} over the earlier contacts, {b:.1%} over the latest quarter "
        f"(since {late['closed_at'].min().date()}); the model predicted {predicted:.1%} for those. "
        "A model calibrated before the shift is off until it is retrained on recent contacts."
    )


def _weekly(data: pd.DataFrame) -> list[dict[str, Any]]:
    week = data["closed_at"].dt.tz_convert(None).dt.to_period("W").dt.start_time
    rows = []
    for start, group in data.groupby(week):
        complete = group["window_complete"]
        known = group[complete]
        unseen = bool(group["unseen"].all()) if "unseen" in group else True
        rows.append(
            {
                "week": str(pd.Timestamp(start).date()),
                "contacts": len(group),
                "share_window_open": float((~complete).mean()),
                "repeat_rate": float(known["is_repeat"].astype(float).mean()) if len(known) else float("nan"),
                "predicted_rate": float(group["repeat_probability"].mean()),
                "unseen": unseen,  # every contact of the week is one the model did not learn from
            }
        )
    return rows


def _cost(complete: pd.DataFrame, config: ReportConfig, working: dict[str, Any] | None = None) -> dict[str, Any]:
    """What repeats cost and what following up the riskiest saves: at the prevention rate the experiment
    measured when it has shown one, else at the stated assumption (and the report says which)."""
    measured = working.get("measured_prevention") if working else None
    rate = measured if measured is not None else config.prevention_rate
    repeats = int(complete["is_repeat"].astype(bool).sum())
    p = complete["repeat_probability"].to_numpy()
    y = complete["is_repeat"].astype(bool).to_numpy()
    k = max(1, round(len(p) * config.top_share))
    top = np.argsort(-p)[:k]
    reached = int(y[top].sum())
    prevented = reached * rate
    follow_up_cost = k * config.follow_up_cost
    return {
        "prevention_rate": rate,
        "prevention_measured": measured is not None,
        "follow_up_cost": follow_up_cost,
        "net_saving": prevented * config.cost_per_contact - follow_up_cost,
        "repeats": repeats,
        "repeat_cost": repeats * config.cost_per_contact,
        "followed_up": k,
        "repeats_reached": reached,
        "share_of_repeats_reached": reached / max(repeats, 1),
        "prevented": prevented,
        "saving": prevented * config.cost_per_contact,
        "follow_ups_per_prevented_repeat": k / max(prevented, 1e-9),
    }


# -- plots -------------------------------------------------------------------------------------------------


def _png(fig: plt.Figure) -> str:
    buffer = io.BytesIO()
    fig.tight_layout()
    fig.savefig(buffer, format="png", dpi=100)
    plt.close(fig)
    return base64.b64encode(buffer.getvalue()).decode()


def _plot_weekly(weekly: list[dict[str, Any]], target: float | None = None) -> plt.Figure:
    """The repeat rate by week (axis from 0), the volume under it, the model's prediction only where it did not
    learn from the week, and the target when one is set."""
    frame = pd.DataFrame(weekly)
    fig, ax = plt.subplots(figsize=(10, 4.4))
    x = pd.to_datetime(frame["week"])
    volume = ax.twinx()
    volume.bar(x, frame["contacts"], width=5, color="#e8eef6", zorder=0, label="contacts (right axis)")
    volume.set_ylabel("contacts per week")
    volume.set_ylim(0, frame["contacts"].max() * 3)  # the bars stay in the lower third, under the rates
    ax.set_zorder(volume.get_zorder() + 1)
    ax.patch.set_visible(False)
    complete = frame["share_window_open"] == 0
    ax.plot(x[complete], frame["repeat_rate"][complete], marker="o", color="#1f5aa6", label="actual (window closed)")
    partial = ~complete
    ax.plot(x[partial], frame["repeat_rate"][partial], marker="o", ls=":", color="#999999",
            label="actual, window still open: too low until it closes")  # fmt: skip
    unseen = frame["unseen"].astype(bool)
    ax.plot(
        x[unseen], frame["predicted_rate"][unseen], color="#e07b00", label="predicted (weeks the model did not see)"
    )
    if partial.any():
        ax.axvspan(x[partial].min() - pd.Timedelta(days=3.5), x.max() + pd.Timedelta(days=3.5), color="#eeeeee",
                   zorder=0)  # fmt: skip
    if target is not None:
        ax.axhline(target, color="#2a9d3a", ls="--", lw=1, label=f"target {target:.0%}")
    top = np.nanmax([frame["repeat_rate"].max(), frame["predicted_rate"].max(), target or 0])
    ax.set_ylim(0, max(0.05, float(top) * 1.15))
    ax.set(ylabel="repeat rate", title="Repeat rate by week of first contact")
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.xaxis.set_major_formatter(matplotlib.dates.DateFormatter("%d %b"))
    lines, labels = ax.get_legend_handles_labels()
    bars, bar_labels = volume.get_legend_handles_labels()
    # Below the plot, never over a point.
    ax.legend(lines + bars, labels + bar_labels, fontsize=8, loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=3,
              frameon=False)  # fmt: skip
    return fig


def _plot_when(hours: list[dict[str, Any]], days: list[dict[str, Any]]) -> plt.Figure:
    """Repeat rate by the hour and the weekday of the close (windows closed, with 95% intervals)."""
    fig, axes = plt.subplots(1, 2, figsize=(10, 3.2), gridspec_kw={"width_ratios": [2.2, 1]})
    for ax, rows, title in ((axes[0], hours, "by hour of close (UTC)"), (axes[1], days, "by weekday of close")):
        frame = pd.DataFrame(rows)
        if frame.empty:
            continue
        err = np.vstack([frame["repeat_rate"] - frame["ci_low"], frame["ci_high"] - frame["repeat_rate"]])
        labels = [g[:2] for g in frame["group"]]  # "09:00" -> "09", "Monday" -> "Mo"
        ax.bar(range(len(frame)), frame["repeat_rate"], yerr=np.nan_to_num(err), color="#9cc3e6", ecolor="#555555",
               capsize=1.5)  # fmt: skip
        ax.set_xticks(range(len(frame)), labels, fontsize=7)
        ax.set_ylim(0, max(0.05, float(np.nanmax(frame["ci_high"])) * 1.1))
        ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
        ax.set(title=f"Repeat rate {title}")
    return fig


def _plot_groups(rows: list[dict[str, Any]], title: str) -> plt.Figure:
    frame = pd.DataFrame(rows).sort_values("repeat_rate")
    fig, ax = plt.subplots(figsize=(8, 0.35 * len(frame) + 1.2))
    y = np.arange(len(frame))
    err = np.vstack([frame["repeat_rate"] - frame["ci_low"], frame["ci_high"] - frame["repeat_rate"]])
    ax.barh(
        y, frame["repeat_rate"], xerr=err, color="#9cc3e6", ecolor="#555555", capsize=2, label="actual (95% interval)"
    )
    unseen = frame["unseen_closed"] > 0
    ax.scatter(frame["unseen_predicted"][unseen], y[unseen.to_numpy()], color="#e07b00", zorder=3,
               label="predicted, on contacts the model did not see")  # fmt: skip
    ax.set_yticks(y, frame["group"], fontsize=8)
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set(title=title)
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig


def _plot_calibration(rows: list[dict[str, Any]]) -> plt.Figure:
    frame = pd.DataFrame(rows)
    fig, ax = plt.subplots(figsize=(4.8, 4.5))
    ax.set(xlabel="predicted repeat rate", ylabel="actual repeat rate",
           title="Predicted vs actual by issue\n(contacts the model did not see)")  # fmt: skip
    if frame.empty:  # a period the model was trained on: nothing in it can test the model
        ax.text(0.5, 0.5, "no closed window of a contact\nthe model did not see", ha="center", va="center")
        return fig
    ax.scatter(frame["predicted"], frame["actual"], s=np.sqrt(frame["n"]) * 4, alpha=0.7, color="#1f5aa6")
    for row in frame.itertuples():
        ax.annotate(row.group.replace("_", " "), (row.predicted, row.actual), fontsize=6, alpha=0.8)
    top = float(max(frame["predicted"].max(), frame["actual"].max()) * 1.1)
    ax.plot([0, top], [0, top], color="grey", ls=":")
    return fig


def _plot_arms(working: dict[str, Any]) -> plt.Figure:
    """Repeat rates of the held-out and treated contacts (with a follow-up due), with 95% intervals."""
    itt = working["itt"]
    fig, ax = plt.subplots(figsize=(6.4, 2.6))
    names = [f"held out (no follow-up), n={itt['n_first']:,}", f"treated (follow-up due), n={itt['n_second']:,}"]
    rates = [itt["rate_first"], itt["rate_second"]]
    counts = [round(itt["rate_first"] * itt["n_first"]), round(itt["rate_second"] * itt["n_second"])]
    bounds = [wilson(k, n) for k, n in zip(counts, (itt["n_first"], itt["n_second"]), strict=True)]
    err = np.array(
        [
            [r - lo for r, (lo, _) in zip(rates, bounds, strict=True)],
            [hi - r for r, (_, hi) in zip(rates, bounds, strict=True)],
        ]
    )
    ax.barh([1, 0], rates, xerr=err, color=["#bbbbbb", "#1f5aa6"], ecolor="#333333", capsize=4)
    ax.set_yticks([1, 0], names, fontsize=8)
    ax.set_xlim(0, max(0.05, min(1.0, max(hi for _, hi in bounds) * 1.15)))
    ax.xaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set(
        xlabel="repeat rate within the window (95% interval)", title="Contacts with a follow-up due: repeat rate by arm"
    )
    return fig


def _plot_live(by_week: list[dict[str, Any]]) -> plt.Figure:
    """Live: what the service predicted against what happened, by week of close (windows closed only)."""
    frame = pd.DataFrame(by_week)
    fig, ax = plt.subplots(figsize=(9, 3.2))
    x = pd.to_datetime(frame["week"])
    ax.bar(x, frame["realised_rate"], width=5, color="#9cc3e6", label="realised repeat rate")
    ax.plot(x, frame["predicted_rate"], marker="o", color="#e07b00", label="predicted by the service")
    ax.set_ylim(0, max(0.05, float(max(frame["realised_rate"].max(), frame["predicted_rate"].max())) * 1.25))
    ax.yaxis.set_major_formatter(matplotlib.ticker.PercentFormatter(1.0))
    ax.set(title="Scored contacts: predicted vs realised repeat rate by week of close", ylabel="repeat rate")
    ax.legend(fontsize=8, loc="upper left", bbox_to_anchor=(1.01, 1.0))
    return fig
