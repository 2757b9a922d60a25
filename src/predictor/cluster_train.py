"""Training on a Dask cluster: the local stage functions over customer partitions, the boosters by lightgbm.dask.

The flow is ``train.fit``'s, with the log kept on the workers:

1. labels, slices and the metadata + history features per customer partition (``labels.derive``,
   ``train.slice_codes``, ``features.build`` without text), persisted: a narrow table, ~40 columns;
2. the text heads and the TF-IDF baseline are fitted in this process on the training slice's transcripts,
   capped at ``ComputeConfig.text_head_rows`` rows (chosen by a hash of the contact id, so the choice
   does not depend on how the log is partitioned). Rows in that sample get out-of-fold scores, exactly as
   in-process; training rows outside it are scored by heads that never saw them, which is just as honest;
3. every partition is embedded (one model per worker) and read by the fitted heads; only their scores
   are kept, not the 600-odd embedding columns;
4. the repeat, next-issue and timing boosters train on the training rows with ``lightgbm.dask``;
   calibration, early stopping's choice of trees and evaluation use small slices collected here.

The split boundaries are quantiles of the whole log's close times, computed from the close-time column
alone; so the same log gives the same slices on both paths (a test checks it).
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

from predictor.cluster import (
    _agents_for,
    _aligned_agents,
    _one_contact,
    _workers,
    agent_history,
    as_of,
    by_customer,
    partitions_for,
    read_partitioned,
    score,
    worker_embedder,
)
from predictor.config import Settings
from predictor.embed import Embedder
from predictor.features import CLOSING_PREFIX, EMBEDDING_PREFIX, as_model_input, build
from predictor.labels import data_end, derive, epoch_us
from predictor.logs import quiet_lightgbm
from predictor.model import Calibrated, RepeatContactModel, TextHeads, TextInputs
from predictor.train import (
    CALIBRATION,
    OTHER,
    SLICE_NAMES,
    TEST,
    TRAIN,
    Split,
    TfidfBaseline,
    TrainingDataError,
    TrainingResult,
    _ClassNames,
    boundary_strings,
    calibration_too_thin,
    check_slices,
    counts_of,
    evaluate_test,
    fit_text_heads,
    head_targets,
    load_hyperparams,
    next_issue_classes,
    slice_codes,
    split_boundaries,
    training_params,
)

log = logging.getLogger(__name__)
LABEL = "label_"  # label columns carried beside the features (prefixed: "issue" is also a feature)
LABEL_COLUMNS = ("is_repeat", "repeat_type", "next_issue", "hours_to_repeat", "window_complete", "censored")
TFIDF = "baseline_tfidf"


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

    hp = hyperparams or load_hyperparams(settings.hyperparams_path)
    compute = settings.compute
    quiet_lightgbm()
    client.run(quiet_lightgbm)  # on every worker: they train the boosters
    with dask.config.set({"dataframe.shuffle.method": compute.shuffle}):
        return _fit(pattern, settings, client, hp, use_text, oracle, plots_dir, mapping_path, assume_timezone, stage)


def _fit(
    pattern: str | Path,
    settings: Settings,
    client: Any,
    hp: dict[str, Any],
    use_text: bool,
    oracle: pd.DataFrame | None,
    plots_dir: Path | None,
    mapping_path: str | Path | None,
    assume_timezone: str | None,
    stage: Callable[[str], None],
) -> ClusterFit:
    import dask
    from distributed import wait

    compute = settings.compute
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        log.info("cluster training: %s took %.1f s", name, timings[name])
        clock = now

    stage("reading")
    partitioned = read_partitioned(pattern, mapping_path, assume_timezone)
    if len(partitioned.rejections):
        log.warning("%d rows rejected by validation (see the rejections)", len(partitioned.rejections))
    partitions = partitions_for(client, compute, partitioned.n_input)
    customers = by_customer(partitioned.contacts, partitions, compute.shuffle).persist()
    wait(customers)  # each stage is waited for: its seconds are its own, not the next stage's
    end = as_of(customers)
    lap("reading")

    stage("labels")
    # The data end and the slices come from the open and close times alone: two 8-byte columns come here.
    times = customers[["opened_at", "closed_at"]].compute().reset_index(drop=True)
    label_end = data_end(times, settings.labels)
    end_warnings = [w for w in [label_end.warning(settings.labels.repeat_window_days)] if w]
    for message in end_warnings:
        log.debug(message)  # carried in the result's warnings, which the caller prints
    boundaries = split_boundaries(times["closed_at"], settings, label_end.at)
    del times
    # The training slice's repeat rate, which a customer's own rate is shrunk towards (as in-process).
    sums = customers.map_partitions(
        _train_repeats, settings, boundaries, label_end.at, meta={"rows": "i8", "repeats": "i8"}
    ).sum().compute()  # fmt: skip
    prior = float(sums["repeats"]) / max(float(sums["rows"]), 1.0)
    agents = agent_history(customers, settings.labels, end, compute.shuffle).persist()
    shared_args = (settings, end, boundaries, label_end.at, prior)
    table = customers.map_partitions(
        _table_partition, agents, *shared_args,
        meta=_table_partition(_one_contact(), _agents_for(_one_contact()), *shared_args),
        align_dataframes=False,
    ).persist()  # fmt: skip
    codes, slice_repeats, censored, window_open, n_rows = dask.compute(
        table["slice"].value_counts(),
        table.groupby("slice")[LABEL + "is_repeat"].sum(),
        table[LABEL + "censored"].sum(),
        (~table[LABEL + "window_complete"]).sum(),
        table.map_partitions(len).sum(),
    )
    counts = counts_of(int(n_rows), int(censored), int(window_open), {int(k): int(v) for k, v in codes.items()})
    repeats = {name: int(slice_repeats.get(code, 0)) for code, name in SLICE_NAMES.items()}
    check_slices(counts, repeats, settings)
    cal_other = counts["calibration"] - repeats["calibration"]
    if calibration_too_thin(repeats["calibration"], cal_other, settings):
        raise TrainingDataError(
            f"the calibration slice holds {repeats['calibration']} repeats and {cal_other} non-repeats after the "
            f"embargo (minimum {settings.split.min_calibration_repeats}); the cluster path needs one: train this "
            "log in-process (without --local-cluster / --scheduler), which calibrates out-of-fold instead"
        )
    lap("labels")

    stage("features")
    feature_columns = [c for c in table.columns if not c.startswith(LABEL) and c not in _TABLE_KEYS]
    train_rows = table[table["slice"] == TRAIN]
    categories = _categories(train_rows)
    has_text = use_text and bool(table["has_transcript"].max().compute() > 0)
    if use_text and not has_text:
        log.warning("no transcript has any text: training without text features")
    embedding = settings.embedding if has_text else None
    lap("features")

    heads = tfidf = None
    model_id = None
    if embedding is not None:
        stage("text heads")
        # Loaded here first: a derived model (model2vec's distillation, the ONNX export) is then built once,
        # with this process's threads, into the cache folder the workers share, not by every worker at once
        # (on the 20k log: 10 s instead of 75). Workers without that folder build their own.
        local_embedder = Embedder(embedding)
        log.info("embedding model %s: %d dimensions", local_embedder.model_id, local_embedder.dimension)
        model_id = local_embedder.model_id
        del local_embedder
        heads, oof, tfidf, sample_seconds = _fit_heads(
            customers, agents, table, settings, end, hp, counts["train"], client
        )
        timings["text_heads.sample"] = round(sample_seconds, 3)  # part of text_heads: embedding the sample
        lap("text_heads")
        stage("embeddings")
        shared = client.scatter([heads, oof, tfidf], broadcast=True)
        scores = customers.map_partitions(
            _text_partition, agents, settings, end, *shared,
            meta=_text_meta(heads), align_dataframes=False,
        )  # fmt: skip
    else:
        scores = None
    design = table.map_partitions(
        _design_partition, scores, feature_columns, categories,
        meta=_design_partition(table._meta, None if scores is None else scores._meta, feature_columns, categories),
        align_dataframes=False,
    ).persist()  # fmt: skip
    wait(design)
    del table, scores, train_rows  # the design holds what the rest needs
    text_columns = heads.columns if heads is not None else []
    X_columns = [*feature_columns, *text_columns]
    lap("embeddings")

    stage("repeat model")
    train = design[design["slice"] == TRAIN]
    calibration = _collect(design[design["slice"] == CALIBRATION])
    repeat_booster, repeat = _fit_repeat(client, train, X_columns, calibration, hp)
    lap("repeat_model")

    stage("next issue and timing")
    next_model, next_classes = _fit_next_issue(client, train, X_columns, hp)
    hours_median, hours_p90 = _fit_timing(client, train, X_columns, hp)
    issue_codes = sorted(customers["issue"].unique().compute().tolist())
    lap("next_issue_and_timing")

    model = RepeatContactModel(
        label_config=settings.labels,
        embedding_config=embedding,
        categories=categories,
        feature_columns=feature_columns,
        text_heads=heads,
        repeat=repeat,
        repeat_booster=repeat_booster,
        next_issue=next_model,
        next_issue_classes=next_classes,
        hours_median=hours_median,
        hours_p90=hours_p90,
        issue_codes=issue_codes,
        metadata={"trained_on": counts, "boundaries": boundary_strings(boundaries), "workers": _workers(client)},
        customer_prior=prior,
    )

    stage("baselines")
    test = _collect(design[design["slice"] == TEST])
    y_train_mean, rates = dask.compute(
        train[LABEL + "is_repeat"].mean(), train.groupby("issue_code")[LABEL + "is_repeat"].mean()
    )
    baselines = {"issue base rate": test["issue_code"].map(rates).fillna(y_train_mean).to_numpy()}
    meta_columns = list(feature_columns)
    _, meta_model = _fit_repeat(client, train, meta_columns, calibration, hp)
    baselines["metadata + history (no text)"] = meta_model.predict_proba(test[meta_columns])[:, 1]
    if tfidf is not None:
        baselines["tf-idf + logistic regression"] = test[TFIDF].to_numpy()
    lap("baselines")

    stage("evaluation")
    labelled_test = _labels_of(test)
    evaluation = evaluate_test(
        model,
        test[X_columns],
        labelled_test,
        test["transcript_words"].to_numpy(),
        baselines,
        settings,
        oracle=oracle,
        plots_dir=plots_dir,
    )
    lap("evaluation")

    params = training_params(settings, hp, model_id, heads, counts)
    params |= {
        "compute": "dask",
        "dask_workers": _workers(client),
        "dask_partitions": customers.npartitions,
        "text_head_rows": int(min(counts["train"], compute.text_head_rows)),
    }
    known = design[design[LABEL + "window_complete"]]
    plan_input = _labels_of(_collect(known[[*(LABEL + c for c in LABEL_COLUMNS), *_TABLE_KEYS]]))
    test_ids = labelled_test["contact_id"].to_numpy()
    selector = _TestRows(settings, label_end.at, boundaries)

    def score_test(candidate: RepeatContactModel) -> np.ndarray:
        shared_model = client.scatter(candidate, broadcast=True)
        found = score(customers, agents, shared_model, end, select=selector).compute()
        return found.set_index("contact_id").loc[test_ids, "repeat_probability"].to_numpy()

    result = TrainingResult(
        model=model,
        metrics=evaluation.metrics,
        next_issue_metrics=evaluation.next_issue,
        timing_metrics=evaluation.timing,
        split=Split(
            train=np.array([], dtype=int),  # positions mean nothing on a partitioned log; counts do
            calibration=np.array([], dtype=int),
            test=np.array([], dtype=int),
            boundaries=boundary_strings(boundaries),
            counts=counts,
            repeat_rates={name: repeats[name] / counts[name] for name in repeats if counts[name]},
            repeats=repeats,
        ),
        params=params,
        plots=evaluation.plots,
        test_predictions=evaluation.predictions,
        timings=timings,
        data_fingerprint=fingerprint(customers),
        test_contacts=None,
        data_end=label_end,
        warnings=end_warnings,
    )
    example = customers.head(5)
    return ClusterFit(
        result=result,
        labelled=plan_input,
        score_test=score_test,
        example=example,
        n_input=partitioned.n_input,
        rejections=partitioned.rejections,
    )


# -- per partition -------------------------------------------------------------------------------------
_TABLE_KEYS = ("contact_id", "closed_us", "slice", "issue_code")


def _train_repeats(
    part: pd.DataFrame, settings: Settings, boundaries: tuple[pd.Timestamp, pd.Timestamp], label_end: pd.Timestamp
) -> pd.DataFrame:
    """Rows and repeats of one partition's training slice."""
    labelled = derive(part.reset_index(drop=True), settings.labels, label_end)
    train = slice_codes(labelled, boundaries, settings) == TRAIN
    repeats = labelled["is_repeat"].fillna(False).astype(bool).to_numpy()[train]
    return pd.DataFrame({"rows": [int(train.sum())], "repeats": [int(repeats.sum())]})


