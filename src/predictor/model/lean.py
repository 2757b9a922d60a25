"""The fitted model in the form a scorer loads: the same numbers, no scikit-learn.

A registered model is a ``RepeatContactModel`` holding scikit-learn objects (LightGBM's estimator wrappers,
the calibration map, the TF-IDF vocabulary, the text heads' logistic regressions). Scoring reads only their
fitted numbers, but unpickling them imports scikit-learn and, through it, most of SciPy: ~1.5 s of a
service worker's start on a 2-core machine. ``lean`` copies a model with each of them replaced by the
numbers it scores with; the registry stores that copy beside the full bundle, and the service loads it.
A test holds its answers equal to the full model's.

LightGBM itself imports scikit-learn when it can, for its estimator classes; ``lightgbm_alone`` imports it
without, in a process that only scores (the service's worker).
"""

from __future__ import annotations

import copy
import itertools
import pickle
import re
import sys
from pathlib import Path
from typing import Any

import numpy as np
from scipy.special import expit

from predictor.model.fitted import Calibrated, ClassNames, RepeatContactModel, TextHeads

SERVING_FILE = "serving.pkl"  # beside the full bundle in a registered version's artifacts


class LeanBooster:
    """A fitted LightGBM estimator reduced to what scoring reads of it: its booster and classes."""

    def __init__(self, booster: Any, classes: np.ndarray | None = None) -> None:
        self.booster_ = booster
        self.classes_ = classes


class LeanSigmoid:
    """Platt scaling's logistic regression on one score, as its ``predict_proba`` computes it."""

    def __init__(self, coef: float, intercept: float) -> None:
        self.coef = coef
        self.intercept = intercept

    def predict_proba(self, score: np.ndarray) -> np.ndarray:
        p = expit(score[:, 0] * self.coef + self.intercept)
        return np.column_stack([1 - p, p])


class LeanIsotonic:
    """Isotonic regression's step-wise linear map, clipped at the ends (``out_of_bounds="clip"``)."""

    def __init__(self, x: np.ndarray, y: np.ndarray) -> None:
        self.x = x
        self.y = y

    def predict(self, score: np.ndarray) -> np.ndarray:
        return np.interp(np.clip(score, self.x[0], self.x[-1]), self.x, self.y)


class SparseRows:
    """Rows of a sparse matrix (CSR arrays) that can be multiplied by a dense one: all the heads need."""

    def __init__(self, indptr: np.ndarray, indices: np.ndarray, data: np.ndarray, width: int) -> None:
        self.indptr, self.indices, self.data, self.shape = indptr, indices, data, (len(indptr) - 1, width)

    def __matmul__(self, dense: np.ndarray) -> np.ndarray:
        out = np.zeros((self.shape[0], dense.shape[1]))
        for row in range(self.shape[0]):
            start, end = self.indptr[row], self.indptr[row + 1]
            if end > start:
                out[row] = self.data[start:end] @ dense[self.indices[start:end]]
        return out

    def toarray(self) -> np.ndarray:
        out = np.zeros(self.shape)
        for row in range(self.shape[0]):
            start, end = self.indptr[row], self.indptr[row + 1]
            out[row, self.indices[start:end]] = self.data[start:end]
        return out


class LeanTfidf:
    """``TfidfVectorizer.transform`` for word n-grams: lower-case, the token pattern, n-grams joined by a space,
    counts of the vocabulary's terms, optionally 1 + log, times the IDF, rows scaled to unit length."""

    def __init__(self, vectorizer: Any) -> None:
        self.vocabulary = dict(vectorizer.vocabulary_)
        self.idf = np.asarray(vectorizer.idf_, dtype=np.float64) if vectorizer.use_idf else None
        self.ngram_range = tuple(vectorizer.ngram_range)
        self.lowercase = bool(vectorizer.lowercase)
        self.token_pattern = vectorizer.token_pattern
        self.sublinear_tf = bool(vectorizer.sublinear_tf)
        self.norm = vectorizer.norm

    @staticmethod
    def can_stand_in_for(vectorizer: Any) -> bool:
        """Whether this class computes what ``vectorizer`` does (the settings the word view uses)."""
        p = vectorizer.get_params()
        return (
            p["analyzer"] == "word" and p["input"] == "content" and p["preprocessor"] is None
            and p["tokenizer"] is None and p["stop_words"] is None and p["strip_accents"] is None
            and not p["binary"] and p["norm"] in ("l2", None) and p["token_pattern"] is not None
        )  # fmt: skip

    def transform(self, texts: list[str]) -> SparseRows:
        pattern = re.compile(self.token_pattern)
        low, high = self.ngram_range
        lookup = self.vocabulary.get
        missing = itertools.repeat(-1)
        columns: list[int] = []
        lengths = []
        for text in texts:
            tokens = pattern.findall(text.lower() if self.lowercase else text)
            before = len(columns)
            # The n-grams as scikit-learn joins them, looked up by map and zip (-1: not in the vocabulary),
            # counted below for all texts at once (a Counter and a sort per text cost ~40 us a contact).
            for n in range(low, min(high, len(tokens)) + 1):
                grams = tokens if n == 1 else map(" ".join, zip(*(tokens[i:] for i in range(n)), strict=False))
                columns.extend(map(lookup, grams, missing))
            lengths.append(len(columns) - before)
        width = len(self.vocabulary)
        found = np.asarray(columns, dtype=np.int64)
        row = np.repeat(np.arange(len(texts), dtype=np.int64), lengths)
        known = found >= 0
        # One key per (row, column): unique keys come sorted by row, then column (CSR's order), with counts.
        keys, counts = np.unique(row[known] * width + found[known], return_counts=True)
        row, column = np.divmod(keys, width)
        values = counts.astype(np.float64)
        if self.sublinear_tf:
            values = np.log(values) + 1
        if self.idf is not None:
            values = values * self.idf[column]
        if self.norm == "l2" and len(values):
            # Each row's sum of squares in the row's order, as scikit-learn's row normalisation adds them.
            length = np.sqrt(np.bincount(row, weights=values * values, minlength=len(texts)))[row]
            values = np.divide(values, length, out=values, where=length > 0)
        indptr = np.zeros(len(texts) + 1, dtype=np.int64)
        np.cumsum(np.bincount(row, minlength=len(texts)), out=indptr[1:])
        return SparseRows(indptr, column, values, width)


