"""Repeat labels: did the same customer come back within the window, with what, and how soon.

A contact's label is *censored* (unknown, not "no repeat") when its window was still open at the end of
the data and no repeat had been seen yet. A repeat is an *opening*, so the end of the data is where openings
stop being complete (``data_end``), not the last close: an export of closed tickets misses those still open
at the extraction, and its closes can run on for weeks past the last opening. A contact opened within the
transfer gap after a transferred contact closed continues that contact (same episode) and is never its repeat.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, fields

import numpy as np
import pandas as pd

from predictor.config import LabelConfig

LABEL_COLUMNS: tuple[str, ...] = (
    "is_repeat",
    "censored",
    "repeat_type",
    "next_issue",
    "hours_to_repeat",
    "window_ends_at",
    "window_complete",
    "continues_previous",
)


@dataclass(frozen=True)
class DataEnd:
    """Up to when every opening is in the log: what a window must fit before to count as observed."""

    at: pd.Timestamp
    rule: str  # "as_of" (given), "last_opening", or "longest_open_tickets" (a closed-only export)
    last_opening: pd.Timestamp | None
    last_close: pd.Timestamp | None
    # Contacts whose window ended between the data end and the last close: the last-close rule would
    # have called them observed although later openings could not be seen.
    affected: int = 0

    def describe(self) -> str:
        why = {
            "as_of": "given (--as-of / PREDICTOR_LABELS__AS_OF)",
            "last_opening": "the last opening in the log",
            "longest_open_tickets": "the last close less the time the longest-open tickets stay open "
            "(tickets opened later may still be open, so missing from a closed-only export)",
        }[self.rule]
        return f"data end {self.at.isoformat()}: {why}"

    def warning(self, window_days: float) -> str | None:
        """Said once when closes run on past the data end by more than the window."""
        if self.last_close is None or self.last_close - self.at <= pd.Timedelta(days=window_days):
            return None
        gap = (self.last_close - self.at) / pd.Timedelta(days=1)
        return (
            f"closes run {gap:.1f} days past the data end ({self.last_close.isoformat()}): openings after "
            f"{self.at.isoformat()} cannot be seen, so {self.affected:,} contacts whose window ended after it "
            "are censored rather than labelled 'no repeat'"
        )


def data_end(contacts: pd.DataFrame, config: LabelConfig | None = None, as_of: pd.Timestamp | None = None) -> DataEnd:
    """Where the observed openings end.

    Given (``as_of`` or the configured one): taken as is. Otherwise the earlier of the last opening (no
    later opening can be seen) and the last close less the ``open_ticket_quantile`` of how long contacts
    stay open: in an export of closed tickets, a ticket opened within that time of the extraction may still
    be open, so missing. An export that holds every contact opened in a period, closes running on after it,
    ends at its last opening by both rules.
    """
    config = config or LabelConfig()
    given = as_of if as_of is not None else config.as_of
    if len(contacts) == 0:
        at = pd.Timestamp(given) if given is not None else pd.Timestamp(0, tz="UTC")
        return DataEnd(at, "as_of" if given is not None else "last_opening", None, None)
    opened, closed = contacts["opened_at"], contacts["closed_at"]
    last_opening, last_close = pd.Timestamp(opened.max()), pd.Timestamp(closed.max())
    if given is not None:
        at, rule = _utc(pd.Timestamp(given)), "as_of"
    else:
        open_for = (closed - opened).quantile(config.open_ticket_quantile)
        at, rule = last_opening, "last_opening"
        if last_close - open_for < last_opening:
            at, rule = last_close - open_for, "longest_open_tickets"
    window = pd.Timedelta(days=config.repeat_window_days)
    window_end = closed + window
    affected = int(((window_end > at) & (window_end <= last_close)).sum())
    return DataEnd(at, rule, last_opening, last_close, affected)


def _utc(t: pd.Timestamp) -> pd.Timestamp:
    return t.tz_localize("UTC") if t.tzinfo is None else t.tz_convert("UTC")


def derive(
    contacts: pd.DataFrame,
    config: LabelConfig | None = None,
    as_of: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Return ``contacts`` (same rows, same order) with the label columns added.

    ``as_of`` is up to when the log holds every opening; by default ``data_end`` decides. Columns:
    ``is_repeat`` (nullable boolean, <NA> when censored), ``censored``, ``repeat_type``
    (explicit/implicit), ``next_issue``, ``hours_to_repeat``, ``window_ends_at``, ``window_complete``
    (the whole window lies before ``as_of``) and ``continues_previous``.

    Anything fitted or evaluated should use only ``window_complete`` rows, not merely the uncensored
    ones: near the end of the data a repeat is seen before the window closes but a non-repeat is not,
    so "uncensored" alone over-represents repeats.
    """
    out = contacts.copy()
    if len(out) == 0:
        return _empty_labels(out)
    a = label_arrays(out, config, data_end(out, config, as_of).at)
    issue = out["issue"].to_numpy(dtype=object)
    following = issue[np.maximum(a.next_row, 0)]
    out["is_repeat"] = pd.array(np.where(a.censored, pd.NA, a.repeat), dtype="boolean")
    out["censored"] = a.censored
    out["repeat_type"] = pd.array(
        np.where(a.repeat, np.where(following == issue, "explicit", "implicit"), None), dtype="string"
    )
    out["next_issue"] = pd.array(np.where(a.repeat, following, None), dtype="string")
    out["hours_to_repeat"] = np.where(a.repeat, a.hours, np.nan)
    out["window_ends_at"] = pd.to_datetime(a.window_end_ms, unit="ms", utc=True).astype("datetime64[ns, UTC]")
    out["window_complete"] = a.window_complete
    out["continues_previous"] = a.continues
    return out


