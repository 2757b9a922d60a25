"""Training: a time split, the three models, the baselines beside them, and their evaluation.

Split by close time into train / calibration / test. Each slice keeps only contacts whose label was known
before the next slice starts (an embargo of one window), so nothing fitted on one slice has seen the
outcome of a contact in the next. Censored contacts are never fitted or scored against; they are counted.
"""

from __future__ import annotations

import hashlib
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd
import yaml
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import LogisticRegression

from predictor import evaluate
from predictor.config import Settings
from predictor.embed import Embedder, redact
from predictor.features import as_model_input, build
from predictor.labels import DataEnd, data_end, derive, epoch_us
from predictor.model import (
    Calibrated,
    ConstantClasses,
    RepeatContactModel,
    TextHeads,
    TextInputs,
    booster_predict,
    categorical_levels,
    keyed_folds,
    logistic,
)

log = logging.getLogger(__name__)
OTHER = "other"
ABLATION = "ablation: head-only cut, no closing view"


def load_hyperparams(path: Path | None = None) -> dict[str, Any]:
    text = (
        Path(path).read_text() if path else resources.files("predictor.data").joinpath("hyperparams.yaml").read_text()
    )
    return yaml.safe_load(text)


class TrainingDataError(ValueError):
    """The log cannot support a model: the message says what it holds and what to do."""


@dataclass
class Skipped:
    """What could not be fitted on this log, and why; the run records it and trains the rest."""

    stage: str
    reason: str


@dataclass
class Split:
    train: np.ndarray
    calibration: np.ndarray  # empty when calibration is out-of-fold on the training slice
    test: np.ndarray
    boundaries: dict[str, str]
    counts: dict[str, int]
    calibration_mode: str = "slice"  # or "out-of-fold"
    repeat_rates: dict[str, float] = field(default_factory=dict)
    repeats: dict[str, int] = field(default_factory=dict)
    notes: list[str] = field(default_factory=list)


def split_boundaries(
    closed: pd.Series, settings: Settings, data_end: pd.Timestamp | None = None
) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Where calibration and test start: quantiles of the close times of the contacts whose window had closed
    by ``data_end`` (all close times without one), so each slice's share is of what can be learnt from."""
    if data_end is not None:
        window = pd.Timedelta(days=settings.labels.repeat_window_days)
        known = closed[closed + window <= data_end]
        closed = known if len(known) else closed
    test_start = closed.quantile(1 - settings.split.test_fraction)
    cal_start = closed.quantile(1 - settings.split.test_fraction - settings.split.calibration_fraction)
    return pd.Timestamp(cal_start), pd.Timestamp(test_start)


# Which slice a labelled row falls in (``slice_codes``): the cluster path carries these codes per partition.
NOT_USED, TRAIN, CALIBRATION, TEST = 0, 1, 2, 3
SLICE_NAMES = {TRAIN: "train", CALIBRATION: "calibration", TEST: "test"}


def slice_codes(
    labelled: pd.DataFrame,
    boundaries: tuple[pd.Timestamp, pd.Timestamp],
    settings: Settings,
    calibration_mode: str = "slice",
) -> np.ndarray:
    """Each row's slice; rows whose window is open, or whose label would leak into the next slice, are unused.

    With ``calibration_mode="out-of-fold"`` there is no calibration slice: training runs up to one window
    before the test slice, and calibration is fitted on out-of-fold scores of the training rows.
    """
    cal_start, test_start = boundaries
    closed = labelled["closed_at"]
    window = pd.Timedelta(days=settings.labels.repeat_window_days)
    # Whole window observed, not merely "uncensored": see labels.derive on outcome-dependent censoring.
    known = labelled["window_complete"].to_numpy(dtype=bool)
    # A row's label is known at most one window after its close: that must be before the next slice.
    codes = np.full(len(labelled), NOT_USED, dtype=np.int8)
    if calibration_mode == "out-of-fold":
        codes[known & (closed <= test_start - window).to_numpy()] = TRAIN
    else:
        codes[known & (closed <= cal_start - window).to_numpy()] = TRAIN
        codes[known & ((closed > cal_start) & (closed <= test_start - window)).to_numpy()] = CALIBRATION
    codes[known & (closed > test_start).to_numpy()] = TEST
    return codes


