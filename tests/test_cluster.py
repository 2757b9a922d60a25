"""The Dask path against the in-process one, on a real two-process LocalCluster.

The log comes as three daily-export-like files in three formats, so customers' contacts start in one
file and continue in another: labels, history and scores must still come out exactly as in-process.
"""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from predictor.compute.cluster import (
    agent_history,
    as_of,
    by_customer,
    connect,
    features,
    labels,
    read_partitioned,
    score_log,
)
from predictor.config import PACKAGE_DATA, ComputeConfig, LabelConfig
from predictor.contacts.labels import data_end, derive
from predictor.contacts.schema import read_log, validate, write_table
from predictor.contacts.store import ContactStore
from predictor.features.build import build
from predictor.features.embed import Embedder

pytestmark = pytest.mark.slow
CLUSTER = ComputeConfig(local_cluster=2, partitions=4)


@pytest.fixture(scope="module")
def client():
    with connect(CLUSTER) as client:
        yield client


@pytest.fixture(scope="module")
def exports(train_log, tmp_path_factory: pytest.TempPathFactory) -> Path:
    folder = tmp_path_factory.mktemp("exports")
    contacts = train_log.contacts.sort_values("opened_at", kind="stable").reset_index(drop=True)
    for number, (part, suffix) in enumerate(
        zip(np.array_split(np.arange(len(contacts)), 3), (".csv", ".parquet", ".jsonl"), strict=True)
    ):
        write_table(contacts.iloc[part], folder / f"export-{number}{suffix}")
    # One broken row in the first file: counted and reported, never dropped silently.
    with (folder / "export-0.csv").open("a") as handle:
        handle.write("BROKEN-1,,2026-03-02T09:00:00Z,2026-03-02T09:10:00Z,chat,refund,hi,A1,600,0,0,consumer,\n")
    return folder


@pytest.fixture(scope="module")
def local(train_log) -> pd.DataFrame:
    return validate(train_log.contacts).contacts.reset_index(drop=True)


def by_id(frame: pd.DataFrame) -> pd.DataFrame:
    return frame.sort_values("contact_id").reset_index(drop=True)


def test_reading_counts_every_row(client, exports: Path, local: pd.DataFrame) -> None:
    log = read_partitioned(exports)
    assert log.contacts.npartitions == 3
    assert log.n_input == len(local) + 1
    assert log.contacts.map_partitions(len).sum().compute() == len(local)
    assert list(log.rejections["contact_id"].unique()) == ["BROKEN-1"]
    assert set(log.rejections["field"]) == {"customer_id"}


def test_labels_and_features_equal_the_local_path(client, exports: Path, local: pd.DataFrame, settings) -> None:
    customers = by_customer(read_partitioned(exports).contacts, CLUSTER.partitions).persist()
    end = as_of(customers)
    config = LabelConfig()

    expected_labels = derive(local, config)
    label_end = data_end(customers[["opened_at", "closed_at"]].compute(), config).at
    got_labels = labels(customers, config, label_end).compute()
    pd.testing.assert_frame_equal(by_id(got_labels), by_id(expected_labels), check_exact=True, check_dtype=False)

    agents = agent_history(customers, config, end)
    got = features(customers, agents, config, end, settings.embedding).compute()
    expected = build(local, embedder=Embedder(settings.embedding), labels=config).frame
    expected = expected.assign(contact_id=local["contact_id"].to_numpy())
    pd.testing.assert_frame_equal(by_id(got), by_id(expected), check_exact=True, check_dtype=False)

    # The point of the customer shuffle: customers whose contacts start in one file and go on in another.
    files_of = (
        pd.concat([read_log(path)[["customer_id"]].assign(file=path.name) for path in sorted(exports.iterdir())])
        .groupby("customer_id")["file"]
        .nunique()
    )
    spanning = set(files_of[files_of > 1].index)
    assert len(spanning) > 50
    assert expected_labels[expected_labels["customer_id"].isin(spanning)]["is_repeat"].astype(float).sum() > 0


def test_batch_scores_equal_the_local_path(client, trained, exports: Path, tmp_path: Path) -> None:
    result, contacts = trained
    model = result.model
    store = f"sqlite:///{tmp_path / 'contacts.db'}"
    summary = score_log(exports, model, tmp_path / "predictions.parquet", CLUSTER, store_url=store)
    assert summary.workers == 2 and summary.scored == len(contacts) and summary.duplicates == 0
    assert ContactStore(store).count() == len(contacts)  # both workers wrote their partitions
    assert summary.n_input == len(contacts) + 1 and len(summary.rejections) == 1
    got = by_id(pd.read_parquet(tmp_path / "predictions.parquet"))
    expected = by_id(model.predict(contacts.reset_index(drop=True), history=contacts))
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, check_dtype=False)


