"""Training, written once: the time split, the three models, the baselines beside them, their evaluation.

``fit_on`` runs on any ``compute.base.Backend``: the log in this process (``compute.local``, what ``fit``
uses) or on a Dask cluster (``compute.dask``). Split by close time into train / calibration / test
(``split``); each slice keeps only contacts whose label was known before the next slice starts (an embargo
of one window), so nothing fitted on one slice has seen the outcome of a contact in the next. Censored
contacts are never fitted or scored against; they are counted.
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib import resources
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import yaml
from sklearn.base import BaseEstimator
from sklearn.utils.validation import check_is_fitted

from predictor.compute.base import (
    LABEL,
    LABEL_COLUMNS,
    TFIDF,
    Backend,
    Booster,
    Rows,
    Slicing,
    Target,
    TextSample,
    labels_of,
)
from predictor.config import Hyperparams, Settings
from predictor.contacts.labels import DataEnd, data_end
from predictor.features.build import CATEGORICAL
from predictor.features.embed import embedding_for
from predictor.model import evaluate
from predictor.model.evaluate import Baseline
from predictor.model.fitted import (
    OTHER,
    P90,
    Calibrated,
    ClassNames,
    ConstantClasses,
    RepeatContactModel,
    TextHeads,
    TextInputs,
    TfidfBaseline,
    as_matrix,
    booster_predict,
    levels_from_counts,
)
from predictor.model.split import (
    CALIBRATION,
    TEST,
    TRAIN,
    Split,
    TrainingDataError,
    decide,
    drift_warning,
    split_boundaries,
    time_split,
)

__all__ = [
    "Baseline",
    "RepeatContactEstimator",
    "TrainingDataError",
    "TrainingResult",
    "fit",
    "fit_on",
    "metrics_summary",
    "time_split",
]

log = logging.getLogger(__name__)


def load_hyperparams(path: Path | None = None) -> dict[str, Any]:
    """The hyperparameters (the packaged file, or ``path``), checked by ``config.Hyperparams``; as plain data,
    holding only what the file sets (LightGBM keeps its own defaults for the rest).

    Raises ``TrainingDataError`` naming the key when the file is not valid."""
    from pydantic import ValidationError

    source = Path(path) if path else resources.files("predictor.data").joinpath("hyperparams.yaml")
    if path and not Path(path).is_file():
        raise TrainingDataError(f"{source}: no such hyperparameter file (PREDICTOR_HYPERPARAMS_PATH)")
    try:
        raw = yaml.safe_load(source.read_text()) or {}
    except yaml.YAMLError as exc:
        raise TrainingDataError(f"{source}: not valid YAML ({str(exc).splitlines()[0]})") from None
    if not isinstance(raw, dict):
        raise TrainingDataError(
            f"{source}: a hyperparameter file is a YAML mapping (see predictor/data/hyperparams.yaml)"
        )
    try:
        return Hyperparams.model_validate(raw).model_dump(exclude_unset=True)
    except ValidationError as exc:
        first = exc.errors()[0]
        where = ".".join(str(p) for p in first["loc"])
        raise TrainingDataError(f"{source}: {where}: {first['msg']} ({exc.error_count()} problem(s))") from None


def training_constants() -> dict[str, Any]:
    """The fixed numbers of the features, the model and training, recorded beside the hyperparameters."""
    from predictor.features import build as features
    from predictor.model import fitted as model

    return {
        "history_windows_days": list(features.HISTORY_WINDOWS_DAYS),
        "agent_prior_strength": features.AGENT_PRIOR_STRENGTH,
        "default_repeat_rate": features.DEFAULT_REPEAT_RATE,
        "customer_prior_strength": features.CUSTOMER_PRIOR_STRENGTH,
        "closing_words_without_turns": features.CLOSING_WORDS_WITHOUT_TURNS,
        "min_transition_examples": model.MIN_TRANSITION_EXAMPLES,
        "top_k_next_issues": model.TOP_K,
        "min_conformal_repeats": MIN_CONFORMAL_REPEATS,
        "timing_interval": P90,
    }


@dataclass
class Skipped:
    """What could not be fitted on this log, and why; the run records it and trains the rest."""

    stage: str
    reason: str


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
    # The model's figures per channel, issue, transcript presence and length, customer tenure.
    by_slice: pd.DataFrame = field(default_factory=pd.DataFrame)
    hyperparams: dict[str, Any] = field(default_factory=dict)  # as used (load_hyperparams' output)


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
    """``fit_on`` validated contacts held in this process (``RepeatContactEstimator(...).fit(...).result_``)."""
    estimator = RepeatContactEstimator(settings, hyperparams=hyperparams, use_text=use_text, ablation=ablation)
    return estimator.fit(contacts, oracle=oracle, plots_dir=plots_dir, stage=stage).result_


def fit_on(
    backend: Backend,
    settings: Settings,
    *,
    use_text: bool = True,
    ablation: bool = True,
    oracle: pd.DataFrame | None = None,
    plots_dir: Path | None = None,
    hyperparams: dict[str, Any] | None = None,
    stage: Callable[[str], None] = lambda _: None,
) -> TrainingResult:
    """Label, split, build features, fit the models and the baselines, and evaluate them on the test slice,
    wherever ``backend`` holds the log (in this process or on a cluster).

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
        log.debug("training: %s took %.1f s", name, timings[name])
        clock = now

    stage("labels")
    times = backend.times()
    if not len(times):
        raise TrainingDataError("the log holds no valid contacts to train on")
    end = data_end(times, settings.labels)
    boundaries = split_boundaries(times["closed_at"], settings, end.at)
    del times
    split = decide(backend.slice_summary(boundaries, end.at), boundaries, settings)
    warnings = [w for w in (end.warning(settings.labels.repeat_window_days), drift_warning(split, settings)) if w]
    if use_text:  # the log's languages choose the embedding (the model keeps it, so the service embeds alike)
        embedding, note = embedding_for(settings.embedding, backend.languages())
        if note:
            settings = settings.model_copy(update={"embedding": embedding})
            backend.settings = settings
            split.notes.append(note)
    # Returned as data (split.notes, warnings, skipped) and printed by the caller: logged at DEBUG only.
    for message in [*split.notes, *warnings]:
        log.debug(message)
    skipped: list[Skipped] = []
    # What a customer's own known rate is shrunk towards: the training slice's repeat rate.
    prior = split.repeats["train"] / split.counts["train"]
    lap("labels")

    stage("features and embeddings")
    feature_columns = backend.build(Slicing(boundaries, end.at, split.calibration_mode), prior, use_text)
    split.train, split.calibration, split.test = (backend.positions(c) for c in (TRAIN, CALIBRATION, TEST))
    has_text = use_text and backend.has_text()
    if use_text and not has_text:
        skipped.append(Skipped("text features", "no transcript has any text: trained on metadata and history"))
    dropped = set(hp.get("features", {}).get("drop") or [])
    if unknown := sorted(dropped - set(feature_columns)):
        raise TrainingDataError(
            f"hyperparams features.drop names no feature: {unknown}; the features are {sorted(feature_columns)}"
        )
    columns = [c for c in feature_columns if c not in dropped]
    train_rows = Rows(TRAIN)
    found = backend.level_counts(train_rows, [c for c in CATEGORICAL if c in columns])
    categories = {c: levels_from_counts(c, counts) for c, counts in found.items()}
    lap("features")

    stage("text heads")
    heads = tfidf = None
    fraction = min(1.0, settings.compute.text_head_rows / max(split.counts["train"], 1))
    if has_text:
        sample = backend.text_sample(train_rows, fraction)
        heads, oof = _text_heads(sample, hp, skipped, settings.seed)
        try:
            tfidf = TfidfBaseline(hp).fit(sample.inputs.texts, head_targets(sample.labels)[:, 0])
        except ValueError as exc:  # an empty vocabulary: too few words repeat across transcripts
            skipped.append(Skipped("tf-idf baseline", str(exc)))
        if heads is not None or tfidf is not None:
            backend.add_text(heads, oof, tfidf)
    backend.design(categories)
    X_columns = [*columns, *(heads.columns if heads is not None else [])]
    lap("text_heads")

    stage("repeat model")
    repeat_booster, repeat = fit_repeat(backend, X_columns, split, hp, settings, skipped)
    lap("repeat_model")

    stage("next issue and timing")
    train_labels = labels_of(backend.collect(train_rows, [LABEL + c for c in LABEL_COLUMNS]))
    next_model, next_classes = _fit_next_issue(backend, X_columns, train_labels, hp, settings, skipped)
    hours_median, hours_p90, p90_offset = _fit_timing(backend, X_columns, split, hp, settings, skipped)
    lap("next_issue_and_timing")

    embedding_config = settings.embedding if has_text else None
    model = RepeatContactModel(
        label_config=settings.labels,
        embedding_config=embedding_config,
        categories=categories,
        feature_columns=columns,
        text_heads=heads,
        repeat=repeat,
        repeat_booster=repeat_booster,
        next_issue=next_model,
        next_issue_classes=next_classes,
        hours_median=hours_median,
        hours_p90=hours_p90,
        issue_codes=backend.issue_codes(),
        metadata={"trained_on": split.counts, "boundaries": split.boundaries, "data_end": str(end.at)},
        hours_p90_log_offset=p90_offset,
        customer_prior=prior,
    )

    stage("baselines")
    test = backend.collect(Rows(TEST))
    scores: dict[str, np.ndarray] = {}
    rates = train_labels["is_repeat"].astype(float).groupby(train_labels["issue"].to_numpy()).mean()
    base_rate = float(train_labels["is_repeat"].astype(float).mean())
    scores[Baseline.ISSUE_RATE] = test["issue_code"].map(rates).fillna(base_rate).to_numpy()
    _, meta_model = fit_repeat(backend, columns, split, hp, settings, [])
    scores[Baseline.METADATA] = meta_model.predict_proba(test[columns])[:, 1]
    if tfidf is not None:
        scores[Baseline.TFIDF] = test[TFIDF].to_numpy()
    variant = getattr(backend, "variant", None)  # the truncation ablation re-embeds the log: in-process only
    if ablation and has_text and variant is not None and settings.embedding.truncation == "head_tail":
        scores[Baseline.HEAD_ONLY] = _head_only_scores(
            backend, variant, columns, categories, fraction, split, hp, settings
        )
    lap("baselines")

    stage("evaluation")
    next_baselines = evaluate.next_issue_baselines(train_labels, test["issue_code"].to_numpy(dtype=str), next_classes)
    evaluation = evaluate.report(
        model,
        test[X_columns],
        labels_of(test),
        test["transcript_words"].to_numpy(),
        {str(name): value for name, value in scores.items()},
        settings,
        oracle=oracle,
        plots_dir=plots_dir,
        next_issue_baselines=next_baselines,
    )
    lap("evaluation")
    for item in skipped:
        log.debug("skipped %s: %s", item.stage, item.reason)

    params = training_params(settings, hp, backend.embedding_model() if has_text else None, heads, split.counts)
    params |= {"calibration_mode": split.calibration_mode, "data_end": str(end.at), "data_end_rule": end.rule}
    params |= backend.params() | {"text_head_rows": int(min(split.counts["train"], settings.compute.text_head_rows))}
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
        data_fingerprint=backend.fingerprint(),
        test_contacts=backend.test_contacts() if hasattr(backend, "test_contacts") else None,
        data_end=end,
        skipped=skipped,
        warnings=warnings,
        next_issue_baselines=evaluation.next_issue_baselines,
        by_slice=evaluation.by_slice,
        hyperparams=hp,
    )


