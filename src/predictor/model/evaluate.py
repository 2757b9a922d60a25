"""Metrics and plots for the repeat, next-issue and timing models, baselines and the oracle.

The oracle (the simulator's own probabilities) is the only reader of the ground-truth file: it shows the
ceiling a model could reach on simulated data, so the gap is printed beside every figure.
"""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np
import pandas as pd

if TYPE_CHECKING:
    import matplotlib.pyplot as plt

from sklearn.metrics import (
    average_precision_score,
    brier_score_loss,
    precision_recall_curve,
    roc_auc_score,
    roc_curve,
)

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
