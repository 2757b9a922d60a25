"""Row-level validation: every rule on hand-written rows, and nothing ever lost."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from conftest import contact, frame
from typer.testing import CliRunner

from predictor.cli import app
from predictor.contacts.schema import (
    ColumnMapping,
    SchemaError,
    load_contacts,
    load_files,
    read_log,
    validate,
    write_table,
)

DATA = Path(__file__).parent / "data"


def reasons(result) -> set[tuple[int, str, str]]:
    return {(r.row, r.field, r.reason) for r in result.rejections.itertuples()}


@pytest.mark.parametrize(
    ("override", "field", "reason"),
    [
        ({"customer_id": ""}, "customer_id", "missing value"),
        ({"agent_id": None}, "agent_id", "missing value"),
        ({"channel": "fax"}, "channel", "unknown channel"),
        ({"handle_seconds": "abc"}, "handle_seconds", "not a number"),
        ({"handle_seconds": -5}, "handle_seconds", "negative duration"),
        ({"hold_seconds": -1.0}, "hold_seconds", "negative duration"),
        ({"transfers": 1.5}, "transfers", "not a whole number"),
        ({"transfers": -1}, "transfers", "negative count"),
        ({"opened_at": "yesterday"}, "opened_at", "not a valid timestamp"),
        ({"opened_at": "2026-03-02T09:00:00"}, "opened_at", "timestamp has no time zone"),
        ({"closed_at": "2026-03-02T08:00:00Z"}, "closed_at", "closed before opened"),
        ({"handle_seconds": float("inf")}, "handle_seconds", "not a number"),
    ],
)
def test_each_rule_rejects_the_row_and_names_the_field(override: dict, field: str, reason: str) -> None:
    good = contact("C1")
    bad = contact("C2", opened_hours=1)
    if "closed_at" in override:
        bad["opened_at"] = "2026-03-02T09:00:00Z"
    bad.update(override)
    result = validate(frame(good, bad))
    assert (2, field, reason) in reasons(result)
    assert list(result.contacts["contact_id"]) == ["C1"]
    assert result.n_accepted + result.n_rejected_rows == 2


def test_duplicate_contact_id_keeps_the_first() -> None:
    rows = [contact("C1"), contact("C1", opened_hours=2, issue="refund"), contact("C2")]
    result = validate(frame(*rows))
    assert reasons(result) == {(2, "contact_id", "duplicate contact_id")}
    kept = result.contacts.set_index("contact_id")
    assert kept.loc["C1", "issue"] == "billing_question"


def test_empty_transcript_is_valid() -> None:
    result = validate(frame(contact("C1", transcript=""), contact("C2", transcript=None)))
    assert result.n_accepted == 2
    assert list(result.contacts["transcript"]) == ["", ""]


def test_row_failing_several_rules_is_one_rejected_row() -> None:
    bad = contact("C9", channel="pigeon", handle_seconds=-3)
    result = validate(frame(contact("C1"), bad))
    assert result.n_rejected_rows == 1
    assert {(f, r) for _, f, r in reasons(result)} == {
        ("channel", "unknown channel"),
        ("handle_seconds", "negative duration"),
    }


def test_declared_timezone_makes_naive_timestamps_valid() -> None:
    row = contact("C1", opened_at="2026-03-02 09:00:00", closed_at="2026-03-02 09:10:00")
    assert validate(frame(row)).n_rejected_rows == 1
    result = validate(frame(row), assume_timezone="Europe/Berlin")
    assert result.n_accepted == 1
    assert result.contacts["opened_at"].iloc[0] == pd.Timestamp("2026-03-02 08:00", tz="UTC")


def test_missing_required_column_is_a_file_level_error() -> None:
    with pytest.raises(SchemaError, match=r"missing required columns.*'transfers'"):
        validate(frame(contact("C1")).drop(columns="transfers"))


def test_accepted_plus_rejected_equals_input_on_a_noisy_log(small_log) -> None:
    raw = small_log.contacts.astype(object).copy()
    rng = np.random.default_rng(0)
    n = len(raw)
    for column, junk in [
        ("channel", "pager"),
        ("handle_seconds", "x"),
        ("closed_at", "not a date"),
        ("customer_id", ""),
    ]:
        hit = rng.choice(n, 40, replace=False)
        raw.loc[hit, column] = junk
    raw = pd.concat([raw, raw.iloc[:25]], ignore_index=True)  # duplicates
    result = validate(raw)
    assert result.n_accepted + result.n_rejected_rows == len(raw)
    assert result.n_rejected_rows >= 25
    counts = result.counts_by_reason().set_index(["field", "reason"])["rows"]
    assert counts[("contact_id", "duplicate contact_id")] <= 25
    assert counts[("channel", "unknown channel")] == (raw["channel"] == "pager").sum()


@pytest.mark.parametrize("suffix", [".csv", ".parquet", ".jsonl"])
def test_round_trip_through_every_format(tmp_path: Path, small_log, suffix: str) -> None:
    path = write_table(small_log.contacts.head(200), tmp_path / f"log{suffix}")
    result = load_contacts(path)
    assert result.n_rejected_rows == 0
    assert result.n_accepted == 200
    pd.testing.assert_series_equal(
        result.contacts["closed_at"],
        small_log.contacts["closed_at"].head(200).astype("datetime64[ns, UTC]"),
        check_names=False,
    )


def test_a_directory_of_exports_is_one_log_and_loses_no_row(tmp_path: Path, small_log) -> None:
    contacts = small_log.contacts.head(300).astype(object).copy()
    contacts.loc[10, "channel"] = "pager"  # rejected in the first file
    write_table(contacts.iloc[:150], tmp_path / "day-1.csv")
    # The second file repeats the first file's last contact (an overlapping export) and breaks a row.
    second = pd.concat([contacts.iloc[149:150], contacts.iloc[150:]], ignore_index=True)
    second.loc[5, "customer_id"] = ""
    write_table(second, tmp_path / "day-2.parquet")

    result = load_files(tmp_path)
    assert result.n_input == 301
    assert result.n_accepted + result.n_rejected_rows == result.n_input
    assert reasons(result) == {
        (11, "channel", "unknown channel"),
        (151, "contact_id", "duplicate of a contact in an earlier file"),
        (156, "customer_id", "missing value"),
    }
    assert result.rejections["file"].tolist() == [
        str(tmp_path / name) for name in ("day-1.csv", *["day-2.parquet"] * 2)
    ]
    assert result.contacts["contact_id"].is_unique and result.n_accepted == 298
    assert load_files(str(tmp_path / "day-*")).n_input == 301  # a glob names the same files
    with pytest.raises(SchemaError, match="no input files"):
        load_files(tmp_path / "nothing-*.csv")


@pytest.mark.parametrize(("csat", "reason"), [(9, "outside 1-5: left blank"), ("Good", "not a number: left blank")])
def test_an_invalid_optional_field_is_blanked_and_counted_never_rejected(csat: object, reason: str) -> None:
    """A text satisfaction score rejected 76% of a real export's rows (and skewed the repeat rate it kept)."""
    result = validate(frame(contact("C1", csat=4.0), contact("C2", opened_hours=1, csat=csat)))
    assert result.n_accepted == 2 and result.n_rejected_rows == 0
    assert result.contacts["csat"].isna().tolist() == [False, True]
    assert [(w.row, w.field, w.reason) for w in result.warnings.itertuples()] == [(2, "csat", reason)]


