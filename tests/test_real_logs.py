"""Logs shaped unlike the simulator: closed-only exports, long-lived tickets, thin, odd and drifting logs.

Every case ends in a trained model (with what was skipped and why) or in ``TrainingDataError``, whose
message the CLI prints as one line with exit status 2; never a traceback.
"""

from __future__ import annotations

import json
import subprocess
import sys
import zlib
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import T0

from predictor.config import LabelConfig, SplitConfig
from predictor.contacts.labels import data_end, derive
from predictor.contacts.schema import validate, write_table
from predictor.contacts.simulate import SimulatorConfig, simulate
from predictor.training.train import TrainingDataError, fit, metrics_summary, time_split

RESOLVED = ("Agent: that is sorted now.\nCustomer: thanks, that fixed it.", "Customer: great, all working, bye.")
UNRESOLVED = ("Customer: that didn't help at all.\nAgent: sorry.", "Customer: still not working, I will call back.")


def thin_log(
    n: int = 1200,
    *,
    days: float = 120,
    issues: tuple[str, ...] = ("billing_question", "refund", "roaming"),
    channels: tuple[str, ...] = ("chat", "phone"),
    customers: int | None = None,
    repeat_rate: float = 0.3,
    implicit_share: float = 0.45,
    text: bool = True,
    seed: int = 0,
) -> pd.DataFrame:
    """First contacts at random times; a share come back within hours to days, with the same issue
    (explicit) or another one (implicit). Transcripts say how the first contact ended, noisily."""
    rng = np.random.default_rng(seed)
    n_first = int(n / (1 + repeat_rate))
    customers = customers or n_first
    opened = np.sort(rng.uniform(0, days * 24, n_first))
    who = rng.integers(0, customers, n_first)
    issue = rng.choice(issues, n_first)
    repeats = rng.random(n_first) < repeat_rate
    rows = []
    for k in range(n_first):
        comes_back = repeats[k]
        signal = comes_back if rng.random() < 0.8 else not comes_back
        closing = rng.choice(UNRESOLVED if signal else RESOLVED)
        rows.append(_row(f"C{k:06d}", who[k], opened[k], issue[k], rng.choice(channels), closing if text else ""))
        if comes_back:
            other = [i for i in issues if i != issue[k]]
            second = rng.choice(other) if other and rng.random() < implicit_share else issue[k]
            again = opened[k] + 0.2 + rng.exponential(40)
            said = rng.choice(RESOLVED) if text else ""
            rows.append(_row(f"R{k:06d}", who[k], again, second, rng.choice(channels), said))
    return validate(pd.DataFrame(rows)).contacts


def _row(contact_id: str, customer: int, hours: float, issue: str, channel: str, transcript: str) -> dict:
    opened = T0 + pd.Timedelta(hours=float(hours))
    return {
        "contact_id": contact_id,
        "customer_id": f"U{customer:05d}",
        "opened_at": opened,
        "closed_at": opened + pd.Timedelta(minutes=12),
        "channel": channel,
        "issue": issue,
        "transcript": transcript,
        "agent_id": f"A{zlib.crc32(contact_id.encode()) % 7}",
        "handle_seconds": 600.0,
        "hold_seconds": 0.0,
        "transfers": 0,
        "queue": "consumer",
        "csat": float("nan"),
    }


# -- §1 where the data ends ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def ticket_logs():
    config = SimulatorConfig(n_contacts=4000, seed=11, days=90, ticket_days=3.0)
    full = simulate(config)
    closed_only = simulate(SimulatorConfig(**{**config.__dict__, "export": "closed-only"}))
    return validate(full.contacts).contacts, validate(closed_only.contacts).contacts


def test_closed_only_export_lacks_the_tickets_still_open(ticket_logs) -> None:
    full, closed_only = ticket_logs
    missing = set(full["contact_id"]) - set(closed_only["contact_id"])
    assert missing, "some e-mail tickets must still be open at the extraction"
    # Tickets open for days, and the few contacts handled at the very moment of the extraction.
    assert (full.set_index("contact_id").loc[list(missing), "channel"] == "email").mean() > 0.9
    assert data_end(closed_only).rule == "longest_open_tickets"


