"""The simulator: deterministic, grounded statistics, signal in the text, truth kept apart."""

from __future__ import annotations

import re

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from predictor.contacts.labels import derive, summarize
from predictor.contacts.schema import validate
from predictor.contacts.simulate import ISSUE_CODES, SimulatorConfig, simulate


def test_same_seed_same_log_and_other_seed_differs() -> None:
    a = simulate(SimulatorConfig(n_contacts=400, seed=1, days=30))
    b = simulate(SimulatorConfig(n_contacts=400, seed=1, days=30))
    c = simulate(SimulatorConfig(n_contacts=400, seed=2, days=30))
    pd.testing.assert_frame_equal(a.contacts, b.contacts)
    pd.testing.assert_frame_equal(a.truth, b.truth)
    assert not a.contacts["transcript"].equals(c.contacts["transcript"])


def test_output_is_a_valid_log_of_the_requested_size(small_log) -> None:
    result = validate(small_log.contacts)
    assert result.n_rejected_rows == 0
    assert len(small_log.contacts) == 1500
    assert set(small_log.truth["contact_id"]) == set(small_log.contacts["contact_id"])
    assert not set(small_log.truth.columns) & {"transcript", "issue", "channel"}


def test_statistics_at_defaults_match_the_domain(default_log) -> None:
    summary = summarize(derive(default_log.contacts))
    assert abs(summary.repeat_rate - 1 / 3) <= 0.05
    assert abs(summary.explicit_share - 0.55) <= 0.07
    assert summary.censored > 0
    assert len(summary.by_issue) == len(ISSUE_CODES)


def test_truth_is_a_probability_that_ranks_outcomes(default_log) -> None:
    labelled = derive(default_log.contacts).merge(default_log.truth, on="contact_id")
    known = labelled[~labelled["censored"]]
    p = known["true_repeat_probability"]
    assert p.between(0, 1).all()
    next_cols = [c for c in default_log.truth.columns if c.startswith("p_next__")]
    np.testing.assert_allclose(default_log.truth[next_cols].sum(axis=1), 1.0, atol=1e-6)
    assert roc_auc_score(known["is_repeat"].astype(int), p) > 0.62
    # Calibrated up to the unmodelled overlap of several open chains per customer.
    assert abs(p.mean() - known["is_repeat"].astype(float).mean()) < 0.03


def test_transcripts_vary_and_carry_what_metadata_does_not(default_log) -> None:
    contacts, truth = default_log.contacts, default_log.truth
    words = contacts["transcript"].str.split().str.len()
    assert (contacts["transcript"] == "").mean() > 0.05  # phone without speech-to-text
    assert words.max() > 300
    assert words[words > 0].quantile(0.05) < 60
    assert contacts["transcript"].nunique() > 0.95 * (contacts["transcript"] != "").sum()
    with_text = contacts["transcript"] != ""
    unresolved_said = contacts["transcript"].str.contains(
        "ticket|passed it on|escalating|back office|another department|specialist"
    )
    assert (unresolved_said[with_text] == ~truth["resolved"][with_text]).mean() > 0.95


def test_some_transcripts_hold_pii_for_redaction_tests(small_log) -> None:
    text = "\n".join(small_log.contacts["transcript"])
    assert re.search(r"[\w.]+@example\.com", text)
    assert re.search(r"\+44 7\d{3} \d{6}", text)
    assert re.search(r"\d{4} \d{4} \d{4} \d{4}", text)


def test_transfers_produce_continuations(default_log) -> None:
    labelled = derive(default_log.contacts)
    assert labelled["continues_previous"].sum() > 100
