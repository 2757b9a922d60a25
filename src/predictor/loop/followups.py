"""Follow-ups reported back in a file, for ticketing systems that export instead of calling ``/follow_ups``.

Each row is checked on its own (a contact id, a time with a zone, a known channel) and then against the store
(a scored contact, not before its close, not reported before with other content): every row is recorded or
rejected with its reason, none is dropped in silence.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import pandas as pd

from predictor.config import CHANNEL_ALIASES, CHANNELS
from predictor.contacts.schema import parse_timestamps, read_log
from predictor.contacts.store import ContactStore, FollowUpRecord
from predictor.loop.assignment import HELD_OUT

REQUIRED = ("contact_id", "sent_at", "channel")
STORE_REASONS = {
    "unknown": "contact_id: not in the contact store (scored contacts only)",
    "conflict": "contact_id: a follow-up with another sent_at, channel or template was already reported",
    "early": "sent_at: before the contact closed",
}


@dataclass
class Imported:
    recorded: int
    replayed: int
    held_out: int  # recorded for contacts whose customer was held out (they break the hold-out)
    rejected: pd.DataFrame  # the rejected rows as read, with ``row`` (1-based, after the header) and ``reason``

    @property
    def rows(self) -> int:
        return self.recorded + self.replayed + len(self.rejected)


class FollowUpFileError(ValueError):
    """The file as a whole cannot be read as follow-ups (missing, empty, no such columns)."""


def import_file(path: str | Path, store: ContactStore, assume_timezone: str | None = None) -> Imported:
    frame = read_log(path)  # SchemaError on an unreadable file
    missing = [c for c in REQUIRED if c not in frame.columns]
    if missing:
        raise FollowUpFileError(
            f"{path}: no column(s) {', '.join(missing)} (a follow-up file has contact_id, sent_at, channel and "
            f"optionally template; it has {', '.join(map(str, frame.columns)) or 'none'})"
        )
    reasons = pd.Series([None] * len(frame), index=frame.index, dtype=object)
    ids = frame["contact_id"].astype("string").str.strip()
    reasons[(ids.isna() | (ids == "")).to_numpy(dtype=bool)] = "contact_id: missing value"
    sent, time_reasons = parse_timestamps(frame["sent_at"], assume_timezone)
    reasons = reasons.where(reasons.notna(), time_reasons.map(lambda r: None if r is None else f"sent_at: {r}"))
    raw_channel = frame["channel"].astype("string").str.strip().str.lower()
    channel = raw_channel.map(lambda c: CHANNEL_ALIASES.get(c, c) if isinstance(c, str) else c)
    bad_channel = ~channel.isin(CHANNELS).fillna(False).astype(bool)
    reasons = reasons.where(
        reasons.notna() | ~bad_channel, "channel: not one of " + ", ".join(CHANNELS) + " (or a known alias)"
    )
    template = frame["template"].astype("string").fillna("").str.strip() if "template" in frame else None
    ok = reasons.isna().to_numpy()
    records = [
        FollowUpRecord(
            str(ids.iat[i]),
            sent.iat[i].to_pydatetime(),
            str(channel.iat[i]),
            str(template.iat[i])[:128] if template is not None else "",
        )
        for i in range(len(frame))
        if ok[i]
    ]
    statuses = store.record_follow_ups(records)
    recorded = replayed = held_out = 0
    positions = [i for i in range(len(frame)) if ok[i]]
    for i, (status, detail) in zip(positions, statuses, strict=True):
        if status in STORE_REASONS:
            reasons.iat[i] = STORE_REASONS[status] + (f" ({detail.isoformat()})" if status == "early" else "")
        elif status == "recorded":
            recorded += 1
            held_out += detail == HELD_OUT
        else:
            replayed += 1
    rejected = frame[reasons.notna().to_numpy()].copy()
    rejected.insert(0, "row", rejected.index + 1)
    rejected["reason"] = reasons[reasons.notna()].to_numpy()
    return Imported(recorded, replayed, held_out, rejected.reset_index(drop=True))
