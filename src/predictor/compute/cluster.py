"""The same pipeline on a Dask cluster: logs as partitioned frames, labels, features, batch scoring.

Nothing here computes a label or a feature: it maps the local stage functions (``schema.validate``,
``labels.derive``, ``features.build``, the model's ``predict_from_input``) over partitions, so the two
paths cannot drift apart (a test compares them value for value). What the cluster changes is only which
rows meet in a partition:

- labels and customer history follow a customer, so the log is shuffled once by ``customer_id``;
- an agent's repeat rate needs every customer the agent served, so the labels' agent windows and the
  contacts to score meet in a second, much narrower shuffle by ``agent_id``, and the result travels back
  to the customer partitions by the same hash;
- the embedding model is loaded once per worker process, not once per task.

With ``ComputeConfig`` unset everything runs in-process, as before.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictor.config import ComputeConfig, EmbeddingConfig, LabelConfig
from predictor.contacts.labels import derive, epoch_us
from predictor.contacts.schema import REPEATED_IN_LATER_FILE, input_files, load_contacts, load_files, validate
from predictor.features.build import AGENT_COLUMNS, agent_features, agent_windows, build
from predictor.features.embed import Embedder

log = logging.getLogger(__name__)
_QUERY, _WINDOW = "query", "window"


@contextmanager
def connect(config: ComputeConfig) -> Iterator[Any]:
    """A ``distributed.Client`` for the configured cluster (an address, or N local worker processes).

    Yields None when no cluster is configured: callers then take the in-process path.
    """
    if not config.scheduler and not config.local_cluster:
        yield None
        return
    from distributed import Client, LocalCluster

    # Importing distributed sets its own loggers to INFO (every worker start, stop and client): keep what
    # our commands say readable, unless debugging.
    if logging.getLogger().getEffectiveLevel() > logging.DEBUG:
        for name in ("distributed", "tornado"):
            logging.getLogger(name).setLevel(logging.WARNING)

    if config.scheduler:
        with Client(config.scheduler) as client:
            log.info("connected to the Dask scheduler at %s (%d workers)", config.scheduler, _workers(client))
            yield client
        return
    with (
        LocalCluster(
            n_workers=config.local_cluster,
            threads_per_worker=config.threads_per_worker,
            processes=True,
            dashboard_address=":0",  # any free port: two clusters on one machine must not collide
        ) as cluster,
        Client(cluster) as client,
    ):
        log.info("started a local Dask cluster: %d worker processes", config.local_cluster)
        yield client


def _workers(client: Any) -> int:
    return len(client.scheduler_info().get("workers", {}))


def partitions_for(client: Any, config: ComputeConfig, rows: int = 0) -> int:
    """Customer partitions: as configured, else two per worker and at most ``partition_rows`` rows each."""
    if config.partitions:
        return config.partitions
    workers = _workers(client) if client is not None else 1
    return max(2, 2 * workers, -(-rows // config.partition_rows))


# -- reading -------------------------------------------------------------------------------------------
@dataclass
class PartitionedLog:
    """Validated contacts as a Dask DataFrame (one partition per input file), and what was rejected."""

    contacts: Any  # dask.dataframe.DataFrame
    files: list[Path]
    n_input: int
    rejections: pd.DataFrame  # file, row, contact_id, field, reason


def read_partitioned(
    pattern: str | Path | Sequence[str | Path],
    mapping_path: str | Path | None = None,
    assume_timezone: str | None = None,
) -> PartitionedLog:
    """Read and validate each file on the cluster; rejections are gathered (counted, never dropped)."""
    import dask
    import dask.dataframe as dd

    files = input_files(pattern)
    # Each file is read and validated once: the results stay on the workers, and the valid rows, the
    # rejections and the row counts are all taken from them.
    loaded = dask.persist(*[dask.delayed(_load_file, nout=3)(f, mapping_path, assume_timezone) for f in files])
    rejections, counts = dask.compute([part[1] for part in loaded], [part[2] for part in loaded])
    meta = _load_file(files[0], mapping_path, assume_timezone)[0].head(0)
    contacts = dd.from_delayed([part[0] for part in loaded], meta=meta, verify_meta=False)
    frame = pd.concat(rejections, ignore_index=True) if rejections else pd.DataFrame()
    return PartitionedLog(contacts=contacts, files=files, n_input=int(sum(counts)), rejections=frame)


def _load_file(
    path: Path, mapping_path: str | Path | None, assume_timezone: str | None
) -> tuple[pd.DataFrame, pd.DataFrame, int]:
    """One file through the CLI's own entry point; its rejections keep the file's name."""
    result = load_contacts(path, mapping_path, assume_timezone)
    return result.contacts.reset_index(drop=True), result.rejections.assign(file=str(path)), result.n_input


# -- customer partitions: labels and history -----------------------------------------------------------
def by_customer(contacts: Any, partitions: int, method: str = "tasks") -> Any:
    """Every customer's contacts in one partition (one shuffle); duplicate ids across files dropped."""
    shuffled = contacts.shuffle("customer_id", npartitions=partitions, shuffle_method=method)
    return shuffled.map_partitions(
        lambda part: part.drop_duplicates("contact_id").reset_index(drop=True), meta=contacts._meta
    )