def _table_partition(
    part: pd.DataFrame,
    agents: pd.DataFrame,
    settings: Settings,
    end: pd.Timestamp,
    boundaries: tuple[pd.Timestamp, pd.Timestamp],
    label_end: pd.Timestamp,
    customer_prior: float,
) -> pd.DataFrame:
    """Labels, slice and the text-free features of one customer partition (the local functions).

    ``end`` is the last close (the features' horizon), ``label_end`` the data end of the whole log."""
    part = part.reset_index(drop=True)
    labelled = derive(part, settings.labels, label_end)
    found = build(
        part,
        labels=settings.labels,
        as_of=end,
        agent_features=_aligned_agents(part, agents),
        customer_prior=customer_prior,
    )
    frame = found.frame.reset_index(drop=True)
    keys = pd.DataFrame(
        {
            "contact_id": part["contact_id"].astype(str).to_numpy(),
            "closed_us": epoch_us(part["closed_at"]),
            "slice": slice_codes(labelled, boundaries, settings),
            "issue_code": part["issue"].astype(str).to_numpy(),
        }
    )
    labels = pd.DataFrame(
        {
            LABEL + "is_repeat": labelled["is_repeat"].astype("float").to_numpy(),
            LABEL + "repeat_type": labelled["repeat_type"].astype(object).to_numpy(),
            LABEL + "next_issue": labelled["next_issue"].astype(object).to_numpy(),
            LABEL + "hours_to_repeat": labelled["hours_to_repeat"].to_numpy(dtype=float),
            LABEL + "window_complete": labelled["window_complete"].to_numpy(dtype=bool),
            LABEL + "censored": labelled["censored"].to_numpy(dtype=bool),
        }
    )
    return pd.concat([keys, frame, labels], axis=1)