class RepeatContactEstimator(BaseEstimator):
    """The model as a scikit-learn estimator over the one pipeline.

    ``__init__`` stores configuration only (``get_params`` / ``clone`` work); ``fit`` labels, splits and
    fits on validated contacts (in this process, or on ``backend``), returns self, and leaves what it learnt
    in attributes ending in ``_``: ``model_`` (the ``RepeatContactModel`` that is registered and served)
    and ``result_`` (metrics, split, baselines). Prediction takes contacts and what was known before them.
    """

    def __init__(
        self,
        settings: Settings | None = None,
        hyperparams: dict[str, Any] | None = None,
        use_text: bool = True,
        ablation: bool = False,
    ) -> None:
        self.settings = settings
        self.hyperparams = hyperparams
        self.use_text = use_text
        self.ablation = ablation

    def fit(
        self,
        contacts: pd.DataFrame | None = None,
        y: None = None,
        *,
        backend: Backend | None = None,
        oracle: pd.DataFrame | None = None,
        plots_dir: Path | None = None,
        stage: Callable[[str], None] = lambda _: None,
    ) -> RepeatContactEstimator:
        """Fit on ``contacts`` (validated), or on the log ``backend`` holds; ``y`` is derived, never given."""
        from predictor.compute.local import LocalBackend

        settings = self.settings or Settings()
        if backend is None:
            if contacts is None:
                raise ValueError("fit needs the contacts, or a backend that holds them")
            backend = LocalBackend(contacts, settings)
        self.result_ = fit_on(
            backend,
            settings,
            use_text=self.use_text,
            ablation=self.ablation,
            oracle=oracle,
            plots_dir=plots_dir,
            hyperparams=self.hyperparams,
            stage=stage,
        )
        self.model_ = self.result_.model
        self.next_issue_classes_ = self.model_.next_issue_classes
        return self

    def predict_proba(self, contacts: pd.DataFrame, history: pd.DataFrame | None = None) -> np.ndarray:
        """Probability of no repeat and of a repeat within the window, one row per contact."""
        p = self._predict(contacts, history)["repeat_probability"].to_numpy()
        return np.column_stack([1 - p, p])

    def predict_next_issue(self, contacts: pd.DataFrame, history: pd.DataFrame | None = None) -> pd.DataFrame:
        """The likeliest next issues and their probabilities given a repeat (top three per contact)."""
        out = self._predict(contacts, history)
        return out[[c for c in out.columns if c == "contact_id" or c.startswith("next_issue_")]]

    def predict_hours(self, contacts: pd.DataFrame, history: pd.DataFrame | None = None) -> pd.DataFrame:
        """Median and 90% bound of the hours from close to the repeat, if there is one."""
        return self._predict(contacts, history)[["contact_id", "hours_to_repeat_median", "hours_to_repeat_p90"]]

    def _predict(self, contacts: pd.DataFrame, history: pd.DataFrame | None) -> pd.DataFrame:
        check_is_fitted(self, "model_")
        return self.model_.predict(contacts, history)


