"""THE feature function, used by training and by the scoring service alike.

``build(contacts, history)`` describes each contact at the moment it closed: its metadata, what was known
about the customer and the agent at that moment (point-in-time: only contacts closed by then, and only
labels whose window had ended or whose repeat had been seen by then), and its transcript embedding.
"""

from __future__ import annotations

import functools
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from predictor.config import LabelConfig
from predictor.contacts.contract import WINDOW_COUNT
from predictor.contacts.labels import ContactArrays, LabelArrays, epoch_us, label_arrays
from predictor.contacts.redact import redact
from predictor.features.embed import Embedder

CATEGORICAL: tuple[str, ...] = ("channel", "issue", "queue", "prev_issue", "issue_transition")
HISTORY_WINDOWS_DAYS: tuple[int, ...] = (7, 30, 90)
AGENT_PRIOR_STRENGTH = 30.0  # pseudo-contacts: an agent's rate needs ~30 closed windows to count
DEFAULT_REPEAT_RATE = 1 / 3  # the industry figure: the prior every agent's rate shrinks towards
# A customer's own rate counts as much as this many closed windows at the overall rate: most customers
# have one or two, and a single repeat must not make them look like a chronic returner.
CUSTOMER_PRIOR_STRENGTH = 3.0
# Every history feature looks back at most this far, so a scorer needs only this much of its store.
LOOKBACK_DAYS = max(HISTORY_WINDOWS_DAYS)


AGENT_COLUMNS: tuple[str, ...] = ("agent_repeat_rate", "agent_closed_windows")
# What an agent's rate reads of each closed window (``agent_windows`` rows carry more: whose, which contact).
WINDOW_COLUMNS: tuple[str, ...] = ("agent_id", "window_end_us", "repeat")

EMBEDDING_PREFIX = "emb_"  # the whole conversation, cut to head + tail
CLOSING_PREFIX = "close_"  # the last few turns alone: whether (and how) it was resolved
CLOSING_WORDS_WITHOUT_TURNS = 48  # a transcript on one line has no turns: its last words stand in


@dataclass
class FeatureSet:
    """Features of the contacts to score, in the order given, plus what they were built with.

    The metadata and history ``columns`` as computed and the text ``vectors`` are the features; ``frame`` puts
    them side by side, built when first read: a scorer reads the arrays and never needs it (its one row's
    540-column frame cost ~1.5 ms)."""

    # The metadata and history columns as they were computed (arrays, or the contacts' own columns), by name.
    columns: dict[str, Any]
    index: pd.Index  # the contacts'
    text_columns: list[str] = field(default_factory=list)
    # Each embedding view's columns ({"whole": [...], "closing": [...]}) and the redacted transcripts,
    # which the model's word-level reader needs; empty without an embedder.
    views: dict[str, list[str]] = field(default_factory=dict)
    transcripts: list[str] = field(default_factory=list)
    # The views' vectors as embedded, row for row with the contacts, in ``views``' order.
    vectors: dict[str, np.ndarray] = field(default_factory=dict)

    @functools.cached_property
    def frame(self) -> pd.DataFrame:
        """Every feature in one frame: metadata and history, then each view's embedding columns."""
        frame = pd.DataFrame(self.columns, index=self.index)
        if not self.vectors:
            return frame
        blocks = [pd.DataFrame(m, columns=self.views[view], index=self.index) for view, m in self.vectors.items()]
        return pd.concat([frame, *blocks], axis=1)

    @property
    def metadata_columns(self) -> list[str]:
        return list(self.columns)