def _in_sample(contact_ids: pd.Series | np.ndarray, fraction: float) -> np.ndarray:
    """A reproducible share of rows, by a hash of the id (independent of partitioning and row order)."""
    if fraction >= 1:
        return np.ones(len(contact_ids), dtype=bool)
    hashed = pd.util.hash_array(np.asarray(contact_ids, dtype=object))
    return hashed < np.uint64(fraction * float(2**64 - 1))


def _sample_partition(
    part: pd.DataFrame,
    agents: pd.DataFrame,
    table: pd.DataFrame,
    settings: Settings,
    end: pd.Timestamp,
    fraction: float,
) -> pd.DataFrame:
    """The text heads' training rows of one partition: their embeddings, redacted words and targets."""
    part = part.reset_index(drop=True)
    rows = np.flatnonzero((table["slice"].to_numpy() == TRAIN) & _in_sample(table["contact_id"].to_numpy(), fraction))
    chosen = part.iloc[rows].reset_index(drop=True)
    found = build(
        chosen,
        part,
        embedder=worker_embedder(settings.embedding),
        labels=settings.labels,
        as_of=end,
        agent_features=_aligned_agents(chosen, agents),
    )
    columns = [c for view in found.views.values() for c in view]
    picked = table.iloc[rows].reset_index(drop=True)
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
    tfidf: TfidfBaseline,
) -> pd.DataFrame:
    """Every row's text-head scores (out-of-fold where the row trained the heads) and TF-IDF baseline score."""
    part = part.reset_index(drop=True)
    found = build(
        part,
        embedder=worker_embedder(settings.embedding),
        labels=settings.labels,
        as_of=end,
        agent_features=_aligned_agents(part, agents),
    )
    ids = part["contact_id"].astype(str).to_numpy()
    scores = heads.transform(TextInputs.from_features(found), index=pd.Index(ids))
    trained = scores.index.isin(oof.index)
    scores.loc[trained] = oof.loc[scores.index[trained], scores.columns].to_numpy()
    scores[TFIDF] = tfidf.predict(found.transcripts)
    return scores.reset_index(drop=True)