def as_of(contacts: Any) -> pd.Timestamp:
    """The end of the whole log: what censoring is judged against in every partition."""
    return pd.Timestamp(contacts["closed_at"].max().compute())


def labels(customers: Any, config: LabelConfig, end: pd.Timestamp) -> Any:
    """``labels.derive`` per customer partition, censored against ``end``: the whole log's ``labels.data_end``."""
    meta = derive(customers._meta, config)
    return customers.map_partitions(derive, config, end, meta=meta)


# -- agent partitions: the agent's repeat rate ---------------------------------------------------------
def agent_history(customers: Any, config: LabelConfig, end: pd.Timestamp, method: str = "tasks") -> Any:
    """``AGENT_COLUMNS`` for every contact, partitioned like ``customers`` (same hash, same count)."""
    partitions = customers.npartitions
    meta = pd.DataFrame(
        {
            "kind": pd.Series(dtype=str),
            "agent_id": pd.Series(dtype=str),
            "customer_id": pd.Series(dtype=str),
            "contact_id": pd.Series(dtype=str),
            "t_us": pd.Series(dtype="int64"),
            "repeat": pd.Series(dtype=float),
        }
    )
    events = customers.map_partitions(_agent_events, config, end, meta=meta)
    by_agent = events.shuffle("agent_id", npartitions=partitions, shuffle_method=method)
    result_meta = pd.DataFrame(
        {"contact_id": pd.Series(dtype=str), "customer_id": pd.Series(dtype=str)}
        | {c: pd.Series(dtype=float) for c in AGENT_COLUMNS}
    )
    rates = by_agent.map_partitions(_agent_partition, meta=result_meta)
    return rates.shuffle("customer_id", npartitions=partitions, shuffle_method=method)


def _agent_events(part: pd.DataFrame, config: LabelConfig, end: pd.Timestamp) -> pd.DataFrame:
    """One frame per customer partition: the contacts to describe, and the label windows they need."""
    windows = agent_windows(part, config, end)
    queries = pd.DataFrame(
        {
            "kind": _QUERY,
            "agent_id": part["agent_id"].astype(str).to_numpy(),
            "customer_id": part["customer_id"].astype(str).to_numpy(),
            "contact_id": part["contact_id"].astype(str).to_numpy(),
            "t_us": epoch_us(part["closed_at"]),
            "repeat": np.nan,
        }
    )
    windows = pd.DataFrame(
        {
            "kind": _WINDOW,
            "agent_id": windows["agent_id"].astype(str).to_numpy(),
            "customer_id": "",
            "contact_id": "",
            "t_us": windows["window_end_us"].to_numpy(dtype=np.int64),
            "repeat": windows["repeat"].to_numpy(dtype=float),
        }
    )
    return pd.concat([queries, windows], ignore_index=True)


