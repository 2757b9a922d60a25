"""The fitted predictor: features -> repeat probability, next issues, hours to repeat, reasons.

One object serves the MLflow pyfunc, the scoring service and the reports, and always goes through
``features.build``, so training and scoring cannot drift apart.
"""

from __future__ import annotations

import functools
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from scipy.special import expit

from predictor.config import EmbeddingConfig, LabelConfig
from predictor.contacts.labels import ContactArrays
from predictor.features.build import CATEGORICAL, FeatureSet, TextViews, as_model_input, build, text_views
from predictor.features.embed import Embedder

TOP_K = 3
OTHER = "other"  # the next-issue class of every issue too rare to tell apart
P90 = 0.9  # the timing interval's upper quantile
TEXT_HEAD_PREFIX = "text_"
OUTPUT_COLUMNS: tuple[str, ...] = (
    "contact_id",
    "repeat_probability",
    *(f"next_issue_{k}" for k in range(1, TOP_K + 1)),
    *(f"next_issue_{k}_probability" for k in range(1, TOP_K + 1)),
    "hours_to_repeat_median",
    "hours_to_repeat_p90",
)

# How a supervisor reads each feature (text dimensions are summed into one reason).
REASON_WORDS: dict[str, str] = {
    "text": "what was said in the conversation",
    "channel": "the channel used",
    "issue": "the type of issue",
    "queue": "the queue",
    "log_handle_seconds": "how long the contact took",
    "log_hold_seconds": "time on hold",
    "transfers": "transfers during the contact",
    "close_hour": "time of day",
    "close_weekday": "day of week",
    "csat": "the satisfaction score",
    "has_transcript": "whether a transcript exists",
    "transcript_words": "length of the conversation",
    "customer_contacts_7d": "customer's contacts in the last 7 days",
    "customer_returns_7d": "customer's repeat contacts in the last 7 days",
    "customer_contacts_30d": "customer's contacts in the last 30 days",
    "customer_returns_30d": "customer's repeat contacts in the last 30 days",
    "customer_contacts_90d": "customer's contacts in the last 90 days",
    "customer_returns_90d": "customer's repeat contacts in the last 90 days",
    "hours_since_previous_contact": "time since the customer's previous contact",
    "prev_issue": "the customer's previous issue",
    "same_issue_as_previous": "same issue as the customer's previous contact",
    "is_return": "the customer already came back about this",
    "customer_open_contacts": "the customer's other contacts still open",
    "customer_known_repeat_rate": "the customer's own past repeat rate",
    "customer_contacts_all": "the customer's contacts so far",
    "days_since_first_contact": "how long the customer has been in touch",
    "issue_transition": "the step from the previous issue to this one",
    "agent_repeat_rate": "the agent's past repeat rate",
    "agent_closed_windows": "the agent's volume so far",
}


log = logging.getLogger(__name__)