def _text_heads(
    sample: TextSample, hp: dict[str, Any], skipped: list[Skipped], seed: int
) -> tuple[TextHeads | None, Any]:
    targets = head_targets(sample.labels)
    fitted = fit_text_heads(sample.inputs, targets, pd.Index(sample.keys), sample.keys, hp, skipped, seed=seed)
    return fitted if fitted is not None else (None, None)


def _head_only_scores(
    backend: Backend,
    variant: Callable[[], Any],
    columns: list[str],
    categories: dict[str, list[str]],
    fraction: float,
    split: Split,
    hp: dict[str, Any],
    settings: Settings,
) -> np.ndarray:
    """What reading the close of a conversation is worth: the repeat model with the embedding cut to the
    head of a long transcript and no closing-turns view (the word view, which reads everything, stays)."""
    with variant():
        sample = backend.text_sample(Rows(TRAIN), fraction, truncation="head")
        heads, oof = _text_heads(sample, hp, [], settings.seed)
        if heads is not None:
            backend.add_text(heads, oof, None)
        backend.design(categories)
        X_columns = [*columns, *(heads.columns if heads is not None else [])]
        _, model = fit_repeat(backend, X_columns, split, hp, settings, [])
        return model.predict_proba(backend.collect(Rows(TEST), X_columns)[X_columns])[:, 1]


