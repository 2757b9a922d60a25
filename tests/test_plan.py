"""Plan mining on a hand-built log with a known answer, and the follow-up recommendation."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml
from conftest import contact, frame

from predictor.contacts.labels import derive
from predictor.contacts.schema import validate
from predictor.reports.plan import FollowUpPlan, mine, write_plan

SCRIPTS = FollowUpPlan(
    scripts={"billing_question": "Your next bill has a one-off charge."}, same_issue="Check {issue}."
)


@pytest.fixture
def labelled():
    rows = []
    # 10 plan changes: 6 come back with a billing question after 100 h, 2 with the plan change after 10 h,
    # 2 never come back. 4 refunds: 1 comes back with data_usage (no script) after 50 h.
    for k in range(10):
        rows.append(contact(f"P{k}", customer_id=f"U{k}", issue="plan_change", opened_hours=k))
        if k < 6:
            rows.append(contact(f"B{k}", customer_id=f"U{k}", issue="billing_question", opened_hours=k + 100 + 10 / 60))
        elif k < 8:
            rows.append(contact(f"Q{k}", customer_id=f"U{k}", issue="plan_change", opened_hours=k + 10 + 10 / 60))
    for k in range(4):
        rows.append(contact(f"R{k}", customer_id=f"V{k}", issue="refund", opened_hours=k))
    rows.append(contact("D0", customer_id="V0", issue="data_usage", opened_hours=50 + 10 / 60))
    contacts = validate(frame(*rows)).contacts
    import pandas as pd

    return derive(contacts, as_of=contacts["closed_at"].max() + pd.Timedelta(days=30))


def test_mined_shares_timings_and_gaps(labelled) -> None:
    plan = mine(labelled, SCRIPTS, min_cell=3)
    primaries = {p["issue"]: p for p in plan["primaries"]}
    assert plan["primaries"][0]["issue"] == "plan_change"  # most repeat volume first
    plan_change = primaries["plan_change"]
    assert plan_change["repeats"] == 8 and plan_change["contacts"] == 12
    assert plan_change["share_of_all_repeats"] == pytest.approx(8 / 9, abs=1e-3)
    billing, again = plan_change["secondaries"]
    assert (billing["issue"], billing["repeat_type"], billing["repeats"]) == ("billing_question", "implicit", 6)
    assert billing["share"] == pytest.approx(0.75)
    assert billing["median_hours"] == pytest.approx(100.0)
    assert billing["script"] == "Your next bill has a one-off charge."
    assert billing["send_within_hours"] == 24.0  # half of 100 h, capped at a day
    assert (again["repeat_type"], again["median_hours"], again["send_within_hours"]) == ("explicit", 10.0, 5.0)
    assert again["script"] == "Check plan change."
    assert again["low_volume"] is True  # 2 < 3
    refund = primaries["refund"]["secondaries"][0]
    assert refund["script_missing"] and refund["script"] is None
    assert {"primary": "refund", "secondary": "data_usage", "low_volume": True} in plan["gaps"]


def test_plan_file_round_trips_into_the_follow_up(labelled, tmp_path: Path) -> None:
    path = write_plan(mine(labelled, SCRIPTS, min_cell=3), tmp_path / "plan.yaml")
    assert yaml.safe_load(path.read_text())["version"].startswith("plan-")
    plan = SCRIPTS.with_mined_plan(path)
    advice = plan.recommend(
        repeat_probability=0.8, next_issue="plan_change", contact_issue="plan_change", contact_channel="chat",
        hours_to_repeat_median=60.0,
    )  # fmt: skip
    assert advice.act and advice.send_within_hours == 5.0  # the mined timing is sooner than half of 60 h
    assert advice.channel == "chat" and advice.repeat_type == "explicit"


def test_follow_up_rules() -> None:
    low = SCRIPTS.recommend(repeat_probability=0.1, next_issue="billing_question", contact_issue="plan_change",
                            contact_channel="email", hours_to_repeat_median=100)  # fmt: skip
    assert not low.act and "below" in low.reason
    gap = SCRIPTS.recommend(repeat_probability=0.9, next_issue="roaming", contact_issue="plan_change",
                            contact_channel="email", hours_to_repeat_median=100)  # fmt: skip
    assert not gap.act and "no script" in gap.reason
    go = SCRIPTS.recommend(repeat_probability=0.9, next_issue="billing_question", contact_issue="plan_change",
                           contact_channel="email", hours_to_repeat_median=3)  # fmt: skip
    assert go.act and go.send_within_hours == 1.5 and go.channel == "email" and go.repeat_type == "implicit"