def build(
    contacts: pd.DataFrame,
    history: pd.DataFrame | ContactArrays | None = None,
    *,
    embedder: Embedder | None = None,
    labels: LabelConfig | None = None,
    progress: bool = False,
    as_of: pd.Timestamp | None = None,
    agent_features: pd.DataFrame | None = None,
    customer_prior: float | None = None,
    text: TextViews | None = None,
    other_windows: pd.DataFrame | Mapping[str, np.ndarray] | None = None,
) -> FeatureSet:
    """Features of ``contacts`` as of each one's close (``text``: their ``text_views``, if already embedded).

    ``history`` is every contact known to the caller (the whole log in training, the contact store in
    the service); it may include ``contacts`` themselves, and needs only the ``contract.HISTORY_FIELDS`` (the others
    are never read of it: a frame, or ``ContactArrays``). Only history that had closed by a contact's
    close, and labels known by then, reach its features. Pass ``embedder=None`` for no text features.

    On a cluster (``predictor.compute.cluster``) a partition holds whole customers but not whole agents: there
    ``as_of`` is the end of the whole log, and the ``AGENT_COLUMNS`` of each row are passed in, computed
    by the function of that name on agent partitions of ``agent_windows``; the arithmetic is the same.

    A scorer's ``history`` holds its customers' contacts only; ``other_windows`` are the closed windows of the
    agents' other customers (``agent_windows`` rows, as its store keeps them), counted beside those derived here.
    """
    labels = labels or LabelConfig()
    own = ContactArrays.of(contacts)
    known = _union(history, own)
    prior = DEFAULT_REPEAT_RATE if customer_prior is None else customer_prior
    columns = {
        **_metadata(contacts, own),
        **_history(own, known, labels, as_of, agent_features, prior, other_windows),
    }
    if embedder is None:
        return FeatureSet(columns=columns, index=contacts.index)
    text = text if text is not None else text_views(contacts["transcript"].tolist(), embedder, progress=progress)
    return FeatureSet(
        columns=columns,
        index=contacts.index,
        text_columns=[c for names in text.columns.values() for c in names],
        views=text.columns,
        transcripts=text.redacted,
        vectors=text.vectors,
    )


@dataclass
class TextViews:
    """The text part of the features: each embedding view's vectors, and the redacted transcripts."""

    vectors: dict[str, np.ndarray]
    redacted: list[str]

    def rows(self, positions: list[int]) -> TextViews:
        vectors = {view: matrix[positions] for view, matrix in self.vectors.items()}
        return TextViews(vectors, [self.redacted[p] for p in positions])

    @property
    def columns(self) -> dict[str, list[str]]:
        return {view: _view_columns(view, m.shape[1]) for view, m in self.vectors.items()}


@functools.lru_cache(maxsize=16)
def _view_columns_cached(view: str, width: int) -> tuple[str, ...]:
    prefixes = {"whole": EMBEDDING_PREFIX, "closing": CLOSING_PREFIX}
    return tuple(f"{prefixes[view]}{i:03d}" for i in range(width))


def _view_columns(view: str, width: int) -> list[str]:
    # Named once per width: a scorer asks four times per contact, for 512 names.
    return list(_view_columns_cached(view, width))


def text_views(transcripts: list[str], embedder: Embedder, progress: bool = False) -> TextViews:
    """Embed the transcripts' views. It reads no history, so a scorer may run it before (and outside) the
    part that must see the store as it is."""
    texts = {"whole": transcripts}
    if embedder.config.closing_turns:
        texts["closing"] = [closing_turns(t, embedder.config.closing_turns) for t in transcripts]
    # Every view in one call: each call tokenizes and embeds on its own (~0.15 ms a call for a scorer's one
    # contact), and a short conversation's closing turns are the whole of it, embedded once.
    embedded = embedder.encode([text for view_texts in texts.values() for text in view_texts], progress=progress)
    vectors = {view: embedded[k * len(transcripts) : (k + 1) * len(transcripts)] for k, view in enumerate(texts)}
    return TextViews(vectors=vectors, redacted=[redact(t) for t in transcripts])


def closing_turns(transcript: str, turns: int) -> str:
    """The last ``turns`` turns of a conversation (one per line), or its last words if it has no lines."""
    lines = [line for line in transcript.splitlines() if line.strip()]
    if len(lines) > 1:
        return "\n".join(lines[-turns:])
    return " ".join(transcript.split()[-CLOSING_WORDS_WITHOUT_TURNS:])


def _union(history: pd.DataFrame | ContactArrays | None, contacts: ContactArrays) -> ContactArrays:
    """Every contact known, of the fields read of history, the first of each id (history's before the
    contacts')."""
    if history is None:
        return contacts
    both = ContactArrays.concat([ContactArrays.of(history), contacts])
    if len(set(both.contact_id)) == len(both):  # a scorer's contacts are new to its store: nothing to drop
        return both
    return both.take(np.flatnonzero(~pd.Index(both.contact_id).duplicated(keep="first")))