def _agent_partition(part: pd.DataFrame) -> pd.DataFrame:
    queries = part[part["kind"] == _QUERY].reset_index(drop=True)
    windows = part[part["kind"] == _WINDOW]
    contacts = pd.DataFrame(
        {
            "agent_id": queries["agent_id"].to_numpy(),
            "closed_at": pd.to_datetime(queries["t_us"].to_numpy(dtype=np.int64), unit="us", utc=True),
        }
    )
    found = agent_features(contacts, windows.rename(columns={"t_us": "window_end_us"}))
    return pd.concat([queries[["contact_id", "customer_id"]], found.reset_index(drop=True)], axis=1)


def _aligned_agents(part: pd.DataFrame, agents: pd.DataFrame) -> pd.DataFrame:
    """The agent features of this customer partition's contacts, row for row."""
    aligned = agents.drop_duplicates("contact_id").set_index("contact_id").reindex(part["contact_id"].to_numpy())
    if aligned[list(AGENT_COLUMNS)].isna().any().any():
        raise RuntimeError("agent features missing for some contacts: the two shuffles did not line up")
    return aligned.set_index(part.index)


# -- features and scoring, partition by partition ------------------------------------------------------
_EMBEDDERS: dict[str, Embedder] = {}


def worker_embedder(config: EmbeddingConfig) -> Embedder:
    """One embedder (one loaded model) per worker process and configuration."""
    key = config.model_dump_json()
    if key not in _EMBEDDERS:
        _EMBEDDERS[key] = Embedder(config)
    return _EMBEDDERS[key]


def features(
    customers: Any,
    agents: Any,
    config: LabelConfig,
    end: pd.Timestamp,
    embedding: EmbeddingConfig | None = None,
) -> Any:
    """``features.build`` per customer partition (with a ``contact_id`` column to join on)."""
    row = _one_contact()
    meta = _features_partition(row, _agents_for(row), config, end, embedding).head(0)
    return customers.map_partitions(
        _features_partition, agents, config, end, embedding, meta=meta, align_dataframes=False
    )


def _features_partition(
    part: pd.DataFrame,
    agents: pd.DataFrame,
    config: LabelConfig,
    end: pd.Timestamp,
    embedding: EmbeddingConfig | None,
) -> pd.DataFrame:
    embedder = worker_embedder(embedding) if embedding is not None else None
    found = build(part, embedder=embedder, labels=config, as_of=end, agent_features=_aligned_agents(part, agents))
    return found.frame.assign(contact_id=part["contact_id"].to_numpy())


def score(
    customers: Any,
    agents: Any,
    model: Any,
    end: pd.Timestamp,
    select: Callable[[pd.DataFrame], np.ndarray] | None = None,
) -> Any:
    """The model's predictions per customer partition (``model`` may be a scattered future).

    ``select`` picks the rows to score in a partition (default all); the others are still their
    customers' history.
    """
    from predictor.model.fitted import OUTPUT_COLUMNS

    text = {"contact_id", *(c for c in OUTPUT_COLUMNS if c.startswith("next_issue_") and c[-1].isdigit())}
    meta = pd.DataFrame({c: pd.Series(dtype=str if c in text else float) for c in OUTPUT_COLUMNS})
    return customers.map_partitions(_score_partition, agents, model, end, select, meta=meta, align_dataframes=False)


def _score_partition(
    part: pd.DataFrame,
    agents: pd.DataFrame,
    model: Any,
    end: pd.Timestamp,
    select: Callable[[pd.DataFrame], np.ndarray] | None = None,
) -> pd.DataFrame:
    part = part.reset_index(drop=True)
    rows = part if select is None else part[select(part)].reset_index(drop=True)
    found = build(
        rows,
        part,
        embedder=model.embedder(),  # the model object lives once per worker, and so does its embedder
        labels=model.label_config,
        as_of=end,
        agent_features=_aligned_agents(rows, agents),
        customer_prior=model.customer_prior,
    )
    return model.predict_from_input(model.model_input(found), rows["contact_id"].to_numpy())


def _one_contact() -> pd.DataFrame:
    """A valid contact: running a partition function on it gives Dask the output's columns and types."""
    row = {
        "contact_id": "meta", "customer_id": "meta", "opened_at": "2026-01-05T09:00:00Z",
        "closed_at": "2026-01-05T09:10:00Z", "channel": "chat", "issue": "meta", "transcript": "Agent: hello",
        "agent_id": "meta", "handle_seconds": "600", "hold_seconds": "0", "transfers": "0", "queue": "meta",
        "csat": "",
    }  # fmt: skip
    return validate(pd.DataFrame([row])).contacts.reset_index(drop=True)


