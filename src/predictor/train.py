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
from predictor.labels import derive, epoch_us
from predictor.model import (
    Calibrated,
    RepeatContactModel,
    TextHeads,
    TextInputs,
    booster_predict,
    categorical_levels,
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


@dataclass
class Split:
    train: np.ndarray
    calibration: np.ndarray
    test: np.ndarray
    boundaries: dict[str, str]
    counts: dict[str, int]


def split_boundaries(closed: pd.Series, settings: Settings) -> tuple[pd.Timestamp, pd.Timestamp]:
    """Where calibration and test start: quantiles of the close times of the whole log (censored included)."""
    test_start = closed.quantile(1 - settings.split.test_fraction)
    cal_start = closed.quantile(1 - settings.split.test_fraction - settings.split.calibration_fraction)
    return pd.Timestamp(cal_start), pd.Timestamp(test_start)


# Which slice a labelled row falls in (``slice_codes``): the cluster path carries these codes per partition.
NOT_USED, TRAIN, CALIBRATION, TEST = 0, 1, 2, 3


def slice_codes(
    labelled: pd.DataFrame, boundaries: tuple[pd.Timestamp, pd.Timestamp], settings: Settings
) -> np.ndarray:
    """Each row's slice; rows whose window is open, or whose label would leak into the next slice, are unused."""
    cal_start, test_start = boundaries
    closed = labelled["closed_at"]
    window = pd.Timedelta(days=settings.labels.repeat_window_days)
    # Whole window observed, not merely "uncensored": see labels.derive on outcome-dependent censoring.
    known = labelled["window_complete"].to_numpy(dtype=bool)
    # A row's label is known at most one window after its close: that must be before the next slice.
    codes = np.full(len(labelled), NOT_USED, dtype=np.int8)
    codes[known & (closed <= cal_start - window).to_numpy()] = TRAIN
    codes[known & ((closed > cal_start) & (closed <= test_start - window)).to_numpy()] = CALIBRATION
    codes[known & (closed > test_start).to_numpy()] = TEST
    return codes


def time_split(labelled: pd.DataFrame, settings: Settings) -> Split:
    """Positions of train / calibration / test rows; censored rows and embargoed rows excluded."""
    boundaries = split_boundaries(labelled["closed_at"], settings)
    codes = slice_codes(labelled, boundaries, settings)
    window_open = int((~labelled["window_complete"].to_numpy(dtype=bool)).sum())
    return Split(
        train=np.flatnonzero(codes == TRAIN),
        calibration=np.flatnonzero(codes == CALIBRATION),
        test=np.flatnonzero(codes == TEST),
        boundaries=boundary_strings(boundaries),
        counts=counts_of(len(labelled), int(labelled["censored"].sum()), window_open, codes),
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
    """Label, split, build features, fit the models and the baselines, and evaluate them on the test slice."""
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
    labelled = derive(contacts, settings.labels)
    split = time_split(labelled, settings)
    if min(len(split.train), len(split.calibration), len(split.test)) < 20:
        raise ValueError(f"too few labelled contacts for a time split: {split.counts}")
    lap("labels")

    has_text = use_text and bool((contacts["transcript"].str.strip() != "").any())
    if use_text and not has_text:
        log.warning("no transcript has any text: training without text features")
    embedding_config = settings.embedding if has_text else None
    embedder = Embedder(embedding_config) if embedding_config else None

    stage("features and embeddings")
    feature_set = build(contacts, embedder=embedder, labels=settings.labels, progress=True)
    full = feature_set.frame
    features = full[feature_set.metadata_columns]
    text = TextInputs.from_features(feature_set) if feature_set.views else None
    categories = categorical_levels(features.iloc[split.train])
    lap("features")
    y = labelled["is_repeat"].astype("float").to_numpy()
    tr, cal, te = split.train, split.calibration, split.test
    stage("text heads")
    heads, X = _design(features, text, labelled, categories, tr, hp)
    lap("text_heads")

    stage("repeat model")
    times = epoch_us(contacts["closed_at"])
    repeat_booster, repeat = _fit_repeat(X.iloc[tr], y[tr], X.iloc[cal], y[cal], hp, times[tr])
    lap("repeat_model")

    stage("next issue and timing")
    issue_codes = sorted(contacts["issue"].unique().tolist())
    next_model, next_classes = _fit_next_issue(X.iloc[tr], labelled.iloc[tr], hp)
    hours_median, hours_p90 = _fit_timing(X.iloc[tr], labelled.iloc[tr], hp)
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
        metadata={"trained_on": split.counts, "boundaries": split.boundaries},
    )

    stage("baselines")
    scores: dict[str, np.ndarray] = {}
    rates = pd.Series(y[tr]).groupby(contacts["issue"].iloc[tr].to_numpy()).mean()
    scores["issue base rate"] = contacts["issue"].iloc[te].map(rates).fillna(y[tr].mean()).to_numpy()
    X_meta = as_model_input(features, categories)
    _, meta_model = _fit_repeat(X_meta.iloc[tr], y[tr], X_meta.iloc[cal], y[cal], hp, times[tr])
    scores["metadata + history (no text)"] = meta_model.predict_proba(X_meta.iloc[te])[:, 1]
    if has_text:
        scores["tf-idf + logistic regression"] = _tfidf_baseline(contacts, tr, te, y, hp)
        if ablation and settings.embedding.truncation == "head_tail":
            # What reading the close of a conversation is worth: the embedding sees only the head of a long
            # transcript and there is no closing-turns view (the word view, which reads everything, stays).
            head = embedder.encode(contacts["transcript"].tolist(), truncation="head", progress=True)
            head_text = TextInputs({"whole": head}, text.texts, text.has_text)
            _, X_head = _design(features, head_text, labelled, categories, tr, hp)
            _, head_model = _fit_repeat(X_head.iloc[tr], y[tr], X_head.iloc[cal], y[cal], hp, times[tr])
            scores[ABLATION] = head_model.predict_proba(X_head.iloc[te])[:, 1]
    lap("baselines")

    stage("evaluation")
    evaluation = evaluate_test(
        model,
        X.iloc[te],
        labelled.iloc[te],
        features["transcript_words"].iloc[te].to_numpy(),
        scores,
        settings,
        oracle=oracle,
        plots_dir=plots_dir,
    )
    lap("evaluation")

    params = training_params(settings, hp, embedder.model_id if embedder else None, heads, split.counts)
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
    )


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
) -> Evaluation:
    """The model beside the baselines on the test slice: repeat metrics, next issue, timing, plots.

    ``labelled_test`` holds the test rows' labels (``labels.derive`` columns) in the order of ``X_test``.
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
    return Evaluation(metrics, next_metrics, timing, plots, test_pred)


def _design(
    features: pd.DataFrame,
    text: TextInputs | None,
    labelled: pd.DataFrame,
    categories: dict[str, list[str]],
    train_rows: np.ndarray,
    hp: dict[str, Any],
) -> tuple[TextHeads | None, pd.DataFrame]:
    """The boosters' input for every row: training rows get out-of-fold text-head scores."""
    X = as_model_input(features, categories)
    if text is None:
        return None, X
    heads, oof = fit_text_heads(text.rows(train_rows), head_targets(labelled.iloc[train_rows]), X.index[train_rows], hp)
    rest = np.setdiff1d(np.arange(len(X)), train_rows)
    scores = pd.concat([oof, heads.transform(text.rows(rest), X.index[rest])]).loc[X.index]
    return heads, pd.concat([X, scores], axis=1)