@dataclass
class RepeatContactModel:
    """Everything fitted, plus the configuration the features were built with."""

    label_config: LabelConfig
    embedding_config: EmbeddingConfig | None  # None: trained without text
    categories: dict[str, list[str]]
    feature_columns: list[str]  # metadata and history columns fed to the boosters
    text_heads: TextHeads | None
    repeat: Any  # calibrated classifier with predict_proba
    repeat_booster: Any  # the uncalibrated LightGBM inside, for attributions
    next_issue: Any
    next_issue_classes: list[str]
    hours_median: Any
    hours_p90: Any
    issue_codes: list[str]
    metadata: dict[str, Any] = field(default_factory=dict)
    # Conformal correction of the 90% quantile, in log hours (0: none); models pickled before it have 0.
    hours_p90_log_offset: float = 0.0
    # The training slice's repeat rate: what a customer's own known rate is shrunk towards.
    customer_prior: float | None = None
    _embedder: Embedder | None = field(default=None, repr=False, compare=False)

    # -- pickling keeps weights of the embedding model out ---------------------------------------------
    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_embedder"] = None
        return state

    @property
    def uses_text(self) -> bool:
        return self.embedding_config is not None

    def embedder(self, cache_dir: str | None = None, cache: bool | None = None) -> Embedder | None:
        """The embedder, loaded once; ``cache_dir`` / ``cache`` adapt the training-time settings to this host."""
        if self.embedding_config is None:
            return None
        if self._embedder is None or cache_dir is not None or cache is not None:
            update: dict[str, Any] = {}
            if cache_dir is not None:
                update["cache_dir"] = cache_dir
            if cache is not None:
                update["cache"] = cache
            base = self._embedder.config if self._embedder is not None else self.embedding_config
            self._embedder = Embedder(base.model_copy(update=update))
        return self._embedder

    # -- scoring ---------------------------------------------------------------------------------------
    def features(
        self,
        contacts: pd.DataFrame,
        history: pd.DataFrame | ContactArrays | None = None,
        text: TextViews | None = None,
        other_windows: pd.DataFrame | Mapping[str, np.ndarray] | None = None,
    ) -> FeatureSet:
        """``build`` with this model's embedder and label rules (``other_windows``: as ``build`` takes them)."""
        return build(
            contacts,
            history,
            embedder=self.embedder(),
            labels=self.label_config,
            customer_prior=self.customer_prior,
            text=text,
            other_windows=other_windows,
        )

    def text_views(self, contacts: pd.DataFrame) -> TextViews | None:
        """The contacts' embedded text (None for a model without text): ``features(..., text=)`` reuses it."""
        embedder = self.embedder()
        return None if embedder is None else text_views(contacts["transcript"].tolist(), embedder)

    def model_input(self, feature_set: FeatureSet) -> pd.DataFrame:
        """What the boosters see: typed metadata + history, and the text heads' scores."""
        X = as_model_input(feature_set.frame[self.feature_columns], self.categories)
        if self.text_heads is not None:
            scores = self.text_heads.transform(TextInputs.from_features(feature_set), index=X.index)
            X = pd.concat([X, scores], axis=1)
        return X

    def model_matrix(self, feature_set: FeatureSet) -> tuple[np.ndarray, list[str]]:
        """``as_matrix(model_input(feature_set))`` and its column names, built column by column without the
        typed frame in between: what a scorer needs of a few rows (the frame cost ~5 ms a contact to build)."""
        computed = feature_set.columns  # the features as computed: numbers read here without a Series
        columns = []
        for name in self.feature_columns:
            values = computed.get(name)
            if name in self.categories:
                # As ``as_model_input``: the value as text, its place among the training levels (unseen: missing).
                codes = _level_codes(tuple(self.categories[name]))
                found = [codes.get(v, np.nan) for v in _as_text(values)]
                columns.append(np.asarray(found, dtype=np.float64))
            elif isinstance(values, np.ndarray) and values.dtype.kind == "f":
                columns.append(values.astype(np.float64, copy=False))
            else:
                columns.append(pd.Series(values).to_numpy(dtype=np.float64, na_value=np.nan))
        names = list(self.feature_columns)
        if self.text_heads is not None:
            scores = self.text_heads.scores(TextInputs.from_features(feature_set))
            columns.extend(scores.T)
            names += self.text_heads.columns
        matrix = np.column_stack(columns) if columns else np.zeros((len(feature_set.index), 0))
        return matrix, names

    def predict(self, contacts: pd.DataFrame, history: pd.DataFrame | None = None) -> pd.DataFrame:
        """Score validated contacts at close; ``history`` is what was known (may include them)."""
        X = self.model_input(self.features(contacts, history))
        return self.predict_from_input(X, contacts["contact_id"].to_numpy())

    def predict_from_input(self, X: pd.DataFrame | np.ndarray, contact_ids: np.ndarray) -> pd.DataFrame:
        """The ``OUTPUT_COLUMNS`` of the boosters' input, one row per contact."""
        return pd.DataFrame(self.prediction_columns(X, contact_ids))

    def prediction_columns(self, X: pd.DataFrame | np.ndarray, contact_ids: np.ndarray) -> dict[str, np.ndarray]:
        """``predict_from_input`` as arrays by column name: a scorer reads its few rows straight off them (a
        frame built only to be read back cost ~1 ms of a /score)."""
        n_classes = len(self.next_issue_classes)
        if not len(X):
            p, proba, median, p90 = np.array([]), np.zeros((0, n_classes)), np.array([]), np.array([])
        else:
            matrix = as_matrix(X)  # once: LightGBM would convert the frame again for each of five models
            p = self.repeat.predict_proba(matrix)[:, 1]
            proba = self.next_issue.predict_proba(matrix)
            median = np.expm1(booster_predict(self.hours_median, matrix))
            p90 = np.expm1(booster_predict(self.hours_p90, matrix) + self.hours_p90_log_offset)
        if proba.shape[1] < TOP_K:  # fewer next issues than places: the rest stay empty, probability 0
            proba = np.column_stack([proba, np.zeros((len(proba), TOP_K - proba.shape[1]))])
        top = np.argsort(-proba, axis=1, kind="stable")[:, :TOP_K]
        classes = np.array([*self.next_issue_classes, *[None] * TOP_K], dtype=object)[: proba.shape[1]]
        out: dict[str, Any] = {"contact_id": contact_ids, "repeat_probability": p}
        for k in range(TOP_K):
            out[f"next_issue_{k + 1}"] = classes[top[:, k]] if len(X) else np.array([], dtype=object)
            out[f"next_issue_{k + 1}_probability"] = np.take_along_axis(proba, top[:, k : k + 1], 1)[:, 0]
        out["hours_to_repeat_median"] = np.clip(median, 0.0, None)
        out["hours_to_repeat_p90"] = np.maximum(np.clip(p90, 0.0, None), out["hours_to_repeat_median"])
        return {name: out[name] for name in OUTPUT_COLUMNS}

    def reasons(self, X: pd.DataFrame, top: int = 3) -> list[list[dict[str, Any]]]:
        """The features that pushed each score up or down most (SHAP values of the booster), in words."""
        return self.reasons_from(as_matrix(X), list(X.columns), top)

    def reasons_from(self, matrix: np.ndarray, columns: list[str], top: int = 3) -> list[list[dict[str, Any]]]:
        """``reasons`` of the boosters' input as a matrix and its column names (``model_matrix``)."""
        contrib = booster_predict(self.repeat_booster, matrix, pred_contrib=True)
        text = [i for i, c in enumerate(columns) if c.startswith(TEXT_HEAD_PREFIX)]
        named = [i for i, c in enumerate(columns) if not c.startswith(TEXT_HEAD_PREFIX)]
        result = []
        for row in contrib:
            items = [(columns[i], float(row[i])) for i in named]
            if text:
                items.append(("text", float(row[text].sum())))
            items.sort(key=lambda kv: -abs(kv[1]))
            result.append(
                [
                    {
                        "feature": name,
                        "description": REASON_WORDS.get(name, name.replace("_", " ")),
                        "direction": "raises risk" if value > 0 else "lowers risk",
                        "weight": round(value, 4),
                    }
                    for name, value in items[:top]
                ]
            )
        return result