def test_closed_only_labels_agree_with_the_full_log_wherever_called_known(ticket_logs) -> None:
    full, closed_only = ticket_logs
    truth = derive(full).set_index("contact_id")
    seen = derive(closed_only).set_index("contact_id")
    known = seen[seen["window_complete"]]
    assert len(known) > 0.7 * len(seen)
    assert truth.loc[known.index, "window_complete"].all()
    # No contact is called "no repeat" whose window the export could not see.
    pd.testing.assert_series_equal(
        known["is_repeat"].astype(bool), truth.loc[known.index, "is_repeat"].astype(bool), check_names=False
    )


def test_the_last_close_would_have_mislabelled_the_closed_only_export(ticket_logs) -> None:
    full, closed_only = ticket_logs
    truth = derive(full).set_index("contact_id")
    naive = derive(closed_only, as_of=closed_only["closed_at"].max()).set_index("contact_id")
    called = naive[naive["window_complete"]]
    wrong = called["is_repeat"].astype(bool) != truth.loc[called.index, "is_repeat"].astype(bool)
    assert wrong.sum() > 0  # what the old rule did: repeats that were still-open tickets became "no repeat"


def test_data_end_is_the_last_opening_when_closes_run_on() -> None:
    # Tickets opened over ten days, each closed 30 days later: the closes run far past the last opening.
    rows = [_row(f"C{k}", k, 24 * k, "refund", "email", "") for k in range(10)]
    contacts = validate(pd.DataFrame(rows)).contacts
    contacts["closed_at"] = contacts["opened_at"] + pd.Timedelta(days=30)
    end = data_end(contacts, LabelConfig(open_ticket_quantile=0.6))
    assert end.rule == "last_opening"
    assert end.at == contacts["opened_at"].max()
    warning = end.warning(7.0)
    assert warning is not None and f"{end.affected:,} contacts" in warning
    assert end.affected == 3  # windows ending after the last opening but by the last close
    assert not derive(contacts)["window_complete"].any()


def test_as_of_overrides_the_derived_end(ticket_logs) -> None:
    full, _ = ticket_logs
    when = pd.Timestamp("2026-02-01", tz="UTC")
    end = data_end(full, LabelConfig(as_of=when.to_pydatetime()))
    assert (end.at, end.rule) == (when, "as_of")
    labelled = derive(full, LabelConfig(as_of=when.to_pydatetime()))
    assert not labelled.loc[labelled["window_ends_at"] > when, "window_complete"].any()


# -- §2 thin, odd and drifting logs ---------------------------------------------------------------------


def _fit(contacts: pd.DataFrame, settings, **kwargs):
    return fit(contacts, settings, ablation=False, **kwargs)


def test_one_issue_code_trains_without_an_implicit_text_head(settings) -> None:
    contacts = thin_log(1500, issues=("complaint",), seed=1)
    result = _fit(contacts, settings)
    assert any("implicit" in s.stage for s in result.skipped)
    assert result.model.text_heads is not None and "implicit" not in result.model.text_heads.targets
    assert result.metrics.loc["model", "roc_auc"] > 0.6


def test_every_transcript_empty_trains_on_metadata(settings) -> None:
    result = _fit(thin_log(1200, text=False, seed=2), settings)
    assert not result.model.uses_text
    assert any(s.stage == "text features" for s in result.skipped)


def test_a_next_issue_class_with_one_example_and_forty_issue_codes(settings) -> None:
    codes = tuple(f"code_{k:02d}" for k in range(42))
    contacts = thin_log(3000, issues=codes, seed=3, text=False)
    result = _fit(contacts, settings)
    assert len(result.model.issue_codes) == 42
    assert "other" in result.model.next_issue_classes
    assert set(result.next_issue_baselines) == {"same issue again", "transition table (training slice)"}


def test_one_channel_and_one_customer_with_thousands_of_contacts(settings) -> None:
    contacts = thin_log(5000, channels=("social",), seed=4, text=False)
    # A B2B account: one customer id behind 40% of the contacts (all of them repeats of each other).
    big = np.random.default_rng(4).random(len(contacts)) < 0.4
    contacts.loc[big, "customer_id"] = "U_ACCOUNT"
    assert (contacts["customer_id"] == "U_ACCOUNT").sum() > 1500
    result = _fit(contacts, settings)
    assert result.metrics.loc["model", "roc_auc"] == result.metrics.loc["model", "roc_auc"]  # not NaN


