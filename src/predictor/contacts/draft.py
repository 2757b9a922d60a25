"""``predictor mapping draft``: a starting mapping from an export's header and a sample of its rows.

Best guesses, each one said: which column is which field (by name), the unit of each duration (by the
column's name, or clock-style values), the timestamp format (the one every sampled value parses with), a
delimiter of multi-valued issue columns, a value table for text satisfaction scores, the export's channel
names. What it cannot know is a ``# TODO`` in the file and in the list it returns: the time zone of naive
times, the issue codes to keep from a list of tags, a field no column looks like.
"""

from __future__ import annotations

import csv
import re
from dataclasses import dataclass, field
from pathlib import Path

import pandas as pd

from predictor.config import CHANNEL_ALIASES, CHANNELS
from predictor.contacts import contract
from predictor.contacts.mapping import SchemaError

# Header words that name each field (compared lower-cased, non-alphanumerics as spaces), most specific first.
SYNONYMS: dict[str, tuple[str, ...]] = {
    "contact_id": ("ticket id", "case number", "conversation id", "interaction id", "contact id", "ticket", "id"),
    "customer_id": ("requester id", "customer id", "contact id", "account id", "requester", "customer", "ani",
                    "caller", "client id", "user id", "email"),
    "opened_at": ("created at", "created time", "created date", "opened at", "opened", "created", "start time",
                  "start", "date"),
    "closed_at": ("solved at", "resolved time", "closed date", "closed at", "closed time", "resolved", "solved",
                  "closed", "end time", "end date", "end"),
    "channel": ("channel", "via", "source", "case origin", "origin", "media type", "medium"),
    "issue": ("issue", "ticket type", "type", "reason", "category", "wrap up", "disposition", "tags", "topic"),
    "transcript": ("transcript", "conversation", "description", "body", "comments", "notes", "message", "subject"),
    "agent_id": ("assignee id", "agent id", "owner id", "assignee", "agent", "owner", "users", "user"),
    "handle_seconds": ("handle time", "handle", "full resolution time", "time tracked", "talk time", "duration"),
    "hold_seconds": ("on hold time", "hold time", "hold"),
    "transfers": ("transfers", "transferred", "group stations", "assignee stations", "stations"),
    "queue": ("queue", "group", "skill", "team"),
    "csat": ("csat", "satisfaction score", "satisfaction rating", "satisfaction", "rating", "survey score"),
}  # fmt: skip
FORMATS = ("%Y-%m-%d %H:%M:%S", "%Y-%m-%d %H:%M", "%d/%m/%Y %H:%M:%S", "%d/%m/%Y %H:%M", "%m/%d/%Y %H:%M:%S",
           "%m/%d/%Y %H:%M", "%d.%m.%Y %H:%M:%S", "%d.%m.%Y %H:%M", "%m/%d/%Y %I:%M %p", "%d-%m-%Y %H:%M")  # fmt: skip
SCORE_WORDS = {"extremely happy": 5, "very satisfied": 5, "excellent": 5, "great": 5, "good": 5, "happy": 4,
               "satisfied": 4, "neutral": 3, "okay": 3, "ok": 3, "unhappy": 2, "dissatisfied": 2, "bad": 1,
               "poor": 1, "extremely unhappy": 1, "very dissatisfied": 1, "terrible": 1}  # fmt: skip
CLOCK = re.compile(r"^\d{1,3}:\d{2}(:\d{2})?$")


@dataclass
class Draft:
    yaml: str
    todos: list[str] = field(default_factory=list)
    fields: dict[str, str] = field(default_factory=dict)  # our field -> their column


def _norm(name: str) -> str:
    return " ".join(re.sub(r"[^0-9a-z]+", " ", name.lower()).split())