def lean(model: RepeatContactModel) -> RepeatContactModel | None:
    """A copy of ``model`` that scores alike without scikit-learn objects, or None when a part of it is not
    one this module knows how to reduce (the full bundle is used then)."""
    out = copy.copy(model)
    boosters: dict[int, LeanBooster] = {}  # one stand-in per estimator: the calibrated booster is shared

    def booster(estimator: Any) -> LeanBooster | None:
        if not hasattr(estimator, "booster_"):
            return None
        key = id(estimator)
        if key not in boosters:
            boosters[key] = LeanBooster(estimator.booster_, getattr(estimator, "classes_", None))
        return boosters[key]

    repeat = model.repeat
    if not isinstance(repeat, Calibrated) or booster(repeat.booster) is None:
        return None
    out.repeat = Calibrated(booster(repeat.booster), repeat.method)  # type: ignore[arg-type]
    if repeat.method == "sigmoid":
        out.repeat.map_ = LeanSigmoid(float(repeat.map_.coef_[0, 0]), float(repeat.map_.intercept_[0]))
    else:
        out.repeat.map_ = LeanIsotonic(
            np.asarray(repeat.map_.X_thresholds_, dtype=np.float64), np.asarray(repeat.map_.y_thresholds_)
        )
    out.repeat_booster = booster(model.repeat_booster)
    if isinstance(model.next_issue, ClassNames):
        out.next_issue = ClassNames(booster(model.next_issue.model), model.next_issue.classes_)
    out.hours_median, out.hours_p90 = booster(model.hours_median), booster(model.hours_p90)
    if None in (out.repeat_booster, out.hours_median, out.hours_p90) or (
        isinstance(model.next_issue, ClassNames) and out.next_issue.model is None
    ):
        return None
    if model.text_heads is not None:
        heads = _lean_heads(model.text_heads)
        if heads is None:
            return None
        out.text_heads = heads
    out._embedder = None
    return out


def _lean_heads(heads: TextHeads) -> TextHeads | None:
    out = copy.copy(heads)  # its own attributes: the ones replaced below are not the full model's
    vectorizer = getattr(heads, "vectorizer_", None)
    if vectorizer is not None:
        if not LeanTfidf.can_stand_in_for(vectorizer):
            return None
        out.vectorizer_ = LeanTfidf(vectorizer)
    # The weights the heads score with; the regressions themselves go.
    out._stacked = dict(heads.weights())
    out.models_ = dict.fromkeys(heads.models_, ())
    return out


def save(model: RepeatContactModel, path: Path) -> bool:
    """Write the lean copy of ``model`` to ``path``; False (nothing written) when it has none."""
    reduced = lean(model)
    if reduced is None:
        return False
    path.write_bytes(pickle.dumps(reduced, protocol=pickle.HIGHEST_PROTOCOL))
    return True


def load(path: Path) -> RepeatContactModel:
    return pickle.loads(path.read_bytes())


_alone = False  # LightGBM was imported without scikit-learn in this process


def lightgbm_alone() -> None:
    """Import LightGBM without scikit-learn, in a process that scores (the service's worker): its estimator
    classes are then placeholders until ``lightgbm_whole`` (which a full bundle's loader calls). No effect
    once either is imported."""
    global _alone
    if "lightgbm" in sys.modules or "sklearn" in sys.modules:
        return
    sys.modules["sklearn"] = None  # type: ignore[assignment]  # makes ``import sklearn`` raise ImportError
    try:
        import lightgbm  # noqa: F401
    finally:
        if sys.modules.get("sklearn", 0) is None:
            del sys.modules["sklearn"]
    _alone = True


def lightgbm_whole() -> None:
    """Give LightGBM its scikit-learn estimator classes back (after ``lightgbm_alone``): a full bundle pickles
    them by name, so they must be the real ones before it is read."""
    global _alone
    if not _alone:
        return
    import importlib

    import lightgbm.compat
    import lightgbm.sklearn

    importlib.reload(lightgbm.compat)
    importlib.reload(lightgbm.sklearn)
    _alone = False
