"""Training end to end on a small simulated log: split, models, baselines, evaluation, registry."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictor.contacts.labels import derive
from predictor.registry.tracking import CHAMPION, connect, local_bundle, log_and_register, promote, pyfunc_input
from predictor.training.train import fit, load_hyperparams, time_split


def test_time_split_is_ordered_embargoed_and_excludes_censored(trained, settings) -> None:
    _, contacts = trained
    labelled = derive(contacts, settings.labels)
    split = time_split(labelled, settings)
    closed = labelled["closed_at"]
    window = pd.Timedelta(days=settings.labels.repeat_window_days)
    assert closed.iloc[split.train].max() + window <= closed.iloc[split.calibration].min()
    assert closed.iloc[split.calibration].max() + window <= closed.iloc[split.test].min()
    used = np.r_[split.train, split.calibration, split.test]
    assert not labelled["censored"].iloc[used].any()
    # Whole windows only: a contact near the end with a repeat already seen is still left out.
    assert labelled["window_complete"].iloc[used].all()
    counts = split.counts
    assert counts["train"] + counts["calibration"] + counts["test"] + counts["window_open"] + counts[
        "embargoed"
    ] == len(contacts)
    assert counts["window_open"] > counts["censored"] > 0


def test_models_and_baselines_are_evaluated(trained) -> None:
    result, _ = trained
    metrics = result.metrics
    expected = {"model", "issue base rate", "metadata + history (no text)", "tf-idf + logistic regression"}
    assert expected | {"oracle (simulator truth)"} <= set(metrics.index)
    assert metrics[["roc_auc", "pr_auc", "brier", "ece", "recall_top10", "recall_top20"]].notna().all().all()
    assert metrics.loc["model", "roc_auc"] > 0.55
    assert metrics.loc["model", "roc_auc"] > metrics.loc["issue base rate", "roc_auc"]
    assert 0 <= result.next_issue_metrics["top3_accuracy"] <= 1
    assert result.next_issue_metrics["top3_accuracy"] >= result.next_issue_metrics["top1_accuracy"]
    assert 0.6 < result.timing_metrics["p90_coverage"] <= 1
    assert set(result.plots) == {"roc_pr", "reliability", "gain", "next_issue_confusion"}
    assert all(p.stat().st_size > 5_000 for p in result.plots.values())
    assert result.params["uses_text"] is True


def test_predictions_have_the_promised_shape(trained) -> None:
    result, contacts = trained
    scored = result.model.predict(contacts.tail(5), contacts)
    assert list(scored["contact_id"]) == list(contacts["contact_id"].tail(5))
    assert scored["repeat_probability"].between(0, 1).all()
    assert (scored["next_issue_1_probability"] >= scored["next_issue_2_probability"]).all()
    assert (scored["hours_to_repeat_p90"] >= scored["hours_to_repeat_median"]).all()
    reasons = result.model.reasons(result.model.model_input(result.model.features(contacts.tail(2), contacts)))
    assert len(reasons) == 2 and len(reasons[0]) == 3
    assert all(r["description"] for r in reasons[0])


def test_training_without_any_transcript_drops_text_features(train_log, settings) -> None:
    from predictor.contacts.schema import validate

    contacts = validate(train_log.contacts.assign(transcript="")).contacts
    result = fit(contacts, settings, ablation=False)
    assert result.params["uses_text"] is False
    assert not result.model.uses_text
    assert "tf-idf + logistic regression" not in result.metrics.index
    assert not any(c.startswith("emb_") for c in result.model.feature_columns)


def test_registry_gate_and_fresh_process_load(trained, train_log, settings, workdir) -> None:
    result, contacts = trained
    first = log_and_register(result, settings, contacts)
    assert first.promoted and "first champion" in first.reason

    # A deliberately worse challenger: one stump, no text.
    weak = load_hyperparams()
    weak["repeat"] = {"n_estimators": 1, "num_leaves": 2, "learning_rate": 0.1}
    worse = fit(contacts, settings, use_text=False, ablation=False, hyperparams=weak)
    assert (
        worse.metrics.loc["model", "roc_auc"] < result.metrics.loc["model", "roc_auc"] - settings.registry.auc_tolerance
    )
    second = log_and_register(worse, settings, contacts)
    assert not second.promoted
    assert "not promoted" in second.reason and "AUC" in second.reason
    client = connect(settings.registry)
    name = settings.registry.model_name
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == first.version
    assert client.get_model_version(name, second.version).tags["gate"] == "rejected"

    # The champion, loaded in a fresh process, gives the probabilities seen in training.
    test = result.test_contacts.head(40)
    payload = workdir / "pyfunc_input.parquet"
    pyfunc_input(test, contacts).to_parquet(payload)
    script = f"""
