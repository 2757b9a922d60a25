"""The contact-log schema: reading exports, row-level validation, and the typed contract of a contact.

Validation is a table of vectorised rules, each producing a mask of failing rows and a reason, so every
rejected row says which field failed and why, and ``accepted + rejected == input`` holds by construction.
The pandera model is the contract of what leaves this module (dtypes and invariants), checked once.
"""

from __future__ import annotations

import glob
import hashlib
import logging
from collections.abc import Sequence
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np
import pandas as pd
import pandera.pandas as pa

from predictor.config import CHANNEL_ALIASES, CHANNELS
from predictor.contacts import contract
from predictor.contacts.language import languages
from predictor.contacts.mapping import ColumnMapping, CsvOptions, SchemaError

__all__ = ["ColumnMapping", "SchemaError", "ValidationResult", "load_contacts", "load_files", "read_log", "validate"]

log = logging.getLogger(__name__)

REQUIRED_COLUMNS: tuple[str, ...] = contract.names(required=True)
OPTIONAL_COLUMNS: tuple[str, ...] = contract.names(required=False)
ID_COLUMNS: tuple[str, ...] = contract.names(contract.ID, contract.CODE)
TIMESTAMP_COLUMNS: tuple[str, ...] = contract.names(contract.TIME)
DURATION_COLUMNS: tuple[str, ...] = contract.names(contract.SECONDS)
TEXT_COLUMNS: tuple[str, ...] = contract.names(*contract.TEXT_KINDS)
CSAT_RANGE = contract.CSAT_RANGE


def _pandera_column(f: contract.ContactField) -> pa.Column:
    """A field's column in the contract of validated contacts."""
    if f.kind == contract.TIME:
        return pa.Column(pd.DatetimeTZDtype("ns", "UTC"))
    if f.kind in contract.FLOAT_KINDS:
        checks = [pa.Check.ge(0)] if f.kind == contract.SECONDS else []
        return pa.Column(float, checks=checks, nullable=f.kind == contract.SCORE)
    if f.kind == contract.COUNT:
        return pa.Column("int64", checks=[pa.Check.ge(0)])
    checks = [pa.Check.isin(list(CHANNELS))] if f.kind == contract.CHANNEL else []
    return pa.Column(str, checks=checks, unique=f.name == "contact_id")


# The contract of validated contacts: every field, typed, in contract order; nothing else passes.
CONTACT_SCHEMA = pa.DataFrameSchema(
    {f.name: _pandera_column(f) for f in contract.CONTACT_FIELDS},
    checks=[pa.Check(lambda df: df["closed_at"] >= df["opened_at"], name="closes_after_opening")],
    strict="filter",
    ordered=False,
)


@dataclass
class ValidationResult:
    """Valid contacts plus one row per (rejected row, field, reason)."""

    contacts: pd.DataFrame
    rejections: pd.DataFrame  # columns: row, contact_id, field, reason
    n_input: int
    # An optional field (queue, csat) that is invalid is blanked, never a reason to lose the row: one row
    # per (row, field, reason), as for rejections.
    warnings: pd.DataFrame = field(default_factory=lambda: _empty_issues())

    @property
    def n_rejected_rows(self) -> int:
        return int(self.rejections["row"].nunique()) if len(self.rejections) else 0

    @property
    def n_accepted(self) -> int:
        return len(self.contacts)

    def counts_by_reason(self, warnings: bool = False) -> pd.DataFrame:
        table = self.warnings if warnings else self.rejections
        if not len(table):
            return pd.DataFrame({"field": [], "reason": [], "rows": []})
        return (
            table.groupby(["field", "reason"], as_index=False)["row"]
            .nunique()
            .rename(columns={"row": "rows"})
            .sort_values("rows", ascending=False, ignore_index=True)
        )