def one_day(seed: int) -> pd.DataFrame:
    contacts = thin_log(700, days=0.5, seed=seed, text=False)
    return contacts[contacts["opened_at"] < T0 + pd.Timedelta(hours=20)].reset_index(drop=True)


def test_every_contact_on_one_day_stops_with_a_clear_message(settings) -> None:
    with pytest.raises(TrainingDataError, match="window has closed"):
        _fit(one_day(5), settings)


def test_a_window_longer_than_the_log_stops_with_a_clear_message(settings) -> None:
    longer = settings.model_copy(update={"labels": LabelConfig(repeat_window_days=200)})
    with pytest.raises(TrainingDataError, match="window has closed"):
        _fit(thin_log(600, days=60, seed=6, text=False), longer)


def test_too_few_repeats_stops_with_the_counts(settings) -> None:
    with pytest.raises(TrainingDataError, match=r"slice holds \d+ repeats and \d+ non-repeats") as caught:
        _fit(thin_log(800, repeat_rate=0.02, seed=7, text=False), settings)
    assert "MIN_TEST_REPEATS" in str(caught.value)


def test_few_repeats_in_the_test_slice_stop(settings) -> None:
    strict = settings.model_copy(update={"split": SplitConfig(min_test_repeats=500)})
    with pytest.raises(TrainingDataError, match="test slice holds"):
        _fit(thin_log(1200, seed=8, text=False), strict)


def test_a_few_weeks_log_calibrates_out_of_fold(settings) -> None:
    # A month of contacts: the one-window embargo between slices leaves no calibration slice.
    contacts = thin_log(4000, days=30, seed=9, text=False)
    labelled = derive(contacts)
    split = time_split(labelled, settings, data_end(contacts).at)
    assert split.calibration_mode == "out-of-fold" and len(split.calibration) == 0
    result = _fit(contacts, settings)
    assert result.split.calibration_mode == "out-of-fold"
    assert result.metrics.loc["model", "ece"] < 0.1
    assert any("out-of-fold" in note for note in result.split.notes)


def test_a_three_percent_log_with_text_trains(settings) -> None:
    contacts = thin_log(9000, repeat_rate=0.035, days=120, seed=10)
    result = _fit(contacts, settings)
    assert result.split.repeat_rates["test"] < 0.1
    assert result.metrics.loc["model", "roc_auc"] > 0.6


# -- §3 drift, §5 machine-readable results, §6 the timing interval -------------------------------------


@pytest.fixture(scope="module")
def drifting(settings):
    log = simulate(SimulatorConfig(n_contacts=5000, seed=12, days=180, drift=-0.75))
    return _fit(validate(log.contacts).contacts, settings, use_text=False)


def test_drift_is_measured_and_said(drifting) -> None:
    rates = drifting.split.repeat_rates
    assert rates["train"] > rates["test"] + 0.05
    assert any(w.startswith("drift") for w in drifting.warnings)


def test_metrics_summary_is_json_with_what_ci_needs(drifting) -> None:
    summary = json.loads(json.dumps(metrics_summary(drifting)))
    model = summary["repeat"]["model"]
    assert {"roc_auc", "pr_auc", "brier", "ece", "recall_top10", "recall_top20"} <= set(model)
    assert {"top1_accuracy", "top3_accuracy"} <= set(summary["next_issue"]["model"])
    assert "same issue again" in summary["next_issue"]
    assert {"p90_coverage", "p90_nominal"} <= set(summary["timing"])
    assert summary["split"]["repeat_rates"]["test"] > 0
    assert summary["data_end"]["rule"] in ("last_opening", "longest_open_tickets")
    assert any(w.startswith("drift") for w in summary["warnings"])
    # The model per group, as data: every test contact counted once per dimension.
    by_slice = pd.DataFrame(summary["by_slice"])
    assert {"channel", "issue", "has_transcript", "transcript_length", "customer_tenure"} <= set(by_slice["dimension"])
    per_dimension = by_slice.groupby("dimension")["contacts"].sum()
    assert (per_dimension == drifting.split.counts["test"]).all()