@dataclass
class TextInputs:
    """What the text heads read: each embedding view, and the redacted transcripts for the word view."""

    embeddings: dict[str, np.ndarray]
    texts: list[str]
    has_text: np.ndarray

    @classmethod
    def from_features(cls, feature_set: FeatureSet) -> TextInputs:
        return cls(
            embeddings={view: feature_set.vectors[view] for view in feature_set.views},
            texts=feature_set.transcripts,
            has_text=np.asarray(feature_set.columns["has_transcript"]) > 0,
        )

    def rows(self, positions: np.ndarray) -> TextInputs:
        return TextInputs(
            embeddings={view: matrix[positions] for view, matrix in self.embeddings.items()},
            texts=[self.texts[i] for i in positions],
            has_text=self.has_text[positions],
        )


class TextHeads:
    """Linear read-outs of the transcript, one per outcome (repeat, explicit, implicit) and per view.

    A sentence embedding holds "was it resolved", "was the customer confused", "was the next issue
    mentioned" as directions, not as single coordinates: a logistic regression per outcome finds them,
    and the boosters combine their scores with metadata and history. Three views of the same transcript
    each catch what the others blur: the whole conversation (head + tail), its closing turns alone (a
    mean over the whole text dilutes "that didn't help"), and word n-grams (TF-IDF: exact phrasing, which
    a 256-dimensional embedding compresses away). Together +0.01 AUC over the whole-conversation view
    alone on the 20k log. Training rows get out-of-fold scores (``fit_oof``) so the boosters never learn
    from a head that saw their own label.
    """

    def __init__(
        self,
        grids: dict[str, list[float]],
        targets: Sequence[str] = ("repeat", "explicit", "implicit"),
        words: dict[str, Any] | None = None,
        folds: int = 5,
        seed: int = 0,
    ) -> None:
        self.grids = grids  # per view, the regularisation to choose from; a view without a grid is not read
        self.targets = targets
        self.words = words  # TfidfVectorizer settings for the word view (None: no word view)
        self.folds = folds
        self.seed = seed

    @property
    def views(self) -> list[str]:
        return list(self.grids)

    @property
    def columns(self) -> list[str]:
        return [f"{TEXT_HEAD_PREFIX}{view}_{target}" for view in self.views for target in self.targets]

    def matrices(self, inputs: TextInputs) -> dict[str, Any]:
        """Each view's design matrix (the word view as sparse TF-IDF)."""
        out: dict[str, Any] = {view: inputs.embeddings[view] for view in self.views if view in inputs.embeddings}
        if "words" in self.views:
            out["words"] = self.vectorizer_.transform(inputs.texts)
        return out

    def fit_vectorizer(self, inputs: TextInputs) -> TextHeads:
        """Vocabulary and IDF from the training transcripts (no labels involved)."""
        if "words" in self.views:
            from sklearn.feature_extraction.text import TfidfVectorizer

            words = dict(self.words or {})
            self.vectorizer_ = TfidfVectorizer(
                max_features=words.get("max_features", 20000),
                ngram_range=(words.get("ngram_min", 1), words.get("ngram_max", 2)),
                analyzer=words.get("analyzer", "word"),
                min_df=words.get("min_df", 2),
                sublinear_tf=True,
            ).fit([t for t, has in zip(inputs.texts, inputs.has_text, strict=True) if has])
        return self

    def fit(self, inputs: TextInputs, labels: np.ndarray, matrices: dict[str, Any] | None = None) -> TextHeads:
        """Fit every head; pass ``matrices`` (from ``matrices(inputs)``, vectorizer fitted) to reuse them."""
        if matrices is None:
            self.fit_vectorizer(inputs)
            matrices = self.matrices(inputs)
        keep = inputs.has_text
        if not hasattr(self, "C_"):
            self.C_ = {view: float(grid[0]) for view, grid in self.grids.items()}
        self.models_ = {
            view: [self._logistic(view).fit(matrix[keep], labels[keep, k]) for k in range(labels.shape[1])]
            for view, matrix in matrices.items()
        }
        self.__dict__.pop("_stacked", None)  # the heads' weights as one matrix, of the models just replaced
        return self

    def fit_oof(
        self,
        inputs: TextInputs,
        labels: np.ndarray,
        index: pd.Index,
        keys: np.ndarray,
        matrices: dict[str, Any] | None = None,
    ) -> pd.DataFrame:
        """Fit on all rows; return each row's score from the fold that did not see it.

        Folds come from ``keys`` (contact ids), not row positions: the same contacts fall in the same fold
        whatever order the log arrives in, in-process or on a cluster. Each view's regularisation is chosen
        first (``C_``), by cross-validated AUC on the first target.
        """
        from sklearn.model_selection import cross_val_predict

        if matrices is None:
            self.fit_vectorizer(inputs)
            matrices = self.matrices(inputs)
        keep = inputs.has_text
        kept_keys = np.asarray(keys)[keep]
        self.C_ = {view: self._choose_c(view, matrices[view][keep], labels[keep, 0], kept_keys) for view in self.grids}
        self.fit(inputs, labels, matrices)
        oof = np.full((len(keep), len(self.columns)), np.nan)
        column = 0
        for view, matrix in matrices.items():
            for k in range(labels.shape[1]):
                folds = keyed_folds(kept_keys, labels[keep, k], self.folds, self.seed)
                oof[keep, column] = cross_val_predict(
                    self._logistic(view), matrix[keep], labels[keep, k], cv=folds, method="predict_proba"
                )[:, 1]
                column += 1
        return pd.DataFrame(oof, columns=self.columns, index=index)

    def transform(self, inputs: TextInputs, index: pd.Index) -> pd.DataFrame:
        return pd.DataFrame(self.scores(inputs), columns=self.columns, index=index)

    def scores(self, inputs: TextInputs) -> np.ndarray:
        """Every head's score of every row (``columns``' order); missing for a row without a transcript."""
        scores = np.full((len(inputs.has_text), len(self.columns)), np.nan)
        keep = inputs.has_text  # no transcript: missing, not "a transcript that says nothing"
        if keep.any():
            matrices = self.matrices(inputs.rows(np.flatnonzero(keep)))
            scores[keep] = np.column_stack([self._scores(view, matrices[view]) for view in self.models_])
        return scores

    def _scores(self, view: str, matrix: Any) -> np.ndarray:
        """Every head of a view at once: the logistic regressions' probability of class 1, as their
        ``predict_proba`` computes it, in one product (nine sklearn calls cost ~3 ms per scored contact)."""
        weights, intercepts = self.weights()[view]
        return expit(np.asarray(matrix @ weights) + intercepts)

    def weights(self) -> dict[str, tuple[np.ndarray, np.ndarray]]:
        """Each view's heads as one weight matrix (a column a head) and their intercepts: what ``_scores``
        multiplies by. Derived from ``models_`` on first use and kept (a lean copy keeps these alone)."""
        stacked = self.__dict__.setdefault("_stacked", {})
        for view, models in self.models_.items():
            if view not in stacked:
                coefficients = np.column_stack([m.coef_[0] for m in models])
                stacked[view] = (coefficients, np.array([m.intercept_[0] for m in models]))
        return stacked

    def _logistic(self, view: str) -> Any:
        return logistic(self.C_[view], sparse=view == "words")

    def _choose_c(self, view: str, matrix: Any, target: np.ndarray, keys: np.ndarray) -> float:
        """Regularisation of a view's heads by cross-validated AUC: little data needs more of it."""
        from sklearn.model_selection import cross_val_score

        grid = self.grids[view]
        if len(grid) == 1 or min(target.sum(), len(target) - target.sum()) < 3:
            return float(grid[0])
        folds = keyed_folds(keys, target, 3, self.seed)
        scores = [
            cross_val_score(logistic(c, sparse=view == "words"), matrix, target, cv=folds, scoring="roc_auc").mean()
            for c in grid
        ]
        best = float(grid[int(np.argmax(scores))])
        log.info(
            "text head %s: C=%s (cross-validated AUC %s)", view, best, ", ".join(f"{float(s):.4f}" for s in scores)
        )
        return best