def metrics_summary(result: TrainingResult, registration: Any | None = None) -> dict[str, Any]:
    """The run's figures as plain JSON-ready data (``predictor train --metrics-json``, MLflow's tables)."""

    def number(value: Any) -> float | None:
        value = float(value)
        return None if np.isnan(value) else value

    repeat = {str(name): {k: number(v) for k, v in row.items()} for name, row in result.metrics.iterrows()}
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
        "by_slice": [
            {k: (number(v) if isinstance(v, float) else v) for k, v in row.items()}
            for row in result.by_slice.to_dict(orient="records")
        ],
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
        "text_heads": ",".join(f"{view}:C={c}" for view, c in heads.C_.items()) if heads else "none",
        "calibration": hp["calibration"],
        "features_dropped": ",".join(sorted(hp.get("features", {}).get("drop") or [])) or "none",
        **{f"split_{k}": v for k, v in counts.items()},
        **{f"repeat_{k}": v for k, v in hp["repeat"].items()},
    }


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
    seed: int = 0,
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
    heads = TextHeads(grids, targets=names, words=words, folds=folds, seed=seed)
    try:
        matrices = heads.fit_vectorizer(text).matrices(text)
    except ValueError as exc:  # TfidfVectorizer: "After pruning, no terms remain"
        skipped.append(Skipped("text head word view", str(exc)))
        grids.pop("words", None)
        if not grids:
            return None
        heads = TextHeads(grids, targets=heads.targets, words=None, folds=folds, seed=seed)
        matrices = heads.fit_vectorizer(text).matrices(text)
    oof = heads.fit_oof(text, targets[:, usable], index, keys, matrices=matrices)
    return heads, oof