def time_split(labelled: pd.DataFrame, settings: Settings, data_end: pd.Timestamp | None = None) -> Split:
    """Positions of train / calibration / test rows; censored and embargoed rows excluded.

    Adapts to a short log: when the one-window embargo leaves too few repeats for a calibration slice, the
    calibration is fitted out-of-fold on the training slice (and the split says so). Raises
    ``TrainingDataError`` when even then the training or test slice is below the configured minimum.
    """
    known = labelled["window_complete"].to_numpy(dtype=bool)
    if not len(labelled):
        raise TrainingDataError("the log holds no valid contacts to train on")
    if not known.any():
        raise TrainingDataError(
            f"no contact's {settings.labels.repeat_window_days:g}-day window has closed before the data end "
            f"({len(labelled):,} contacts, all censored or still open): give a longer log, a shorter window "
            "(PREDICTOR_LABELS__REPEAT_WINDOW_DAYS) or the extraction time (--as-of)"
        )
    boundaries = split_boundaries(labelled["closed_at"], settings, data_end)
    repeat = labelled["is_repeat"].fillna(False).astype(bool).to_numpy()
    mode, notes = "slice", []
    codes = slice_codes(labelled, boundaries, settings)
    cal_repeats = int(repeat[codes == CALIBRATION].sum())
    cal_other = int((~repeat[codes == CALIBRATION]).sum())
    if calibration_too_thin(cal_repeats, cal_other, settings):
        mode = "out-of-fold"
        codes = slice_codes(labelled, boundaries, settings, mode)
        notes.append(
            f"the calibration slice holds {cal_repeats} repeats and {cal_other} non-repeats after the "
            f"{settings.labels.repeat_window_days:g}-day embargo (minimum {settings.split.min_calibration_repeats}): "
            f"calibrating out-of-fold ({settings.split.calibration_folds} folds) on the training slice instead"
        )
    window_open = int((~known).sum())
    counts = counts_of(len(labelled), int(labelled["censored"].sum()), window_open, codes)
    repeats = {name: int(repeat[codes == code].sum()) for code, name in SLICE_NAMES.items()}
    check_slices(counts, repeats, settings)
    rates = {
        name: repeats[name] / counts[name] for name in SLICE_NAMES.values() if counts[name]
    }
    return Split(
        train=np.flatnonzero(codes == TRAIN),
        calibration=np.flatnonzero(codes == CALIBRATION),
        test=np.flatnonzero(codes == TEST),
        boundaries=boundary_strings(boundaries),
        counts=counts,
        calibration_mode=mode,
        repeat_rates=rates,
        repeats=repeats,
        notes=notes,
    )


def calibration_too_thin(repeats: int, others: int, settings: Settings) -> bool:
    """Too few repeats or non-repeats in the calibration slice to fit a calibration map on."""
    return min(repeats, others) < settings.split.min_calibration_repeats


def check_slices(counts: dict[str, int], repeats: dict[str, int], settings: Settings) -> None:
    """Stop, with the counts and what to do, when a slice is too thin to fit on or to judge by."""
    need = settings.split
    problems = []
    train_other = counts["train"] - repeats["train"]
    test_other = counts["test"] - repeats["test"]
    if repeats["train"] < need.min_train_repeats or train_other < need.min_train_repeats:
        problems.append(
            f"the training slice holds {repeats['train']} repeats and {train_other} non-repeats "
            f"(minimum {need.min_train_repeats} of each)"
        )
    if repeats["test"] < need.min_test_repeats or test_other < need.min_test_repeats:
        problems.append(
            f"the test slice holds {repeats['test']} repeats and {test_other} non-repeats "
            f"(minimum {need.min_test_repeats} of each)"
        )
    if problems:
        raise TrainingDataError(
            "too little labelled data to train and test a model: "
            + "; ".join(problems)
            + f" (split: {counts['train']:,} train, {counts['calibration']:,} calibration, {counts['test']:,} test, "
            f"{counts['window_open']:,} with their window still open, {counts['embargoed']:,} embargoed). Give a "
            "longer log, or lower PREDICTOR_SPLIT__MIN_TRAIN_REPEATS / PREDICTOR_SPLIT__MIN_TEST_REPEATS knowing "
            "the figures will be noisy"
        )


def drift_warning(split: Split, settings: Settings) -> str | None:
    """The repeat rate the model is calibrated on against the one it is judged on, when they differ."""
    reference = "calibration" if split.calibration_mode == "slice" else "train"
    if reference not in split.repeat_rates or "test" not in split.repeat_rates:
        return None
    a, b = split.repeat_rates[reference], split.repeat_rates["test"]
    if not evaluate.rates_differ(a, split.counts[reference], b, split.counts["test"], settings.split.drift_tolerance):
        return None
    return (
        f"drift: the repeat rate moved from {a:.1%} ({reference} slice) to {b:.1%} (test slice); a model "
        "calibrated on the earlier rate is off by about the difference until it is retrained on recent contacts"
    )


def boundary_strings(boundaries: tuple[pd.Timestamp, pd.Timestamp]) -> dict[str, str]:
    return {"calibration_start": str(boundaries[0]), "test_start": str(boundaries[1])}


def counts_of(contacts: int, censored: int, window_open: int, codes: np.ndarray | dict[int, int]) -> dict[str, int]:
    """The split's row counts (``codes``: the slice codes, or how many rows each code has)."""
    per = codes if isinstance(codes, dict) else {c: int((codes == c).sum()) for c in (TRAIN, CALIBRATION, TEST)}
    counts = {
        "contacts": contacts,
        "censored": censored,
        "window_open": window_open,
        "train": int(per.get(TRAIN, 0)),
        "calibration": int(per.get(CALIBRATION, 0)),
        "test": int(per.get(TEST, 0)),
    }
    counts["embargoed"] = contacts - window_open - counts["train"] - counts["calibration"] - counts["test"]
    return counts