def test_mapping_naming_an_absent_column_says_which(tmp_path: Path) -> None:
    mapping = ColumnMapping.from_dict({"columns": {"contact_id": "Ticket number"}})
    with pytest.raises(SchemaError, match="Ticket number"):
        read_log(DATA / "exports" / "zendesk.csv", mapping)


@pytest.mark.parametrize(
    ("name", "content", "message"),
    [
        ("empty.csv", b"", "empty"),
        ("wrong_header.csv", b"id,when,what\n1,2,3\n", "missing required columns"),
        ("corrupt.parquet", b"PAR1 this is not parquet at all", "cannot be read"),
        ("log.xlsx", b"whatever", "unsupported file type"),
    ],
)
def test_cli_gives_a_clear_error_on_bad_files(tmp_path: Path, name: str, content: bytes, message: str) -> None:
    path = tmp_path / name
    path.write_bytes(content)
    result = CliRunner().invoke(app, ["validate", str(path)])
    assert result.exit_code == 2
    assert message in result.output
    assert "Traceback" not in result.output


def test_cli_validate_writes_rejections_and_strict_fails(tmp_path: Path) -> None:
    path = write_table(frame(contact("C1"), contact("C2", channel="fax")), tmp_path / "log.csv")
    runner = CliRunner()
    relaxed = runner.invoke(app, ["validate", str(path), "--out", str(tmp_path / "valid.parquet")])
    assert relaxed.exit_code == 0, relaxed.output
    assert "1 rejected" in relaxed.output
    rejected = pd.read_csv(tmp_path / "valid.rejected.csv")
    assert rejected.to_dict("records") == [
        {"row": 2, "contact_id": "C2", "field": "channel", "reason": "unknown channel"}
    ]
    assert len(pd.read_parquet(tmp_path / "valid.parquet")) == 1
    strict = runner.invoke(app, ["validate", str(path), "--strict"])
    assert strict.exit_code == 1