def keyed_folds(keys: np.ndarray, y: np.ndarray, n_folds: int, seed: int = 0) -> list[tuple[np.ndarray, np.ndarray]]:
    """Stratified folds decided by a hash of each row's key, so they do not depend on row order.

    Within each class the rows are ranked by the hash and dealt round-robin: every fold gets its share of
    a rare class (as ``StratifiedKFold``), and a contact's fold is the same on every path that sees it.
    """
    hashed = pd.util.hash_array(np.asarray(keys, dtype=object), hash_key=f"{seed:016d}"[:16])
    fold = np.empty(len(keys), dtype=int)
    for value in np.unique(y):
        rows = np.flatnonzero(y == value)
        fold[rows[np.argsort(hashed[rows], kind="stable")]] = np.arange(len(rows)) % n_folds
    everything = np.arange(len(keys))
    return [(everything[fold != k], everything[fold == k]) for k in range(n_folds)]


def logistic(C: float, sparse: bool) -> Any:
    """A logistic regression solved the fast way for its input: Newton steps on a 256-column embedding
    converge in ~3 iterations (10x faster than L-BFGS there), but would need a dense Hessian of the
    thousands of TF-IDF columns."""
    from sklearn.linear_model import LogisticRegression

    return LogisticRegression(C=C, max_iter=3000, solver="lbfgs" if sparse else "newton-cholesky")