def _text_meta(heads: TextHeads) -> pd.DataFrame:
    return pd.DataFrame({c: pd.Series(dtype=float) for c in [*heads.columns, TFIDF]})


def _design_partition(
    table: pd.DataFrame,
    scores: pd.DataFrame | None,
    feature_columns: list[str],
    categories: dict[str, list[str]],
) -> pd.DataFrame:
    """The boosters' input (``as_model_input``, as in-process) beside the keys and labels."""
    table = table.reset_index(drop=True)
    X = as_model_input(table[feature_columns], categories).reset_index(drop=True)
    rest = table.drop(columns=feature_columns)
    blocks = [rest, X] if scores is None else [rest, X, scores.reset_index(drop=True)]
    return pd.concat(blocks, axis=1)


# -- fitting -------------------------------------------------------------------------------------------
def _categories(train_rows: Any) -> dict[str, list[str]]:
    import dask

    from predictor.features import CATEGORICAL
    from predictor.model import levels_from_counts

    columns = [c for c in CATEGORICAL if c in train_rows.columns]
    counts = dask.compute(*[train_rows[c].astype(str).value_counts() for c in columns])
    return {c: levels_from_counts(c, found) for c, found in zip(columns, counts, strict=True)}


def _fit_heads(
    customers: Any,
    agents: Any,
    table: Any,
    settings: Settings,
    end: pd.Timestamp,
    hp: dict[str, Any],
    n_train: int,
    client: Any,
) -> tuple[TextHeads, pd.DataFrame, TfidfBaseline, float]:
    """The heads fitted here on a sample of the training slice embedded on the workers (and its seconds)."""
    import dask

    fraction = min(1.0, settings.compute.text_head_rows / max(n_train, 1))
    parts = [
        dask.delayed(_sample_partition)(part, agent_part, table_part, settings, end, fraction)
        for part, agent_part, table_part in zip(
            customers.to_delayed(), agents.to_delayed(), table.to_delayed(), strict=True
        )
    ]
    started = time.perf_counter()
    sample = pd.concat(dask.compute(*parts), ignore_index=True)
    seconds = time.perf_counter() - started
    log.info("text heads: embedded and collected %d rows in %.1f s", len(sample), seconds)
    # One order whatever the partitioning, so the folds (and the heads) do not depend on it.
    sample = sample.sort_values(["closed_us", "contact_id"], kind="stable").reset_index(drop=True)
    log.info("text heads: %d training rows of %d (%.0f%%)", len(sample), n_train, 100 * len(sample) / max(n_train, 1))
    views = {
        view: [c for c in sample.columns if c.startswith(prefix)]
        for view, prefix in (("whole", EMBEDDING_PREFIX), ("closing", CLOSING_PREFIX))
    }
    text = TextInputs(
        embeddings={view: sample[columns].to_numpy() for view, columns in views.items() if columns},
        texts=sample["redacted"].tolist(),
        has_text=sample["has_transcript"].to_numpy() > 0,
    )
    labels = sample.rename(columns={LABEL + "is_repeat": "is_repeat", LABEL + "repeat_type": "repeat_type"})
    labels["is_repeat"] = labels["is_repeat"].astype("boolean")
    fitted = fit_text_heads(
        text, head_targets(labels), pd.Index(sample["contact_id"]), sample["contact_id"].to_numpy(dtype=str), hp
    )
    if fitted is None:
        raise TrainingDataError(
            "no text head can be fitted on the cluster's sample (too few repeats with a transcript): train "
            "in-process, or with --no-text"
        )
    heads, oof = fitted
    tfidf = TfidfBaseline(hp).fit(text.texts, labels["is_repeat"].astype(int).to_numpy())
    return heads, oof, tfidf, seconds