@dataclass
class LabelArrays:
    """The labels as plain arrays in the input's row order: what ``derive`` turns into columns, and what
    the feature function reads directly (no frame to build when scoring one contact)."""

    repeat: np.ndarray  # False where censored
    censored: np.ndarray
    next_row: np.ndarray  # row of the contact that repeated it, -1 if none
    hours: np.ndarray  # to the customer's next contact (NaN if none), repeat or not
    window_end_ms: np.ndarray
    window_complete: np.ndarray
    continues: np.ndarray  # continues the customer's previous (transferred) contact


@dataclass(frozen=True)
class ContactArrays:
    """What labels and history features read of contacts (``contract.HISTORY_FIELDS``) as plain arrays, times
    in microseconds since 1970 (UTC): a scorer's history of a few rows paid more for pandas' per-call work
    (a typed frame, a concatenation, a Series per column read) than for the arithmetic."""

    contact_id: np.ndarray  # object
    customer_id: np.ndarray  # object
    opened_us: np.ndarray  # int64
    closed_us: np.ndarray  # int64
    issue: np.ndarray  # object
    agent_id: np.ndarray  # object
    transfers: np.ndarray  # int64

    @classmethod
    def of(cls, contacts: pd.DataFrame | ContactArrays) -> ContactArrays:
        """A frame's ``HISTORY_FIELDS`` as arrays (arrays as they are)."""
        if isinstance(contacts, ContactArrays):
            return contacts
        return cls(
            contact_id=contacts["contact_id"].to_numpy(dtype=object),
            customer_id=contacts["customer_id"].to_numpy(dtype=object),
            opened_us=epoch_us(contacts["opened_at"]),
            closed_us=epoch_us(contacts["closed_at"]),
            issue=contacts["issue"].to_numpy(dtype=object),
            agent_id=contacts["agent_id"].to_numpy(dtype=object),
            transfers=contacts["transfers"].to_numpy(dtype=np.int64),
        )

    @classmethod
    def concat(cls, parts: Sequence[ContactArrays]) -> ContactArrays:
        return cls(**{name: np.concatenate([getattr(p, name) for p in parts]) for name in _ARRAY_FIELDS})

    def take(self, rows: np.ndarray) -> ContactArrays:
        return ContactArrays(**{name: getattr(self, name)[rows] for name in _ARRAY_FIELDS})

    def __len__(self) -> int:
        return len(self.contact_id)