def _as_text(values: Any) -> list[str]:
    """A categorical feature's values as the text ``as_model_input`` compares (a Series of the contacts', or an
    array the feature function computed)."""
    if isinstance(values, pd.Series):
        return values.astype(str).to_numpy(dtype=object).tolist()
    return np.asarray(values).astype(str).tolist()


@functools.lru_cache(maxsize=64)
def _level_codes(levels: tuple[str, ...]) -> dict[str, float]:
    # Built once per set of training levels: a scorer converts a few rows at a time.
    return {level: float(code) for code, level in enumerate(levels)}


def as_matrix(X: pd.DataFrame | np.ndarray) -> np.ndarray:
    """The boosters' input as one float matrix, categorical columns as their codes (missing: NaN): what
    LightGBM derives from a frame with fixed categories itself, at ~3 ms a call, done once instead."""
    if isinstance(X, np.ndarray):
        return X
    columns = []
    for name in X.columns:
        column = X[name]
        if isinstance(column.dtype, pd.CategoricalDtype):
            codes = column.cat.codes.to_numpy().astype(np.float64)
            codes[codes < 0] = np.nan
            columns.append(codes)
        else:
            columns.append(column.to_numpy(dtype=np.float64, na_value=np.nan))
    return np.column_stack(columns) if columns else np.zeros((len(X), 0))