@dataclass
class TrainingResult:
    model: RepeatContactModel
    metrics: pd.DataFrame  # one row per model/baseline, repeat metrics
    next_issue_metrics: dict[str, float]
    timing_metrics: dict[str, float]
    split: Split
    params: dict[str, Any]
    plots: dict[str, Path] = field(default_factory=dict)
    test_predictions: pd.DataFrame | None = None
    timings: dict[str, float] = field(default_factory=dict)
    data_fingerprint: str = ""
    test_contacts: pd.DataFrame | None = None
    data_end: DataEnd | None = None
    skipped: list[Skipped] = field(default_factory=list)
    warnings: list[str] = field(default_factory=list)
    # top-1 / top-3 of the next-issue baselines ("same issue again", "transition table")
    next_issue_baselines: dict[str, dict[str, float]] = field(default_factory=dict)


SAME_ISSUE = "same issue again"
TRANSITIONS = "transition table (training slice)"


def fit(
    contacts: pd.DataFrame,
    settings: Settings,
    *,
    use_text: bool = True,
    ablation: bool = True,
    oracle: pd.DataFrame | None = None,
    plots_dir: Path | None = None,
    hyperparams: dict[str, Any] | None = None,
    stage: Callable[[str], None] = lambda _: None,
) -> TrainingResult:
    """Label, split, build features, fit the models and the baselines, and evaluate them on the test slice.

    Raises ``TrainingDataError`` when the log cannot support a model; anything narrower that cannot be
    fitted (a text head with one class, a word vocabulary that is empty) is skipped with its reason in
    ``TrainingResult.skipped`` and the rest trains.
    """
    hp = hyperparams or load_hyperparams(settings.hyperparams_path)
    timings: dict[str, float] = {}
    clock = time.perf_counter()

    def lap(name: str) -> None:
        nonlocal clock
        now = time.perf_counter()
        timings[name] = round(now - clock, 3)
        clock = now

    stage("labels")
    contacts = contacts.reset_index(drop=True)
    end = data_end(contacts, settings.labels)
    labelled = derive(contacts, settings.labels, end.at)
    split = time_split(labelled, settings, end.at)
    warnings = [w for w in (end.warning(settings.labels.repeat_window_days), drift_warning(split, settings)) if w]
    # Returned as data (split.notes, warnings, skipped) and printed by the caller: logged at DEBUG only.
    for message in [*split.notes, *warnings]:
        log.debug(message)
    skipped: list[Skipped] = []
    y = labelled["is_repeat"].astype("float").to_numpy()
    tr, cal, te = split.train, split.calibration, split.test
    prior = float(y[tr].mean())
    lap("labels")

    has_text = use_text and bool((contacts["transcript"].str.strip() != "").any())
    if use_text and not has_text:
        skipped.append(Skipped("text features", "no transcript has any text: trained on metadata and history"))
    embedding_config = settings.embedding if has_text else None
    embedder = Embedder(embedding_config) if embedding_config else None

    stage("features and embeddings")
    feature_set = build(contacts, embedder=embedder, labels=settings.labels, progress=True, customer_prior=prior)
    full = feature_set.frame
    dropped = set(hp.get("features", {}).get("drop") or [])
    features = full[[c for c in feature_set.metadata_columns if c not in dropped]]
    text = TextInputs.from_features(feature_set) if feature_set.views else None
    categories = categorical_levels(features.iloc[tr])
    lap("features")
    stage("text heads")
    heads, X = _design(features, text, labelled, categories, tr, hp, skipped)
    lap("text_heads")

    stage("repeat model")
    times = epoch_us(contacts["closed_at"])
    folds = settings.split.calibration_folds
    repeat_booster, repeat = _fit_repeat(X.iloc[tr], y[tr], X.iloc[cal], y[cal], hp, times[tr], folds, skipped)
    lap("repeat_model")

    stage("next issue and timing")
    issue_codes = sorted(contacts["issue"].unique().tolist())
    next_model, next_classes = _fit_next_issue(X.iloc[tr], labelled.iloc[tr], hp, skipped)
    hours_median, hours_p90, p90_offset = _fit_timing(
        X.iloc[tr], labelled.iloc[tr], X.iloc[cal], labelled.iloc[cal], hp, folds, skipped
    )
    lap("next_issue_and_timing")

    model = RepeatContactModel(
        label_config=settings.labels,
        embedding_config=embedding_config,
        categories=categories,
        feature_columns=list(features.columns),
        text_heads=heads,
        repeat=repeat,
        repeat_booster=repeat_booster,
        next_issue=next_model,
        next_issue_classes=next_classes,
        hours_median=hours_median,
        hours_p90=hours_p90,
        issue_codes=issue_codes,
        metadata={"trained_on": split.counts, "boundaries": split.boundaries, "data_end": str(end.at)},
        hours_p90_log_offset=p90_offset,
        customer_prior=prior,
    )

    stage("baselines")
    scores: dict[str, np.ndarray] = {}
    rates = pd.Series(y[tr]).groupby(contacts["issue"].iloc[tr].to_numpy()).mean()
    scores["issue base rate"] = contacts["issue"].iloc[te].map(rates).fillna(y[tr].mean()).to_numpy()
    X_meta = as_model_input(features, categories)
    _, meta_model = _fit_repeat(X_meta.iloc[tr], y[tr], X_meta.iloc[cal], y[cal], hp, times[tr], folds, [])
    scores["metadata + history (no text)"] = meta_model.predict_proba(X_meta.iloc[te])[:, 1]
    if has_text:
        try:
            scores["tf-idf + logistic regression"] = _tfidf_baseline(contacts, tr, te, y, hp)
        except ValueError as exc:  # an empty vocabulary: too few words repeat across transcripts
            skipped.append(Skipped("tf-idf baseline", str(exc)))
        if ablation and settings.embedding.truncation == "head_tail":
            # What reading the close of a conversation is worth: the embedding sees only the head of a long
            # transcript and there is no closing-turns view (the word view, which reads everything, stays).
            head = embedder.encode(contacts["transcript"].tolist(), truncation="head", progress=True)
            head_text = TextInputs({"whole": head}, text.texts, text.has_text)
            _, X_head = _design(features, head_text, labelled, categories, tr, hp, [])
            _, head_model = _fit_repeat(X_head.iloc[tr], y[tr], X_head.iloc[cal], y[cal], hp, times[tr], folds, [])
            scores[ABLATION] = head_model.predict_proba(X_head.iloc[te])[:, 1]
    lap("baselines")

    stage("evaluation")
    next_baselines = next_issue_baseline_proba(
        labelled.iloc[tr], contacts["issue"].iloc[te].to_numpy(dtype=str), next_classes
    )
    evaluation = evaluate_test(
        model,
        X.iloc[te],
        labelled.iloc[te],
        features["transcript_words"].iloc[te].to_numpy(),
        scores,
        settings,
        oracle=oracle,
        plots_dir=plots_dir,
        next_issue_baselines=next_baselines,
    )
    lap("evaluation")
    for item in skipped:
        log.debug("skipped %s: %s", item.stage, item.reason)

    params = training_params(settings, hp, embedder.model_id if embedder else None, heads, split.counts)
    params.update({"calibration_mode": split.calibration_mode, "data_end": str(end.at), "data_end_rule": end.rule})
    return TrainingResult(
        model=model,
        metrics=evaluation.metrics,
        next_issue_metrics=evaluation.next_issue,
        timing_metrics=evaluation.timing,
        split=split,
        params=params,
        plots=evaluation.plots,
        test_predictions=evaluation.predictions,
        timings=timings,
        data_fingerprint=fingerprint(contacts),
        test_contacts=contacts.iloc[te],
        data_end=end,
        skipped=skipped,
        warnings=warnings,
        next_issue_baselines=evaluation.next_issue_baselines,
    )