import json, mlflow, pandas as pd
mlflow.set_tracking_uri({settings.registry.tracking_uri!r})
model = mlflow.pyfunc.load_model("models:/{name}@champion")
out = model.predict(pd.read_parquet({str(payload)!r}))
print(json.dumps(dict(zip(out.contact_id, out.repeat_probability))))
"""
    env = {"PREDICTOR_EMBEDDING__CACHE_DIR": str(settings.embedding.cache_dir), "HF_HUB_OFFLINE": "1", "PATH": ""}
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True, env=env, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    fresh = json.loads(done.stdout.strip().splitlines()[-1])
    expected = result.test_predictions.set_index("contact_id")["repeat_probability"]
    for contact_id, p in fresh.items():
        assert p == pytest.approx(expected[contact_id], abs=1e-6)

    # A service worker, in a fresh process: LightGBM without scikit-learn, the champion's lean copy, the same
    # probabilities; and a version without a lean copy (registered before there was one) still loads, whole.
    from predictor.model.lean import SERVING_FILE

    without = local_bundle(settings.registry, second.version)[0].with_name(SERVING_FILE)
    assert without.exists()
    without.unlink()
    worker = f"""
import json, sys, pandas as pd
from predictor.model import lean
lean.lightgbm_alone()
from predictor.config import get_settings
from predictor.registry.tracking import load_version
settings = get_settings()
model, version, _ = load_version(settings, serving=True)
rows, history = pd.read_pickle({str(workdir / "lean_rows.pkl")!r})
out = model.predict(rows, history)
alone = "sklearn" not in sys.modules
whole, _, _ = load_version(settings, {second.version!r}, serving=True)
kinds = {{"lean": type(model.repeat.booster).__name__, "whole": type(whole.repeat.booster).__name__}}
p = dict(zip(out.contact_id, out.repeat_probability))
print(json.dumps({{"alone": alone, **kinds, "p": p, "rows": len(whole.predict(rows, history))}}))
"""
    pd.to_pickle((test, contacts), workdir / "lean_rows.pkl")
    registry = {"TRACKING_URI": settings.registry.tracking_uri, "MODEL_NAME": name,
                "ARTIFACT_ROOT": str(settings.registry.artifact_root)}  # fmt: skip
    env_worker = {**env, **{f"PREDICTOR_REGISTRY__{k}": v for k, v in registry.items()}}
    done = subprocess.run([sys.executable, "-c", worker], capture_output=True, text=True, env=env_worker, timeout=300)
    assert done.returncode == 0, done.stderr[-3000:]
    seen = json.loads(done.stdout.strip().splitlines()[-1])
    assert seen["alone"] and seen["lean"] == "LeanBooster" and seen["whole"] == "LGBMClassifier"
    assert seen["rows"] == len(test)
    full = result.model.predict(test, contacts).set_index("contact_id")["repeat_probability"]
    for contact_id, p in seen["p"].items():
        assert p == pytest.approx(full[contact_id], abs=1e-12)

    # The scorer reads the registry file without MLflow: the same versions and files as MLflow's answer.
    import mlflow

    for version in (None, second.version):
        bundle, found = local_bundle(settings.registry, version)
        expected_version = first.version if version is None else second.version
        via_mlflow = Path(mlflow.artifacts.download_artifacts(f"models:/{name}/{expected_version}"))
        assert found == expected_version
        assert bundle.read_bytes() == next(via_mlflow.rglob("model.joblib")).read_bytes()
    assert local_bundle(settings.registry.model_copy(update={"model_name": "no-such-model"})) is None

    promote(second.version, settings, reason="test override")
    assert str(client.get_model_version_by_alias(name, CHAMPION).version) == second.version
    assert local_bundle(settings.registry)[1] == second.version


def test_gate_replaces_a_champion_this_code_cannot_score(trained, settings, workdir) -> None:
    import shutil

    result, contacts = trained
    registry = settings.registry.model_copy(
        update={
            "tracking_uri": f"sqlite:///{workdir / 'gate-broken.db'}",
            "artifact_root": workdir / "gate-broken-artifacts",
            "model_name": "gate-broken",
        }
    )
    own = settings.model_copy(update={"registry": registry})
    first = log_and_register(result, own, contacts)
    shutil.rmtree(registry.artifact_root)  # the champion's files are gone (or were pickled by older code)
    second = log_and_register(result, own, contacts)
    assert second.promoted, second.reason
    assert f"champion v{first.version} could not be scored" in second.reason
    assert str(connect(registry).get_model_version_by_alias("gate-broken", CHAMPION).version) == second.version
