"""Repeat labels: did the same customer come back within the window, with what, and how soon.

A contact's label is *censored* (unknown, not "no repeat") when its window was still open at the end of
the data and no repeat had been seen yet. A contact opened within the transfer gap after a transferred
contact closed continues that contact (same episode) and is never its repeat.
"""

from __future__ import annotations

from dataclasses import dataclass

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


def derive(
    contacts: pd.DataFrame,
    config: LabelConfig | None = None,
    as_of: pd.Timestamp | None = None,
) -> pd.DataFrame:
    """Return ``contacts`` (same rows, same order) with the label columns added.

    ``as_of`` is when the data was extracted; by default the last close time in the log. Columns:
    ``is_repeat`` (nullable boolean, <NA> when censored), ``censored``, ``repeat_type``
    (explicit/implicit), ``next_issue``, ``hours_to_repeat``, ``window_ends_at``, ``window_complete``
    (the whole window lies before ``as_of``) and ``continues_previous``.

    Anything fitted or evaluated should use only ``window_complete`` rows, not merely the uncensored
    ones: near the end of the data a repeat is seen before the window closes but a non-repeat is not,
    so "uncensored" alone over-represents repeats.
    """
    config = config or LabelConfig()
    window = pd.Timedelta(days=config.repeat_window_days)
    gap = pd.Timedelta(minutes=config.transfer_gap_minutes)
    out = contacts.copy()
    n = len(out)
    if n == 0:
        return _empty_labels(out)
    as_of = as_of if as_of is not None else out["closed_at"].max()

    order = np.lexsort((out["contact_id"].to_numpy(), out["opened_at"].to_numpy(), out["customer_id"].to_numpy()))
    customer = pd.factorize(out["customer_id"].to_numpy()[order])[0].astype(np.int64)
    opened = _epoch_ms(out["opened_at"])[order]
    closed = _epoch_ms(out["closed_at"])[order]
    transfers = out["transfers"].to_numpy()[order]
    issue = out["issue"].to_numpy()[order]

    same_customer_as_prev = np.r_[False, customer[1:] == customer[:-1]]
    prev_closed = np.r_[0, closed[:-1]]
    prev_transfers = np.r_[0, transfers[:-1]]
    continues = same_customer_as_prev & (prev_transfers > 0) & (opened - prev_closed <= gap // pd.Timedelta("1ms"))
    episode = np.cumsum(~continues)  # contiguous blocks, globally unique ids
    # First sorted position after each contact's episode.
    episode_end = pd.Series(np.arange(n)).groupby(episode).transform("max").to_numpy() + 1

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
    window_hours = window / pd.Timedelta(hours=1)
    repeat = has_next & (hours <= window_hours)
    window_end = closed + int(window / pd.Timedelta("1ms"))
    as_of_ms = (pd.Timestamp(as_of) - _EPOCH) // pd.Timedelta(milliseconds=1)
    censored = ~repeat & (window_end > as_of_ms)

    is_repeat = pd.array(np.where(censored, pd.NA, repeat), dtype="boolean")
    next_issue = np.where(repeat, issue[nxt_safe], None)
    repeat_type = np.where(repeat, np.where(issue[nxt_safe] == issue, "explicit", "implicit"), None)

    inverse = np.empty(n, dtype=np.int64)
    inverse[order] = np.arange(n)
    out["is_repeat"] = is_repeat[inverse]
    out["censored"] = censored[inverse]
    out["repeat_type"] = pd.array(repeat_type[inverse], dtype="string")
    out["next_issue"] = pd.array(next_issue[inverse], dtype="string")
    out["hours_to_repeat"] = np.where(repeat, hours, np.nan)[inverse]
    out["window_ends_at"] = pd.to_datetime(window_end[inverse], unit="ms", utc=True).astype("datetime64[ns, UTC]")
    out["window_complete"] = (window_end <= as_of_ms)[inverse]
    out["continues_previous"] = continues[inverse]
    return out


_EPOCH = pd.Timestamp(0, tz="UTC")


def epoch_us(times: pd.Series) -> np.ndarray:
    """Microseconds since 1970 of UTC timestamps: integer keys for searchsorted and sorting."""
    return ((times - _EPOCH) // pd.Timedelta(microseconds=1)).to_numpy(dtype=np.int64)


def _epoch_ms(times: pd.Series) -> np.ndarray:
    return epoch_us(times) // 1000


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