def metrics_summary(result: TrainingResult, registration: Any | None = None) -> dict[str, Any]:
    """The run's figures as plain JSON-ready data (``predictor train --metrics-json``, MLflow's tables)."""

    def number(value: Any) -> float | None:
        value = float(value)
        return None if np.isnan(value) else value

    repeat = {
        str(name): {k: number(v) for k, v in row.items()} for name, row in result.metrics.iterrows()
    }
    split = result.split
    out: dict[str, Any] = {
        "data_end": {
            "at": result.data_end.at.isoformat() if result.data_end else None,
            "rule": result.data_end.rule if result.data_end else None,
            "contacts_affected": result.data_end.affected if result.data_end else 0,
        },
        "split": {
            "counts": split.counts,
            "repeats": split.repeats,
            "repeat_rates": split.repeat_rates,
            "boundaries": split.boundaries,
            "calibration_mode": split.calibration_mode,
        },
        "repeat": repeat,
        "next_issue": {"model": {k: number(v) for k, v in result.next_issue_metrics.items()}}
        | {name: scores for name, scores in result.next_issue_baselines.items()},
        "timing": {k: number(v) for k, v in result.timing_metrics.items()},
        "skipped": [{"stage": s.stage, "reason": s.reason} for s in result.skipped],
        "warnings": [*split.notes, *result.warnings],
        "data_fingerprint": result.data_fingerprint,
        "seconds": result.timings,
    }
    if registration is not None:
        out["registration"] = {
            "version": registration.version,
            "run_id": registration.run_id,
            "promoted": registration.promoted,
            "reason": registration.reason,
        }
    return out


def training_params(
    settings: Settings,
    hp: dict[str, Any],
    embedding_model: str | None,
    heads: TextHeads | None,
    counts: dict[str, int],
) -> dict[str, Any]:
    """What MLflow records of a run's configuration (both compute paths)."""
    return {
        "repeat_window_days": settings.labels.repeat_window_days,
        "transfer_gap_minutes": settings.labels.transfer_gap_minutes,
        "uses_text": embedding_model is not None,
        "embedding_model": embedding_model or "none",
        "embedding_max_tokens": settings.embedding.max_tokens,
        "embedding_truncation": settings.embedding.truncation,
        "embedding_head_fraction": settings.embedding.head_fraction,
        "embedding_closing_turns": settings.embedding.closing_turns,
        "text_heads": ",".join(f"{view}:C={c}" for view, c in heads.C.items()) if heads else "none",
        "calibration": hp["calibration"],
        "features_dropped": ",".join(sorted(hp.get("features", {}).get("drop") or [])) or "none",
        **{f"split_{k}": v for k, v in counts.items()},
        **{f"repeat_{k}": v for k, v in hp["repeat"].items()},
    }


