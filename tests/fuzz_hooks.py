"""Schemathesis hooks: the request rules a JSON Schema cannot state, taught to the fuzzer.

Loaded with ``SCHEMATHESIS_HOOKS=fuzz_hooks`` (from ``tests/``). The spec documents both rules in words (each
time field's description); schemathesis cannot read words, so a *positive* case (one the spec says is valid)
is brought inside them before it is sent, and ``positive_data_acceptance`` then checks that the server
accepts everything else the schema allows. Negative cases are left exactly as generated.

- ``opened_at`` and ``closed_at`` lie between 2000-01-01 and tomorrow (a contact at close happened lately);
- ``closed_at`` is not before ``opened_at``;
- a follow-up's ``sent_at`` lies in the same range.
"""

from __future__ import annotations

from datetime import UTC, datetime, timedelta
from typing import Any

import schemathesis

EARLIEST = datetime(2000, 1, 1, tzinfo=UTC)


def _time(value: Any) -> datetime | None:
    if not isinstance(value, str):
        return None
    try:
        parsed = datetime.fromisoformat(value)
    except ValueError:
        return None
    return parsed if parsed.tzinfo is not None else None


def _inside(body: dict[str, Any]) -> None:
    opened, closed = _time(body.get("opened_at")), _time(body.get("closed_at"))
    if opened is None or closed is None:
        return  # not both valid times: nothing the rules apply to
    latest = datetime.now(UTC)
    span = (latest - EARLIEST).total_seconds()
    # Same zone, same instant-of-day pattern, moved into the range; the later one is the close.
    first, second = sorted((opened, closed))
    start = EARLIEST + timedelta(seconds=(first.timestamp() - EARLIEST.timestamp()) % span)
    duration = min(second - first, timedelta(days=7))
    if start + duration > latest:
        start = latest - duration
    body["opened_at"] = start.astimezone(opened.tzinfo).isoformat()
    body["closed_at"] = (start + duration).astimezone(closed.tzinfo).isoformat()


@schemathesis.hook
def before_call(ctx: Any, case: Any, **kwargs: Any) -> None:
    meta = case.meta
    if meta is None or not meta.generation.mode.is_positive or not isinstance(case.body, dict):
        return
    if case.operation.path == "/score":
        _inside(case.body)
    elif case.operation.path == "/follow_ups" and (sent := _time(case.body.get("sent_at"))) is not None:
        span = (datetime.now(UTC) - EARLIEST).total_seconds()
        moved = EARLIEST + timedelta(seconds=(sent.timestamp() - EARLIEST.timestamp()) % span)
        case.body["sent_at"] = moved.astimezone(sent.tzinfo).isoformat()
    elif case.operation.path == "/score_batch" and isinstance(case.body.get("contacts"), list):
        for item in case.body["contacts"]:
            if isinstance(item, dict):
                _inside(item)