def next_issue_classes(counts: pd.Series, min_examples: int) -> list[str]:
    """The next issues the multiclass model tells apart: those with enough repeats, the rest as one ``other``."""
    frequent = counts[counts >= min_examples].index.astype(str).tolist()
    return sorted({*frequent, *([OTHER] if (counts < min_examples).any() else [])})


def _booster(kind: str, params: dict[str, Any], settings: Settings) -> Booster:
    return Booster(kind, {"random_state": settings.seed, **params})


IS_REPEAT = Target("is_repeat", integer=True)
HOURS = Target("hours_to_repeat", log1p=True)  # quantiles survive monotone maps: fit where errors are even


def fit_repeat(
    backend: Backend,
    columns: list[str],
    split: Split,
    hp: dict[str, Any],
    settings: Settings,
    skipped: list[Skipped],
) -> tuple[Any, Calibrated]:
    """The repeat booster and its calibration: on the calibration slice, or out-of-fold on the training
    slice when there is none."""
    params = {"objective": "binary", **hp["repeat"]}
    stopping = hp.get("early_stopping")
    y = LABEL + "is_repeat"
    if stopping:
        # How many trees the data supports: fit on the earlier part of the training slice, stop on its
        # latest part (never on calibration or test), then refit on the whole slice with that many.
        closed = np.sort(backend.collect(Rows(TRAIN), [])["closed_us"].to_numpy())
        cut = int(closed[int(len(closed) * (1 - stopping["fraction"]))])
        late = backend.collect(Rows(TRAIN, closed_from_us=cut), [*columns, y])
        late_y = IS_REPEAT.values(late)
        early_repeats = split.repeats["train"] - int(late_y.sum())
        early_others = split.counts["train"] - len(late) - early_repeats
        if min(early_repeats, early_others) < 1 or len(np.unique(late_y)) < 2:
            skipped.append(Skipped("early stopping", "the latest training rows hold one class only: all trees kept"))
        else:
            probe = backend.fit(
                _booster("classifier", params, settings),
                Rows(TRAIN, closed_before_us=cut),
                columns,
                IS_REPEAT,
                stop=(Rows(TRAIN, closed_from_us=cut), stopping["rounds"]),
            )
            best = patience(probe, late[columns], late_y, stopping["rounds"])
            params["n_estimators"] = min(params["n_estimators"], max(stopping["min_trees"], best))
    booster = backend.fit(_booster("classifier", params, settings), Rows(TRAIN), columns, IS_REPEAT)
    calibrated = Calibrated(booster, hp["calibration"])
    if split.calibration_mode == "slice":
        calibration = backend.collect(Rows(CALIBRATION), [*columns, y])
        return booster, calibrated.fit(calibration[columns], IS_REPEAT.values(calibration))
    # Out-of-fold: each training row scored by a booster that did not see it, the map fitted on those.
    folds = settings.split.calibration_folds
    scores, labels = [], []
    for k in range(folds):
        fold_booster = backend.fit(
            _booster("classifier", params, settings), Rows(TRAIN, folds=folds, fold=k), columns, IS_REPEAT
        )
        held = backend.collect(Rows(TRAIN, folds=folds, fold=k, held=True), [*columns, y])
        scores.append(Calibrated(fold_booster, hp["calibration"]).score(held[columns]))
        labels.append(IS_REPEAT.values(held))
    return booster, calibrated.fit_scores(np.concatenate(scores), np.concatenate(labels))


