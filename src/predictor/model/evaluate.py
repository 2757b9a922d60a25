"""Evaluation: metrics and plots for the repeat, next-issue and timing models, baselines and the oracle.

``report`` is the evaluation stage of training: the model beside its baselines on the test slice, overall
and per slice (channel, issue, transcript presence and length, customer tenure), as a typed ``Evaluation``.

The oracle (the simulator's own probabilities) is the only reader of the ground-truth file: it shows the
ceiling a model could reach on simulated data, so the gap is printed beside every figure.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd
from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

from predictor.config import Settings
from predictor.model.fitted import OTHER, P90, RepeatContactModel, booster_predict

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

ECE_BINS = 10
TOP_SHARES: tuple[float, ...] = (0.1, 0.2)


def repeat_metrics(y: np.ndarray, p: np.ndarray) -> dict[str, float]:
    """ROC AUC, PR AUC, Brier, ECE (10 equal-width bins) and recall of repeats in the top 10/20% of risk."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    out = {
        "roc_auc": float(roc_auc_score(y, p)),
        "pr_auc": float(average_precision_score(y, p)),
        "brier": float(brier_score_loss(y, p)),
        "ece": expected_calibration_error(y, p),
    }
    for share in TOP_SHARES:
        out[f"recall_top{int(share * 100)}"] = recall_at_top(y, p, share)
    return out


# Where a model can be good overall and poor for a group: the bands the per-slice table cuts by.
TRANSCRIPT_WORD_BANDS: tuple[float, ...] = (0, 1, 150, 400, np.inf)  # none, short, medium, long
TENURE_DAY_BANDS: tuple[float, ...] = (0, 1, 30, 180, np.inf)  # first contact, a month, half a year, longer
MIN_SLICE_ROWS = 30  # fewer rows: the slice's figures are listed without AUC


def band_labels(values: np.ndarray, edges: tuple[float, ...], unit: str) -> np.ndarray:
    """Values cut into ``[a, b)`` bands, labelled "a-b unit" (the last "a+ unit"; NaN as "unknown")."""
    names = [
        f"{edges[k]:g}+ {unit}" if np.isinf(edges[k + 1]) else f"{edges[k]:g}-{edges[k + 1]:g} {unit}"
        for k in range(len(edges) - 1)
    ]
    values = np.asarray(values, dtype=float)
    codes = np.clip(np.searchsorted(np.asarray(edges), values, side="right") - 1, 0, len(names) - 1)
    return np.where(np.isnan(values), "unknown", np.asarray(names, dtype=object)[codes])


def slice_metrics(y: np.ndarray, p: np.ndarray, groups: dict[str, np.ndarray]) -> pd.DataFrame:
    """The model's figures per group of the test slice: one row per (dimension, value).

    ``groups`` maps a dimension (channel, issue, ...) to each test row's value. AUC needs both classes and
    ``MIN_SLICE_ROWS`` rows; below that only the counts and rates are given."""
    y = np.asarray(y, dtype=int)
    p = np.asarray(p, dtype=float)
    rows = []
    for dimension, values in groups.items():
        values = np.asarray(values).astype(str)
        for value in sorted(set(values)):
            chosen = values == value
            n, repeats = int(chosen.sum()), int(y[chosen].sum())
            scorable = n >= MIN_SLICE_ROWS and 0 < repeats < n
            rows.append(
                {
                    "dimension": dimension,
                    "value": value,
                    "contacts": n,
                    "repeat_rate": repeats / n,
                    "predicted_rate": float(p[chosen].mean()),
                    "roc_auc": float(roc_auc_score(y[chosen], p[chosen])) if scorable else float("nan"),
                    "ece": expected_calibration_error(y[chosen], p[chosen]) if n >= MIN_SLICE_ROWS else float("nan"),
                }
            )
    return pd.DataFrame.from_records(rows)