def test_score_command_on_a_local_cluster(trained, exports: Path, settings, workdir: Path, tmp_path: Path) -> None:
    from predictor.registry.tracking import log_and_register

    result, contacts = trained
    registry = settings.registry.model_copy(
        update={"tracking_uri": f"sqlite:///{workdir / 'cluster-mlflow.db'}", "model_name": "cluster-test"}
    )
    log_and_register(result, settings.model_copy(update={"registry": registry}), contacts)
    env = {
        **os.environ,
        "PREDICTOR_REGISTRY__TRACKING_URI": registry.tracking_uri,
        "PREDICTOR_REGISTRY__ARTIFACT_ROOT": str(registry.artifact_root),
        "PREDICTOR_REGISTRY__MODEL_NAME": registry.model_name,
        "PREDICTOR_EMBEDDING__CACHE_DIR": str(settings.embedding.cache_dir),
    }
    out = tmp_path / "scored"
    predictor = str(Path(sys.executable).parent / "predictor")
    command = [predictor, "score", str(exports), "--out", str(out), "--local-cluster", "2"]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    assert f"scored {len(contacts):,} of {len(contacts) + 1:,} contacts" in done.stdout
    assert f"1 of {len(contacts) + 1:,} rows rejected" in done.stdout and "customer_id" in done.stdout
    assert len(pd.read_parquet(out)) == len(contacts)


def test_score_in_process_counts_and_scores_the_same(trained, exports: Path, tmp_path: Path) -> None:
    result, contacts = trained
    summary = score_log(exports, result.model, tmp_path / "local.parquet", ComputeConfig())
    assert summary.workers == 0 and summary.scored == len(contacts) and summary.n_input == len(contacts) + 1
    assert summary.rejections["contact_id"].tolist() == ["BROKEN-1"]
    got = by_id(pd.read_parquet(tmp_path / "local.parquet"))
    expected = by_id(result.model.predict(contacts.reset_index(drop=True), history=contacts))
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12, check_dtype=False)


# -- training ------------------------------------------------------------------------------------------
@pytest.fixture(scope="module")
def training_exports(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, pd.DataFrame]:
    """A log big enough that two fits of the same booster agree to 0.01 AUC (a 950-contact test slice),
    as three export files that customers' contacts run across."""
    from predictor.contacts.simulate import SimulatorConfig, simulate

    contacts = simulate(SimulatorConfig(n_contacts=6000, seed=21, days=180)).contacts
    contacts = contacts.sort_values("opened_at", kind="stable").reset_index(drop=True)
    folder = tmp_path_factory.mktemp("training-exports")
    for number, part in enumerate(np.array_split(np.arange(len(contacts)), 3)):
        write_table(contacts.iloc[part], folder / f"export-{number}.parquet")
    return folder, validate(contacts).contacts.reset_index(drop=True)


def test_training_on_the_cluster_matches_the_local_path(client, training_exports, settings, tmp_path: Path) -> None:
    from predictor.registry.tracking import log_and_register
    from predictor.training import cluster_train
    from predictor.training.train import fit

    folder, contacts = training_exports
    local = fit(contacts, settings, ablation=False)
    fitted = cluster_train.fit(folder, settings.model_copy(update={"compute": CLUSTER}), client)
    result = fitted.result

    # The same slices, from the same labels: split points, counts and the very test contacts.
    assert result.split.counts == local.split.counts
    assert result.split.boundaries == local.split.boundaries
    assert set(result.test_predictions["contact_id"]) == set(contacts["contact_id"].iloc[local.split.test])
    # Baselines that involve no distributed booster come out the same to the last digit.
    for name in ("issue base rate", "tf-idf + logistic regression"):
        assert result.metrics.loc[name, "roc_auc"] == pytest.approx(local.metrics.loc[name, "roc_auc"], abs=1e-12)
    # The model itself: lightgbm.dask's data-parallel trees are not bit-identical to one machine's.
    assert abs(result.metrics.loc["model", "roc_auc"] - local.metrics.loc["model", "roc_auc"]) <= 0.01
    assert result.metrics.loc["model", "ece"] <= local.metrics.loc["model", "ece"] + 0.02
    assert abs(result.next_issue_metrics["top3_accuracy"] - local.next_issue_metrics["top3_accuracy"]) <= 0.05
    assert result.params["compute"] == "dask" and result.params["dask_workers"] == 2
    # One fingerprint of the same contacts, whatever their partitioning, order or file format.
    assert result.data_fingerprint == local.data_fingerprint
    assert fitted.n_input == len(contacts) and fitted.rejections.empty
    # Everything a plan is mined from: every contact whose window closed.
    assert len(fitted.labelled) == int(derive(contacts)["window_complete"].sum())

    # The gate scores the champion where the log lives, and agrees with the evaluation's own scores.
    registry = settings.registry.model_copy(
        update={"tracking_uri": f"sqlite:///{tmp_path / 'mlflow.db'}", "model_name": "cluster-train"}
    )
    on_registry = settings.model_copy(update={"registry": registry})
    first = log_and_register(result, on_registry, fitted.example, score_test=fitted.score_test)
    second = log_and_register(result, on_registry, fitted.example, score_test=fitted.score_test)
    assert first.promoted and second.promoted
    auc = f"AUC {result.metrics.loc['model', 'roc_auc']:.4f}"
    assert f"challenger {auc}" in second.reason and f"champion v{first.version} {auc}" in second.reason


