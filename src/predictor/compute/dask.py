"""Training on a Dask cluster: the design table as customer partitions, boosters by ``lightgbm.dask``.

The partitions hold whole customers (``cluster.by_customer``); an agent's rate arrives from the agent
shuffle (``cluster.agent_history``). Every partition runs the local stage functions (``labels.derive``,
``split.slice_codes``, ``features.build``), so its rows of the design table are the rows the local backend
builds for the same contacts. What stays on the workers: the log, the embeddings (only the text heads'
scores are kept, not the 600-odd embedding columns) and the boosters' training rows. What comes here: the
open/close times, the text heads' training sample (at most ``ComputeConfig.text_head_rows`` rows, chosen
by a hash of the contact id), and the small slices that calibration, early stopping and evaluation read.
"""

from __future__ import annotations

import logging
import time
from typing import Any

import numpy as np
import pandas as pd

from predictor.compute.base import (
    KEYS,
    LABEL,
    Booster,
    Rows,
    Slicing,
    Target,
    TextSample,
    design_frame,
    design_rows,
    in_sample,
    keyed,
    text_scores,
)
from predictor.compute.cluster import _agents_for, _aligned_agents, _one_contact, _workers, score, worker_embedder
from predictor.config import Settings
from predictor.contacts.labels import derive
from predictor.contacts.schema import fingerprint, row_hash_sum
from predictor.features.build import CLOSING_PREFIX, EMBEDDING_PREFIX, build
from predictor.features.embed import Embedder
from predictor.model import split as splits
from predictor.model.fitted import RepeatContactModel, TextHeads, TextInputs, TfidfBaseline

log = logging.getLogger(__name__)
# LightGBM's checks that data-parallel training trips when workers bin their parts differently.
DISTRIBUTED_SPLIT_CHECKS = ("best_split_info.left_count", "best_split_info.right_count")