@dataclass
class Evaluation:
    metrics: pd.DataFrame
    next_issue: dict[str, float]
    timing: dict[str, float]
    plots: dict[str, Path]
    predictions: pd.DataFrame  # the model's output on the test slice, with the true ``is_repeat``
    next_issue_baselines: dict[str, dict[str, float]] = field(default_factory=dict)


def evaluate_test(
    model: RepeatContactModel,
    X_test: pd.DataFrame,
    labelled_test: pd.DataFrame,
    transcript_words: np.ndarray,
    baselines: dict[str, np.ndarray],
    settings: Settings,
    *,
    oracle: pd.DataFrame | None = None,
    plots_dir: Path | None = None,
    next_issue_baselines: dict[str, np.ndarray] | None = None,
) -> Evaluation:
    """The model beside the baselines on the test slice: repeat metrics, next issue, timing, plots.

    ``labelled_test`` holds the test rows' labels (``labels.derive`` columns) in the order of ``X_test``;
    ``next_issue_baselines`` each baseline's next-issue probabilities for every test row, over the model's
    classes.
    """
    y_test = labelled_test["is_repeat"].astype(int).to_numpy()
    contact_ids = labelled_test["contact_id"].to_numpy()
    test_pred = model.predict_from_input(X_test, contact_ids)
    scores = {"model": test_pred["repeat_probability"].to_numpy(), **baselines}
    if oracle is not None:
        scores["oracle (simulator truth)"] = evaluate.oracle_repeat(oracle, labelled_test["contact_id"])
    rows = []
    long_text = transcript_words > settings.embedding.max_tokens * 0.75
    for name, p in scores.items():
        row = {"model": name, **evaluate.repeat_metrics(y_test, p)}
        if long_text.sum() > 20 and len(np.unique(y_test[long_text])) == 2:
            row["roc_auc_long_transcripts"] = evaluate.roc_auc_score(y_test[long_text], p[long_text])
        rows.append(row)
    metrics = pd.DataFrame(rows).set_index("model")

    next_classes = model.next_issue_classes
    repeats = np.flatnonzero(y_test == 1)
    repeated = labelled_test.iloc[repeats]
    next_true = repeated["next_issue"].astype(str).to_numpy()
    next_true = np.where(np.isin(next_true, next_classes), next_true, OTHER)
    proba = model.next_issue.predict_proba(X_test.iloc[repeats])
    next_metrics = {
        "top1_accuracy": evaluate.topk_accuracy(next_true, proba, next_classes, 1),
        "top3_accuracy": evaluate.topk_accuracy(next_true, proba, next_classes, 3),
        "explicit_share_actual": float((repeated["repeat_type"] == "explicit").mean()),
        "explicit_share_predicted_top1": float(
            (np.array(next_classes)[proba.argmax(1)] == repeated["issue"].to_numpy()).mean()
        ),
    }
    baseline_metrics = {
        name: {
            "top1_accuracy": evaluate.topk_accuracy(next_true, base[repeats], next_classes, 1),
            "top3_accuracy": evaluate.topk_accuracy(next_true, base[repeats], next_classes, 3),
        }
        for name, base in (next_issue_baselines or {}).items()
    }
    if oracle is not None:
        oracle_proba, oracle_classes = evaluate.oracle_next_issue(oracle, repeated["contact_id"])
        next_metrics["oracle_top1_accuracy"] = evaluate.topk_accuracy(next_true, oracle_proba, oracle_classes, 1)
        next_metrics["oracle_top3_accuracy"] = evaluate.topk_accuracy(next_true, oracle_proba, oracle_classes, 3)
    predicted = test_pred.iloc[repeats]
    timing = evaluate.timing_metrics(
        repeated["hours_to_repeat"].to_numpy(),
        predicted["hours_to_repeat_median"].to_numpy(),
        predicted["hours_to_repeat_p90"].to_numpy(),
    )
    # The interval before its conformal correction: what the quantile booster alone would have promised
    # (clamped at the median as the model's output is).
    raw_p90 = np.expm1(booster_predict(model.hours_p90, X_test.iloc[repeats]))
    raw_p90 = np.maximum(np.clip(raw_p90, 0.0, None), predicted["hours_to_repeat_median"].to_numpy())
    timing["p90_coverage_uncalibrated"] = float(np.mean(repeated["hours_to_repeat"].to_numpy() <= raw_p90))
    timing["p90_nominal"] = P90
    plots: dict[str, Path] = {}
    if plots_dir is not None:
        plots["roc_pr"] = evaluate.plot_roc_pr(y_test, scores, plots_dir / "roc_pr.png")
        plots["reliability"] = evaluate.plot_reliability(
            y_test,
            {k: v for k, v in scores.items() if k in ("model", "metadata + history (no text)")}
            | {k: v for k, v in scores.items() if k.startswith("oracle")},
            plots_dir / "reliability.png",
        )
        plots["gain"] = evaluate.plot_gain(y_test, scores, plots_dir / "gain.png")
        plots["next_issue_confusion"] = evaluate.plot_confusion(
            next_true, np.array(next_classes)[proba.argmax(1)], next_classes, plots_dir / "next_issue_confusion.png"
        )
    test_pred["is_repeat"] = y_test
    return Evaluation(metrics, next_metrics, timing, plots, test_pred, baseline_metrics)