def _collect(frame: Any) -> pd.DataFrame:
    """A slice brought here, in one order whatever the partitioning."""
    local = frame.compute()
    return local.sort_values(["closed_us", "contact_id"], kind="stable").reset_index(drop=True)


def _labels_of(frame: pd.DataFrame) -> pd.DataFrame:
    """The ``labels.derive`` columns of collected rows, under their own names."""
    out = frame.rename(columns={LABEL + c: c for c in LABEL_COLUMNS})
    out = out.drop(columns=["issue"], errors="ignore").rename(columns={"issue_code": "issue"})
    out["is_repeat"] = out["is_repeat"].astype("boolean")
    out["closed_at"] = pd.to_datetime(out["closed_us"].to_numpy(dtype=np.int64), unit="us", utc=True)
    return out


def _lgbm(kind: str, client: Any, **params: Any) -> Any:
    from lightgbm import DaskLGBMClassifier, DaskLGBMRegressor

    cls = DaskLGBMRegressor if kind == "regressor" else DaskLGBMClassifier
    return cls(client=client, random_state=0, verbose=-1, **params)


def _fit_repeat(
    client: Any, train: Any, columns: list[str], calibration: pd.DataFrame, hp: dict[str, Any]
) -> tuple[Any, Calibrated]:
    """The repeat booster on the cluster; trees chosen on the latest training rows, as in-process."""
    params = dict(hp["repeat"])
    y = LABEL + "is_repeat"
    stopping = hp.get("early_stopping")
    if stopping:
        times = np.sort(train["closed_us"].compute().to_numpy())
        cut = times[int(len(times) * (1 - stopping["fraction"]))]
        early, late = train[train["closed_us"] < cut], _collect(train[train["closed_us"] >= cut])
        probe = _lgbm("classifier", client, objective="binary", **params)
        probe.fit(early[columns], early[y].astype(int))
        best = _patience(probe.to_local(), late[columns], late[y].to_numpy(dtype=int), stopping["rounds"])
        params["n_estimators"] = min(params["n_estimators"], max(stopping["min_trees"], best))
    booster = _lgbm("classifier", client, objective="binary", **params)
    booster.fit(train[columns], train[y].astype(int))
    local = booster.to_local()
    return local, Calibrated(local, hp["calibration"]).fit(calibration[columns], calibration[y].to_numpy(dtype=int))


