"""The contract between the one training pipeline and its compute backends.

Both backends hold the same *design table*: one row per contact with its keys (``KEYS``), its labels
(``LABEL``-prefixed ``labels.derive`` columns), its metadata and history features, and, once the text
heads are fitted, their scores. In-process it is one pandas frame; on a cluster, customer partitions of a
Dask frame. Which rows a fit or a collection reads is a ``Rows`` rule applied to that table, the same rule
on both, so a slice, a fold or the latest part of the training slice are the same contacts everywhere.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Protocol

import numpy as np
import pandas as pd

from predictor.config import Settings
from predictor.contacts.labels import epoch_us
from predictor.features.build import as_model_input
from predictor.model.fitted import TextHeads, TextInputs, TfidfBaseline
from predictor.model.split import slice_codes

LABEL = "label_"  # label columns carried beside the features (prefixed: "issue" is also a feature)
LABEL_COLUMNS = ("is_repeat", "repeat_type", "next_issue", "hours_to_repeat", "window_complete", "censored")
KEYS = ("contact_id", "closed_us", "slice", "issue_code")
TFIDF = "baseline_tfidf"  # the TF-IDF baseline's score, carried in the design like a text head's


def fold_of(contact_ids: pd.Series | np.ndarray, folds: int) -> np.ndarray:
    """A contact's fold by a hash of its id: the same whatever the row order or partitioning."""
    return (pd.util.hash_array(np.asarray(contact_ids, dtype=object)) % np.uint64(folds)).astype(int)


def in_sample(contact_ids: pd.Series | np.ndarray, fraction: float) -> np.ndarray:
    """A reproducible share of rows, by a hash of the id (independent of partitioning and row order)."""
    if fraction >= 1:
        return np.ones(len(contact_ids), dtype=bool)
    hashed = pd.util.hash_array(np.asarray(contact_ids, dtype=object))
    return hashed < np.uint64(fraction * float(2**64 - 1))


@dataclass(frozen=True)
class Rows:
    """Which rows of the design table a fit or a collection reads."""

    slice: int | None  # a slice code of ``split``; None: every row
    repeats_only: bool = False
    known_only: bool = False  # rows whose repeat window has closed
    closed_before_us: int | None = None
    closed_from_us: int | None = None
    folds: int = 0  # with folds: all rows but fold ``fold``, or (``held``) that fold alone
    fold: int = 0
    held: bool = False

    def mask(self, table: pd.DataFrame) -> np.ndarray:
        chosen = np.ones(len(table), dtype=bool) if self.slice is None else table["slice"].to_numpy() == self.slice
        if self.known_only:
            chosen &= table[LABEL + "window_complete"].to_numpy(dtype=bool)
        if self.repeats_only:
            chosen &= table[LABEL + "is_repeat"].to_numpy(dtype=float) == 1
        closed = table["closed_us"].to_numpy()
        if self.closed_before_us is not None:
            chosen &= closed < self.closed_before_us
        if self.closed_from_us is not None:
            chosen &= closed >= self.closed_from_us
        if self.folds:
            in_fold = fold_of(table["contact_id"].to_numpy(), self.folds) == self.fold
            chosen &= in_fold if self.held else ~in_fold
        return chosen


@dataclass(frozen=True)
class Target:
    """What a booster learns, read from a label column: as it is, as log(1 + x), or as class codes."""

    column: str
    log1p: bool = False
    integer: bool = False  # a binary label as 0/1
    classes: tuple[str, ...] | None = None
    other: str | None = None  # the class that rare values map to

    def values(self, table: pd.DataFrame) -> np.ndarray:
        raw = table[LABEL + self.column]
        if self.classes is not None:
            codes = {c: k for k, c in enumerate(self.classes)}
            fallback = codes.get(self.other, -1) if self.other else -1
            return np.array([codes.get(v, fallback) for v in raw.astype(str)], dtype=np.int64)
        values = raw.to_numpy(dtype=float)
        if self.integer:
            return values.astype(int)
        return np.log1p(values) if self.log1p else values


@dataclass(frozen=True)
class Slicing:
    """Where the slices fall: the split points, the data end labels are judged at, the calibration mode."""

    boundaries: tuple[pd.Timestamp, pd.Timestamp]
    label_end: pd.Timestamp
    mode: str = "slice"


@dataclass(frozen=True)
class Booster:
    """A LightGBM estimator to fit: classifier or regressor, and its parameters."""

    kind: str  # "classifier" or "regressor"
    params: dict[str, Any]


@dataclass
class TextSample:
    """The training rows the text heads learn from: their text views, labels and contact ids."""

    inputs: TextInputs
    labels: pd.DataFrame  # is_repeat, repeat_type
    keys: np.ndarray  # contact ids