def next_issue_baseline_proba(
    labelled_train: pd.DataFrame, test_issues: np.ndarray, classes: list[str]
) -> dict[str, np.ndarray]:
    """What the next-issue model must beat, as scores over its classes for each test contact.

    "Same issue again": the contact's own issue first, then the issues that follow most often overall.
    "Transition table": the issues that most often followed this issue in the training slice (the mined
    plan's view), overall frequencies where the issue was never repeated.
    """
    repeats = labelled_train[labelled_train["is_repeat"].fillna(False).astype(bool)]
    index = {c: i for i, c in enumerate(classes)}
    mapped = np.where(np.isin(repeats["next_issue"].astype(str), classes), repeats["next_issue"].astype(str), OTHER)
    overall = np.bincount([index[c] for c in mapped if c in index], minlength=len(classes)).astype(float)
    overall = overall / max(overall.sum(), 1.0)
    tie_break = overall * 1e-3
    same = np.tile(tie_break, (len(test_issues), 1))
    own = np.array([index.get(i, -1) for i in test_issues])
    same[own >= 0, own[own >= 0]] += 1.0
    table = pd.crosstab(repeats["issue"].astype(str).to_numpy(), mapped)
    table = table.reindex(columns=classes, fill_value=0)
    shares = table.div(table.sum(axis=1), axis=0)
    transitions = np.array(shares.reindex(test_issues).to_numpy(dtype=float))
    missing = np.isnan(transitions).any(axis=1)
    transitions[missing] = overall
    return {SAME_ISSUE: same, TRANSITIONS: transitions + tie_break}


def _design(
    features: pd.DataFrame,
    text: TextInputs | None,
    labelled: pd.DataFrame,
    categories: dict[str, list[str]],
    train_rows: np.ndarray,
    hp: dict[str, Any],
    skipped: list[Skipped],
) -> tuple[TextHeads | None, pd.DataFrame]:
    """The boosters' input for every row: training rows get out-of-fold text-head scores."""
    X = as_model_input(features, categories)
    if text is None:
        return None, X
    fitted = fit_text_heads(
        text.rows(train_rows),
        head_targets(labelled.iloc[train_rows]),
        X.index[train_rows],
        labelled["contact_id"].to_numpy(dtype=str)[train_rows],
        hp,
        skipped,
    )
    if fitted is None:
        return None, X
    heads, oof = fitted
    rest = np.setdiff1d(np.arange(len(X)), train_rows)
    scores = pd.concat([oof, heads.transform(text.rows(rest), X.index[rest])]).loc[X.index]
    return heads, pd.concat([X, scores], axis=1)


HEAD_TARGETS: tuple[str, ...] = ("repeat", "explicit", "implicit")


def head_targets(labelled: pd.DataFrame) -> np.ndarray:
    """What the text heads learn, one column each: repeat, explicit repeat, implicit repeat."""
    repeat = labelled["is_repeat"].fillna(False).astype(bool).to_numpy()
    kind = labelled["repeat_type"].astype(str).to_numpy()
    return np.column_stack([repeat, repeat & (kind == "explicit"), repeat & (kind == "implicit")]).astype(int)


def fit_text_heads(
    text: TextInputs,
    targets: np.ndarray,
    index: pd.Index,
    keys: np.ndarray,
    hp: dict[str, Any],
    skipped: list[Skipped] | None = None,
) -> tuple[TextHeads, pd.DataFrame] | None:
    """Text heads fitted on training rows, and those rows' out-of-fold scores (indexed by ``index``).

    ``keys`` (the rows' contact ids) decide the folds, so the scores do not depend on the rows' order.

    A target whose rarer class has fewer rows with text than there are folds cannot be cross-fitted (one
    issue code: every repeat is explicit, so there is no implicit head); it is skipped, as is the word view
    when no word recurs across transcripts. None when nothing is left to fit.
    """
    skipped = skipped if skipped is not None else []
    settings = hp["text_heads"]
    words = settings.get("words")
    keep = text.has_text
    folds = settings["folds"]
    usable = []
    for k, name in enumerate(HEAD_TARGETS):
        rarer = int(min(targets[keep, k].sum(), (1 - targets[keep, k]).sum()))
        if rarer < folds:
            reason = f"{rarer} training transcripts in its rarer class (needs {folds})"
            skipped.append(Skipped(f"text head '{name}'", reason))
        else:
            usable.append(k)
    if not usable:
        return None
    grids = {view: settings["C_grid"] for view in text.embeddings}
    if words:
        grids["words"] = words["C_grid"]
    # The vocabulary is learnt and every transcript turned into TF-IDF once, for C's choice and the fits.
    names = [HEAD_TARGETS[k] for k in usable]
    heads = TextHeads(C={view: 1.0 for view in grids}, targets=names, words=words, folds=folds)
    try:
        matrices = heads.fit_vectorizer(text).matrices(text)
    except ValueError as exc:  # TfidfVectorizer: "After pruning, no terms remain"
        skipped.append(Skipped("text head word view", str(exc)))
        grids.pop("words", None)
        heads = TextHeads(C={view: 1.0 for view in grids}, targets=heads.targets, words=None, folds=folds)
        if not grids:
            return None
        matrices = heads.fit_vectorizer(text).matrices(text)
    chosen = targets[:, usable]
    kept_keys = np.asarray(keys)[keep]
    heads.C = {
        view: _choose_c(view, matrices[view][keep], chosen[keep, 0], grids[view], kept_keys) for view in grids
    }
    oof = heads.fit_oof(text, chosen, index, keys, matrices=matrices)
    return heads, oof