def patience(model: Any, X: pd.DataFrame, y: np.ndarray, rounds: int) -> int:
    """The tree count early stopping picks: best log-loss on (X, y), stopped ``rounds`` trees after it.

    Computed here, tree by tree, on rows collected here: lightgbm.dask evaluates a validation set only on
    the workers that hold parts of it, and one rule must serve both backends.
    """
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


def _fit_next_issue(
    backend: Backend,
    columns: list[str],
    train_labels: pd.DataFrame,
    hp: dict[str, Any],
    settings: Settings,
    skipped: list[Skipped],
) -> tuple[Any, list[str]]:
    repeats = train_labels["is_repeat"].fillna(False).astype(bool).to_numpy()
    params = dict(hp["next_issue"])
    min_examples = params.pop("min_class_examples")
    classes = next_issue_classes(train_labels["next_issue"].astype(str)[repeats].value_counts(), min_examples)
    if len(classes) < 2:
        skipped.append(Skipped("next-issue model", f"every training repeat has the same next issue ({classes[0]})"))
        return ConstantClasses(classes), classes
    params["objective"] = "binary" if len(classes) == 2 else "multiclass"
    target = Target("next_issue", classes=tuple(classes), other=OTHER)
    model = backend.fit(_booster("classifier", params, settings), Rows(TRAIN, repeats_only=True), columns, target)
    return ClassNames(model, classes), classes


def _fit_timing(
    backend: Backend,
    columns: list[str],
    split: Split,
    hp: dict[str, Any],
    settings: Settings,
    skipped: list[Skipped],
) -> tuple[Any, Any, float]:
    """Median and 90% quantile of hours to repeat, and the conformal correction of the 90% one.

    A quantile booster's nominal 90% covers less out of sample (72-82% on real logs); conformalised
    quantile regression shifts it, in log hours, by the residual quantile that makes it cover 90% of the
    calibration slice's repeats (out-of-fold training repeats when there is no calibration slice).
    """

    def quantile(alpha: float, rows: Rows) -> Any:
        return backend.fit(
            _booster("regressor", {"objective": "quantile", "alpha": alpha, **hp["timing"]}, settings),
            rows,
            columns,
            HOURS,
        )

    repeats = Rows(TRAIN, repeats_only=True)
    median, p90 = quantile(0.5, repeats), quantile(P90, repeats)
    needed = [*columns, LABEL + "hours_to_repeat"]
    if split.calibration_mode == "slice":
        held = backend.collect(Rows(CALIBRATION, repeats_only=True), needed)
        residual = HOURS.values(held) - booster_predict(p90, held[columns])
    else:
        folds, parts = settings.split.calibration_folds, []
        for k in range(folds):
            fold = quantile(P90, Rows(TRAIN, repeats_only=True, folds=folds, fold=k))
            held = backend.collect(Rows(TRAIN, repeats_only=True, folds=folds, fold=k, held=True), needed)
            parts.append(HOURS.values(held) - booster_predict(fold, held[columns]))
        residual = np.concatenate(parts)
    n = len(residual)
    if n < MIN_CONFORMAL_REPEATS:
        skipped.append(
            Skipped("timing interval calibration", f"{n} repeats to calibrate on (needs {MIN_CONFORMAL_REPEATS})")
        )
        return median, p90, 0.0
    level = min(1.0, np.ceil((n + 1) * P90) / n)
    return median, p90, float(np.quantile(residual, level, method="higher"))


MIN_CONFORMAL_REPEATS = 10