class DaskBackend:
    """``customers``: validated contacts shuffled by customer (persisted); ``agents``: their agent features."""

    name = "dask"

    def __init__(self, client: Any, customers: Any, agents: Any, end: pd.Timestamp, settings: Settings) -> None:
        self.client = client
        self.customers = customers
        self.agents = agents
        self.end = end  # the last close: the features' horizon
        self.settings = settings
        self.table: Any = None
        self.scores: Any = None
        self.frame: Any = None
        self.feature_columns: list[str] = []
        self.label_end: pd.Timestamp | None = None
        self.boundaries: tuple[pd.Timestamp, pd.Timestamp] | None = None
        self.model_id: str | None = None
        self.sample_seconds = 0.0

    @property
    def workers(self) -> int:
        return _workers(self.client)

    # -- labels and features -------------------------------------------------------------------------
    def languages(self) -> pd.Series:
        if "language" not in self.customers.columns:
            return pd.Series(dtype="int64")
        with_text = self.customers["transcript"].str.strip() != ""
        return self.customers["language"][with_text].value_counts().compute()

    def times(self) -> pd.DataFrame:
        # Two 8-byte columns come here: the data end and the slices come from them alone.
        return self.customers[["opened_at", "closed_at"]].compute().reset_index(drop=True)

    def slice_summary(self, boundaries: tuple[pd.Timestamp, pd.Timestamp], label_end: pd.Timestamp) -> pd.DataFrame:
        meta = splits.slice_summary(derive(_one_contact(), self.settings.labels, label_end), boundaries, self.settings)
        parts = self.customers.map_partitions(_summary_partition, self.settings, boundaries, label_end, meta=meta)
        return parts.compute()

    def build(self, slicing: Slicing, prior: float, use_text: bool) -> list[str]:
        from distributed import wait

        boundaries, label_end, mode = slicing.boundaries, slicing.label_end, slicing.mode
        # ``use_text`` is not needed here: text is read later, by text_sample and add_text.
        self.label_end, self.boundaries = label_end, boundaries
        args = (self.settings, self.end, boundaries, label_end, mode, prior)
        meta = _table_partition(_one_contact(), _agents_for(_one_contact()), *args)
        self.table = self.customers.map_partitions(
            _table_partition, self.agents, *args, meta=meta, align_dataframes=False
        ).persist()
        wait(self.table)
        self.feature_columns = [c for c in meta.columns if not c.startswith(LABEL) and c not in KEYS]
        self.frame = self.table
        return list(self.feature_columns)

    def has_text(self) -> bool:
        return bool(self.table["has_transcript"].max().compute() > 0)

    def embedding_model(self) -> str | None:
        return self.model_id

    def level_counts(self, rows: Rows, columns: list[str]) -> dict[str, pd.Series]:
        import dask

        chosen = self.table.map_partitions(_select, rows, meta=self.table._meta)
        found = dask.compute(*[chosen[c].astype(str).value_counts() for c in columns])
        return dict(zip(columns, found, strict=True))

    def issue_codes(self) -> list[str]:
        return sorted(self.customers["issue"].unique().compute().tolist())

    # -- text ----------------------------------------------------------------------------------------
    def text_sample(self, rows: Rows, fraction: float, truncation: str | None = None) -> TextSample:
        import dask

        if truncation is not None:
            raise NotImplementedError("the truncation ablation re-embeds the whole log: it runs in-process only")
        # Loaded here first: a derived model (model2vec's distillation, the ONNX export) is then built once,
        # with this process's threads, into the cache folder the workers share, not by every worker at once
        # (on the 20k log: 10 s instead of 75). Workers without that folder build their own.
        local = Embedder(self.settings.embedding)
        log.info("embedding model %s: %d dimensions", local.model_id, local.dimension)
        self.model_id = local.model_id
        del local
        parts = [
            dask.delayed(_sample_partition)(part, agent_part, table_part, self.settings, self.end, rows, fraction)
            for part, agent_part, table_part in zip(
                self.customers.to_delayed(), self.agents.to_delayed(), self.table.to_delayed(), strict=True
            )
        ]
        started = time.perf_counter()
        sample = pd.concat(dask.compute(*parts), ignore_index=True)
        self.sample_seconds = time.perf_counter() - started
        log.info("text heads: embedded and collected %d rows in %.1f s", len(sample), self.sample_seconds)
        # One order whatever the partitioning (the folds are by contact id: this only fixes float sums).
        sample = sample.sort_values(["closed_us", "contact_id"], kind="stable").reset_index(drop=True)
        views = {
            view: [c for c in sample.columns if c.startswith(prefix)]
            for view, prefix in (("whole", EMBEDDING_PREFIX), ("closing", CLOSING_PREFIX))
        }
        inputs = TextInputs(
            embeddings={view: sample[columns].to_numpy() for view, columns in views.items() if columns},
            texts=sample["redacted"].tolist(),
            has_text=sample["has_transcript"].to_numpy() > 0,
        )
        labels = pd.DataFrame(
            {
                "is_repeat": sample[LABEL + "is_repeat"].astype("boolean").to_numpy(),
                "repeat_type": sample[LABEL + "repeat_type"].to_numpy(),
            }
        )
        return TextSample(inputs, labels, sample["contact_id"].to_numpy(dtype=str))

    def add_text(self, heads: TextHeads | None, oof: pd.DataFrame, tfidf: TfidfBaseline | None) -> None:
        shared = self.client.scatter([heads, oof, tfidf], broadcast=True)
        meta = text_scores(heads, _empty_inputs(), np.array([], dtype=str), None if oof is None else oof.head(0), tfidf)
        self.scores = self.customers.map_partitions(
            _text_partition, self.agents, self.settings, self.end, *shared, meta=meta, align_dataframes=False
        )

    def design(self, categories: dict[str, list[str]]) -> None:
        from distributed import wait

        args = (self.feature_columns, categories)
        meta = design_frame(self.table._meta, None if self.scores is None else self.scores._meta, *args)
        self.frame = self.table.map_partitions(
            design_frame, self.scores, *args, meta=meta, align_dataframes=False
        ).persist()
        wait(self.frame)
        self.table = self.scores = None  # the design holds what the rest needs

    # -- fitting and collecting -----------------------------------------------------------------------
    def fit(
        self, booster: Booster, rows: Rows, columns: list[str], target: Target, stop: tuple[Rows, int] | None = None
    ) -> Any:
        """``stop`` is not used: lightgbm.dask scores a validation set only where its parts live.

        lightgbm.dask can stop on its own consistency check ("Check failed: (best_split_info.left_count) >
        (0)", LightGBM issues #4026 and #4739): each worker bins its own part, and with few rows on a worker
        (a next-issue model learns from repeats only) the workers can disagree on a split. Then the model is
        fitted on the chosen rows in this process, as the local backend fits it, and the log says so."""
        from lightgbm import DaskLGBMClassifier, DaskLGBMRegressor, LGBMClassifier, LGBMRegressor
        from lightgbm.basic import LightGBMError

        chosen = self.frame.map_partitions(_select, rows, meta=self.frame._meta)
        y_meta = pd.Series(target.values(self.frame._meta))
        y = chosen.map_partitions(_target, target, meta=y_meta)
        classifier = booster.kind == "classifier"
        model = (DaskLGBMClassifier if classifier else DaskLGBMRegressor)(
            client=self.client, verbose=-1, **booster.params
        )
        try:
            return model.fit(chosen[columns], y).to_local()
        except LightGBMError as error:
            if not any(check in str(error) for check in DISTRIBUTED_SPLIT_CHECKS):
                raise
            X_local, y_local = self.client.compute([chosen[columns], y], sync=True)
            log.warning(
                "lightgbm.dask stopped on its split check across workers (%s); fitting this %s on the %d chosen "
                "rows in this process instead", str(error).split(" at ")[0], booster.kind, len(X_local),
            )  # fmt: skip
            local = (LGBMClassifier if classifier else LGBMRegressor)(verbose=-1, **booster.params)
            return local.fit(X_local, y_local)

    def collect(self, rows: Rows, columns: list[str] | None = None) -> pd.DataFrame:
        chosen = self.frame.map_partitions(_select, rows, meta=self.frame._meta)
        if columns is not None:
            chosen = chosen[keyed(columns)]
        local = chosen.compute()
        # One order whatever the partitioning.
        return local.sort_values(["closed_us", "contact_id"], kind="stable").reset_index(drop=True)

    def positions(self, code: int) -> np.ndarray:
        return np.array([], dtype=int)  # positions mean nothing on a partitioned log; counts do

    def params(self) -> dict[str, Any]:
        return {"compute": "dask", "dask_workers": self.workers, "dask_partitions": self.customers.npartitions}

    def fingerprint(self) -> str:
        sums = self.customers.map_partitions(
            lambda part: pd.Series([row_hash_sum(part)], dtype=object), meta=(None, object)
        ).compute()
        return fingerprint(total=sum(int(s) for s in sums))

    def score_test(self, model: RepeatContactModel, contact_ids: np.ndarray) -> np.ndarray:
        shared_model = self.client.scatter(model, broadcast=True)
        selector = _TestRows(self.settings, self.label_end, self.boundaries)
        found = score(self.customers, self.agents, shared_model, self.end, select=selector).compute()
        return found.set_index("contact_id").loc[contact_ids, "repeat_probability"].to_numpy()


