"""Column mappings: how another system's export becomes our contact fields, in a small YAML file.

A mapping renames *and transforms*: minutes to seconds, one issue code out of a list of tags, "Good"/"Bad"
to a satisfaction score, the subject, description and comments joined into the transcript, a constant where
the export has no such field, a timestamp format and zone per field, CSV options, extra channel names::

    csv: {delimiter: ";", encoding: latin-1}
    channels: {whatsapp: chat, web: email}       # their channel names -> ours (on top of the built-in ones)
    fields:
      contact_id: Ticket ID                      # a bare column name: renamed as it is
      handle_seconds: {column: Handle time (min), unit: minutes}
      issue: {column: Tags, split: " ", pick: known, known: [billing_question, ...], fallback: other}
      csat: {column: Satisfaction, values: {Good: 5, Bad: 1}}
      transcript: {columns: [Subject, Description], join: "\\n\\n"}
      transfers: {constant: 0}
      opened_at: {column: Created, format: "%d/%m/%Y %H:%M", timezone: Europe/Berlin}

The first format (``columns`` / ``values`` / ``defaults`` / ``timestamp_format`` / ``timezone``) still reads.
Every mistake in the file is a ``SchemaError`` naming the file and the key; ``predictor mapping draft``
writes a starting file from an export's header and a sample of its rows.
"""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pandas as pd
import yaml

from predictor.config import PACKAGE_DATA
from predictor.contacts import contract

SHIPPED = PACKAGE_DATA / "mappings"  # tested mappings of common exports, named by --mapping NAME


def shipped() -> list[str]:
    return sorted(p.stem for p in SHIPPED.glob("*.yaml"))


class SchemaError(ValueError):
    """The file as a whole cannot be read as a contact log (as opposed to single bad rows)."""


# Seconds per unit of a duration column; "hh:mm:ss" reads clock-style durations ("01:15:00", "75:30").
UNITS: dict[str, float] = {"seconds": 1.0, "ms": 0.001, "minutes": 60.0, "hours": 3600.0, "hh:mm:ss": 1.0}
PICKS = ("first", "known")
MAPPING_KEYS = frozenset({"fields", "csv", "channels", "columns", "values", "defaults", "timestamp_format", "timezone"})
FIELD_KEYS = frozenset(
    {"column", "columns", "join", "constant", "unit", "offset", "split", "pick", "known", "fallback", "values",
     "code", "format", "timezone"}
)  # fmt: skip
CSV_KEYS = frozenset({"delimiter", "encoding", "quotechar"})


@dataclass(frozen=True)
class FieldRule:
    """How one of our fields is made from the export's columns."""

    column: str | None = None
    columns: tuple[str, ...] = ()  # several columns joined (a transcript from subject + description + ...)
    join: str = "\n"
    constant: Any = None  # the value where there is no column (or the column is blank)
    unit: str | None = None  # a duration's unit (UNITS)
    offset: float | None = None  # added to a number (Zendesk's "Group stations" count the first group too: -1)
    split: str | None = None  # the delimiter of a multi-valued column (tags)
    pick: str = "first"  # which value of the list: the first, or the first that is a known code
    known: tuple[str, ...] = ()
    fallback: str | None = None  # the value when no listed value is known
    values: dict[str, str] = field(default_factory=dict)  # their value -> ours (exact, then case-insensitive)
    code: bool = False  # make the value a code: "Billing Question" -> billing_question
    format: str | None = None  # strptime format of a time field
    timezone: str | None = None  # zone of a time field's naive values

    @property
    def sources(self) -> tuple[str, ...]:
        return self.columns or ((self.column,) if self.column else ())


@dataclass(frozen=True)
class CsvOptions:
    delimiter: str = ","
    encoding: str = "utf-8"
    quotechar: str = '"'


