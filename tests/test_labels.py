"""Label edge cases, each built by hand."""

from __future__ import annotations

import pandas as pd
from conftest import T0, contact, frame

from predictor.config import LabelConfig
from predictor.contacts.labels import derive, summarize
from predictor.contacts.schema import validate

AS_OF = T0 + pd.Timedelta(days=60)


def labelled(*rows: dict, window_days: float = 7.0, as_of: pd.Timestamp = AS_OF) -> pd.DataFrame:
    contacts = validate(frame(*rows)).contacts
    return derive(contacts, LabelConfig(repeat_window_days=window_days), as_of=as_of).set_index("contact_id")


def test_window_boundary_is_inclusive() -> None:
    # C1 closes at T0+10min; the next opens exactly 7 days later (in), or one minute after that (out).
    inside = labelled(contact("C1"), contact("C2", opened_hours=7 * 24 + 10 / 60))
    outside = labelled(contact("C1"), contact("C2", opened_hours=7 * 24 + 11 / 60))
    assert bool(inside.loc["C1", "is_repeat"]) is True
    assert inside.loc["C1", "hours_to_repeat"] == 7 * 24
    assert bool(outside.loc["C1", "is_repeat"]) is False
    assert not outside.loc["C1", "censored"]


def test_censored_at_data_end_is_unknown_not_no_repeat() -> None:
    as_of = T0 + pd.Timedelta(days=3)
    result = labelled(contact("C1"), contact("C2", customer_id="U2", opened_hours=48), as_of=as_of)
    assert result["censored"].all()
    assert result["is_repeat"].isna().all()
    assert summarize(result.reset_index()).labelled == 0


def test_a_repeat_seen_before_data_end_is_not_censored() -> None:
    as_of = T0 + pd.Timedelta(days=3)
    result = labelled(contact("C1"), contact("C2", opened_hours=24), as_of=as_of)
    assert bool(result.loc["C1", "is_repeat"]) is True
    assert not result.loc["C1", "censored"]
    assert not result.loc["C1", "window_complete"]  # known, but its window is not over: not for fitting
    assert result.loc["C2", "censored"]  # its own window is still open


def test_explicit_and_implicit() -> None:
    result = labelled(
        contact("C1", issue="plan_change"),
        contact("C2", opened_hours=30, issue="billing_question"),
        contact("C3", opened_hours=60, issue="billing_question"),
    )
    assert result.loc["C1", "repeat_type"] == "implicit"
    assert result.loc["C1", "next_issue"] == "billing_question"
    assert result.loc["C2", "repeat_type"] == "explicit"
    assert result.loc["C2", "hours_to_repeat"] == 30 - 10 / 60
    assert pd.isna(result.loc["C3", "repeat_type"])


def test_transfer_continuation_is_the_same_contact_not_a_repeat() -> None:
    result = labelled(
        contact("C1", transfers=1),
        contact("C2", opened_hours=20 / 60),  # 10 minutes after C1 closed: continues it
        contact("C3", opened_hours=48, issue="refund"),
    )
    assert bool(result.loc["C2", "continues_previous"]) is True
    assert result.loc["C1", "next_issue"] == "refund"  # C2 skipped
    assert bool(result.loc["C1", "is_repeat"]) is True


def test_gap_after_a_contact_without_transfer_is_a_repeat() -> None:
    result = labelled(contact("C1", transfers=0), contact("C2", opened_hours=20 / 60))
    assert bool(result.loc["C1", "is_repeat"]) is True
    assert not result.loc["C2", "continues_previous"]


def test_continuation_after_the_gap_is_a_repeat() -> None:
    result = labelled(contact("C1", transfers=2), contact("C2", opened_hours=40 / 60))
    assert bool(result.loc["C1", "is_repeat"]) is True


def test_customer_with_several_repeats_and_other_customers_interleaved() -> None:
    result = labelled(
        contact("C1", customer_id="U1"),
        contact("X1", customer_id="U2", opened_hours=1),
        contact("C2", customer_id="U1", opened_hours=24),
        contact("X2", customer_id="U2", opened_hours=300),
        contact("C3", customer_id="U1", opened_hours=48, issue="refund"),
        contact("C4", customer_id="U1", opened_hours=400),
    )
    assert result.loc["C1", "hours_to_repeat"] == 24 - 10 / 60
    assert result.loc["C2", "next_issue"] == "refund"
    assert bool(result.loc["C3", "is_repeat"]) is False  # next is 352 h later
    assert bool(result.loc["X1", "is_repeat"]) is False
    assert result.loc["C4", "censored"] == (T0 + pd.Timedelta(hours=400 + 7 * 24) > AS_OF)


def test_overlapping_contact_opened_before_close_is_not_a_repeat() -> None:
    result = labelled(contact("C1", minutes=60), contact("C2", opened_hours=0.5, channel="email"))
    assert bool(result.loc["C1", "is_repeat"]) is False


def test_order_of_input_rows_is_kept() -> None:
    rows = [contact("C3", opened_hours=48), contact("C1"), contact("C2", opened_hours=24)]
    contacts = validate(frame(*rows)).contacts
    out = derive(contacts, as_of=AS_OF)
    assert list(out["contact_id"]) == ["C3", "C1", "C2"]
    assert len(out) == len(contacts)


def test_window_is_configurable() -> None:
    rows = [contact("C1"), contact("C2", opened_hours=30)]
    assert bool(labelled(*rows, window_days=1).loc["C1", "is_repeat"]) is False
    assert bool(labelled(*rows, window_days=2).loc["C1", "is_repeat"]) is True


def test_an_empty_log_has_no_labels_and_no_error() -> None:
    """A Dask customer partition of a tiny log can be empty: its labels, agents' windows and features are empty
    (they failed on a maximum of nothing, or a broadcast with ``as_of``)."""
    from predictor.contacts.labels import label_arrays
    from predictor.contacts.store import typed_contacts
    from predictor.features.build import agent_windows, build

    empty = typed_contacts(pd.DataFrame())
    assert len(label_arrays(empty).repeat) == 0
    assert agent_windows(empty, LabelConfig()).empty
    assert agent_windows(empty, LabelConfig(), as_of=pd.Timestamp("2026-01-01", tz="UTC")).empty
    assert len(build(empty).frame) == 0


def test_labels_of_plain_arrays_equal_those_of_the_frame() -> None:
    """A scorer hands its history over as ``ContactArrays`` (times in µs): the labels must not depend on it.
    On an export unlike the simulator's default: closed tickets only, open ~3 days, 3% repeats, transfers."""
    from predictor.contacts.labels import ContactArrays, label_arrays
    from predictor.contacts.simulate import SimulatorConfig, simulate

    config = SimulatorConfig(n_contacts=1500, seed=21, export="closed-only", ticket_days=3.0, repeat_rate=0.03)
    log = validate(simulate(config).contacts).contacts
    as_of = log["closed_at"].quantile(0.8)
    for when in (None, as_of):
        of_frame, of_arrays = (
            label_arrays(log, LabelConfig(), when),
            label_arrays(ContactArrays.of(log), LabelConfig(), when),
        )
        for name in ("repeat", "censored", "next_row", "window_end_ms", "window_complete", "continues"):
            assert getattr(of_frame, name).tolist() == getattr(of_arrays, name).tolist(), name
        assert pd.Series(of_frame.hours).equals(pd.Series(of_arrays.hours))