def _sample(path: Path, rows: int) -> tuple[pd.DataFrame, str]:
    if not path.exists():
        raise SchemaError(f"{path}: no such file")
    head = path.read_text(errors="replace")[:20_000]
    if not head.strip():
        raise SchemaError(f"{path}: the file is empty")
    try:
        delimiter = csv.Sniffer().sniff(head.splitlines()[0], delimiters=",;\t|").delimiter
    except csv.Error:
        delimiter = ","
    try:
        frame = pd.read_csv(path, sep=delimiter, dtype=str, keep_default_na=False, nrows=rows, on_bad_lines="skip")
    except Exception as exc:  # any unreadable file: a message, not a traceback
        raise SchemaError(f"{path}: cannot be read as CSV: {exc}") from exc
    return frame, delimiter


def _columns(header: list[str]) -> dict[str, str]:
    """Each field's column: exact synonym matches first, then a synonym inside the name; a column once."""
    normal = {c: _norm(c) for c in header}
    chosen: dict[str, str] = {}
    for exact in (True, False):
        for name, words in SYNONYMS.items():
            if name in chosen:
                continue
            for word in words:
                hits = [c for c, n in normal.items() if c not in chosen.values() and
                        (n == word if exact else re.search(rf"\b{re.escape(word)}\b", n))]  # fmt: skip
                if hits:
                    chosen[name] = hits[0]
                    break
    return chosen


def _unit(column: str, values: pd.Series) -> str | None:
    name = _norm(column)
    sample = values[values != ""].head(50)
    if len(sample) and sample.map(lambda v: bool(CLOCK.match(v))).all():
        return "hh:mm:ss"
    for word, unit in (("ms", "ms"), ("millis", "ms"), ("min", "minutes"), ("minutes", "minutes"),
                       ("hours", "hours"), ("hrs", "hours"), ("h", "hours"), ("sec", "seconds")):  # fmt: skip
        if re.search(rf"\b{word}\b", name):
            return unit
    return None


def _time_format(values: pd.Series) -> tuple[str | None, bool]:
    """(format or None for ISO-8601, whether the values carry a zone); raises ValueError if none fits."""
    sample = values[values != ""].head(200)
    if sample.empty:
        return None, False
    iso = pd.to_datetime(sample, errors="coerce", format="ISO8601")
    if iso.notna().all():
        zoned = sample.str.contains(r"(?:[zZ]|[+-]\d{2}:?\d{2})$", regex=True).all()
        return None, bool(zoned)
    fits = [f for f in FORMATS if pd.to_datetime(sample, errors="coerce", format=f).notna().all()]
    if not fits:
        raise ValueError("no known format")
    return fits[0], False


