"""Training on a Dask cluster, from a log that never leaves the workers: read it, then ``train.fit_on``.

The flow is ``train.fit``'s, run on ``compute.dask.DaskBackend``; only reading differs: the export files
are validated on the workers and shuffled by customer (``cluster.by_customer``), and an agent's rate
meets its contacts through the agent shuffle (``cluster.agent_history``).
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictor.compute.base import LABEL, LABEL_COLUMNS, Rows, labels_of
from predictor.compute.cluster import agent_history, as_of, by_customer, partitions_for, read_partitioned
from predictor.compute.dask import DaskBackend
from predictor.config import Settings
from predictor.logs import quiet_lightgbm
from predictor.model.fitted import RepeatContactModel
from predictor.training.train import TrainingResult, fit_on, load_hyperparams

log = logging.getLogger(__name__)


@dataclass
class ClusterFit:
    result: TrainingResult
    labelled: pd.DataFrame  # the narrow labels of every complete window: what the plan is mined from
    score_test: Callable[[RepeatContactModel], np.ndarray]  # any model's repeat probability on the test slice
    example: pd.DataFrame  # a few raw contacts (the MLflow input example)
    n_input: int  # rows read
    rejections: pd.DataFrame  # rows that failed validation, with their file and reason


def fit(
    pattern: str | Path,
    settings: Settings,
    client: Any,
    *,
    use_text: bool = True,
    oracle: pd.DataFrame | None = None,
    plots_dir: Path | None = None,
    hyperparams: dict[str, Any] | None = None,
    mapping_path: str | Path | None = None,
    assume_timezone: str | None = None,
    stage: Callable[[str], None] = lambda _: None,
) -> ClusterFit:
    """``train.fit`` on a Dask cluster, from a log (file, directory or glob) that never leaves the workers."""
    import dask
    from distributed import wait

    hp = hyperparams or load_hyperparams(settings.hyperparams_path)
    compute = settings.compute
    quiet_lightgbm()
    client.run(quiet_lightgbm)  # on every worker: they train the boosters
    with dask.config.set({"dataframe.shuffle.method": compute.shuffle}):
        stage("reading")
        partitioned = read_partitioned(pattern, mapping_path, assume_timezone)
        if len(partitioned.rejections):
            log.warning("%d rows rejected by validation (see the rejections)", len(partitioned.rejections))
        partitions = partitions_for(client, compute, partitioned.n_input)
        customers = by_customer(partitioned.contacts, partitions, compute.shuffle).persist()
        wait(customers)
        end = as_of(customers)
        agents = agent_history(customers, settings.labels, end, compute.shuffle).persist()
        backend = DaskBackend(client, customers, agents, end, settings)
        result = fit_on(
            backend, settings, use_text=use_text, ablation=False, oracle=oracle, plots_dir=plots_dir,
            hyperparams=hp, stage=stage,
        )  # fmt: skip
        result.timings["text_heads.sample"] = round(backend.sample_seconds, 3)
        columns = [LABEL + c for c in LABEL_COLUMNS]
        plan_input = labels_of(backend.collect(Rows(None, known_only=True), columns))
        test_ids = result.test_predictions["contact_id"].to_numpy()
        return ClusterFit(
            result=result,
            labelled=plan_input,
            score_test=lambda model: backend.score_test(model, test_ids),
            example=customers.head(5),
            n_input=partitioned.n_input,
            rejections=partitioned.rejections,
        )