def _choose_c(view: str, matrix: Any, target: np.ndarray, grid: list[float], keys: np.ndarray) -> float:
    """Regularisation of a text head by cross-validated AUC: little data needs more of it."""
    from sklearn.model_selection import cross_val_score

    if len(grid) == 1 or min(target.sum(), len(target) - target.sum()) < 3:
        return float(grid[0])
    folds = keyed_folds(keys, target, 3)
    scores = [
        cross_val_score(logistic(c, sparse=view == "words"), matrix, target, cv=folds, scoring="roc_auc").mean()
        for c in grid
    ]
    best = float(grid[int(np.argmax(scores))])
    log.info("text head %s: C=%s (cross-validated AUC %s)", view, best, [round(s, 4) for s in scores])
    return best


def fingerprint(contacts: pd.DataFrame) -> str:
    """A short hash of the validated input: two runs on the same data share it."""
    hashed = pd.util.hash_pandas_object(contacts, index=False).to_numpy()
    return hashlib.sha256(hashed.tobytes()).hexdigest()[:16]


def _fit_repeat(
    X_train: pd.DataFrame,
    y_train: np.ndarray,
    X_cal: pd.DataFrame,
    y_cal: np.ndarray,
    hp: dict[str, Any],
    train_times: np.ndarray | None = None,
    folds: int = 5,
    skipped: list[Skipped] | None = None,
) -> tuple[lgb.LGBMClassifier, Calibrated]:
    """The repeat booster and its calibration: on the calibration slice, or out-of-fold on the training slice
    when there is none (``X_cal`` empty)."""
    params = dict(hp["repeat"])
    stopping = hp.get("early_stopping")
    if stopping and train_times is not None:
        # How many trees the data supports: fit on the earlier part of the training slice, stop on its
        # latest part (never on calibration or test), then refit on the whole slice with that many.
        order = np.argsort(train_times, kind="stable")
        cut = int(len(order) * (1 - stopping["fraction"]))
        early, late = y_train[order[:cut]].astype(int), y_train[order[cut:]].astype(int)
        if min(len(np.unique(early)), len(np.unique(late))) < 2:
            if skipped is not None:
                reason = "the latest training rows hold one class only: all trees kept"
                skipped.append(Skipped("early stopping", reason))
        else:
            probe = lgb.LGBMClassifier(objective="binary", random_state=0, n_jobs=2, verbose=-1, **params)
            probe.fit(
                X_train.iloc[order[:cut]], early,
                eval_X=(X_train.iloc[order[cut:]],),
                eval_y=(late,),
                callbacks=[lgb.early_stopping(stopping["rounds"], verbose=False)],
            )  # fmt: skip
            best = int(probe.best_iteration_ or params["n_estimators"])
            params["n_estimators"] = min(params["n_estimators"], max(stopping["min_trees"], best))

    def booster_on(X: pd.DataFrame, y: np.ndarray) -> lgb.LGBMClassifier:
        model = lgb.LGBMClassifier(objective="binary", random_state=0, n_jobs=2, verbose=-1, **params)
        return model.fit(X, y.astype(int))

    booster = booster_on(X_train, y_train)
    calibrated = Calibrated(booster, hp["calibration"])
    if len(X_cal):
        return booster, calibrated.fit(X_cal, y_cal.astype(int))
    # Out-of-fold: each training row scored by a booster that did not see it, the map fitted on those.
    from sklearn.model_selection import StratifiedKFold

    scores = np.empty(len(y_train))
    for fit_rows, held in StratifiedKFold(folds, shuffle=True, random_state=0).split(X_train, y_train.astype(int)):
        fold_model = Calibrated(booster_on(X_train.iloc[fit_rows], y_train[fit_rows]), hp["calibration"])
        scores[held] = fold_model.score(X_train.iloc[held])
    return booster, calibrated.fit_scores(scores, y_train.astype(int))


def _fit_next_issue(
    X_train: pd.DataFrame,
    labelled_train: pd.DataFrame,
    hp: dict[str, Any],
    skipped: list[Skipped] | None = None,
) -> tuple[Any, list[str]]:
    repeats = labelled_train["is_repeat"].astype(bool).to_numpy()
    target = labelled_train["next_issue"].astype(str).to_numpy()[repeats]
    params = dict(hp["next_issue"])
    min_examples = params.pop("min_class_examples")
    classes = next_issue_classes(pd.Series(target).value_counts(), min_examples)
    target = np.where(np.isin(target, classes), target, OTHER)
    if len(classes) < 2:
        if skipped is not None:
            skipped.append(Skipped("next-issue model", f"every training repeat has the same next issue ({classes[0]})"))
        return ConstantClasses(classes), classes
    objective = "binary" if len(classes) == 2 else "multiclass"
    model = lgb.LGBMClassifier(objective=objective, random_state=0, n_jobs=2, verbose=-1, **params)
    model.fit(X_train[repeats], pd.Categorical(target, categories=classes).codes)
    return _ClassNames(model, classes), classes