@dataclass(frozen=True)
class ColumnMapping:
    """A parsed mapping file: a rule per field it names, CSV options, channel names, default time rules."""

    rules: dict[str, FieldRule] = field(default_factory=dict)
    csv: CsvOptions = CsvOptions()
    channels: dict[str, str] = field(default_factory=dict)
    timestamp_format: str | None = None  # the time fields' format and zone unless a field says otherwise
    timezone: str | None = None
    source: str = "mapping"

    @property
    def columns(self) -> dict[str, str]:
        """Our field -> their single column (for messages and the draft)."""
        return {name: rule.column for name, rule in self.rules.items() if rule.column}

    @classmethod
    def from_yaml(cls, path: str | Path) -> ColumnMapping:
        """A mapping file, or the name of a shipped one (``zendesk``, ``freshdesk``, ...: ``shipped()``)."""
        path = Path(path)
        if not path.exists() and (SHIPPED / f"{path.name}.yaml").exists() and path.name == str(path):
            path = SHIPPED / f"{path.name}.yaml"
        if not path.exists():
            raise SchemaError(f"{path}: no such mapping file (shipped mappings: {', '.join(shipped())})")
        try:
            raw = yaml.safe_load(path.read_text()) or {}
        except yaml.YAMLError as exc:
            raise SchemaError(f"{path}: not valid YAML ({exc})") from None
        if not isinstance(raw, dict):
            raise SchemaError(f"{path}: a mapping file is a YAML mapping of keys ({sorted(MAPPING_KEYS)})")
        return cls.from_dict(raw, source=str(path))

    @classmethod
    def from_dict(cls, raw: dict[str, Any], source: str = "mapping") -> ColumnMapping:
        unknown = set(raw) - MAPPING_KEYS
        if unknown:
            raise SchemaError(f"{source}: unknown mapping keys {sorted(unknown)} (known: {sorted(MAPPING_KEYS)})")
        rules: dict[str, dict[str, Any]] = {}
        for name, column in (raw.get("columns") or {}).items():  # the first format
            rules.setdefault(name, {})["column"] = column
        for name, table in (raw.get("values") or {}).items():
            rules.setdefault(name, {})["values"] = table
        for name, constant in (raw.get("defaults") or {}).items():
            rules.setdefault(name, {})["constant"] = constant
        for name, spec in (raw.get("fields") or {}).items():
            rules.setdefault(name, {}).update(spec if isinstance(spec, dict) else {"column": spec})
        parsed = {name: _rule(name, spec, source) for name, spec in rules.items()}
        csv = raw.get("csv") or {}
        if not isinstance(csv, dict) or set(csv) - CSV_KEYS:
            raise SchemaError(f"{source}: csv takes {sorted(CSV_KEYS)}")
        channels = {str(k).strip().lower(): str(v).strip().lower() for k, v in (raw.get("channels") or {}).items()}
        timezone = raw.get("timezone")
        _check_zone(timezone, source, "timezone")
        return cls(
            rules=parsed,
            csv=CsvOptions(**{k: str(v) for k, v in csv.items()}),
            channels=channels,
            timestamp_format=raw.get("timestamp_format"),
            timezone=timezone,
            source=source,
        )

    def apply(self, frame: pd.DataFrame) -> pd.DataFrame:
        """The export's rows as our fields (raw text, typed by validation); unmapped columns that already
        carry one of our field names pass through."""
        missing = sorted({c for rule in self.rules.values() for c in rule.sources if c not in frame.columns})
        if missing:
            raise SchemaError(
                f"columns named in the mapping are not in the file: {missing}; the file has {list(frame.columns)}"
            )
        out = pd.DataFrame(index=frame.index)
        for f in contract.CONTACT_FIELDS:
            rule = self.rules.get(f.name)
            if rule is not None:
                out[f.name] = self._value(frame, f, rule)
            elif f.name in frame.columns:
                out[f.name] = frame[f.name]
        return out

    # -- one field ------------------------------------------------------------------------------------
    def _value(self, frame: pd.DataFrame, f: contract.ContactField, rule: FieldRule) -> pd.Series:
        if rule.columns:
            parts = [_text(frame[c]) for c in rule.columns]
            text = pd.Series(
                [rule.join.join(p for p in row if p) for row in zip(*parts, strict=True)], index=frame.index
            )
        elif rule.column:
            text = _text(frame[rule.column])
        else:
            text = pd.Series("", index=frame.index)
        if rule.constant is not None:
            text = text.where(text != "", str(rule.constant))
        if rule.split is not None:
            text = text.map(lambda v, r=rule: _pick(v, r))
        if rule.values:
            exact = {str(k): str(v) for k, v in rule.values.items()}
            folded = {k.casefold(): v for k, v in exact.items()}
            text = text.map(lambda v: exact.get(v, folded.get(v.casefold(), v)))
        if rule.code:
            text = text.map(_code)
        if rule.unit is not None:
            text = _seconds(text, rule.unit)
        if rule.offset is not None:
            number = pd.to_numeric(text, errors="coerce") + rule.offset
            text = text.where(number.isna(), number.clip(lower=0).map(repr))
        if f.kind == contract.TIME and (rule.format or rule.timezone):
            text = _iso_times(text, rule.format or self.timestamp_format, rule.timezone or self.timezone)
        return text