class Backend(Protocol):
    """What differs between training in this process and on a cluster; everything else is ``train.fit_on``."""

    name: str
    settings: Settings  # what it embeds and labels with; ``fit_on`` may choose the embedding for the log

    def languages(self) -> pd.Series:
        """How many contacts with a transcript there are in each language (``validate``'s ``language``; empty
        without it): the text to embed, not the contacts, chooses the embedding."""
        ...

    def times(self) -> pd.DataFrame:
        """Every contact's ``opened_at`` and ``closed_at`` (the data end and the split come from them)."""

    def slice_summary(self, boundaries: tuple[pd.Timestamp, pd.Timestamp], label_end: pd.Timestamp) -> pd.DataFrame:
        """``split.slice_summary`` of the whole log (summed over partitions)."""

    def build(self, slicing: Slicing, prior: float, use_text: bool) -> list[str]:
        """Labels, slices and metadata + history features into the design table; the feature columns."""

    def has_text(self) -> bool: ...

    def embedding_model(self) -> str | None: ...

    def text_sample(self, rows: Rows, fraction: float, truncation: str | None = None) -> TextSample:
        """The chosen training rows' text inputs (embedded with ``truncation`` when given)."""

    def add_text(self, heads: TextHeads | None, oof: pd.DataFrame, tfidf: TfidfBaseline | None) -> None:
        """Every row's text-head scores (out-of-fold where the row trained the heads) and TF-IDF score."""

    def design(self, categories: dict[str, list[str]]) -> None:
        """The boosters' input: categorical columns over the training slice's levels."""

    def fit(
        self, booster: Booster, rows: Rows, columns: list[str], target: Target, stop: tuple[Rows, int] | None = None
    ) -> Any:
        """A booster fitted on ``rows`` of the design; returned as a local (picklable) LightGBM model.

        ``stop`` (rows, rounds) lets a backend stop growing trees once the loss on those rows has not
        improved for ``rounds`` trees; a hint to save time, which a backend may ignore."""

    def collect(self, rows: Rows, columns: list[str] | None = None) -> pd.DataFrame:
        """Rows of the design table here (all columns without ``columns``; the keys always)."""

    def level_counts(self, rows: Rows, columns: list[str]) -> dict[str, pd.Series]:
        """Value counts of categorical columns over ``rows`` (their levels)."""

    def issue_codes(self) -> list[str]: ...

    def fingerprint(self) -> str: ...

    def positions(self, code: int) -> np.ndarray:
        """Row positions of a slice in the log (in-process only; empty on a cluster)."""

    def params(self) -> dict[str, Any]:
        """What MLflow records of where the run trained."""


def design_rows(
    part: pd.DataFrame,
    labelled: pd.DataFrame,
    features: pd.DataFrame,
    boundaries: tuple[pd.Timestamp, pd.Timestamp],
    settings: Any,
    mode: str,
) -> pd.DataFrame:
    """A design table of validated contacts ``part``: keys, features, labels (one partition or the log)."""
    keys = pd.DataFrame(
        {
            "contact_id": part["contact_id"].astype(str).to_numpy(),
            "closed_us": epoch_us(part["closed_at"]),
            "slice": slice_codes(labelled, boundaries, settings, mode),
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
    return pd.concat([keys, features.reset_index(drop=True), labels], axis=1)


def text_scores(
    heads: TextHeads | None, inputs: TextInputs, ids: np.ndarray, oof: pd.DataFrame, tfidf: TfidfBaseline | None
) -> pd.DataFrame:
    """Text-head scores of rows (out-of-fold where ``oof`` has the row) and the TF-IDF baseline's score."""
    if heads is None:  # no head could be fitted: the TF-IDF baseline alone
        scores = pd.DataFrame(index=pd.Index(ids))
    else:
        # Rows that trained the heads take their out-of-fold scores; only the others are read by the heads.
        trained = np.isin(ids, oof.index)
        values = np.full((len(ids), len(heads.columns)), np.nan)
        values[trained] = oof.loc[ids[trained], heads.columns].to_numpy()
        rest = np.flatnonzero(~trained)
        if len(rest):
            values[rest] = heads.transform(inputs.rows(rest), index=pd.Index(ids[rest])).to_numpy()
        scores = pd.DataFrame(values, columns=heads.columns, index=pd.Index(ids))
    if tfidf is not None:
        scores[TFIDF] = tfidf.predict(inputs.texts)
    return scores.reset_index(drop=True)


def design_frame(
    table: pd.DataFrame, scores: pd.DataFrame | None, feature_columns: list[str], categories: dict[str, list[str]]
) -> pd.DataFrame:
    """The boosters' input (``as_model_input``) beside the keys and labels, and the text scores if any."""
    table = table.reset_index(drop=True)
    X = as_model_input(table[feature_columns], categories)
    blocks = [table.drop(columns=feature_columns), X]
    if scores is not None:
        blocks.append(scores.reset_index(drop=True))
    return pd.concat(blocks, axis=1)


def keyed(columns: list[str]) -> list[str]:
    """``columns`` with the design table's keys first (a collection always carries them)."""
    return [*KEYS, *[c for c in columns if c not in KEYS]]


def labels_of(frame: pd.DataFrame) -> pd.DataFrame:
    """The ``labels.derive`` columns of collected design rows, under their own names."""
    out = frame.rename(columns={LABEL + c: c for c in LABEL_COLUMNS})
    out = out.drop(columns=["issue"], errors="ignore").rename(columns={"issue_code": "issue"})
    out["is_repeat"] = out["is_repeat"].astype("boolean")
    out["closed_at"] = pd.to_datetime(out["closed_us"].to_numpy(dtype=np.int64), unit="us", utc=True)
    return out