# Up to this many rows a booster predicts on one thread: waking LightGBM's OpenMP threads after a pause costs
# ~1-8 ms here, while one row takes ~0.07 ms on one (a scorer's five boosters per contact paid it five times).
# Past it both cores pay: a batch of 200 was predicted in 10 ms instead of 16, its reasons (SHAP values, ~0.15
# ms a row) in 23 instead of 37.
SINGLE_THREAD_ROWS = 64
# Threads a larger prediction may use in this process (0: LightGBM's default, every core). Processes sharing
# the cores each take their part (``serving.split``): two processes each waking OpenMP threads on both cores
# spin against each other (a batch split over two ran ~1,190 contacts/s instead of ~1,400).
_PREDICT_THREADS = 0


def set_predict_threads(threads: int) -> None:
    """The threads this process's larger predictions may use (0: every core)."""
    global _PREDICT_THREADS
    _PREDICT_THREADS = threads


def booster_predict(model: Any, X: pd.DataFrame | np.ndarray, **kwargs: Any) -> np.ndarray:
    """A fitted LightGBM estimator's booster on the matrix (probability of class 1 for a binary one)."""
    matrix = as_matrix(X)
    if len(matrix) <= SINGLE_THREAD_ROWS:
        kwargs.setdefault("num_threads", 1)
    elif _PREDICT_THREADS:
        kwargs.setdefault("num_threads", _PREDICT_THREADS)
    return model.booster_.predict(matrix, **kwargs)