def label_arrays(
    contacts: pd.DataFrame | ContactArrays, config: LabelConfig | None = None, as_of: pd.Timestamp | None = None
) -> LabelArrays:
    """The labels as arrays; ``as_of`` None means the last close (the feature function's horizon: it only
    counts a window that ended by the close of the contact being described, so any later end will do)."""
    config = config or LabelConfig()
    window_ms = int(pd.Timedelta(days=config.repeat_window_days) / pd.Timedelta("1ms"))
    gap_ms = int(pd.Timedelta(minutes=config.transfer_gap_minutes) / pd.Timedelta("1ms"))
    n = len(contacts)
    if n == 0:  # an empty log or partition (a Dask customer partition of a tiny log): no labels, no error
        empty = np.zeros(0)
        return LabelArrays(
            repeat=empty.astype(bool), censored=empty.astype(bool), next_row=empty.astype(np.int64), hours=empty,
            window_end_ms=empty.astype(np.int64), window_complete=empty.astype(bool), continues=empty.astype(bool),
        )  # fmt: skip
    known = ContactArrays.of(contacts)
    opened_all, closed_all = known.opened_us // 1000, known.closed_us // 1000
    as_of_ms = (
        int((pd.Timestamp(as_of) - _EPOCH) // pd.Timedelta(milliseconds=1)) if as_of is not None else closed_all.max()
    )

    customer_all = pd.factorize(known.customer_id)[0].astype(np.int64)
    order = np.lexsort((known.contact_id, opened_all, customer_all))
    customer = customer_all[order]
    opened = opened_all[order]
    closed = closed_all[order]
    transfers = known.transfers[order]

    same_customer_as_prev = np.r_[False, customer[1:] == customer[:-1]]
    prev_closed = np.r_[0, closed[:-1]]
    prev_transfers = np.r_[0, transfers[:-1]]
    continues = same_customer_as_prev & (prev_transfers > 0) & (opened - prev_closed <= gap_ms)
    # First sorted position after each contact's episode (episodes are contiguous blocks).
    starts = np.flatnonzero(~continues)
    episode_end = np.repeat(np.r_[starts[1:], n], np.diff(np.r_[starts, n]))

    # Composite key (customer, time) so one searchsorted finds each contact's next opening.
    base = min(opened.min(), closed.min())
    span = int(max(opened.max(), closed.max()) - base) + 1
    key_open = customer * span + (opened - base)
    key_close = customer * span + (closed - base)
    first_after_close = np.searchsorted(key_open, key_close, side="left")
    nxt = np.maximum(first_after_close, episode_end)
    has_next = nxt < n
    nxt_safe = np.where(has_next, nxt, 0)
    has_next &= customer[nxt_safe] == customer

    hours = np.where(has_next, (opened[nxt_safe] - closed) / 3_600_000.0, np.nan)
    repeat = has_next & (hours <= window_ms / 3_600_000.0)
    window_end = closed + window_ms
    censored = ~repeat & (window_end > as_of_ms)

    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    next_row = np.where(has_next, order[nxt_safe], -1)
    return LabelArrays(
        repeat=repeat[inverse],
        censored=censored[inverse],
        next_row=next_row[inverse],
        hours=hours[inverse],
        window_end_ms=window_end[inverse],
        window_complete=(window_end <= as_of_ms)[inverse],
        continues=continues[inverse],
    )


_EPOCH = pd.Timestamp(0, tz="UTC")
_ARRAY_FIELDS: tuple[str, ...] = tuple(f.name for f in fields(ContactArrays))


def epoch_us(times: pd.Series) -> np.ndarray:
    """Microseconds since 1970 of UTC timestamps: integer keys for searchsorted and sorting."""
    values = times.array
    if isinstance(values, pd.arrays.DatetimeArray) and values.tz is not None:
        # The stored integers at microsecond resolution (floored, as the division below): 10x faster,
        # and the scorer takes these keys seven times per contact.
        return values.as_unit("us").asi8
    return ((times - _EPOCH) // pd.Timedelta(microseconds=1)).to_numpy(dtype=np.int64)


def _empty_labels(out: pd.DataFrame) -> pd.DataFrame:
    out["is_repeat"] = pd.array([], dtype="boolean")
    out["censored"] = np.array([], dtype=bool)
    out["repeat_type"] = pd.array([], dtype="string")
    out["next_issue"] = pd.array([], dtype="string")
    out["hours_to_repeat"] = np.array([], dtype=float)
    out["window_ends_at"] = pd.Series([], dtype="datetime64[ns, UTC]")
    out["window_complete"] = np.array([], dtype=bool)
    out["continues_previous"] = np.array([], dtype=bool)
    return out


@dataclass
class LabelSummary:
    contacts: int
    censored: int
    window_open: int
    labelled: int
    repeats: int
    repeat_rate: float
    explicit_share: float
    by_issue: pd.DataFrame
    by_channel: pd.DataFrame


def summarize(labelled: pd.DataFrame) -> LabelSummary:
    """Repeat rate and explicit/implicit split over contacts whose whole window has passed.

    Not merely the uncensored ones: a recent contact whose repeat was already seen is uncensored while its
    neighbours without one are not, so counting it would push the rate up.
    """
    known = labelled[labelled["window_complete"]]
    repeats = known[known["is_repeat"].astype(bool)]
    explicit = float((repeats["repeat_type"] == "explicit").mean()) if len(repeats) else float("nan")

    def by(column: str) -> pd.DataFrame:
        grouped = labelled.groupby(column, observed=True)
        table = pd.DataFrame(
            {
                "contacts": grouped.size(),
                "censored": grouped["censored"].sum(),
                "repeat_rate": known.groupby(column, observed=True)["is_repeat"].mean().astype(float),
                "explicit_share": repeats.groupby(column, observed=True)["repeat_type"].apply(
                    lambda s: float((s == "explicit").mean())
                ),
            }
        )
        return table.sort_values("contacts", ascending=False)

    return LabelSummary(
        contacts=len(labelled),
        censored=int(labelled["censored"].sum()),
        window_open=int((~labelled["window_complete"]).sum()),
        labelled=len(known),
        repeats=len(repeats),
        repeat_rate=float(len(repeats) / len(known)) if len(known) else float("nan"),
        explicit_share=explicit,
        by_issue=by("issue"),
        by_channel=by("channel"),
    )