def read_log(path: str | Path, mapping: ColumnMapping | None = None) -> pd.DataFrame:
    """Read a CSV, Parquet or JSONL export as raw values (validation does all typing).

    A CSV line with more fields than the header is not a failed file: it is left out here and listed in
    ``frame.attrs["malformed"]`` (its fields), for validation to count as a rejected row."""
    path = Path(path)
    if not path.exists():
        raise SchemaError(f"{path}: no such file")
    if path.stat().st_size == 0:
        raise SchemaError(f"{path}: the file is empty")
    suffix = "".join(path.suffixes[-2:]) if path.suffix == ".gz" else path.suffix
    csv = mapping.csv if mapping is not None else CsvOptions()
    malformed: list[list[str]] = []
    try:
        if suffix in (".csv", ".csv.gz", ".tsv"):
            # Everything as text, and empty cells stay "" rather than NaN: typing is validation's job.
            options = {"sep": "\t" if suffix == ".tsv" else csv.delimiter, "encoding": csv.encoding,
                       "quotechar": csv.quotechar, "dtype": str, "keep_default_na": False}  # fmt: skip
            try:
                frame = pd.read_csv(path, **options)
            except pd.errors.ParserError:
                frame = pd.read_csv(path, **options, engine="python", on_bad_lines=malformed.append)
        elif suffix == ".parquet":
            frame = pd.read_parquet(path)
        elif suffix in (".jsonl", ".jsonl.gz", ".ndjson"):
            frame = pd.read_json(path, lines=True, dtype=False)
        else:
            raise SchemaError(f"{path}: unsupported file type {suffix!r} (use .csv, .tsv, .parquet or .jsonl)")
    except SchemaError:
        raise
    except UnicodeDecodeError as exc:
        raise SchemaError(
            f"{path}: not {csv.encoding} text ({exc.reason} at byte {exc.start}); set csv.encoding in the mapping "
            "(e.g. latin-1, cp1252)"
        ) from None
    except Exception as exc:  # a corrupt file must give a message, not a traceback
        raise SchemaError(f"{path}: cannot be read as {suffix}: {exc}") from exc
    header = len(frame.columns)
    if mapping is not None:
        frame = mapping.apply(frame)
    frame.attrs["malformed"] = malformed
    frame.attrs["header_fields"] = header
    return frame