def _metadata(contacts: pd.DataFrame, own: ContactArrays) -> dict[str, Any]:
    """The contact's own fields. Numbers as arrays, words counted by Python's ``str.split`` (what pandas'
    ``.str.split()`` does on these strings, without its per-call overhead: 3x faster on a log, 20x on the one
    row a scorer asks for); the close hour and weekday from UTC microseconds."""
    words = np.fromiter(
        (len(t.split()) if isinstance(t, str) else 0 for t in contacts["transcript"].tolist()), float, len(contacts)
    )
    hours = own.closed_us // 3_600_000_000
    return {
        "channel": contacts["channel"].astype(str),
        "issue": contacts["issue"].astype(str),
        "queue": contacts["queue"].astype(str),
        "log_handle_seconds": np.log1p(contacts["handle_seconds"].to_numpy(dtype=float)),
        "log_hold_seconds": np.log1p(contacts["hold_seconds"].to_numpy(dtype=float)),
        "transfers": contacts["transfers"].to_numpy(dtype=float),
        "close_hour": (hours % 24).astype(float),
        "close_weekday": ((hours // 24 + 3) % 7).astype(float),  # 1970-01-01 was a Thursday (Monday is 0)
        "csat": contacts["csat"].to_numpy(dtype=float),
        "has_transcript": (words > 0).astype(float),
        "transcript_words": words,
    }


def _history(
    contacts: ContactArrays,
    known: ContactArrays,
    labels: LabelConfig,
    as_of: pd.Timestamp | None = None,
    agent_features: pd.DataFrame | None = None,
    customer_prior: float = DEFAULT_REPEAT_RATE,
    other_windows: pd.DataFrame | Mapping[str, np.ndarray] | None = None,
) -> dict[str, np.ndarray]:
    """Customer and agent history as of each contact's close (nothing later can reach it), by column.

    Plain arrays throughout: the service calls this for one contact at a time, where pandas' per-call
    overhead would cost more than the arithmetic.
    """
    window_us = days_us(labels.repeat_window_days)
    labelled = label_arrays(known, labels, as_of)
    ids = known.contact_id
    customers, _ = pd.factorize(known.customer_id)
    id_rank = pd.factorize(ids, sort=True)[0]  # ties in time break by contact id, as everywhere
    opened = known.opened_us
    closed = known.closed_us

    # Backward-looking: was a contact itself a return within the window? Known when it opened.
    by_open = np.lexsort((id_rank, opened, customers))
    same = np.r_[False, customers[by_open][1:] == customers[by_open][:-1]]
    gap = opened[by_open] - np.r_[0, closed[by_open][:-1]]
    is_return = np.empty(len(known))
    is_return[by_open] = same & (gap <= window_us) & ~labelled.continues[by_open]

    # The customer's earlier contacts: theirs that closed by this one's close, this one excluded.
    ordered = np.lexsort((id_rank, closed, customers))
    keys = _Keyed(customers[ordered], closed[ordered])
    position = _positions(ids, contacts.contact_id)  # always found
    query_code = customers[position]
    t = contacts.closed_us
    upto = keys.count_upto(query_code, t)  # includes the contact itself
    self_return = is_return[position]
    cum_return = np.r_[0.0, np.cumsum(is_return[ordered])]
    out: dict[str, np.ndarray] = {}
    for days in HISTORY_WINDOWS_DAYS:
        since = keys.count_upto(query_code, t - days_us(days))
        out[f"customer_contacts_{days}d"] = (upto - since - 1).astype(float)
        out[f"customer_returns_{days}d"] = cum_return[upto] - cum_return[since] - self_return

    # The latest earlier contact within the look-back: the last one up to this close, not this contact.
    last = upto - 1
    last = np.where(ordered[np.maximum(last, 0)] == position, last - 1, last)
    lookback_start = keys.count_upto(query_code, t - days_us(LOOKBACK_DAYS) - 1)
    has_prev = last >= lookback_start
    previous = ordered[np.maximum(last, 0)]
    since_hours = (contacts.opened_us - closed[previous]) / 3.6e9
    out["hours_since_previous_contact"] = np.where(has_prev, since_hours, np.nan)
    prev_issue = np.where(has_prev, known.issue[previous], "none").astype(str)
    issue = contacts.issue.astype(str)
    out["prev_issue"] = prev_issue
    out["same_issue_as_previous"] = (prev_issue == issue).astype(float)
    out["is_return"] = self_return.astype(float)
    out["issue_transition"] = np.char.add(np.char.add(prev_issue, ">"), issue)

    # All time, not the look-back: how long and how much the customer has been in touch.
    never = np.full(len(t), np.iinfo(np.int64).min // 4)
    group_start = keys.count_upto(query_code, never)  # the customer's first row in close order
    out["customer_contacts_all"] = (upto - group_start - 1).astype(float)
    out["days_since_first_contact"] = np.maximum(t - opened[ordered[group_start]], 0) / 8.64e10

    # Still open at this close: opened by then, not closed by then (this contact is both, so cancels).
    by_opening = _Keyed(customers[by_open], opened[by_open])
    opened_by_then = by_opening.count_upto(query_code, t) - by_opening.count_upto(query_code, never)
    out["customer_open_contacts"] = (opened_by_then - (upto - group_start)).astype(float)

    # The customer's own repeat rate over their windows that had ended by this close, shrunk to the prior.
    kept = ~labelled.censored
    out["customer_known_repeat_rate"], _ = _shrunk_rate(
        customers[kept], labelled.window_end_ms[kept] * 1000, labelled.repeat[kept].astype(float),
        query_code, t, never, customer_prior, CUSTOMER_PRIOR_STRENGTH,
    )  # fmt: skip

    if agent_features is None:
        windows = _closed_windows(known, labelled)
        if other_windows is not None:
            windows = join_windows(windows, other_windows)
        out["agent_repeat_rate"], out["agent_closed_windows"] = _agent_rates(
            contacts.agent_id, t, windows["agent_id"], windows["window_end_us"], windows["repeat"],
            _window_counts(windows),
        )  # fmt: skip
    else:
        for column in AGENT_COLUMNS:
            out[column] = agent_features[column].to_numpy(dtype=float)
    return out


def _positions(keys: np.ndarray, wanted: np.ndarray) -> np.ndarray:
    """Where each wanted value is among ``keys`` (unique), -1 if absent: ``pd.Index.get_indexer`` by a dict,
    which is ~20x cheaper on a scorer's few rows (building an index's hash table cost ~0.1 ms a call)."""
    where = dict(zip(keys.tolist(), range(len(keys)), strict=True))
    return np.fromiter((where.get(value, -1) for value in wanted.tolist()), np.int64, len(wanted))


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


def agent_windows(
    contacts: pd.DataFrame | ContactArrays, labels: LabelConfig, as_of: pd.Timestamp | None = None
) -> pd.DataFrame:
    """Each contact's label as an agent statistic: agent, when its window ended (µs), repeated or not.

    Needs the contacts of whole customers (labels follow a customer), not of whole agents.
    """
    return pd.DataFrame(closed_windows(contacts, labels, as_of))


def closed_windows(
    contacts: pd.DataFrame | ContactArrays, labels: LabelConfig, as_of: pd.Timestamp | None = None
) -> dict[str, np.ndarray]:
    """``agent_windows`` as arrays by column name (a scorer keeps and reads them without a frame between)."""
    known = ContactArrays.of(contacts)
    return _closed_windows(known, label_arrays(known, labels, as_of))


def _closed_windows(known: ContactArrays, labelled: LabelArrays) -> dict[str, np.ndarray]:
    # A label counts once its whole window has passed, repeat or not: counting repeats as soon as they
    # are seen but non-repeats only later would inflate every recent rate.
    kept = ~labelled.censored
    return {
        "contact_id": known.contact_id[kept],
        "customer_id": known.customer_id[kept],
        "agent_id": known.agent_id[kept],
        "window_end_us": labelled.window_end_ms[kept] * 1000,
        "repeat": labelled.repeat[kept].astype(float),
    }


def join_windows(*parts: Any) -> dict[str, np.ndarray]:
    """Agents' windows (frames, or mappings of arrays, holding ``WINDOW_COLUMNS`` and, if pooled, the count of
    windows each row stands for) as one set of arrays, in order: a scorer's one row paid more for concatenating
    frames than for the rates read off them."""
    joined = {
        column: np.concatenate([np.empty(0, dtype=kind), *(np.asarray(part[column], dtype=kind) for part in parts)])
        for column, kind in zip(WINDOW_COLUMNS, (object, np.int64, float), strict=True)
    }
    joined[WINDOW_COUNT] = np.concatenate([np.empty(0), *(_window_counts(part) for part in parts)])
    return joined


def _window_counts(windows: Any) -> np.ndarray:
    if WINDOW_COUNT in windows:
        return np.asarray(windows[WINDOW_COUNT], dtype=float)
    return np.ones(len(windows["window_end_us"]))


def agent_features(contacts: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    """Each agent's repeat rate over the labels that became known in the look-back before the contact's
    close, shrunk towards the industry rate so that a handful of contacts cannot rank an agent.

    ``windows`` (from ``agent_windows``) must hold every window of the agents of ``contacts``.
    """
    return _agent_features(contacts, windows)


def _agent_features(contacts: pd.DataFrame, windows: pd.DataFrame) -> pd.DataFrame:
    rate, volume = _agent_rates(
        contacts["agent_id"].to_numpy(dtype=object), epoch_us(contacts["closed_at"]),
        windows["agent_id"].to_numpy(dtype=object), windows["window_end_us"].to_numpy(dtype=np.int64),
        windows["repeat"].to_numpy(dtype=float),
    )  # fmt: skip
    return pd.DataFrame({"agent_repeat_rate": rate, "agent_closed_windows": volume}, index=contacts.index)


def _agent_rates(
    agent: np.ndarray,
    t: np.ndarray,
    window_agents: np.ndarray,
    window_end_us: np.ndarray,
    repeat: np.ndarray,
    counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """The rate of each contact's ``agent`` as of its close ``t`` (µs), over the windows given (``counts``: how
    many windows each row stands for, when pooled)."""
    agents, agent_ids = pd.factorize(window_agents)
    query_code = _positions(agent_ids, agent).astype(float)
    query_code[query_code < 0] = np.nan  # an agent with no closed window yet
    return _shrunk_rate(
        agents, window_end_us, repeat, query_code, t, t - days_us(LOOKBACK_DAYS) - 1, DEFAULT_REPEAT_RATE,
        AGENT_PRIOR_STRENGTH, counts,
    )  # fmt: skip


def _shrunk_rate(
    codes: np.ndarray,
    window_end: np.ndarray,
    repeat: np.ndarray,
    query_code: np.ndarray,
    t: np.ndarray,
    since: np.ndarray,
    prior: float,
    strength: float,
    counts: np.ndarray | None = None,
) -> tuple[np.ndarray, np.ndarray]:
    """A group's repeat rate over its windows that ended in (``since``, ``t``], shrunk towards ``prior`` with
    ``strength`` pseudo-windows, and how many windows that was (agents: the look-back; customers: all time).
    ``counts``: how many windows each row stands for (pooled rows: ``repeat`` is their sum); one if None."""
    order = np.lexsort((window_end, codes))
    keys = _Keyed(codes[order], window_end[order])
    upto = keys.count_upto(query_code, t)
    start = keys.count_upto(query_code, since)
    cum = np.r_[0.0, np.cumsum(repeat[order])]
    if counts is None:
        volume = (upto - start).astype(float)
    else:  # whole numbers summed: the same floats as counting rows one by one
        windows = np.r_[0.0, np.cumsum(counts[order])]
        volume = windows[upto] - windows[start]
    return (cum[upto] - cum[start] + strength * prior) / (volume + strength), volume


@functools.lru_cache(maxsize=64)
def days_us(days: float) -> int:
    """A span of days in whole microseconds (the unit of every time key here)."""
    return int(pd.Timedelta(days=days) / pd.Timedelta(microseconds=1))


def as_model_input(features: pd.DataFrame, categories: dict[str, Sequence[str]]) -> pd.DataFrame:
    """Categorical columns with the training categories (unseen values become missing)."""
    out = features.copy()
    for column, values in categories.items():
        dtype = _categories(tuple(values))
        codes = dtype.categories.get_indexer(out[column].astype(str).to_numpy(dtype=object))
        out[column] = pd.Categorical.from_codes(codes, dtype=dtype)  # unseen: code -1, missing
    return out


@functools.lru_cache(maxsize=256)
def _categories(values: tuple[str, ...]) -> pd.CategoricalDtype:
    # Built once per set of training categories: a scorer converts one contact at a time.
    return pd.CategoricalDtype(list(values))