def draft(path: str | Path, rows: int = 500) -> Draft:
    """A mapping for the CSV export at ``path`` (YAML text), with the TODOs it leaves."""
    path = Path(path)
    frame, delimiter = _sample(path, rows)
    columns = _columns(list(frame.columns))
    lines = [f"# Drafted by `predictor mapping draft` from {path.name} ({len(frame)} sampled rows).",
             "# Check every guess; each TODO needs a decision.", "fields:"]  # fmt: skip
    todos: list[str] = []
    zone_needed = False
    time_format: str | None = None
    format_note = ""
    channels: dict[str, str] = {}
    for f in contract.CONTACT_FIELDS:
        column = columns.get(f.name)
        if column is None:
            if f.name == "transcript" or f.kind in (contract.SECONDS, contract.COUNT):
                constant = '""' if f.name == "transcript" else "0"
                lines.append(f"  {f.name}: {{constant: {constant}}}   # TODO: no column looked like {f.name}")
                todos.append(f"{f.name}: no column found; a constant {constant} for now")
            elif f.required:
                lines.append(f"  # {f.name}: TODO the column holding {f.description.split(';')[0].lower()}")
                todos.append(f"{f.name}: no column found (required)")
            continue
        values = frame[column].astype(str).str.strip()
        spec: dict[str, str] = {"column": _quote(column)}
        note = ""
        if f.kind == contract.SECONDS:
            unit = _unit(column, values)
            numbers = pd.to_numeric(values, errors="coerce")
            if unit is None and numbers.notna().any() and numbers.median() > 20_000:
                unit = "ms"  # over 5.5 hours a contact in seconds: milliseconds, most likely
                note = "   # TODO: ms guessed from the size of the values"
                todos.append(f"{f.name}: milliseconds guessed for {column!r} from its values")
                spec["unit"] = _quote(unit)
            elif unit is None:
                note = "   # TODO: unit? (seconds assumed)"
                todos.append(f"{f.name}: the unit of {column!r} (seconds assumed)")
            elif unit != "seconds":
                spec["unit"] = _quote(unit)
        elif f.kind == contract.TIME:
            try:
                fmt, zoned = _time_format(values)
            except ValueError:
                note = "   # TODO: timestamp format (strptime)"
                todos.append(f"{f.name}: no known timestamp format fits {column!r}")
                fmt, zoned = None, True
            if fmt is not None and time_format is None:
                swapped = fmt.replace("%d/%m", "%M/%D").replace("%m/%d", "%d/%m").replace("%M/%D", "%m/%d")
                if pd.to_datetime(values[values != ""].head(200), errors="coerce", format=swapped).notna().all():
                    todos.append(f"timestamp_format: day and month order is a guess ({fmt!r} or {swapped!r})")
                    format_note = f"   # TODO: or {swapped!r}? every sampled date fits both"
            time_format = time_format or fmt
            zone_needed |= not zoned
        elif f.name == "issue":
            before = len(todos)
            spec.update(_issue(values, todos))
            if len(todos) > before:
                note = "   # TODO: pick: known, known: [your issue codes] to skip the other tags"
        elif f.kind == contract.SCORE:
            table = _scores(values)
            if table:
                spec["values"] = "{" + ", ".join(f"{_quote(k)}: {v}" for k, v in table.items()) + "}"
                note = "   # TODO: check the score of each answer"
                todos.append(f"csat: the score of each answer in {column!r}")
        elif f.kind == contract.CHANNEL:
            for value in sorted(set(values.str.lower()) - {""}):
                if value not in CHANNELS and value not in CHANNEL_ALIASES:
                    channels[value] = "chat"
        if len(spec) == 1:
            lines.append(f"  {f.name}: {spec['column']}{note}")
        else:
            lines.append(f"  {f.name}: {{{', '.join(f'{k}: {v}' for k, v in spec.items())}}}{note}")
    if delimiter != ",":
        lines.append(f"csv: {{delimiter: {_quote(delimiter)}}}")
    if time_format:
        lines.append(f"timestamp_format: {_quote(time_format)}{format_note}")
    if zone_needed:
        lines.append("timezone: UTC   # TODO: the zone of the export's times (they carry none)")
        todos.append("timezone: the export's times carry no zone (UTC assumed)")
    if channels:
        lines.append("channels:   # TODO: which of phone, chat, email, social each of these is")
        lines += [f"  {_quote(name)}: {ours}" for name, ours in channels.items()]
        todos.append(f"channels: {', '.join(channels)} (chat assumed)")
    return Draft(yaml="\n".join(lines) + "\n", todos=todos, fields=columns)


def _issue(values: pd.Series, todos: list[str]) -> dict[str, str]:
    filled = values[values != ""]
    # ";", "," and "|" never sit inside one code; a space does ("Billing question") unless the values are
    # lower-case tags ("billing_question vip").
    tags = len(filled) and not filled.str.contains(r"[A-Z]", regex=True).any()
    for separator, share in ((";", 0.0), (",", 0.0), ("|", 0.0), (" ", 0.3 if tags else 2.0)):
        if len(filled) and filled.str.contains(re.escape(separator), regex=True).mean() > share:
            todos.append("issue: the column holds lists; list your issue codes (pick: known) or keep the first")
            return {"split": _quote(separator), "pick": "first", "code": "true"}
    if filled.str.contains(r"[^0-9a-z_\-]", regex=True).any():
        return {"code": "true"}  # "Billing Question" -> billing_question
    return {}


def _scores(values: pd.Series) -> dict[str, object]:
    filled = sorted(set(values[values != ""]))
    if not filled or pd.to_numeric(pd.Series(filled), errors="coerce").notna().all():
        return {}
    return {v: SCORE_WORDS.get(v.lower(), '""') for v in filled}


def _quote(text: str) -> str:
    return '"' + text.replace("\\", "\\\\").replace('"', '\\"') + '"'