def validate(
    frame: pd.DataFrame,
    *,
    assume_timezone: str | None = None,
    timestamp_format: str | None = None,
    channels: dict[str, str] | None = None,
) -> ValidationResult:
    """Validate a raw contact frame row by row.

    ``channels``: more channel names of the export and the channel each is (on top of ``CHANNEL_ALIASES``).

    Rows are numbered from 1 in input order (the data row of a CSV, not counting the header).
    A row failing several rules appears once per failure in ``rejections``; duplicates of an
    accepted ``contact_id`` are rejected after the first valid occurrence.
    """
    missing = [c for c in REQUIRED_COLUMNS if c not in frame.columns]
    if missing:
        raise SchemaError(
            f"missing required columns {missing}; found {list(frame.columns)}. "
            "Rename them in the file or pass a column mapping (--mapping FILE or a shipped one: zendesk, "
            "freshdesk, salesforce_case, genesys_conversations; `predictor mapping draft FILE` writes one)."
        )
    raw = frame.reset_index(drop=True)
    n = len(raw)
    row_numbers = np.arange(1, n + 1)
    failures: list[pd.DataFrame] = []

    warned: list[pd.DataFrame] = []

    def fail(mask: pd.Series | np.ndarray, column: str, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            failures.append(pd.DataFrame({"row": row_numbers[mask], "field": column, "reason": reason}))

    def warn(mask: pd.Series | np.ndarray, column: str, reason: str) -> None:
        mask = np.asarray(mask, dtype=bool)
        if mask.any():
            warned.append(pd.DataFrame({"row": row_numbers[mask], "field": column, "reason": reason}))

    out = pd.DataFrame(index=raw.index)
    for column in ID_COLUMNS:
        text = _as_text(raw[column])
        fail(text.isna() | (text == ""), column, "missing value")
        out[column] = text.fillna("")
    out["issue"] = out["issue"].str.lower()

    aliases = {**CHANNEL_ALIASES, **(channels or {})}
    channel = _as_text(raw["channel"]).str.lower()
    channel = channel.map(lambda v: aliases.get(v, v) if isinstance(v, str) else v)
    fail(channel.isna() | (channel == ""), "channel", "missing value")
    fail(channel.notna() & (channel != "") & ~channel.isin(CHANNELS), "channel", "unknown channel")
    out["channel"] = channel.fillna("")

    out["transcript"] = _as_text(raw["transcript"]).fillna("")
    for column in contract.names(contract.LABEL):  # optional labels: empty where the file has none
        out[column] = _as_text(raw[column]).fillna("") if column in raw.columns else ""
    # Every contact gets a language: the file's code, else read off the transcript (kept, never a rejection).
    out["language"], not_a_code = languages(out["language"], out["transcript"])
    warn(not_a_code, "language", "not an ISO 639-1 code: read off the transcript")

    for column in TIMESTAMP_COLUMNS:
        parsed, reasons = parse_timestamps(raw[column], assume_timezone, timestamp_format)
        for reason in reasons.dropna().unique():
            fail(reasons == reason, column, reason)
        out[column] = parsed
    both = out["opened_at"].notna() & out["closed_at"].notna()
    fail(both & (out["closed_at"] < out["opened_at"]), "closed_at", "closed before opened")

    for column in DURATION_COLUMNS:
        value, blank, bad = _parse_number(raw[column])
        fail(blank, column, "missing value")
        fail(bad, column, "not a number")
        fail(value < 0, column, "negative duration")
        out[column] = value

    transfers, blank, bad = _parse_number(raw["transfers"])
    fail(blank, "transfers", "missing value")
    fail(bad | (transfers.notna() & (transfers != transfers.round())), "transfers", "not a whole number")
    fail(transfers < 0, "transfers", "negative count")
    out["transfers"] = transfers

    if "csat" in raw.columns:  # optional: a bad score is blanked and counted, the contact kept
        csat, _, bad = _parse_number(raw["csat"])
        outside = csat.notna() & ~csat.between(*CSAT_RANGE)
        warn(bad, "csat", "not a number: left blank")
        warn(outside, "csat", f"outside {CSAT_RANGE[0]:g}-{CSAT_RANGE[1]:g}: left blank")
        out["csat"] = csat.where(~outside.to_numpy(dtype=bool))
    else:
        out["csat"] = np.nan

    bad_rows = set()
    for f in failures:
        bad_rows.update(f["row"].tolist())
    valid_mask = ~np.isin(row_numbers, list(bad_rows))
    duplicate = valid_mask & out["contact_id"].where(valid_mask).duplicated(keep="first").to_numpy()
    duplicate &= out["contact_id"].notna().to_numpy()
    fail(duplicate, "contact_id", "duplicate contact_id")
    valid_mask &= ~duplicate

    rejections = (
        pd.concat(failures, ignore_index=True)
        if failures
        else pd.DataFrame({"row": pd.Series(dtype=int), "field": [], "reason": []})
    )
    rejections["contact_id"] = out["contact_id"].to_numpy()[rejections["row"].to_numpy(dtype=int) - 1]
    rejections = rejections[["row", "contact_id", "field", "reason"]].sort_values(["row", "field"])
    rejections = rejections.reset_index(drop=True)

    warnings = pd.concat(warned, ignore_index=True) if warned else _empty_issues()[["row", "field", "reason"]]
    warnings["contact_id"] = out["contact_id"].to_numpy()[warnings["row"].to_numpy(dtype=int) - 1]
    warnings = warnings[np.isin(warnings["row"], row_numbers[valid_mask])]  # of the rows kept
    warnings = warnings[["row", "contact_id", "field", "reason"]].sort_values(["row", "field"], ignore_index=True)

    contacts = out.loc[valid_mask].copy()
    for column in TEXT_COLUMNS:
        contacts[column] = contacts[column].astype(str)
    for column in contract.names(*contract.FLOAT_KINDS):
        contacts[column] = contacts[column].astype(float)
    for column in contract.names(contract.COUNT):
        contacts[column] = contacts[column].astype("int64")
    for column in TIMESTAMP_COLUMNS:
        contacts[column] = contacts[column].astype("datetime64[ns, UTC]")
    contacts = contacts.reset_index(drop=True)
    contacts = CONTACT_SCHEMA.validate(contacts)[list(contract.names())]

    result = ValidationResult(contacts=contacts, rejections=rejections, n_input=n, warnings=warnings)
    assert result.n_accepted + result.n_rejected_rows == n, "a row was lost in validation"
    if result.n_rejected_rows:
        log.warning("rejected %d of %d rows", result.n_rejected_rows, n)
    if len(warnings):
        log.warning("blanked an invalid optional field in %d rows", warnings["row"].nunique())
    return result


def _empty_issues() -> pd.DataFrame:
    return pd.DataFrame({"row": pd.Series(dtype=int), "contact_id": [], "field": [], "reason": []})


def load_contacts(
    path: str | Path, mapping_path: str | Path | None = None, assume_timezone: str | None = None
) -> ValidationResult:
    """Read and validate a contact log in one call (the usual entry point of every command)."""
    mapping = ColumnMapping.from_yaml(mapping_path) if mapping_path else None
    frame = read_log(path, mapping)
    malformed = frame.attrs.get("malformed", [])
    result = validate(
        frame,
        assume_timezone=assume_timezone or (mapping.timezone if mapping else None),
        timestamp_format=mapping.timestamp_format if mapping else None,
        channels=mapping.channels if mapping else None,
    )
    if not malformed:
        return result
    # Lines the CSV reader could not split: each is a rejected row (numbered after the file's good rows).
    bad = pd.DataFrame(
        {
            "row": np.arange(result.n_input + 1, result.n_input + len(malformed) + 1),
            "contact_id": [fields[0] if fields else "" for fields in malformed],
            "field": "line",
            "reason": [
                f"malformed line: {len(fields)} fields where the header has {frame.attrs['header_fields']}"
                for fields in malformed
            ],
        }
    )
    return ValidationResult(
        result.contacts,
        pd.concat([result.rejections, bad], ignore_index=True),
        result.n_input + len(malformed),
        result.warnings,
    )


def input_files(pattern: str | Path | Sequence[str | Path]) -> list[Path]:
    """The files a log argument names: a file, a directory of exports, or a glob ("exports/2026-*.csv")."""
    if isinstance(pattern, str | Path):
        path = Path(pattern)
        if path.is_dir():
            files = sorted(p for p in path.iterdir() if p.is_file() and not p.name.startswith("."))
        elif path.exists():
            files = [path]
        else:
            files = sorted(Path(p) for p in glob.glob(str(pattern)))
    else:
        files = [Path(p) for p in pattern]
    if not files:
        raise SchemaError(f"{pattern}: no input files")
    return files


REPEATED_IN_LATER_FILE = "duplicate of a contact in an earlier file"


def load_files(
    pattern: str | Path | Sequence[str | Path],
    mapping_path: str | Path | None = None,
    assume_timezone: str | None = None,
) -> ValidationResult:
    """``load_contacts`` over every file a log argument names, as one log.

    Rejections gain a ``file`` column, and their ``row`` numbers run on across files (the first file's
    rows first), so every rejected row is counted once. A contact id seen in an earlier file is rejected.
    """
    files = input_files(pattern)
    if len(files) == 1:
        return load_contacts(files[0], mapping_path, assume_timezone)
    accepted, rejected, rows, names, offset = [], [], [], [], 0
    for path in files:
        result = load_contacts(path, mapping_path, assume_timezone)
        accepted.append(result.contacts)
        rejected.append(result.rejections.assign(row=result.rejections["row"] + offset, file=str(path)))
        # Accepted rows keep their order: their numbers are the file's rows that were not rejected.
        rows.append(np.setdiff1d(np.arange(1, result.n_input + 1), result.rejections["row"].unique()) + offset)
        names.append(np.full(result.n_accepted, str(path), dtype=object))
        offset += result.n_input
    contacts = pd.concat(accepted, ignore_index=True)
    repeated = contacts["contact_id"].duplicated().to_numpy()
    if repeated.any():
        rejected.append(
            pd.DataFrame(
                {
                    "row": np.concatenate(rows)[repeated],
                    "contact_id": contacts.loc[repeated, "contact_id"].to_numpy(),
                    "field": "contact_id",
                    "reason": REPEATED_IN_LATER_FILE,
                    "file": np.concatenate(names)[repeated],
                }
            )
        )
        contacts = contacts[~repeated].reset_index(drop=True)
    rejections = pd.concat(rejected, ignore_index=True).sort_values(["row", "field"], ignore_index=True)
    return ValidationResult(contacts, rejections, offset)


def _as_text(values: pd.Series) -> pd.Series:
    text = values.astype("string").str.strip()
    return text.astype(object).where(text.notna(), None)


def _parse_number(values: pd.Series) -> tuple[pd.Series, np.ndarray, np.ndarray]:
    """Return (numbers, blank mask, unparseable mask); blanks and junk become NaN."""
    if pd.api.types.is_bool_dtype(values):
        values = values.astype(object)
    text = values.astype("string").str.strip()
    blank = (text.isna() | (text == "")).to_numpy(dtype=bool)
    number = pd.to_numeric(text.where(~blank, None), errors="coerce").astype(float)
    bad = (~blank) & (number.isna() | ~np.isfinite(number.fillna(0))).to_numpy(dtype=bool)
    number = number.where(np.isfinite(number))
    return number, blank, bad


_ZONE_SUFFIX = r"(?:[zZ]|[+-]\d{2}(?::?\d{2})?|\s?UTC)$"


def parse_timestamps(
    values: pd.Series, assume_timezone: str | None = None, timestamp_format: str | None = None
) -> tuple[pd.Series, pd.Series]:
    """Text or datetimes to UTC, by the rules of the contact log's times: (timestamps, reason or None per row).
    Also the mapping's checks and a follow-up file's ``sent_at``."""
    reasons = pd.Series([None] * len(values), index=values.index, dtype=object)
    if isinstance(values.dtype, pd.DatetimeTZDtype):
        return values.dt.tz_convert("UTC"), reasons
    if pd.api.types.is_datetime64_dtype(values):
        if assume_timezone is None:
            reasons[values.notna()] = "timestamp has no time zone"
            reasons[values.isna()] = "missing value"
            return pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]"), reasons
        localized = values.dt.tz_localize(assume_timezone, ambiguous="NaT", nonexistent="NaT")
        return localized.dt.tz_convert("UTC"), reasons.where(values.notna(), "missing value")

    text = values.astype("string").str.strip()
    blank = text.isna() | (text == "")
    reasons[blank.to_numpy(dtype=bool)] = "missing value"
    if timestamp_format:
        naive = pd.to_datetime(text.where(~blank, None), format=timestamp_format, errors="coerce")
        if getattr(naive.dt, "tz", None) is None:
            if assume_timezone is None:
                # A format without a zone and no zone declared: UTC would be a silent guess, hours off.
                reasons[(naive.notna()).to_numpy(dtype=bool)] = "timestamp has no time zone"
                naive = naive.where(naive.isna())
                naive = naive.dt.tz_localize("UTC")
            else:
                naive = naive.dt.tz_localize(assume_timezone, ambiguous="NaT", nonexistent="NaT")
        parsed = naive.dt.tz_convert("UTC")
    else:
        has_zone = text.str.contains(_ZONE_SUFFIX, regex=True).fillna(False).astype(bool)
        parsed = pd.Series(pd.NaT, index=values.index, dtype="datetime64[ns, UTC]")
        zoned = ~blank & has_zone
        if zoned.any():
            cleaned = text[zoned].str.replace(r"\s?UTC$", "+00:00", regex=True)
            parsed[zoned] = pd.to_datetime(cleaned, utc=True, errors="coerce", format="ISO8601")
        unzoned = ~blank & ~has_zone
        if unzoned.any():
            local = pd.to_datetime(text[unzoned], errors="coerce", format="ISO8601")
            if assume_timezone is None:
                # Only a real timestamp can lack a zone; junk is reported as junk below.
                naive = unzoned.copy()
                naive[unzoned] = local.notna().to_numpy()
                reasons[naive.to_numpy(dtype=bool)] = "timestamp has no time zone"
            else:
                local = local.dt.tz_localize(assume_timezone, ambiguous="NaT", nonexistent="NaT")
                parsed[unzoned] = local.dt.tz_convert("UTC")
    unparsed = parsed.isna() & reasons.isna()
    reasons[unparsed.to_numpy(dtype=bool)] = "not a valid timestamp"
    return parsed, reasons