def test_train_command_on_a_local_cluster(exports: Path, settings, tmp_path: Path) -> None:
    env = {
        **os.environ,
        "PREDICTOR_REGISTRY__TRACKING_URI": f"sqlite:///{tmp_path / 'mlflow.db'}",
        "PREDICTOR_REGISTRY__ARTIFACT_ROOT": str(tmp_path / "artifacts"),
        "PREDICTOR_EMBEDDING__CACHE_DIR": str(settings.embedding.cache_dir),
        "PREDICTOR_SERVICE__PLAN_PATH": str(tmp_path / "plan.yaml"),
        "PREDICTOR_SERVICE__SCRIPTS_PATH": str(PACKAGE_DATA / "followup_scripts.yaml"),
    }
    predictor = str(Path(sys.executable).parent / "predictor")
    command = [predictor, "train", str(exports), "--local-cluster", "2", "--plots-dir", str(tmp_path / "plots")]
    done = subprocess.run(command, capture_output=True, text=True, env=env, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    out = " ".join(done.stdout.split())  # rich wraps long lines
    assert "trained on 2 Dask workers" in out and "promoted: first champion" in out
    assert "rows rejected" in out and "customer_id" in out  # the broken row is reported, not dropped silently
    assert (tmp_path / "plots" / "roc_pr.png").exists()
    # The plan is stored with the registered version (issue #16), not written where the service reads files.
    from predictor.config import RegistryConfig
    from predictor.registry.tracking import local_bundle, version_plan

    registry = RegistryConfig(
        tracking_uri=env["PREDICTOR_REGISTRY__TRACKING_URI"], artifact_root=tmp_path / "artifacts"
    )
    bundle, _ = local_bundle(registry)
    assert version_plan(bundle) is not None and not (tmp_path / "plan.yaml").exists()


def test_a_fit_lightgbm_dask_stops_on_its_split_check_is_done_in_this_process(
    client, settings, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    """lightgbm.dask can stop on its own split check when workers bin their few rows differently (seen in CI
    on the next-issue model, which learns from repeats only): the model is then fitted on the chosen rows in
    this process, with a warning; any other LightGBM error still stops training."""
    import dask.dataframe as dd
    import lightgbm
    from lightgbm.basic import LightGBMError

    from predictor.compute.base import LABEL, Booster, Rows, Target
    from predictor.compute.dask import DaskBackend

    rng = np.random.default_rng(0)
    table = pd.DataFrame({"x": rng.normal(size=400), "z": rng.normal(size=400)})
    table[LABEL + "is_repeat"] = (table["x"] + rng.normal(scale=0.5, size=400) > 0).astype(float)
    table["closed_us"] = np.arange(400)
    backend = DaskBackend(client, None, None, pd.Timestamp("2026-01-01", tz="UTC"), settings)
    backend.frame = dd.from_pandas(table, npartitions=4)
    booster = Booster("classifier", {"n_estimators": 20, "random_state": 0})
    target = Target("is_repeat", integer=True)
    chosen = Rows(None, closed_before_us=300)

    def stops(message: str):
        def fit(self, *args, **kwargs):
            raise LightGBMError(message)

        return fit

    check = "Check failed: (best_split_info.left_count) > (0) at serial_tree_learner.cpp, line 860 ."
    monkeypatch.setattr(lightgbm.DaskLGBMClassifier, "fit", stops(check))
    model = backend.fit(booster, chosen, ["x", "z"], target)
    first = table.iloc[:300]
    expected = lightgbm.LGBMClassifier(verbose=-1, **booster.params)
    expected.fit(first[["x", "z"]], first[LABEL + "is_repeat"].astype(int))
    np.testing.assert_array_equal(model.predict_proba(table[["x", "z"]]), expected.predict_proba(table[["x", "z"]]))
    assert "fitting this classifier on the 300 chosen rows in this process" in caplog.text

    monkeypatch.setattr(lightgbm.DaskLGBMClassifier, "fit", stops("Cannot connect to the other workers"))
    with pytest.raises(LightGBMError, match="Cannot connect"):
        backend.fit(booster, chosen, ["x", "z"], target)