def rates_differ(a: float, n_a: int, b: float, n_b: int, tolerance: float) -> bool:
    """Whether two repeat rates differ by more than ``tolerance`` and by more than sampling noise
    (three standard errors of the difference, pooled): the drift rule of training and the report."""
    pooled = (a * n_a + b * n_b) / (n_a + n_b)
    se = np.sqrt(max(pooled * (1 - pooled), 1e-12) * (1 / n_a + 1 / n_b))
    return bool(abs(a - b) > max(tolerance, 3 * se))


Z95 = 1.959963984540054  # the normal quantile of a two-sided 95% interval


def wilson(successes: float, n: float) -> tuple[float, float]:
    """95% Wilson score interval of a rate: honest on small groups, never outside [0, 1] (NaN for no rows).
    The report's group rates and the experiment's arms (Newcombe's difference) both use it."""
    if n <= 0:
        return float("nan"), float("nan")
    p = successes / n
    denom = 1 + Z95**2 / n
    centre = (p + Z95**2 / (2 * n)) / denom
    half = Z95 * np.sqrt(p * (1 - p) / n + Z95**2 / (4 * n * n)) / denom
    # The interval holds the rate; at 0 (or 1) rounding put the bound a hair past it (5.6e-17 at 0 of 3), a
    # negative error bar that matplotlib refuses (the report crashed on a narrow date range).
    return float(min(p, max(0.0, centre - half))), float(max(p, min(1.0, centre + half)))


def expected_calibration_error(y: np.ndarray, p: np.ndarray, bins: int = ECE_BINS) -> float:
    which = np.clip((p * bins).astype(int), 0, bins - 1)
    total = 0.0
    for b in range(bins):
        mask = which == b
        if mask.any():
            total += mask.mean() * abs(p[mask].mean() - y[mask].mean())
    return float(total)


def recall_at_top(y: np.ndarray, p: np.ndarray, share: float) -> float:
    """Share of all repeats found among the ``share`` highest-risk contacts."""
    k = max(1, round(len(p) * share))
    top = np.argsort(-p, kind="stable")[:k]
    return float(y[top].sum() / max(y.sum(), 1))


def topk_accuracy(true: np.ndarray, proba: np.ndarray, classes: list[str], k: int) -> float:
    top = np.argsort(-proba, axis=1)[:, :k]
    names = np.array(classes)[top]
    return float((names == np.asarray(true)[:, None]).any(axis=1).mean())


def timing_metrics(hours: np.ndarray, median: np.ndarray, p90: np.ndarray) -> dict[str, float]:
    return {
        "median_abs_error_hours": float(np.median(np.abs(hours - median))),
        "p90_coverage": float(np.mean(hours <= p90)),
    }


def load_truth(path: str | Path) -> pd.DataFrame:
    """The simulator's ground truth: read here, and only here, for the oracle."""
    return pd.read_parquet(path)


def oracle_repeat(truth: pd.DataFrame, contact_ids: pd.Series) -> np.ndarray:
    """The simulator's own probability of a repeat within the window, for these contacts."""
    return truth.set_index("contact_id").loc[contact_ids, "true_repeat_probability"].to_numpy()


def oracle_next_issue(truth: pd.DataFrame, contact_ids: pd.Series) -> tuple[np.ndarray, list[str]]:
    """The simulator's distribution of the next issue, given a repeat (one column per issue)."""
    rows = truth.set_index("contact_id").loc[contact_ids]
    columns = [c for c in rows.columns if c.startswith("p_next__")]
    return rows[columns].to_numpy(), [c.removeprefix("p_next__") for c in columns]


# -- plots ---------------------------------------------------------------------------------------------