def next_issue_classes(counts: pd.Series, min_examples: int) -> list[str]:
    """The next issues the multiclass model tells apart: those with enough repeats, the rest as one ``other``."""
    frequent = counts[counts >= min_examples].index.astype(str).tolist()
    return sorted({*frequent, *([OTHER] if (counts < min_examples).any() else [])})


class _ClassNames:
    """A fitted multiclass model whose columns follow ``classes`` (LightGBM sees only codes)."""

    def __init__(self, model: lgb.LGBMClassifier, classes: list[str]) -> None:
        self.model = model
        self.classes_ = classes

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        proba = np.zeros((len(X), len(self.classes_)))
        seen = booster_predict(self.model, X)
        if seen.ndim == 1:  # two classes: LightGBM gives only the second one's probability
            seen = np.column_stack([1 - seen, seen])
        proba[:, self.model.classes_] = seen
        return proba


P90 = 0.9


def _fit_timing(
    X_train: pd.DataFrame,
    labelled_train: pd.DataFrame,
    X_cal: pd.DataFrame,
    labelled_cal: pd.DataFrame,
    hp: dict[str, Any],
    folds: int = 5,
    skipped: list[Skipped] | None = None,
) -> tuple[lgb.LGBMRegressor, lgb.LGBMRegressor, float]:
    """Median and 90% quantile of hours to repeat, and the conformal correction of the 90% one.

    A quantile booster's nominal 90% covers less out of sample (72-82% on real logs); conformalised
    quantile regression shifts it, in log hours, by the residual quantile that makes it cover 90% of the
    calibration slice's repeats (out-of-fold training repeats when there is no calibration slice).
    """

    def targets(labelled: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
        repeats = labelled["is_repeat"].fillna(False).astype(bool).to_numpy()
        # Quantiles survive monotone transforms: fit on log hours, where the errors are even.
        return repeats, np.log1p(labelled["hours_to_repeat"].to_numpy()[repeats])

    def quantile_model(alpha: float, X: pd.DataFrame, target: np.ndarray) -> lgb.LGBMRegressor:
        params = {"random_state": 0, "n_jobs": 2, "verbose": -1, **hp["timing"]}
        return lgb.LGBMRegressor(objective="quantile", alpha=alpha, **params).fit(X, target)

    repeats, target = targets(labelled_train)
    median, p90 = (quantile_model(alpha, X_train[repeats], target) for alpha in (0.5, P90))
    if len(X_cal):
        cal_repeats, cal_target = targets(labelled_cal)
        residual = cal_target - booster_predict(p90, X_cal[cal_repeats])
    else:
        from sklearn.model_selection import KFold

        X_rep = X_train[repeats]
        residual = np.empty(len(target))
        for fit_rows, held in KFold(folds, shuffle=True, random_state=0).split(X_rep):
            fold = quantile_model(P90, X_rep.iloc[fit_rows], target[fit_rows])
            residual[held] = target[held] - booster_predict(fold, X_rep.iloc[held])
    n = len(residual)
    if n < MIN_CONFORMAL_REPEATS:
        if skipped is not None:
            reason = f"{n} repeats to calibrate on (needs {MIN_CONFORMAL_REPEATS})"
            skipped.append(Skipped("timing interval calibration", reason))
        return median, p90, 0.0
    level = min(1.0, np.ceil((n + 1) * P90) / n)
    return median, p90, float(np.quantile(residual, level, method="higher"))


MIN_CONFORMAL_REPEATS = 10


def _tfidf_baseline(
    contacts: pd.DataFrame, tr: np.ndarray, te: np.ndarray, y: np.ndarray, hp: dict[str, Any]
) -> np.ndarray:
    texts = contacts["transcript"].map(redact)
    baseline = TfidfBaseline(hp).fit(texts.iloc[tr].tolist(), y[tr].astype(int))
    return baseline.predict(texts.iloc[te].tolist())


class TfidfBaseline:
    """The text baseline every embedding model must beat: TF-IDF words and a logistic regression."""

    def __init__(self, hp: dict[str, Any]) -> None:
        params = hp["tfidf_baseline"]
        self.vectorizer = TfidfVectorizer(
            max_features=params["max_features"], ngram_range=(1, params["ngram_max"]), sublinear_tf=True, min_df=2
        )
        self.model = LogisticRegression(C=params["C"], max_iter=2000)

    def fit(self, redacted: list[str], y: np.ndarray) -> TfidfBaseline:
        self.model.fit(self.vectorizer.fit_transform(redacted), y)
        return self

    def predict(self, redacted: list[str]) -> np.ndarray:
        return self.model.predict_proba(self.vectorizer.transform(redacted))[:, 1]
