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


def time_split(labelled: pd.DataFrame, settings: Settings) -> Split:
    """Positions of train / calibration / test rows; censored rows and embargoed rows excluded."""
    closed = labelled["closed_at"]
    window = pd.Timedelta(days=settings.labels.repeat_window_days)
    test_start = closed.quantile(1 - settings.split.test_fraction)
    cal_start = closed.quantile(1 - settings.split.test_fraction - settings.split.calibration_fraction)
    # Whole window observed, not merely "uncensored": see labels.derive on outcome-dependent censoring.
    known = labelled["window_complete"].to_numpy()
    # A row's label is known at most one window after its close: that must be before the next slice.
    train = known & (closed <= cal_start - window).to_numpy()
    calibration = known & ((closed > cal_start) & (closed <= test_start - window)).to_numpy()
    test = known & (closed > test_start).to_numpy()
    counts = {
        "contacts": len(labelled),
        "censored": int(labelled["censored"].sum()),
        "window_open": int((~known).sum()),
        "train": int(train.sum()),
        "calibration": int(calibration.sum()),
        "test": int(test.sum()),
    }
    counts["embargoed"] = (
        counts["contacts"] - counts["window_open"] - counts["train"] - counts["calibration"] - counts["test"]
    )
    return Split(
        train=np.flatnonzero(train),
        calibration=np.flatnonzero(calibration),
        test=np.flatnonzero(test),
        boundaries={"calibration_start": str(cal_start), "test_start": str(test_start)},
        counts=counts,
    )


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
    y_test = y[te].astype(int)
    scores: dict[str, np.ndarray] = {"model": repeat.predict_proba(X.iloc[te])[:, 1]}
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
    if oracle is not None:
        scores["oracle (simulator truth)"] = evaluate.oracle_repeat(oracle, contacts["contact_id"].iloc[te])
    rows = []
    long_text = (features["transcript_words"].iloc[te] > settings.embedding.max_tokens * 0.75).to_numpy()
    for name, p in scores.items():
        row = {"model": name, **evaluate.repeat_metrics(y_test, p)}
        if long_text.sum() > 20 and len(np.unique(y_test[long_text])) == 2:
            row["roc_auc_long_transcripts"] = evaluate.roc_auc_score(y_test[long_text], p[long_text])
        rows.append(row)
    metrics = pd.DataFrame(rows).set_index("model")

    test_pred = model.predict_from_input(X.iloc[te], contacts["contact_id"].iloc[te].to_numpy())
    repeats_te = te[y[te] == 1]
    next_true = labelled["next_issue"].iloc[repeats_te].astype(str).to_numpy()
    next_true = np.where(np.isin(next_true, next_classes), next_true, OTHER)
    proba = next_model.predict_proba(X.iloc[repeats_te])
    next_metrics = {
        "top1_accuracy": evaluate.topk_accuracy(next_true, proba, next_classes, 1),
        "top3_accuracy": evaluate.topk_accuracy(next_true, proba, next_classes, 3),
        "explicit_share_actual": float((labelled["repeat_type"].iloc[repeats_te] == "explicit").mean()),
        "explicit_share_predicted_top1": float(
            (np.array(next_classes)[proba.argmax(1)] == contacts["issue"].iloc[repeats_te].to_numpy()).mean()
        ),
    }
    if oracle is not None:
        oracle_proba, oracle_classes = evaluate.oracle_next_issue(oracle, contacts["contact_id"].iloc[repeats_te])
        next_metrics["oracle_top1_accuracy"] = evaluate.topk_accuracy(next_true, oracle_proba, oracle_classes, 1)
        next_metrics["oracle_top3_accuracy"] = evaluate.topk_accuracy(next_true, oracle_proba, oracle_classes, 3)
    hours_true = labelled["hours_to_repeat"].iloc[repeats_te].to_numpy()
    pred_rep = test_pred.set_index("contact_id").loc[contacts["contact_id"].iloc[repeats_te]]
    timing = evaluate.timing_metrics(
        hours_true, pred_rep["hours_to_repeat_median"].to_numpy(), pred_rep["hours_to_repeat_p90"].to_numpy()
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
    lap("evaluation")

    params = {
        "repeat_window_days": settings.labels.repeat_window_days,
        "transfer_gap_minutes": settings.labels.transfer_gap_minutes,
        "uses_text": has_text,
        "embedding_model": embedder.model_id if embedder else "none",
        "embedding_max_tokens": settings.embedding.max_tokens,
        "embedding_truncation": settings.embedding.truncation,
        "embedding_head_fraction": settings.embedding.head_fraction,
        "embedding_closing_turns": settings.embedding.closing_turns,
        "text_heads": ",".join(f"{view}:C={c}" for view, c in heads.C.items()) if heads else "none",
        "calibration": hp["calibration"],
        **{f"split_{k}": v for k, v in split.counts.items()},
        **{f"repeat_{k}": v for k, v in hp["repeat"].items()},
    }
    test_pred["is_repeat"] = y_test
    return TrainingResult(
        model=model,
        metrics=metrics,
        next_issue_metrics=next_metrics,
        timing_metrics=timing,
        split=split,
        params=params,
        plots=plots,
        test_predictions=test_pred,
        timings=timings,
        data_fingerprint=fingerprint(contacts),
        test_contacts=contacts.iloc[te],
    )


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
    repeat = labelled["is_repeat"].fillna(False).astype(bool).to_numpy()
    kind = labelled["repeat_type"].astype(str).to_numpy()
    targets = np.column_stack([repeat, repeat & (kind == "explicit"), repeat & (kind == "implicit")]).astype(int)
    settings = hp["text_heads"]
    words = settings.get("words")
    train_text = text.rows(train_rows)
    keep = train_text.has_text
    grids = {view: settings["C_grid"] for view in text.embeddings}
    if words:
        grids["words"] = words["C_grid"]
    # The vocabulary is learnt and every transcript turned into TF-IDF once, for C's choice and the fits.
    heads = TextHeads(C={view: 1.0 for view in grids}, words=words, folds=settings["folds"])
    matrices = heads.fit_vectorizer(train_text).matrices(train_text)
    heads.C = {view: _choose_c(view, matrices[view][keep], targets[train_rows][keep, 0], grids[view]) for view in grids}
    oof = heads.fit_oof(train_text, targets[train_rows], X.index[train_rows], matrices=matrices)
    rest = np.setdiff1d(np.arange(len(X)), train_rows)
    scores = pd.concat([oof, heads.transform(text.rows(rest), X.index[rest])]).loc[X.index]
    return heads, pd.concat([X, scores], axis=1)


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
    counts = pd.Series(target).value_counts()
    frequent = set(counts[counts >= min_examples].index)
    target = np.where(np.isin(target, list(frequent)), target, OTHER)
    classes = sorted(set(target))
    model = lgb.LGBMClassifier(objective="multiclass", random_state=0, n_jobs=2, verbose=-1, **params)
    model.fit(X_train[repeats], pd.Categorical(target, categories=classes).codes)
    return _ClassNames(model, classes), classes


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
    params = hp["tfidf_baseline"]
    texts = contacts["transcript"].map(redact)
    vectorizer = TfidfVectorizer(
        max_features=params["max_features"], ngram_range=(1, params["ngram_max"]), sublinear_tf=True, min_df=2
    )
    X_train = vectorizer.fit_transform(texts.iloc[tr])
    model = LogisticRegression(C=params["C"], max_iter=2000)
    model.fit(X_train, y[tr].astype(int))
    return model.predict_proba(vectorizer.transform(texts.iloc[te]))[:, 1]