def write_table(frame: pd.DataFrame, path: str | Path) -> Path:
    """Write a frame as CSV, Parquet or JSONL by the file's suffix (timestamps keep their zone)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    if path.suffix == ".parquet":
        frame.to_parquet(path, index=False)
    elif path.suffix in (".jsonl", ".ndjson"):
        frame.to_json(path, orient="records", lines=True, date_format="iso")
    elif path.suffix == ".csv":
        frame.to_csv(path, index=False)
    else:
        raise SchemaError(f"{path}: unsupported file type {path.suffix!r} (use .csv, .parquet or .jsonl)")
    return path


def row_hash_sum(contacts: pd.DataFrame, columns: Sequence[str] | None = None) -> int:
    """The sum of the contract columns' row hashes (mod 2**64): add it up over partitions for ``fingerprint``.

    Times are hashed as epoch microseconds and everything else as text, so the same contacts hash alike
    whatever their dtypes after a shuffle or a file format. ``columns``: hash only these (default: the
    contract's)."""
    wanted = columns if columns is not None else (*REQUIRED_COLUMNS, *OPTIONAL_COLUMNS)
    present = [c for c in wanted if c in contacts.columns]
    normal = pd.DataFrame(
        {
            c: contacts[c].dt.tz_convert("UTC").dt.as_unit("us").astype("int64").to_numpy()
            if c in TIMESTAMP_COLUMNS
            else contacts[c].astype(str).to_numpy()
            for c in present
        }
    )
    hashed = pd.util.hash_pandas_object(normal, index=False).to_numpy()
    return int(hashed.sum(dtype=np.uint64))


def fingerprint(
    contacts: pd.DataFrame | None = None, total: int | None = None, columns: Sequence[str] | None = None
) -> str:
    """A short hash of validated contacts that depends neither on their order nor on their partitioning:
    of a frame, or of ``row_hash_sum`` totals already added up (a cluster's partitions)."""
    if total is None:
        total = row_hash_sum(contacts, columns)
    return hashlib.sha256((int(total) % 2**64).to_bytes(8, "little")).hexdigest()[:16]