def _rule(name: str, spec: dict[str, Any], source: str) -> FieldRule:
    where = f"{source}: fields.{name}"
    if name not in contract.FIELDS:
        raise SchemaError(f"{where}: not a field of the contact log (fields: {', '.join(contract.names())})")
    unknown = set(spec) - FIELD_KEYS
    if unknown:
        raise SchemaError(f"{where}: unknown keys {sorted(unknown)} (known: {sorted(FIELD_KEYS)})")
    unit = spec.get("unit")
    if unit is not None and unit not in UNITS:
        raise SchemaError(f"{where}: unit {unit!r} is not one of {sorted(UNITS)}")
    pick = spec.get("pick", "first")
    if pick not in PICKS:
        raise SchemaError(f"{where}: pick {pick!r} is not one of {list(PICKS)}")
    if pick == "known" and not spec.get("known"):
        raise SchemaError(f"{where}: pick: known needs the list of known codes (known: [...])")
    _check_zone(spec.get("timezone"), source, f"fields.{name}.timezone")
    columns = spec.get("columns") or ()
    if isinstance(columns, str):
        columns = (columns,)
    return FieldRule(
        column=None if spec.get("column") is None else str(spec["column"]),
        columns=tuple(str(c) for c in columns),
        join=str(spec.get("join", "\n")),
        constant=spec.get("constant"),
        unit=unit,
        offset=None if spec.get("offset") is None else float(spec["offset"]),
        code=bool(spec.get("code", False)),
        split=None if spec.get("split") is None else str(spec["split"]),
        pick=pick,
        known=tuple(str(k).strip().lower() for k in spec.get("known") or ()),
        fallback=None if spec.get("fallback") is None else str(spec["fallback"]),
        values={str(k): str(v) for k, v in (spec.get("values") or {}).items()},
        format=spec.get("format"),
        timezone=spec.get("timezone"),
    )


def _check_zone(zone: str | None, source: str, key: str) -> None:
    if zone is None:
        return
    from zoneinfo import ZoneInfo, ZoneInfoNotFoundError

    try:
        ZoneInfo(str(zone))
    except (ZoneInfoNotFoundError, ValueError):
        raise SchemaError(f"{source}: {key} {zone!r} is not a time zone (e.g. UTC, Europe/Berlin)") from None


def _text(values: pd.Series) -> pd.Series:
    return values.astype("string").str.strip().fillna("").astype(object)


def _pick(value: str, rule: FieldRule) -> str:
    items = [v.strip() for v in value.split(rule.split) if v.strip()] if rule.split else [value]
    if rule.pick == "known":
        known = set(rule.known)
        chosen = next((v for v in items if v.lower() in known), None)
        return chosen if chosen is not None else (rule.fallback or "")
    return items[0] if items else (rule.fallback or "")


def _code(value: str) -> str:
    return re.sub(r"[^0-9a-z]+", "_", value.casefold()).strip("_")


_CLOCK = re.compile(r"^(?:(\d+):)?(\d{1,3}):(\d{1,2}(?:\.\d+)?)$")


def _seconds(text: pd.Series, unit: str) -> pd.Series:
    """A duration in seconds, as text for validation to type; what is no number stays (and is rejected)."""
    if unit == "hh:mm:ss":

        def clock(value: str) -> str:
            match = _CLOCK.match(value)
            if not match:
                return value
            hours, minutes, seconds = match.groups()
            return repr(int(hours or 0) * 3600 + int(minutes) * 60 + float(seconds))

        return text.map(clock)
    number = pd.to_numeric(text.str.replace(",", ".", regex=False), errors="coerce") * UNITS[unit]
    return text.where(number.isna(), number.map(repr))


def _iso_times(text: pd.Series, fmt: str | None, zone: str | None) -> pd.Series:
    """A time field parsed by its own format and zone, as ISO text with the zone; what does not parse stays."""
    from predictor.contacts.schema import parse_timestamps

    parsed, _ = parse_timestamps(text, zone, fmt)
    iso = parsed.map(lambda t: t.isoformat() if pd.notna(t) else None)
    return text.where(iso.isna(), iso)