class Calibrated:
    """The repeat booster, and the map from its output to a probability fitted on the later calibration slice:
    Platt scaling (a logistic regression on the booster's log-odds) or isotonic regression on its probability.
    """

    def __init__(self, booster: Any, method: str = "sigmoid") -> None:
        if method not in ("sigmoid", "isotonic"):
            raise ValueError(f"calibration must be 'sigmoid' or 'isotonic', not {method!r}")
        self.booster = booster
        self.method = method

    def score(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        """What the map reads: the booster's log-odds (sigmoid) or probability (isotonic)."""
        return booster_predict(self.booster, X, raw_score=self.method == "sigmoid")

    def fit(self, X: pd.DataFrame | np.ndarray, y: np.ndarray) -> Calibrated:
        return self.fit_scores(self.score(X), y)

    def fit_scores(self, score: np.ndarray, y: np.ndarray) -> Calibrated:
        """Fit the map on scores computed elsewhere (out-of-fold boosters' scores of the training rows)."""
        from sklearn.isotonic import IsotonicRegression
        from sklearn.linear_model import LogisticRegression

        if self.method == "sigmoid":
            self.map_ = LogisticRegression(C=1e6).fit(score[:, None], y)
        else:
            self.map_ = IsotonicRegression(y_min=0.0, y_max=1.0, out_of_bounds="clip").fit(score, y)
        return self

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        score = self.score(X)
        p = self.map_.predict_proba(score[:, None])[:, 1] if self.method == "sigmoid" else self.map_.predict(score)
        return np.column_stack([1 - p, p])


class ConstantClasses:
    """The next-issue model where the training repeats have a single next issue (one class): that issue."""

    def __init__(self, classes: list[str]) -> None:
        self.classes_ = classes

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        return np.ones((len(X), len(self.classes_))) / len(self.classes_)


# A transition seen fewer times than this in training is not a level of its own (40 issue codes make 1,600).
MIN_TRANSITION_EXAMPLES = 20


def categorical_levels(features: pd.DataFrame) -> dict[str, list[str]]:
    """Each categorical column's levels in the training rows."""
    return {
        column: levels_from_counts(column, features[column].astype(str).value_counts())
        for column in CATEGORICAL
        if column in features.columns
    }


def levels_from_counts(column: str, counts: pd.Series) -> list[str]:
    """The levels a column keeps, from its value counts in training (issue transitions: only frequent ones);
    in-process and on a cluster alike."""
    if column == "issue_transition":
        counts = counts[counts >= MIN_TRANSITION_EXAMPLES]
    return sorted(counts.index.tolist())


def predict_log(model: RepeatContactModel, rows: pd.DataFrame) -> pd.DataFrame:
    """Score raw contact rows (log format). Rows with ``is_history`` true are context only.

    Rows are validated exactly as a log is; a row that fails validation raises with the reasons, since
    a model cannot guess what a broken contact meant.
    """
    from predictor.contacts.schema import validate

    flags = rows["is_history"].fillna(False).astype(bool) if "is_history" in rows.columns else None
    raw = rows.drop(columns=["is_history"], errors="ignore")
    result = validate(raw)
    if result.n_rejected_rows:
        detail = "; ".join(f"row {r.row} {r.field}: {r.reason}" for r in result.rejections.head(10).itertuples())
        raise ValueError(f"{result.n_rejected_rows} contact rows are invalid: {detail}")
    contacts = result.contacts
    to_score = contacts if flags is None else contacts[~flags.to_numpy()]
    return model.predict(to_score.reset_index(drop=True), history=contacts)


class ClassNames:
    """A fitted multiclass booster whose columns follow ``classes`` (LightGBM sees only codes)."""

    def __init__(self, model: Any, classes: list[str]) -> None:
        self.model = model
        self.classes_ = classes

    def predict_proba(self, X: pd.DataFrame | np.ndarray) -> np.ndarray:
        proba = np.zeros((len(X), len(self.classes_)))
        seen = booster_predict(self.model, X)
        if seen.ndim == 1:  # two classes: LightGBM gives only the second one's probability
            seen = np.column_stack([1 - seen, seen])
        proba[:, self.model.classes_] = seen
        return proba


class TfidfBaseline:
    """The text baseline every embedding model must beat: TF-IDF words and a logistic regression."""

    def __init__(self, hp: dict[str, Any]) -> None:
        from sklearn.feature_extraction.text import TfidfVectorizer
        from sklearn.linear_model import LogisticRegression

        params = hp["tfidf_baseline"]
        self.vectorizer = TfidfVectorizer(
            max_features=params["max_features"], ngram_range=(1, params["ngram_max"]), sublinear_tf=True, min_df=2
        )
        self.model = LogisticRegression(C=params["C"], max_iter=2000)

    def fit(self, redacted: list[str], y: np.ndarray) -> TfidfBaseline:
        self.model.fit(self.vectorizer.fit_transform(redacted), y)
        return self

    def predict(self, redacted: list[str]) -> np.ndarray:
        if not len(redacted):
            return np.array([], dtype=float)
        return self.model.predict_proba(self.vectorizer.transform(redacted))[:, 1]
