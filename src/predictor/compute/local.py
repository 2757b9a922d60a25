"""Training in this process: the log is one pandas frame, boosters are ``lightgbm`` estimators."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import lightgbm as lgb
import numpy as np
import pandas as pd

from predictor.compute.base import (
    Booster,
    Rows,
    Slicing,
    Target,
    TextSample,
    design_frame,
    design_rows,
    in_sample,
    keyed,
    text_scores,
)
from predictor.config import Settings
from predictor.contacts.labels import derive
from predictor.contacts.schema import fingerprint
from predictor.features.build import build
from predictor.features.embed import Embedder
from predictor.model import split as splits
from predictor.model.fitted import TextHeads, TextInputs, TfidfBaseline


class LocalBackend:
    """The design table as one frame, in the log's order; ``contacts`` are validated contacts."""

    name = "local"

    def __init__(self, contacts: pd.DataFrame, settings: Settings) -> None:
        self.contacts = contacts.reset_index(drop=True)
        self.settings = settings
        self.labelled: pd.DataFrame | None = None
        self.embedder: Embedder | None = None
        self.table: pd.DataFrame | None = None  # keys, features, labels
        self.inputs: TextInputs | None = None  # every row's text views (the one being read)
        self.scores: pd.DataFrame | None = None  # text-head scores of every row
        self.frame: pd.DataFrame | None = None  # the design: what fits and collections read
        self.feature_columns: list[str] = []

    # -- labels and features -------------------------------------------------------------------------
    def languages(self) -> pd.Series:
        if "language" not in self.contacts:
            return pd.Series(dtype="int64")
        with_text = self.contacts["transcript"].str.strip() != ""
        return self.contacts.loc[with_text, "language"].value_counts()

    def times(self) -> pd.DataFrame:
        return self.contacts[["opened_at", "closed_at"]]

    def slice_summary(self, boundaries: tuple[pd.Timestamp, pd.Timestamp], label_end: pd.Timestamp) -> pd.DataFrame:
        self.labelled = derive(self.contacts, self.settings.labels, label_end)
        return splits.slice_summary(self.labelled, boundaries, self.settings)

    def build(self, slicing: Slicing, prior: float, use_text: bool) -> list[str]:
        boundaries, label_end, mode = slicing.boundaries, slicing.label_end, slicing.mode
        if self.labelled is None:
            self.labelled = derive(self.contacts, self.settings.labels, label_end)
        if use_text and self.has_text_in_log():
            self.embedder = Embedder(self.settings.embedding)
        found = build(
            self.contacts, embedder=self.embedder, labels=self.settings.labels, progress=True, customer_prior=prior
        )
        self.feature_columns = found.metadata_columns
        features = found.frame[self.feature_columns]
        self.table = design_rows(self.contacts, self.labelled, features, boundaries, self.settings, mode)
        self.inputs = TextInputs.from_features(found) if found.views else None
        self.frame = self.table
        return list(self.feature_columns)

    def has_text_in_log(self) -> bool:
        return bool((self.contacts["transcript"].str.strip() != "").any())

    def has_text(self) -> bool:
        return self.inputs is not None

    def embedding_model(self) -> str | None:
        return self.embedder.model_id if self.embedder else None

    def level_counts(self, rows: Rows, columns: list[str]) -> dict[str, pd.Series]:
        chosen = self.table.loc[rows.mask(self.table)]
        return {c: chosen[c].astype(str).value_counts() for c in columns}

    def issue_codes(self) -> list[str]:
        return sorted(self.contacts["issue"].unique().tolist())

    # -- text ----------------------------------------------------------------------------------------
    def text_sample(self, rows: Rows, fraction: float, truncation: str | None = None) -> TextSample:
        if truncation is not None:
            # What reading the close of a conversation is worth: the whole-conversation view embedded with
            # another truncation and no closing-turns view (the word view, which reads everything, stays).
            embedded = self.embedder.encode(self.contacts["transcript"].tolist(), truncation=truncation, progress=True)
            self.inputs = TextInputs({"whole": embedded}, self.inputs.texts, self.inputs.has_text)
        ids = self.table["contact_id"].to_numpy()
        positions = np.flatnonzero(rows.mask(self.table) & in_sample(ids, fraction))
        labels = self.labelled.iloc[positions][["is_repeat", "repeat_type"]].reset_index(drop=True)
        return TextSample(self.inputs.rows(positions), labels, ids[positions])

    def add_text(self, heads: TextHeads | None, oof: pd.DataFrame, tfidf: TfidfBaseline | None) -> None:
        self.scores = text_scores(heads, self.inputs, self.table["contact_id"].to_numpy(), oof, tfidf)

    def design(self, categories: dict[str, list[str]]) -> None:
        self.frame = design_frame(self.table, self.scores, self.feature_columns, categories)

    @contextmanager
    def variant(self) -> Iterator[None]:
        """A second design (another text view) for an ablation; the first comes back afterwards."""
        kept = (self.inputs, self.scores, self.frame)
        try:
            yield
        finally:
            self.inputs, self.scores, self.frame = kept

    # -- fitting and collecting -----------------------------------------------------------------------
    def fit(
        self, booster: Booster, rows: Rows, columns: list[str], target: Target, stop: tuple[Rows, int] | None = None
    ) -> Any:
        chosen = self.frame.loc[rows.mask(self.frame)]
        kind = lgb.LGBMClassifier if booster.kind == "classifier" else lgb.LGBMRegressor
        model = kind(n_jobs=2, verbose=-1, **booster.params)
        if stop is None:
            return model.fit(chosen[columns], target.values(chosen))
        # Only saves time: trees past the point where the loss on those rows stopped improving are not
        # grown; the caller still picks the tree count from the curve (``train.patience``).
        held = self.frame.loc[stop[0].mask(self.frame)]
        stopping = lgb.early_stopping(stop[1], verbose=False)
        return model.fit(
            chosen[columns], target.values(chosen),
            eval_X=(held[columns],), eval_y=(target.values(held),), callbacks=[stopping],
        )  # fmt: skip

    def collect(self, rows: Rows, columns: list[str] | None = None) -> pd.DataFrame:
        chosen = self.frame.loc[rows.mask(self.frame)]
        return chosen if columns is None else chosen[keyed(columns)]

    def positions(self, code: int) -> np.ndarray:
        return np.flatnonzero(self.table["slice"].to_numpy() == code)

    def test_contacts(self) -> pd.DataFrame:
        return self.contacts.iloc[self.positions(splits.TEST)]

    def fingerprint(self) -> str:
        return fingerprint(self.contacts)

    def params(self) -> dict[str, Any]:
        return {"compute": "local"}
