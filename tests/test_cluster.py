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

from predictor.cluster import (
    agent_history,
    as_of,
    by_customer,
    connect,
    features,
    labels,
    read_partitioned,
    score_log,
)
from predictor.config import ComputeConfig, LabelConfig
from predictor.embed import Embedder
from predictor.features import build
from predictor.labels import derive
from predictor.schema import read_log, validate, write_table

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
    got_labels = labels(customers, config, end).compute()
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
    summary = score_log(exports, model, tmp_path / "predictions.parquet", CLUSTER)
    assert summary.workers == 2 and summary.scored == len(contacts) and summary.duplicates == 0
    assert summary.n_input == len(contacts) + 1 and len(summary.rejections) == 1
    got = by_id(pd.read_parquet(tmp_path / "predictions.parquet"))
    expected = by_id(model.predict(contacts.reset_index(drop=True), history=contacts))
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-9, check_dtype=False)


def test_score_command_on_a_local_cluster(trained, exports: Path, settings, workdir: Path, tmp_path: Path) -> None:
    from predictor.registry import log_and_register

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
    assert "1 rows rejected" in done.stdout and "customer_id" in done.stdout
    assert len(pd.read_parquet(out)) == len(contacts)


def test_score_in_process_counts_and_scores_the_same(trained, exports: Path, tmp_path: Path) -> None:
    result, contacts = trained
    summary = score_log(exports, result.model, tmp_path / "local.parquet", ComputeConfig())
    assert summary.workers == 0 and summary.scored == len(contacts) and summary.n_input == len(contacts) + 1
    assert summary.rejections["contact_id"].tolist() == ["BROKEN-1"]
    got = by_id(pd.read_parquet(tmp_path / "local.parquet"))
    expected = by_id(result.model.predict(contacts.reset_index(drop=True), history=contacts))
    pd.testing.assert_frame_equal(got, expected, check_exact=False, rtol=1e-12, check_dtype=False)
