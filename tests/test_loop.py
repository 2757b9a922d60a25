"""Closing the loop: the hold-out, follow-ups reported back, outcomes, and a simulated deployment."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictor.contacts.store import ContactStore
from predictor.loop.assignment import HELD_OUT, TREATED, arm
from predictor.loop.outcomes import compare, needed_contacts, wilson
from predictor.reports.plan import follow_up_plan
from predictor.serving.api import contact_json
from predictor.serving.scorer import Scorer


def test_a_customer_keeps_one_arm_and_the_share_is_as_configured() -> None:
    customers = [f"U{k:06d}" for k in range(20_000)]
    arms = [arm(c, "exp-1", 0.1) for c in customers]
    share = np.mean([a == HELD_OUT for a in arms])
    assert abs(share - 0.1) < 3 * np.sqrt(0.1 * 0.9 / len(customers))
    assert arms == [arm(c, "exp-1", 0.1) for c in customers]  # deterministic
    # A new experiment draws new arms: about 10% of the held-out stay held out, not all of them.
    again = [arm(c, "exp-2", 0.1) for c in customers]
    held = [a == HELD_OUT for a in arms]
    kept = np.mean([b == HELD_OUT for b, h in zip(again, held, strict=True) if h])
    assert 0.05 < kept < 0.15
    assert {arm(c, "exp-1", 0.0) for c in customers[:500]} == {TREATED}


def test_intervals_match_the_published_examples() -> None:
    # Newcombe (1998), Statistics in Medicine 17: 81/263 (Wilson 0.2553-0.3662); 56/70 - 48/80 (method 10:
    # 0.0524 to 0.3339).
    low, high = wilson(81, 263)
    assert (round(low, 4), round(high, 4)) == (0.2553, 0.3662)
    c = compare(pd.Series([1] * 56 + [0] * 14), pd.Series([1] * 48 + [0] * 32), "a", "b")
    assert (round(c.difference.low, 4), round(c.difference.high, 4)) == (0.0524, 0.3339)
    # The contacts needed for an interval whose half-width is the effect seen (0.2): fewer than the 150 of
    # the example, whose interval is narrower than that.
    share = 80 / 150
    needed = needed_contacts(c, share)
    assert needed is not None and needed < 150
    half = 1.96 * np.sqrt(0.8 * 0.2 / (needed * share) + 0.6 * 0.4 / (needed * (1 - share)))
    assert abs(half - 0.2) < 0.005


@pytest.fixture
def scorer(trained, settings, tmp_path: Path) -> Scorer:
    result, _ = trained
    service = settings.service.model_copy(
        update={"store_url": f"sqlite:///{tmp_path / 's.db'}", "holdout_share": 0.5, "follow_up_threshold": 0.0}
    )
    configured = settings.model_copy(update={"service": service})
    return Scorer(result.model, "1", ContactStore(service.store_url), follow_up_plan(service), configured)


@pytest.mark.slow
def test_held_out_customers_are_never_told_to_act_and_one_follow_up_per_customer(scorer: Scorer, trained) -> None:
    _, contacts = trained
    rows = contacts.sort_values("closed_at").tail(120).to_dict("records")
    items = [contact_json(r) for r in rows]
    # The two halves of a transferred call: the same customer, minutes apart, in one batch.
    second = {**items[0], "contact_id": "second-half", "opened_at": items[0]["closed_at"]}
    second["closed_at"] = (pd.Timestamp(items[0]["closed_at"]) + pd.Timedelta(minutes=9)).isoformat()
    answers = scorer.score_batch([*items, second])
    follow_ups = {item.contact_id: item.result.follow_up for item in answers.results}
    assert not any(f.act and f.held_out for f in follow_ups.values())
    due = [f for f in follow_ups.values() if f.experiment is not None]
    assert any(f.held_out for f in due) and any(f.act for f in due)
    first, later = follow_ups[items[0]["contact_id"]], follow_ups["second-half"]
    assert first.experiment is not None and later.experiment is None and not later.act
    assert "at most one per customer" in later.reason
    for item in answers.results:
        closed = pd.Timestamp(next(b for b in [*items, second] if b["contact_id"] == item.contact_id)["closed_at"])
        f = item.result.follow_up
        assert abs((pd.Timestamp(f.send_by) - closed) / pd.Timedelta(hours=1) - f.send_within_hours) < 1 / 60
    # A customer is told the same arm on a later contact (a new window): the arm is the customer's.
    held = {f.experiment for f in due}
    assert held == {scorer.settings.service.experiment}
    stored = scorer.store.scored()
    assert set(stored.loc[stored["arm"].notna(), "contact_id"]) == {
        cid for cid, f in follow_ups.items() if f.experiment is not None
    }


@pytest.mark.slow
def test_a_simulated_deployment_measures_the_effect_it_was_given(tmp_path_factory) -> None:
    """Over real HTTP: with an effect, the 95% interval covers the true one; with none, it covers zero."""
    from predictor.loop.deployment import DeploymentConfig, Effect, deploy, prepare

    workdir = tmp_path_factory.mktemp("deployment")
    config = DeploymentConfig(n_contacts=3000, seed=7, days=90, train_days=45, holdout_share=0.5)
    prepared = prepare(config, workdir)
    with_effect = deploy(prepared, Effect(0.6, 0.6, 0.05, 0.9), workdir / "effect")
    itt = with_effect.outcomes.itt
    assert itt is not None and with_effect.counted >= 300
    assert itt.difference.low <= with_effect.true_itt <= itt.difference.high
    assert with_effect.true_itt > 0.05 and with_effect.prevented > 0 and with_effect.prompted > 0
    assert with_effect.told_to_act_while_held_out == 0
    share = with_effect.outcomes.held_out_share
    assert abs(share - 0.5) < 3 * np.sqrt(0.25 / with_effect.outcomes.counted)
    live = with_effect.outcomes.quality
    assert 0.55 < live["roc_auc"] < 0.9 and live["ece"] < 0.1

    # `predictor outcomes` on that store, in an 80-column terminal: every line fits, nothing is cut.
    import os
    import subprocess
    import sys

    store_url = f"sqlite:///{workdir / 'effect' / 'store.db'}"
    env = {**os.environ, "COLUMNS": "80", "PREDICTOR_HOME": str(workdir)}
    shown = subprocess.run([str(Path(sys.executable).parent / "predictor"), "outcomes", "--store-url", store_url],
                           capture_output=True, text=True, env=env, cwd=workdir, timeout=300)  # fmt: skip
    assert shown.returncode == 0, shown.stderr
    lines = (shown.stdout + shown.stderr).splitlines()
    assert "Prevention" in shown.stdout and all(len(line) <= 80 and "\u2026" not in line for line in lines)

    # The uplift model on the arms, judged against risk ranking on the later contacts and recorded in MLflow.
    from predictor.loop.uplift import evaluate_store

    ranked = evaluate_store(ContactStore(f"sqlite:///{workdir / 'effect' / 'store.db'}"), prepared.settings, 60)
    assert ranked.fitted and ranked.policy in {"uplift", "risk"} and ranked.run_id
    assert np.isfinite(ranked.qini_uplift) and np.isfinite(ranked.qini_risk)

    without = deploy(prepared, Effect(0.0, 0.0, 0.0, 0.9), workdir / "none")
    assert without.true_itt == 0.0 and without.prevented == 0
    d = without.outcomes.itt.difference
    assert d.low <= 0 <= d.high