def plot_roc_pr(y: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> Path:
    fig, (roc_ax, pr_ax) = _pyplot().subplots(1, 2, figsize=(11, 4.5))
    for name, p in scores.items():
        fpr, tpr, _ = roc_curve(y, p)
        roc_ax.plot(fpr, tpr, label=f"{name} (AUC {roc_auc_score(y, p):.3f})")
        precision, recall, _ = precision_recall_curve(y, p)
        pr_ax.plot(recall, precision, label=f"{name} (AP {average_precision_score(y, p):.3f})")
    roc_ax.plot([0, 1], [0, 1], color="grey", lw=0.8, ls=":")
    roc_ax.set(xlabel="false positive rate", ylabel="true positive rate", title="ROC: repeat within window")
    pr_ax.axhline(np.mean(y), color="grey", lw=0.8, ls=":")
    pr_ax.set(xlabel="recall", ylabel="precision", title="Precision-recall")
    roc_ax.legend(fontsize=8)
    pr_ax.legend(fontsize=8)
    return _save(fig, path)


def plot_reliability(y: np.ndarray, scores: dict[str, np.ndarray], path: Path, bins: int = ECE_BINS) -> Path:
    fig, ax = _pyplot().subplots(figsize=(5.5, 5))
    edges = np.linspace(0, 1, bins + 1)
    for name, p in scores.items():
        which = np.clip(np.digitize(p, edges) - 1, 0, bins - 1)
        xs, ys = [], []
        for b in range(bins):
            mask = which == b
            if mask.sum() >= 10:
                xs.append(p[mask].mean())
                ys.append(y[mask].mean())
        ax.plot(xs, ys, marker="o", label=name)
    ax.plot([0, 1], [0, 1], color="grey", ls=":")
    ax.set(xlabel="predicted probability", ylabel="observed repeat rate", title="Reliability (test slice)")
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_gain(y: np.ndarray, scores: dict[str, np.ndarray], path: Path) -> Path:
    fig, ax = _pyplot().subplots(figsize=(5.5, 5))
    shares = np.linspace(0, 1, 101)
    for name, p in scores.items():
        order = np.argsort(-p, kind="stable")
        found = np.r_[0, np.cumsum(y[order])] / max(y.sum(), 1)
        ax.plot(shares, found[(shares * len(y)).astype(int)], label=name)
    ax.plot([0, 1], [0, 1], color="grey", ls=":", label="random")
    ax.set(
        xlabel="share of contacts followed up (highest risk first)",
        ylabel="share of repeats reached",
        title="Cumulative gain",
    )
    ax.legend(fontsize=8)
    return _save(fig, path)


def plot_confusion(true: np.ndarray, predicted: np.ndarray, classes: list[str], path: Path) -> Path:
    index = {c: i for i, c in enumerate(classes)}
    matrix = np.zeros((len(classes), len(classes)))
    for t, p in zip(true, predicted, strict=True):
        if t in index and p in index:
            matrix[index[t], index[p]] += 1
    matrix = matrix / np.maximum(matrix.sum(axis=1, keepdims=True), 1)
    fig, ax = _pyplot().subplots(figsize=(8, 7))
    im = ax.imshow(matrix, cmap="Blues", vmin=0, vmax=1)
    ax.set_xticks(range(len(classes)), classes, rotation=70, fontsize=7, ha="right")
    ax.set_yticks(range(len(classes)), classes, fontsize=7)
    ax.set(xlabel="predicted next issue (top 1)", ylabel="actual next issue", title="Next issue: share of each row")
    fig.colorbar(im, ax=ax, fraction=0.04)
    return _save(fig, path)


def _pyplot():  # noqa: ANN202 - matplotlib.pyplot
    """matplotlib, imported on the first plot: scoring and reading metrics never pay for it."""
    import matplotlib

    matplotlib.use("Agg")  # files only, never a window
    import matplotlib.pyplot as plt

    return plt


def _save(fig: plt.Figure, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    _pyplot().close(fig)
    return path


# -- the evaluation stage: the model beside its baselines on the test slice ---------------------------
SAME_ISSUE = "same issue again"
TRANSITIONS = "transition table (training slice)"


class Baseline(StrEnum):
    """What the model is judged beside, by the names the metrics table and MLflow carry."""

    ISSUE_RATE = "issue base rate"
    METADATA = "metadata + history (no text)"
    TFIDF = "tf-idf + logistic regression"
    HEAD_ONLY = "ablation: head-only cut, no closing view"
    ORACLE = "oracle (simulator truth)"


ABLATION = Baseline.HEAD_ONLY.value


@dataclass
class Evaluation:
    metrics: pd.DataFrame
    next_issue: dict[str, float]
    timing: dict[str, float]
    plots: dict[str, Path]
    predictions: pd.DataFrame  # the model's output on the test slice, with the true ``is_repeat``
    next_issue_baselines: dict[str, dict[str, float]] = field(default_factory=dict)
    by_slice: pd.DataFrame = field(default_factory=pd.DataFrame)  # slice_metrics of the model


def report(
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
        scores["oracle (simulator truth)"] = oracle_repeat(oracle, labelled_test["contact_id"])
    rows = []
    long_text = transcript_words > settings.embedding.max_tokens * 0.75
    for name, p in scores.items():
        row = {"model": name, **repeat_metrics(y_test, p)}
        if long_text.sum() > 20 and len(np.unique(y_test[long_text])) == 2:
            row["roc_auc_long_transcripts"] = roc_auc_score(y_test[long_text], p[long_text])
        rows.append(row)
    metrics = pd.DataFrame(rows).set_index("model")

    next_classes = model.next_issue_classes
    repeats = np.flatnonzero(y_test == 1)
    repeated = labelled_test.iloc[repeats]
    next_true = repeated["next_issue"].astype(str).to_numpy()
    next_true = np.where(np.isin(next_true, next_classes), next_true, OTHER)
    proba = model.next_issue.predict_proba(X_test.iloc[repeats])
    next_metrics = {
        "top1_accuracy": topk_accuracy(next_true, proba, next_classes, 1),
        "top3_accuracy": topk_accuracy(next_true, proba, next_classes, 3),
        "explicit_share_actual": float((repeated["repeat_type"] == "explicit").mean()),
        "explicit_share_predicted_top1": float(
            (np.array(next_classes)[proba.argmax(1)] == repeated["issue"].to_numpy()).mean()
        ),
    }
    baseline_metrics = {
        name: {
            "top1_accuracy": topk_accuracy(next_true, base[repeats], next_classes, 1),
            "top3_accuracy": topk_accuracy(next_true, base[repeats], next_classes, 3),
        }
        for name, base in (next_issue_baselines or {}).items()
    }
    if oracle is not None:
        oracle_proba, oracle_classes = oracle_next_issue(oracle, repeated["contact_id"])
        next_metrics["oracle_top1_accuracy"] = topk_accuracy(next_true, oracle_proba, oracle_classes, 1)
        next_metrics["oracle_top3_accuracy"] = topk_accuracy(next_true, oracle_proba, oracle_classes, 3)
    predicted = test_pred.iloc[repeats]
    timing = timing_metrics(
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
        plots["roc_pr"] = plot_roc_pr(y_test, scores, plots_dir / "roc_pr.png")
        plots["reliability"] = plot_reliability(
            y_test,
            {k: v for k, v in scores.items() if k in ("model", "metadata + history (no text)")}
            | {k: v for k, v in scores.items() if k.startswith("oracle")},
            plots_dir / "reliability.png",
        )
        plots["gain"] = plot_gain(y_test, scores, plots_dir / "gain.png")
        plots["next_issue_confusion"] = plot_confusion(
            next_true, np.array(next_classes)[proba.argmax(1)], next_classes, plots_dir / "next_issue_confusion.png"
        )
    test_pred["is_repeat"] = y_test
    groups = {
        "issue": labelled_test["issue"].astype(str).to_numpy(),
        "transcript_length": band_labels(transcript_words, TRANSCRIPT_WORD_BANDS, "words"),
    }
    if "channel" in X_test:  # a feature column: present unless hyperparams drop it
        groups["channel"] = X_test["channel"].astype(str).to_numpy()
    if "has_transcript" in X_test:
        groups["has_transcript"] = np.where(X_test["has_transcript"].to_numpy() > 0, "yes", "no")
    if "days_since_first_contact" in X_test:
        tenure = X_test["days_since_first_contact"].to_numpy(dtype=float)
        groups["customer_tenure"] = band_labels(tenure, TENURE_DAY_BANDS, "days")
    by_slice = slice_metrics(y_test, scores["model"], groups)
    return Evaluation(metrics, next_metrics, timing, plots, test_pred, baseline_metrics, by_slice)


def next_issue_baselines(
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