# -- per partition -------------------------------------------------------------------------------------
def _select(part: pd.DataFrame, rows: Rows) -> pd.DataFrame:
    return part[rows.mask(part)]


def _target(part: pd.DataFrame, target: Target) -> pd.Series:
    return pd.Series(target.values(part), index=part.index)


def _summary_partition(
    part: pd.DataFrame, settings: Settings, boundaries: tuple[pd.Timestamp, pd.Timestamp], label_end: pd.Timestamp
) -> pd.DataFrame:
    return splits.slice_summary(derive(part.reset_index(drop=True), settings.labels, label_end), boundaries, settings)


def _table_partition(
    part: pd.DataFrame,
    agents: pd.DataFrame,
    settings: Settings,
    end: pd.Timestamp,
    boundaries: tuple[pd.Timestamp, pd.Timestamp],
    label_end: pd.Timestamp,
    mode: str,
    customer_prior: float,
) -> pd.DataFrame:
    """One customer partition's design rows without text (``end``: the features' horizon)."""
    part = part.reset_index(drop=True)
    labelled = derive(part, settings.labels, label_end)
    found = build(
        part, labels=settings.labels, as_of=end, agent_features=_aligned_agents(part, agents),
        customer_prior=customer_prior,
    )  # fmt: skip
    return design_rows(part, labelled, found.frame, boundaries, settings, mode)


def _sample_partition(
    part: pd.DataFrame,
    agents: pd.DataFrame,
    table: pd.DataFrame,
    settings: Settings,
    end: pd.Timestamp,
    rows: Rows,
    fraction: float,
) -> pd.DataFrame:
    """The text heads' training rows of one partition: their embeddings, redacted words and labels."""
    part = part.reset_index(drop=True)
    chosen_rows = np.flatnonzero(rows.mask(table) & in_sample(table["contact_id"].to_numpy(), fraction))
    chosen = part.iloc[chosen_rows].reset_index(drop=True)
    found = build(
        chosen,
        part,
        embedder=worker_embedder(settings.embedding),
        labels=settings.labels,
        as_of=end,
        agent_features=_aligned_agents(chosen, agents),
    )
    columns = [c for view in found.views.values() for c in view]
    picked = table.iloc[chosen_rows].reset_index(drop=True)
    return pd.concat(
        [
            picked[["contact_id", "closed_us", LABEL + "is_repeat", LABEL + "repeat_type"]],
            pd.DataFrame({"has_transcript": found.frame["has_transcript"].to_numpy(), "redacted": found.transcripts}),
            found.frame[columns].reset_index(drop=True),
        ],
        axis=1,
    )


def _text_partition(
    part: pd.DataFrame,
    agents: pd.DataFrame,
    settings: Settings,
    end: pd.Timestamp,
    heads: TextHeads,
    oof: pd.DataFrame,
    tfidf: TfidfBaseline | None,
) -> pd.DataFrame:
    part = part.reset_index(drop=True)
    found = build(
        part,
        embedder=worker_embedder(settings.embedding),
        labels=settings.labels,
        as_of=end,
        agent_features=_aligned_agents(part, agents),
    )
    ids = part["contact_id"].astype(str).to_numpy()
    return text_scores(heads, TextInputs.from_features(found), ids, oof, tfidf)


def _empty_inputs() -> TextInputs:
    return TextInputs(embeddings={}, texts=[], has_text=np.array([], dtype=bool))


class _TestRows:
    """Selects a partition's test-slice rows, by the same labels and boundaries as training."""

    def __init__(
        self, settings: Settings, label_end: pd.Timestamp, boundaries: tuple[pd.Timestamp, pd.Timestamp]
    ) -> None:
        self.settings, self.label_end, self.boundaries = settings, label_end, boundaries

    def __call__(self, part: pd.DataFrame) -> np.ndarray:
        labelled = derive(part, self.settings.labels, self.label_end)
        return splits.slice_codes(labelled, self.boundaries, self.settings) == splits.TEST