def _agents_for(contacts: pd.DataFrame) -> pd.DataFrame:
    return pd.DataFrame(
        {"contact_id": contacts["contact_id"], "customer_id": contacts["customer_id"]} | {c: 0.0 for c in AGENT_COLUMNS}
    )


# -- the batch-scoring job -----------------------------------------------------------------------------
@dataclass
class ScoringSummary:
    scored: int
    n_input: int
    duplicates: int  # valid rows whose contact_id came earlier in another file: scored once
    rejections: pd.DataFrame
    out: Path
    workers: int  # 0: in-process


def score_log(
    pattern: str | Path,
    model: Any,
    out: Path,
    compute: ComputeConfig,
    mapping_path: str | Path | None = None,
    assume_timezone: str | None = None,
    store_url: str | None = None,
    pseudonym_key: str | None = None,
) -> ScoringSummary:
    """Score every contact of a log (file, directory or glob) point-in-time; predictions to Parquet.

    In-process: one Parquet file. On a cluster: a directory of Parquet parts written partition by
    partition (``pandas.read_parquet`` reads either), so no machine holds the whole log. With
    ``store_url`` the contacts are also loaded into the service's contact store (as history for the
    contacts the service will score, without answers: a batch score is not a close-time response).
    """
    with connect(compute) as client:
        if client is None:
            loaded = load_files(pattern, mapping_path, assume_timezone)
            contacts = loaded.contacts
            predictions = model.predict(contacts, history=contacts)
            out.parent.mkdir(parents=True, exist_ok=True)
            predictions.to_parquet(out, index=False)
            if store_url:
                _store_partition(contacts, store_url, pseudonym_key)
            # As on the cluster: a contact repeated in a later file is scored once and counted, not rejected.
            repeated = (loaded.rejections["reason"] == REPEATED_IN_LATER_FILE).to_numpy(dtype=bool)
            rejections = loaded.rejections[~repeated].reset_index(drop=True)
            return ScoringSummary(len(predictions), loaded.n_input, int(repeated.sum()), rejections, out, 0)
        import dask

        partitioned = read_partitioned(pattern, mapping_path, assume_timezone)
        partitions = partitions_for(client, compute, partitioned.n_input)
        customers = by_customer(partitioned.contacts, partitions, compute.shuffle).persist()
        end = as_of(customers)
        agents = agent_history(customers, model.label_config, end, compute.shuffle)
        shared = client.scatter(model, broadcast=True)  # one copy, one loaded embedder, per worker
        predictions = score(customers, agents, shared, end)
        predictions.to_parquet(out, write_index=False)
        if store_url:
            customers.map_partitions(_store_partition, store_url, pseudonym_key, meta=(None, "int64")).compute()
        valid, scored, distinct = dask.compute(
            partitioned.contacts.map_partitions(len).sum(),
            customers.map_partitions(len).sum(),
            customers["contact_id"].nunique(),
        )
        # Duplicates within a customer are dropped in the customer partition; a contact_id reused by two
        # different customers (a data error no single file shows) lands in two partitions: say so.
        if distinct < scored:
            log.warning(
                "%d contact ids belong to more than one customer: each was scored per customer", scored - distinct
            )
        return ScoringSummary(
            int(scored), partitioned.n_input, int(valid - scored), partitioned.rejections, out, _workers(client)
        )


def _store_partition(
    contacts: pd.DataFrame, store_url: str, pseudonym_key: str | None = None, chunk: int = 5000
) -> pd.Series:
    """Contacts into the store in short transactions: writers on other workers wait seconds, not minutes."""
    from predictor.contacts.store import ContactStore

    store = ContactStore(store_url, pseudonym_key=pseudonym_key)
    for start in range(0, len(contacts), chunk):
        store.load_frame(contacts.iloc[start : start + chunk])
    store.engine.dispose()
    return pd.Series([len(contacts)], dtype="int64")
