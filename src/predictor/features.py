"""THE feature function, used by training and by the scoring service alike.

``build(contacts, history)`` describes each contact at the moment it closed: its metadata, what was known
about the customer and the agent at that moment (point-in-time: only contacts closed by then, and only
labels whose window had ended or whose repeat had been seen by then), and its transcript embedding.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from predictor.config import LabelConfig
from predictor.embed import Embedder, redact
from predictor.labels import derive, epoch_us

CATEGORICAL: tuple[str, ...] = ("channel", "issue", "queue", "prev_issue")
HISTORY_WINDOWS_DAYS: tuple[int, ...] = (7, 30, 90)
AGENT_PRIOR_STRENGTH = 30.0  # pseudo-contacts: an agent's rate needs ~30 closed windows to count
DEFAULT_REPEAT_RATE = 1 / 3  # the industry figure: the prior every agent's rate shrinks towards
# Every history feature looks back at most this far, so a scorer needs only this much of its store.
LOOKBACK_DAYS = max(HISTORY_WINDOWS_DAYS)
EMBEDDING_PREFIX = "emb_"  # the whole conversation, cut to head + tail
CLOSING_PREFIX = "close_"  # the last few turns alone: whether (and how) it was resolved
CLOSING_WORDS_WITHOUT_TURNS = 48  # a transcript on one line has no turns: its last words stand in


@dataclass
class FeatureSet:
    """Features of the contacts to score, in the order given, plus what they were built with."""

    frame: pd.DataFrame
    text_columns: list[str] = field(default_factory=list)
    # Each embedding view's columns ({"whole": [...], "closing": [...]}) and the redacted transcripts,
    # which the model's word-level reader needs; empty without an embedder.
    views: dict[str, list[str]] = field(default_factory=dict)
    transcripts: list[str] = field(default_factory=list)

    @property
    def metadata_columns(self) -> list[str]:
        return [c for c in self.frame.columns if c not in self.text_columns]


def build(
    contacts: pd.DataFrame,
    history: pd.DataFrame | None = None,
    *,
    embedder: Embedder | None = None,
    labels: LabelConfig | None = None,
    progress: bool = False,
) -> FeatureSet:
    """Features of ``contacts`` as of each one's close.

    ``history`` is every contact known to the caller (the whole log in training, the contact store in
    the service); it may include ``contacts`` themselves. Only history that had closed by a contact's
    close, and labels known by then, reach its features. Pass ``embedder=None`` for no text features.
    """
    labels = labels or LabelConfig()
    known = _union(history, contacts)
    meta = _metadata(contacts)
    hist = _history(contacts, known, labels)
    frame = pd.concat([meta, hist], axis=1)
    if embedder is None:
        return FeatureSet(frame=frame)
    transcripts = contacts["transcript"].tolist()
    texts = {"whole": transcripts}
    if embedder.config.closing_turns:
        texts["closing"] = [closing_turns(t, embedder.config.closing_turns) for t in transcripts]
    prefixes = {"whole": EMBEDDING_PREFIX, "closing": CLOSING_PREFIX}
    views: dict[str, list[str]] = {}
    blocks = [frame]
    for view, view_texts in texts.items():
        vectors = embedder.encode(view_texts, progress=progress)
        views[view] = [f"{prefixes[view]}{i:03d}" for i in range(vectors.shape[1])]
        blocks.append(pd.DataFrame(vectors, columns=views[view], index=frame.index))
    return FeatureSet(
        frame=pd.concat(blocks, axis=1),
        text_columns=[c for columns in views.values() for c in columns],
        views=views,
        transcripts=[redact(t) for t in transcripts],
    )


def closing_turns(transcript: str, turns: int) -> str:
    """The last ``turns`` turns of a conversation (one per line), or its last words if it has no lines."""
    lines = [line for line in transcript.splitlines() if line.strip()]
    if len(lines) > 1:
        return "\n".join(lines[-turns:])
    return " ".join(transcript.split()[-CLOSING_WORDS_WITHOUT_TURNS:])


def _union(history: pd.DataFrame | None, contacts: pd.DataFrame) -> pd.DataFrame:
    if history is None:
        return contacts
    both = pd.concat([history, contacts], ignore_index=True)
    return both.drop_duplicates("contact_id", keep="first").reset_index(drop=True)


def _metadata(contacts: pd.DataFrame) -> pd.DataFrame:
    closed = contacts["closed_at"]
    words = contacts["transcript"].str.split().str.len().fillna(0)
    return pd.DataFrame(
        {
            "channel": contacts["channel"].astype(str),
            "issue": contacts["issue"].astype(str),
            "queue": contacts["queue"].astype(str),
            "log_handle_seconds": np.log1p(contacts["handle_seconds"].astype(float)),
            "log_hold_seconds": np.log1p(contacts["hold_seconds"].astype(float)),
            "transfers": contacts["transfers"].astype(float),
            "close_hour": closed.dt.hour.astype(float),
            "close_weekday": closed.dt.day_of_week.astype(float),
            "csat": contacts["csat"].astype(float),
            "has_transcript": (words > 0).astype(float),
            "transcript_words": words.astype(float),
        },
        index=contacts.index,
    )


def _history(contacts: pd.DataFrame, known: pd.DataFrame, labels: LabelConfig) -> pd.DataFrame:
    """Customer and agent history as of each contact's close (nothing later can reach it)."""
    window = pd.Timedelta(days=labels.repeat_window_days)
    labelled = derive(known, labels)
    # Backward-looking: was a contact itself a return within the window? Known when it opened.
    by_open = labelled.sort_values(["customer_id", "opened_at", "contact_id"], kind="stable")
    prev_closed = by_open.groupby("customer_id")["closed_at"].shift(1)
    is_return = ((by_open["opened_at"] - prev_closed <= window) & ~by_open["continues_previous"]).fillna(False)
    labelled["is_return"] = is_return.reindex(labelled.index).astype(float)

    # The customer's earlier contacts: theirs that closed by this one's close, this one excluded.
    ordered = labelled.sort_values(["customer_id", "closed_at", "contact_id"], kind="stable").reset_index(drop=True)
    codes = {c: i for i, c in enumerate(pd.unique(ordered["customer_id"]))}
    keys = _Keyed(ordered["customer_id"].map(codes).to_numpy(), epoch_us(ordered["closed_at"]))
    query_code = contacts["customer_id"].map(codes).to_numpy()
    t = epoch_us(contacts["closed_at"])
    upto = keys.count_upto(query_code, t)  # includes the contact itself
    self_return = contacts["contact_id"].map(dict(zip(labelled["contact_id"], labelled["is_return"], strict=True)))
    cum_return = np.r_[0.0, np.cumsum(ordered["is_return"].to_numpy())]
    out = pd.DataFrame(index=contacts.index)
    for days in HISTORY_WINDOWS_DAYS:
        since = keys.count_upto(query_code, t - _days_us(days))
        out[f"customer_contacts_{days}d"] = (upto - since - 1).astype(float)
        out[f"customer_returns_{days}d"] = cum_return[upto] - cum_return[since] - self_return.to_numpy()

    # The latest earlier contact within the look-back: the last one up to this close, not this contact.
    ids = ordered["contact_id"].to_numpy()
    last = upto - 1
    last = np.where(ids[np.maximum(last, 0)] == contacts["contact_id"].to_numpy(), last - 1, last)
    lookback_start = keys.count_upto(query_code, t - _days_us(LOOKBACK_DAYS) - 1)
    has_prev = last >= lookback_start
    safe = np.maximum(last, 0)
    prev_close = epoch_us(ordered["closed_at"])[safe]
    since_hours = (epoch_us(contacts["opened_at"]) - prev_close) / 3.6e9
    out["hours_since_previous_contact"] = np.where(has_prev, since_hours, np.nan)
    out["prev_issue"] = np.where(has_prev, ordered["issue"].to_numpy()[safe], "none").astype(str)
    out["same_issue_as_previous"] = (out["prev_issue"].to_numpy() == contacts["issue"].astype(str).to_numpy()).astype(
        float
    )
    out["is_return"] = self_return.to_numpy(dtype=float)

    agent_rate, agent_known = _agent_repeat_rate(contacts, labelled)
    out["agent_repeat_rate"] = agent_rate
    out["agent_closed_windows"] = agent_known
    return out