def test_the_conformal_interval_covers_about_ninety_percent(settings) -> None:
    log = simulate(SimulatorConfig(n_contacts=6000, seed=13, days=150))
    result = _fit(validate(log.contacts).contacts, settings, use_text=False)
    assert abs(result.timing_metrics["p90_coverage"] - 0.9) < 0.05


# -- through the command line --------------------------------------------------------------------------


def _predictor(*args: str, cwd: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "predictor.cli", *args], cwd=cwd, capture_output=True, text=True, timeout=600
    )


def test_train_on_a_log_without_labels_exits_2_with_one_line(tmp_path: Path) -> None:
    write_table(one_day(14), tmp_path / "one_day.csv")
    run = _predictor("train", "one_day.csv", "--no-register", cwd=tmp_path)
    assert run.returncode == 2, run.stderr
    assert "Traceback" not in run.stderr + run.stdout
    assert "window has closed" in run.stderr


def test_bad_as_of_exits_2(tmp_path: Path) -> None:
    write_table(thin_log(300, seed=15, text=False), tmp_path / "log.csv")
    run = _predictor("labels", "log.csv", "--as-of", "yesterday-ish", cwd=tmp_path)
    assert run.returncode == 2 and "Traceback" not in run.stderr and "--as-of" in run.stderr


def test_labels_prints_the_data_end_used(tmp_path: Path) -> None:
    write_table(thin_log(300, seed=16, text=False), tmp_path / "log.csv")
    run = _predictor("labels", "log.csv", cwd=tmp_path)
    assert run.returncode == 0, run.stderr
    assert "data end" in run.stdout


def test_a_bad_hyperparameter_file_exits_2_naming_the_key(tmp_path: Path, settings) -> None:
    import os

    import yaml

    from predictor.training.train import load_hyperparams

    hp = load_hyperparams()
    hp["repeat"]["learning_rate"] = -1
    hp["repaet"] = {}
    (tmp_path / "hp.yaml").write_text(yaml.safe_dump(hp))
    write_table(thin_log(300, seed=17, text=False), tmp_path / "log.csv")
    env = {**os.environ, "PREDICTOR_HYPERPARAMS_PATH": str(tmp_path / "hp.yaml")}
    run = subprocess.run(
        [sys.executable, "-m", "predictor.cli", "train", "log.csv", "--no-register"],
        cwd=tmp_path, capture_output=True, text=True, timeout=600, env=env,
    )  # fmt: skip
    assert run.returncode == 2 and "Traceback" not in run.stderr + run.stdout
    assert "repeat.learning_rate" in run.stderr and "2 problem" in run.stderr
    with pytest.raises(TrainingDataError, match=r"features\.drop names no feature"):
        hp = load_hyperparams()
        hp["features"] = {"drop": ["no_such_feature"]}
        _fit(thin_log(3000, seed=17, text=False), settings, hyperparams=hp)


def test_the_estimator_keeps_scikit_learns_contract(settings) -> None:
    from sklearn.base import clone
    from sklearn.exceptions import NotFittedError

    from predictor.training.train import RepeatContactEstimator

    contacts = thin_log(2500, seed=18, text=False)
    estimator = RepeatContactEstimator(settings, use_text=False)
    assert clone(estimator).get_params()["use_text"] is False
    with pytest.raises(NotFittedError):
        estimator.predict_proba(contacts.head(3), contacts)
    assert estimator.fit(contacts) is estimator
    assert estimator.model_ is estimator.result_.model and estimator.next_issue_classes_
    rows = contacts.tail(5)
    proba = estimator.predict_proba(rows, contacts)
    assert proba.shape == (5, 2) and np.allclose(proba.sum(axis=1), 1)
    assert np.allclose(proba[:, 1], estimator.model_.predict(rows, contacts)["repeat_probability"])
    assert {"next_issue_1", "next_issue_1_probability"} <= set(estimator.predict_next_issue(rows, contacts).columns)
    hours = estimator.predict_hours(rows, contacts)
    assert (hours["hours_to_repeat_p90"] >= hours["hours_to_repeat_median"]).all()