def head_targets(labelled: pd.DataFrame) -> np.ndarray:
    """What the text heads learn, one column each: repeat, explicit repeat, implicit repeat."""
    repeat = labelled["is_repeat"].fillna(False).astype(bool).to_numpy()
    kind = labelled["repeat_type"].astype(str).to_numpy()
    return np.column_stack([repeat, repeat & (kind == "explicit"), repeat & (kind == "implicit")]).astype(int)


def fit_text_heads(
    text: TextInputs, targets: np.ndarray, index: pd.Index, hp: dict[str, Any]
) -> tuple[TextHeads, pd.DataFrame]:
    """Text heads fitted on training rows, and those rows' out-of-fold scores (indexed by ``index``)."""
    settings = hp["text_heads"]
    words = settings.get("words")
    keep = text.has_text
    grids = {view: settings["C_grid"] for view in text.embeddings}
    if words:
        grids["words"] = words["C_grid"]
    # The vocabulary is learnt and every transcript turned into TF-IDF once, for C's choice and the fits.
    heads = TextHeads(C={view: 1.0 for view in grids}, words=words, folds=settings["folds"])
    matrices = heads.fit_vectorizer(text).matrices(text)
    heads.C = {view: _choose_c(view, matrices[view][keep], targets[keep, 0], grids[view]) for view in grids}
    oof = heads.fit_oof(text, targets, index, matrices=matrices)
    return heads, oof