class _Keyed:
    """Rows sorted by (group code, time): counts of a group's rows up to a time in one searchsorted."""

    def __init__(self, codes: np.ndarray, times: np.ndarray) -> None:
        self.base = int(times.min()) if len(times) else 0
        self.span = (int(times.max()) - self.base + 2) if len(times) else 1
        self.keys = codes.astype(np.int64) * self.span + (times - self.base)

    def count_upto(self, codes: np.ndarray, times: np.ndarray) -> np.ndarray:
        """Index just past the last row of each group with time <= the query (groups absent: their start)."""
        missing = pd.isna(codes)
        code = np.where(missing, -1, codes).astype(np.int64)
        clipped = np.clip(times - self.base, -1, self.span - 1)
        found = np.searchsorted(self.keys, code * self.span + clipped, side="right")
        return np.where(missing, 0, found)


def _agent_repeat_rate(contacts: pd.DataFrame, labelled: pd.DataFrame) -> tuple[np.ndarray, np.ndarray]:
    """Each agent's repeat rate over the labels that became known in the look-back before the contact's
    close, shrunk towards the industry rate so that a handful of contacts cannot rank an agent."""
    # A label counts once its whole window has passed, repeat or not: counting repeats as soon as they
    # are seen but non-repeats only later would inflate every recent rate.
    known = labelled[~labelled["censored"]]
    t = epoch_us(contacts["closed_at"])

    by_agent = known.sort_values(["agent_id", "window_ends_at"], kind="stable").reset_index(drop=True)
    codes = {a: i for i, a in enumerate(pd.unique(by_agent["agent_id"]))}
    keys = _Keyed(by_agent["agent_id"].map(codes).to_numpy(), epoch_us(by_agent["window_ends_at"]))
    query_code = contacts["agent_id"].map(codes).to_numpy()
    upto = keys.count_upto(query_code, t)
    start = keys.count_upto(query_code, t - _days_us(LOOKBACK_DAYS) - 1)
    cum = np.r_[0.0, np.cumsum(by_agent["is_repeat"].astype(float).to_numpy())]
    volume = (upto - start).astype(float)
    repeats = cum[upto] - cum[start]
    rate = (repeats + AGENT_PRIOR_STRENGTH * DEFAULT_REPEAT_RATE) / (volume + AGENT_PRIOR_STRENGTH)
    return rate, volume


def _days_us(days: float) -> int:
    return int(pd.Timedelta(days=days) / pd.Timedelta(microseconds=1))


def as_model_input(features: pd.DataFrame, categories: dict[str, Sequence[str]]) -> pd.DataFrame:
    """Categorical columns with the training categories (unseen values become missing)."""
    out = features.copy()
    for column, values in categories.items():
        out[column] = pd.Categorical(out[column].astype(str), categories=list(values))
    return out