def _patience(model: Any, X: pd.DataFrame, y: np.ndarray, rounds: int) -> int:
    """The tree count LightGBM's early stopping would pick: best log-loss, stopped ``rounds`` after it.

    lightgbm.dask evaluates a validation set only on the workers that hold parts of it, so the curve
    is computed here, on the collected latest rows, tree by tree.
    """
    from predictor.model import as_matrix

    matrix = as_matrix(X)
    booster = model.booster_
    raw = np.zeros(len(y))
    best, best_loss = 0, np.inf
    for tree in range(booster.num_trees()):
        raw += booster.predict(matrix, start_iteration=tree, num_iteration=1, raw_score=True)
        p = np.clip(1 / (1 + np.exp(-raw)), 1e-15, 1 - 1e-15)
        loss = -np.mean(y * np.log(p) + (1 - y) * np.log(1 - p))
        if loss < best_loss:
            best, best_loss = tree + 1, loss
        elif tree + 1 - best >= rounds:
            break
    return best


def _fit_next_issue(client: Any, train: Any, columns: list[str], hp: dict[str, Any]) -> tuple[_ClassNames, list[str]]:
    repeats = train[train[LABEL + "is_repeat"] == 1]
    params = dict(hp["next_issue"])
    min_examples = params.pop("min_class_examples")
    counts = repeats[LABEL + "next_issue"].astype(str).value_counts().compute()
    classes = next_issue_classes(counts, min_examples)
    codes = {c: k for k, c in enumerate(classes)}
    target = (
        repeats[LABEL + "next_issue"]
        .astype(str)
        .map(lambda issue: codes.get(issue, codes.get(OTHER, -1)), meta=(LABEL + "next_issue", "int64"))
    )
    model = _lgbm("classifier", client, objective="multiclass", **params)
    model.fit(repeats[columns], target)
    return _ClassNames(model.to_local(), classes), classes


def _fit_timing(client: Any, train: Any, columns: list[str], hp: dict[str, Any]) -> tuple[Any, Any]:
    repeats = train[train[LABEL + "is_repeat"] == 1]
    target = np.log1p(repeats[LABEL + "hours_to_repeat"])
    models = []
    for alpha in (0.5, 0.9):
        model = _lgbm("regressor", client, objective="quantile", alpha=alpha, **hp["timing"])
        model.fit(repeats[columns], target)
        models.append(model.to_local())
    return models[0], models[1]


# -- scoring a slice, fingerprints ---------------------------------------------------------------------
@dataclass(frozen=True)
class _TestRows:
    """Selects a partition's test-slice rows, by the same labels and boundaries as training."""

    settings: Settings
    label_end: pd.Timestamp
    boundaries: tuple[pd.Timestamp, pd.Timestamp]

    def __call__(self, part: pd.DataFrame) -> np.ndarray:
        labelled = derive(part, self.settings.labels, self.label_end)
        return slice_codes(labelled, self.boundaries, self.settings) == TEST


def fingerprint(customers: Any) -> str:
    """A hash of the validated rows that does not depend on how they are partitioned or ordered."""
    sums = customers.map_partitions(
        lambda part: pd.Series([int(pd.util.hash_pandas_object(part, index=False).to_numpy().sum())], dtype=object),
        meta=(None, object),
    ).compute()
    total = sum(int(s) for s in sums) % 2**64
    return hashlib.sha256(total.to_bytes(8, "little")).hexdigest()[:16]