def _choose_c(view: str, matrix: Any, repeat: np.ndarray, grid: list[float]) -> float:
    """Regularisation of a text head by cross-validated AUC: little data needs more of it."""
    from sklearn.model_selection import StratifiedKFold, cross_val_score

    if len(grid) == 1 or len(np.unique(repeat)) < 2:
        return float(grid[0])
    folds = StratifiedKFold(3, shuffle=True, random_state=0)
    scores = [
        cross_val_score(logistic(c, sparse=view == "words"), matrix, repeat, cv=folds, scoring="roc_auc").mean()
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
) -> tuple[lgb.LGBMClassifier, Calibrated]:
    params = dict(hp["repeat"])
    stopping = hp.get("early_stopping")
    if stopping and train_times is not None:
        # How many trees the data supports: fit on the earlier part of the training slice, stop on its
        # latest part (never on calibration or test), then refit on the whole slice with that many.
        order = np.argsort(train_times, kind="stable")
        cut = int(len(order) * (1 - stopping["fraction"]))
        probe = lgb.LGBMClassifier(objective="binary", random_state=0, n_jobs=2, verbose=-1, **params)
        probe.fit(
            X_train.iloc[order[:cut]], y_train[order[:cut]].astype(int),
            eval_X=(X_train.iloc[order[cut:]],),
            eval_y=(y_train[order[cut:]].astype(int),),
            callbacks=[lgb.early_stopping(stopping["rounds"], verbose=False)],
        )  # fmt: skip
        best = int(probe.best_iteration_ or params["n_estimators"])
        params["n_estimators"] = min(params["n_estimators"], max(stopping["min_trees"], best))
    booster = lgb.LGBMClassifier(objective="binary", random_state=0, n_jobs=2, verbose=-1, **params)
    booster.fit(X_train, y_train.astype(int))
    return booster, Calibrated(booster, hp["calibration"]).fit(X_cal, y_cal.astype(int))


def _fit_next_issue(
    X_train: pd.DataFrame,
    labelled_train: pd.DataFrame,
    hp: dict[str, Any],
) -> tuple[lgb.LGBMClassifier, list[str]]:
    repeats = labelled_train["is_repeat"].astype(bool).to_numpy()
    target = labelled_train["next_issue"].astype(str).to_numpy()[repeats]
    params = dict(hp["next_issue"])
    min_examples = params.pop("min_class_examples")
    classes = next_issue_classes(pd.Series(target).value_counts(), min_examples)
    target = np.where(np.isin(target, classes), target, OTHER)
    model = lgb.LGBMClassifier(objective="multiclass", random_state=0, n_jobs=2, verbose=-1, **params)
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


def _fit_timing(
    X_train: pd.DataFrame,
    labelled_train: pd.DataFrame,
    hp: dict[str, Any],
) -> tuple[lgb.LGBMRegressor, lgb.LGBMRegressor]:
    repeats = labelled_train["is_repeat"].astype(bool).to_numpy()
    # Quantiles survive monotone transforms: fit on log hours, where the errors are even.
    target = np.log1p(labelled_train["hours_to_repeat"].to_numpy()[repeats])
    models = []
    for alpha in (0.5, 0.9):
        model = lgb.LGBMRegressor(
            objective="quantile", alpha=alpha, random_state=0, n_jobs=2, verbose=-1, **hp["timing"]
        )
        model.fit(X_train[repeats], target)
        models.append(model)
    return models[0], models[1]


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
