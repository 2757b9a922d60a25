"""The contact store on SQLite and on a real PostgreSQL server: idempotent, redacting, point-in-time."""

from __future__ import annotations

from collections import Counter
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from zoneinfo import ZoneInfo

import numpy as np
import pandas as pd
import pytest
from conftest import contact, frame

from predictor.config import LabelConfig
from predictor.contacts.schema import validate
from predictor.contacts.store import ContactStore, Experimented, FollowUpRecord
from predictor.features.build import build


@pytest.fixture(params=["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> ContactStore:
    if request.param == "sqlite":
        return ContactStore(f"sqlite:///{tmp_path / 'store.db'}")
    url = request.getfixturevalue("postgres_url")
    s = ContactStore(url)
    with s.engine.begin() as db:
        db.exec_driver_sql("TRUNCATE contacts, follow_ups, agent_windows")
    return s


def answer(contact_id: str) -> dict:
    return {"contact_id": contact_id, "repeat_probability": 0.5}


def test_save_is_idempotent_and_keeps_the_first_answer(store: ContactStore) -> None:
    rows = validate(frame(contact("C1"), contact("C2", opened_hours=1))).contacts
    assert store.save(rows, {"C1": answer("C1"), "C2": answer("C2")}, "3") == {"C1", "C2"}
    assert store.save(rows.head(1), {"C1": {"contact_id": "C1", "repeat_probability": 0.9}}, "4") == set()
    assert store.count() == 2
    assert store.responses(["C1", "C9"]) == {"C1": answer("C1")}


def test_a_bulk_loaded_contact_takes_its_first_answer(store: ContactStore) -> None:
    rows = validate(frame(contact("C1"))).contacts
    store.load_frame(rows)
    assert store.stored(["C1"])["C1"].response is None
    assert store.save(rows, {"C1": answer("C1")}, "3") == {"C1"}
    assert store.save(rows, {"C1": {"contact_id": "C1", "repeat_probability": 0.9}}, "4") == set()
    assert store.responses(["C1"]) == {"C1": answer("C1")} and store.count() == 1


def test_the_content_hash_ignores_offsets_and_number_formats() -> None:
    from predictor.contacts.store import content_hash

    rows = validate(frame(contact("C1"))).contacts
    moved = rows.assign(closed_at=rows["closed_at"].dt.tz_convert("Etc/GMT-2"), transfers=rows["transfers"] * 1.0)
    other = rows.assign(channel="email")
    assert content_hash(rows) == content_hash(moved) != content_hash(other)


def test_rows_a_caller_read_already_are_hashed_and_saved_as_the_frame_is(tmp_path: Path) -> None:
    """A scorer reads its frame's rows once and hands them to ``content_hash`` and ``save``: the same hashes, the
    same stored contacts, and the caller's rows left as they were."""
    import copy

    from predictor.contacts.store import content_hash, records

    rows = validate(frame(contact("C1", queue="Call me on 4111 1111 1111 1111"), contact("C2", csat=None))).contacts
    read = records(rows, list(rows.columns))
    before = copy.deepcopy(read)
    assert content_hash(rows, rows=read) == content_hash(rows)
    assert content_hash(rows, issues=["a", "b"], rows=read) == content_hash(rows, issues=["a", "b"])
    stores = [ContactStore(f"sqlite:///{tmp_path / f'{name}.db'}", pseudonym_key="k") for name in ("frame", "rows")]
    answers = {"C1": answer("C1"), "C2": answer("C2")}
    assert stores[0].save(rows, answers, "1") == stores[1].save(rows, answers, "1", rows=read) == {"C1", "C2"}
    kept = [store.all_contacts().sort_values("contact_id").reset_index(drop=True) for store in stores]
    pd.testing.assert_frame_equal(kept[0], kept[1])
    assert "4111" not in kept[1]["queue"].str.cat() and kept[1]["customer_id"].tolist() != ["U1", "U1"]
    assert [s.content_hash for s in stores[1].stored(["C1", "C2"]).values()] == content_hash(rows)
    assert read == before


def test_the_content_hash_is_the_same_with_or_without_a_language() -> None:
    """The language is read off the transcript when not sent, and contacts stored before the field existed were
    hashed without it: a retry that does (or does not) say its language replays, across the upgrade too."""
    import hashlib
    import json

    from predictor.contacts import contract
    from predictor.contacts.store import content_hash

    rows = validate(frame(contact("C1"))).contacts
    assert content_hash(rows) == content_hash(rows.assign(language="ru")) == content_hash(rows.assign(language=""))
    # What the version before the field hashed: every other field, canonical as content_hash makes them.
    record = rows.iloc[0]
    before = {
        f.name: int(record[f.name].value // 1000) if f.kind == contract.TIME
        else (float(record[f.name]) if f.kind in (*contract.FLOAT_KINDS, contract.COUNT) and pd.notna(record[f.name])
              else None if f.kind in (*contract.FLOAT_KINDS, contract.COUNT) else str(record[f.name]).strip())
        for f in contract.CONTACT_FIELDS if f.name != "language"
    }  # fmt: skip
    assert content_hash(rows) == [hashlib.sha256(json.dumps(before, sort_keys=True).encode()).hexdigest()]


def test_a_store_from_before_content_hashes_gains_the_column(tmp_path: Path) -> None:
    from sqlalchemy import create_engine, inspect

    url = f"sqlite:///{tmp_path / 'old.db'}"
    with create_engine(url).begin() as db:
        db.exec_driver_sql("CREATE TABLE contacts (contact_id VARCHAR(128) PRIMARY KEY, response TEXT)")
    ContactStore(url)
    assert "content_hash" in {c["name"] for c in inspect(create_engine(url)).get_columns("contacts")}


def test_a_store_from_before_gets_the_agents_covering_index(tmp_path: Path) -> None:
    """The look-up of the agents' contacts without kept windows (every /score) reads the index alone; a store
    written with the index it replaces gets the new one and loses the old when opened."""
    from sqlalchemy import create_engine, inspect

    url = f"sqlite:///{tmp_path / 'old.db'}"
    ContactStore(url)
    with create_engine(url).begin() as db:
        db.exec_driver_sql("DROP INDEX ix_contacts_agent_windows")
        db.exec_driver_sql("CREATE INDEX ix_contacts_agent_history ON contacts (agent_id, closed_at, customer_id)")
    store = ContactStore(url)
    names = {index["name"] for index in inspect(create_engine(url)).get_indexes("contacts")}
    assert "ix_contacts_agent_windows" in names and "ix_contacts_agent_history" not in names
    from predictor.contacts.store import _queries

    bound = {"agents": ["A1"], "labels": "w7d-g30m", "after": datetime(2026, 1, 1), "by": datetime(2026, 2, 1)}
    sql = _queries().unwindowed.params(**bound).compile(store.engine, compile_kwargs={"literal_binds": True})
    with store.engine.connect() as db:
        details = " ".join(str(row[-1]) for row in db.exec_driver_sql(f"EXPLAIN QUERY PLAN {sql}"))
    assert "COVERING INDEX ix_contacts_agent_windows" in details, details


def test_records_are_what_to_dict_reads(small_log) -> None:
    """``records`` reads a frame of exactly the columns asked for in one piece, others column by column: both
    give ``to_dict("records")``'s Python values, missing ones included."""
    from predictor.contacts.store import CONTACT_COLUMNS, records

    rows = validate(small_log.contacts).contacts.head(50).reset_index(drop=True)
    rows.loc[:9, "csat"] = np.nan
    rows.loc[10:19, "queue"] = None
    rows.loc[20:29, "transcript"] = None
    columns = list(CONTACT_COLUMNS)
    expected = rows[columns].to_dict("records")
    for table in (rows[columns], rows[columns[::-1]], rows[columns].head(1)):
        got = records(table, columns)
        assert len(got) == len(table)
        for have, want in zip(got, expected, strict=False):
            assert list(have) == columns
            for name in columns:
                a, b = have[name], want[name]
                assert type(a) is type(b) and (a == b or (pd.isna(a) and pd.isna(b))), (name, a, b)


def test_transcripts_are_redacted_on_the_way_in(store: ContactStore) -> None:
    rows = validate(frame(contact("C1", transcript="mail a.b@example.com or call +44 7700 900123"))).contacts
    store.save(rows, {"C1": answer("C1")}, "1")
    stored = store.all_contacts()["transcript"].iloc[0]
    assert "example.com" not in stored and "900123" not in stored


def test_round_trip_keeps_types_and_zones(store: ContactStore, small_log) -> None:
    contacts = validate(small_log.contacts.head(300)).contacts
    store.load_frame(contacts)
    back = store.all_contacts().set_index("contact_id").loc[contacts["contact_id"]].reset_index()
    pd.testing.assert_series_equal(back["closed_at"], contacts["closed_at"], check_names=False)
    assert back["transfers"].dtype == "int64"
    assert back["csat"].isna().sum() == contacts["csat"].isna().sum()


@pytest.mark.parametrize("ticket_days", [0.0, 3.0])
def test_the_scorers_history_gives_the_features_of_the_whole_store(store: ContactStore, ticket_days: float) -> None:
    """The scorer reads its customers' contacts and the agents' kept windows, not the contacts behind them:
    the features equal those of the whole store, before and after windows are kept, and after new contacts of
    those customers turn labels (tickets open for days: a contact opened inside a window that had ended arrives
    later, and the kept window of its customer is dropped, not trusted)."""
    from predictor.contacts.simulate import SimulatorConfig, simulate
    from predictor.contacts.store import agent_windows_table
    from predictor.serving.history import scoring_history

    log = simulate(SimulatorConfig(n_contacts=1500, seed=3, days=60, ticket_days=ticket_days))
    contacts = validate(log.contacts).contacts.sort_values("closed_at", ignore_index=True)
    past, new = contacts.iloc[:1200], contacts.iloc[1200:1230].reset_index(drop=True)
    store.load_frame(past)
    labels = LabelConfig()
    expected = build(new, past).frame
    for _ in range(2):  # first derived and kept, then read as kept
        history, windows = scoring_history(store, new, labels)
        pd.testing.assert_frame_equal(build(new, history, other_windows=windows).frame, expected)
    with store.engine.connect() as db:
        assert db.execute(agent_windows_table.select()).first() is not None
    # One at a time, as the service sees them: each scored against the store holding everything before it.
    later = contacts.iloc[1230:1430].reset_index(drop=True)
    for k in range(0, len(later), 10):
        chunk = later.iloc[k : k + 10].reset_index(drop=True)
        known = pd.concat([past, later.iloc[:k]], ignore_index=True)
        history, windows = scoring_history(store, chunk, labels)
        pd.testing.assert_frame_equal(build(chunk, history, other_windows=windows).frame, build(chunk, known).frame)
        store.save(chunk, {c: answer(c) for c in chunk["contact_id"]}, "1")
    # A /score's one contact: its agent's windows are read pooled, a row standing for many.
    pooled = []
    for k in range(1430, 1460):
        one = contacts.iloc[k : k + 1].reset_index(drop=True)
        known = pd.concat([past, contacts.iloc[1230:k]], ignore_index=True)
        history, windows = scoring_history(store, one, labels)
        pooled.append(windows["windows"].max(initial=0))
        pd.testing.assert_frame_equal(build(one, history, other_windows=windows).frame, build(one, known).frame)
        store.save(one, {c: answer(c) for c in one["contact_id"]}, "1")
    assert max(pooled) > 10


def test_kept_windows_of_a_customer_written_meanwhile_are_dropped(store: ContactStore) -> None:
    """Derived from a customer's contacts as read, then the customer wrote again before the windows were in:
    keeping them must not leave the stale ones."""
    from predictor.contacts.store import agent_windows_table
    from predictor.features.build import agent_windows

    rows = validate(frame(contact("C1", customer_id="U1"), contact("C2", customer_id="U1", opened_hours=400))).contacts
    store.load_frame(rows.head(1))
    read = store.pseudonymous_history([store.pseudonym("U1")])
    windows = agent_windows(read, LabelConfig(), as_of=pd.Timestamp("2030-01-01", tz="UTC"))
    store.load_frame(rows.tail(1))  # meanwhile
    store.keep_windows(windows, "rules", dict(Counter(read.customer_id.tolist())))
    with store.engine.connect() as db:
        assert db.execute(agent_windows_table.select()).first() is None
    read = store.pseudonymous_history([store.pseudonym("U1")])
    store.keep_windows(agent_windows(read, LabelConfig()), "rules", dict(Counter(read.customer_id.tolist())))
    with store.engine.connect() as db:
        assert len(db.execute(agent_windows_table.select()).fetchall()) == 1  # C1's (C2's window is open)


def test_sqlite_store_passes_its_integrity_check(tmp_path: Path) -> None:
    s = ContactStore(f"sqlite:///{tmp_path / 'store.db'}")
    s.save(validate(frame(contact("C1"))).contacts, {"C1": answer("C1")}, "1")
    assert s.integrity_ok()
    with s.engine.connect() as db:
        assert db.exec_driver_sql("PRAGMA journal_mode").scalar_one() == "wal"


def test_history_is_read_back_as_the_contacts_were_given(store: ContactStore) -> None:
    """The history a scorer reads (plain arrays, times parsed off the driver's rows) holds what was loaded:
    times to the microsecond, whatever offset they came with, on SQLite (text) and PostgreSQL (datetimes)."""
    from predictor.contacts.labels import ContactArrays

    rows = validate(
        frame(
            contact("C1", customer_id="U1", transfers=2),
            contact("C2", customer_id="U1", opened_hours=30.000001, issue="delivery_late"),
            contact("C3", customer_id="U2", opened_hours=5),
        )
    ).contacts
    rows.loc[1, "closed_at"] = pd.Timestamp("2026-03-29 01:30:00.123456+02:00").tz_convert("UTC")
    store.load_frame(rows)
    read = store.customers_history(rows.iloc[[0]])
    expected = ContactArrays.of(rows.iloc[[0, 1]])
    order = np.argsort(read.contact_id)
    for name in ("contact_id", "customer_id", "opened_us", "closed_us", "issue", "agent_id", "transfers"):
        assert getattr(read, name)[order].tolist() == getattr(expected, name).tolist(), name
    assert len(store.customers_history(rows.iloc[[0]].assign(customer_id="nobody"))) == 0


def test_times_of_any_form_a_driver_returns_parse_as_pandas_parses_them() -> None:
    from datetime import timedelta, timezone

    from predictor.contacts.labels import epoch_us
    from predictor.contacts.store import _epoch_us_of

    forms = [
        ["2026-03-01 10:00:00.000001", "2026-03-01 10:00:00", "1999-12-31T23:59:59.5"],  # SQLite's text
        ["2026-03-01 10:00:00+02:00", "2026-03-01 10:00:00.25"],  # one with an offset: pandas parses all
        [datetime(2026, 3, 1, 10, 0, 0, 7, tzinfo=timezone(timedelta(hours=-5)))],  # PostgreSQL's
        [datetime(2026, 3, 1, 10, 0, 0, 7)],  # naive: UTC, as the store writes it
        [],
    ]
    for values in forms:
        expected = epoch_us(pd.Series(pd.to_datetime(values, utc=True, format="ISO8601")))
        assert _epoch_us_of(values).tolist() == expected.tolist(), values


def test_a_requests_times_type_as_pandas_types_them() -> None:
    """A request's datetimes (any offset, across a DST change, to the microsecond) are typed by arithmetic,
    everything else by pandas: the same column either way."""
    from datetime import timedelta, timezone

    from predictor.contacts.store import _utc_times

    zone = ZoneInfo("Europe/Belgrade")
    forms = [
        [datetime(2026, 3, 29, 1, 59, 59, 999999, tzinfo=zone), datetime(2026, 3, 29, 3, 0, 0, 1, tzinfo=zone)],
        [datetime(1969, 12, 31, 23, 59, 59, 1, tzinfo=timezone(timedelta(hours=-9, minutes=-30)))],
        [datetime(2026, 3, 1, 10, 0, 0, 7)],  # naive
        ["2026-03-01 10:00:00.25", "2026-03-01T10:00:00+02:00"],
        [pd.Timestamp("2026-03-01 10:00:00.000000001", tz="UTC")],  # nanoseconds
        [],
    ]
    for values in forms:
        expected = pd.to_datetime(values, utc=True, format="ISO8601").as_unit("ns")
        assert _utc_times(values).equals(expected), values
        assert str(_utc_times(values).dtype) == "datetime64[ns, UTC]"
    with pytest.raises(pd.errors.OutOfBoundsDatetime):  # as pandas: never a time wrapped round
        _utc_times([datetime(2500, 1, 1, tzinfo=UTC)])


def test_customer_ids_are_pseudonymised_and_queues_redacted(store: ContactStore) -> None:
    """A customer id is often an e-mail address or a phone number: the store keeps a keyed hash of it."""
    secret = "jane.doe@example.com"
    first = contact("C1", customer_id=secret, queue="vip jane.doe@example.com")
    later = contact("C2", customer_id=secret, opened_hours=30)
    rows = validate(frame(first, later)).contacts
    store.load_frame(rows.head(1))
    store.save(rows.tail(1), {"C2": answer("C2")}, "1")
    with store.engine.connect() as db:
        dumped = " ".join(str(row) for row in db.exec_driver_sql("SELECT * FROM contacts"))
    assert "jane" not in dumped and "[EMAIL]" in dumped
    kept = store.all_contacts()
    assert set(kept["customer_id"]) == {store.pseudonym(secret)}
    # The history a scorer asks for by the raw id comes back under that id (the features link on it).
    history = store.customers_history(rows.tail(1))
    assert set(history.customer_id) == {secret} and len(history) == 2


def test_nul_characters_in_text_do_not_fail_the_insert(store: ContactStore) -> None:
    """PostgreSQL refuses NUL in text: the whole insert failed (a 500 to the caller)."""
    rows = validate(frame(contact("C1", transcript="a\x00b", queue="q\x00"))).contacts
    assert store.save(rows, {"C1": answer("C1")}, "1") == {"C1"}
    store.load_frame(validate(frame(contact("C2", transcript="\x00"))).contacts)
    kept = store.all_contacts().set_index("contact_id")
    assert kept.loc["C1", "transcript"] == "ab" and kept.loc["C1", "queue"] == "q"


def test_a_store_with_raw_customer_ids_is_pseudonymised_once(tmp_path: Path) -> None:
    from predictor.contacts.store import contacts_table, metadata

    url = f"sqlite:///{tmp_path / 'old.db'}"
    rows = validate(frame(contact("C1", customer_id="U1"), contact("C2", customer_id="U1", opened_hours=5))).contacts
    old = ContactStore(url)
    old.load_frame(rows)
    # As an earlier version left it: raw ids and no record of pseudonyms.
    with old.engine.begin() as db:
        db.execute(contacts_table.update().values(customer_id="U1"))
        db.execute(metadata.tables["store_meta"].delete().where(metadata.tables["store_meta"].c.name == "customer_ids"))
    reopened = ContactStore(url)
    assert set(reopened.all_contacts()["customer_id"]) == {reopened.pseudonym("U1")}
    again = ContactStore(url)  # once: a second opening rewrites nothing
    assert set(again.all_contacts()["customer_id"]) == {reopened.pseudonym("U1")}
    assert len(again.customers_history(rows.tail(1))) == 2


def test_another_pseudonym_key_is_refused(tmp_path: Path) -> None:
    from predictor.contacts.store import PseudonymKeyError

    url = f"sqlite:///{tmp_path / 'store.db'}"
    keyed = ContactStore(url, pseudonym_key="k1")
    assert ContactStore(url, pseudonym_key="k1").pseudonym("U1") == keyed.pseudonym("U1")
    with pytest.raises(PseudonymKeyError, match="PSEUDONYM_KEY"):
        ContactStore(url, pseudonym_key="k2")


def test_experiment_arms_and_follow_ups_round_trip(store: ContactStore) -> None:
    """What the hold-out stores with a contact, and the follow-ups reported back (on PostgreSQL too)."""
    rows = validate(frame(contact("C1", "U1"), contact("C2", "U1", opened_hours=30), contact("C3", "U2"))).contacts
    send_by = (rows["closed_at"].iloc[0] + pd.Timedelta(hours=4)).to_pydatetime()
    counted = {"C1": Experimented("exp-1", "treated", send_by), "C3": Experimented("exp-1", "held_out", send_by)}
    answers = {c: {**answer(c), "risk_band": "high", "follow_up": {"act": c == "C1"}} for c in ("C1", "C2", "C3")}
    store.save(rows, answers, "1", experiments=counted)
    scored = store.scored().set_index("contact_id")
    assert scored.loc["C1", "arm"] == "treated" and scored.loc["C3", "arm"] == "held_out"
    assert pd.isna(scored.loc["C2", "arm"]) and bool(scored.loc["C1", "act"]) and not bool(scored.loc["C3", "act"])
    assert scored.loc["C1", "send_by"] == pd.Timestamp(send_by)
    found = store.experiment_contacts(["U1", "U2", "U9"], rows["closed_at"].min(), rows["closed_at"].max())
    assert {k: [cid for cid, _, _ in v] for k, v in found.items()} == {"U1": ["C1"], "U2": ["C3"]}

    sent = (rows["closed_at"].iloc[0] + pd.Timedelta(hours=1)).to_pydatetime()
    reports = [FollowUpRecord("C1", sent, "chat", "t"), FollowUpRecord("C1", sent, "chat", "t"),
               FollowUpRecord("C1", sent, "email", "t"), FollowUpRecord("C9", sent, "chat", ""),
               FollowUpRecord("C2", rows["opened_at"].iloc[0].to_pydatetime(), "chat", "")]  # fmt: skip
    statuses = [status for status, _ in store.record_follow_ups(reports)]
    assert statuses == ["recorded", "replayed", "conflict", "unknown", "early"]
    kept = store.follow_ups()
    assert list(kept["contact_id"]) == ["C1"] and kept["sent_at"].iloc[0] == pd.Timestamp(sent)


def test_the_same_contact_twice_in_one_save_keeps_the_first(store: ContactStore) -> None:
    rows = validate(frame(contact("C1"), contact("C2", opened_hours=1))).contacts
    twice = pd.concat([rows, rows.head(1)], ignore_index=True)
    assert store.save(twice, {"C1": answer("C1"), "C2": answer("C2")}, "3", hashes=["a", "b", "c"]) == {"C1", "C2"}
    assert store.stored(["C1"])["C1"].content_hash == "a"


def _open_at_once(url: str, barrier: Any) -> None:
    barrier.wait()
    ContactStore(url)


def test_processes_opening_a_new_store_at_once_all_open_it(tmp_path: Path) -> None:
    """Dask workers open a new store together: each may find a table or index made by another between its
    check and its create; one retry was not enough (seen once in the cluster test)."""
    import multiprocessing

    context = multiprocessing.get_context("spawn")
    for attempt in range(2):
        url = f"sqlite:///{tmp_path / f'new{attempt}.db'}"
        barrier = context.Barrier(6)
        workers = [context.Process(target=_open_at_once, args=(url, barrier)) for _ in range(6)]
        for worker in workers:
            worker.start()
        for worker in workers:
            worker.join(120)
        assert [worker.exitcode for worker in workers] == [0] * 6


def test_a_response_given_as_json_text_is_stored_as_sent(store: ContactStore) -> None:
    """A scorer hands its answers over serialised (pydantic's JSON: cheaper than a dict through json.dumps)."""
    rows = validate(frame(contact("C1"), contact("C2", opened_hours=1))).contacts
    text = '{"contact_id":"C1","repeat_probability":0.25,"send_by":"2026-03-03T09:12:00Z"}'
    assert store.save(rows, {"C1": text, "C2": answer("C2")}, "1") == {"C1", "C2"}
    stored = store.stored(["C1", "C2"])
    assert stored["C1"].response == {"contact_id": "C1", "repeat_probability": 0.25, "send_by": "2026-03-03T09:12:00Z"}
    assert stored["C2"].response == answer("C2")


def test_a_service_store_copies_its_log_in_a_thread_not_in_its_commits(tmp_path: Path) -> None:
    """A commit that passed SQLite's 1,000 log pages copied them into the file (~10-30 ms of a request, one
    batch in three): a service's store never does in a commit; its thread copies the log, and stops."""
    import time

    from predictor.contacts.simulate import SimulatorConfig, simulate

    def autocheckpoint(s: ContactStore) -> int:
        with s.engine.connect() as db:
            return db.exec_driver_sql("PRAGMA wal_autocheckpoint").scalar_one()

    assert autocheckpoint(ContactStore(f"sqlite:///{tmp_path / 'cli.db'}")) == 1000  # others keep SQLite's way
    path = tmp_path / "service.db"
    store = ContactStore(f"sqlite:///{path}", checkpoints=False)
    assert autocheckpoint(store) == 0
    contacts = validate(simulate(SimulatorConfig(n_contacts=400, seed=2)).contacts).contacts
    store.load_frame(contacts)
    written = path.stat().st_size  # the rows are in the log, not yet in the file
    store.start_checkpoints(0.05)
    deadline = time.monotonic() + 10
    while path.stat().st_size == written and time.monotonic() < deadline:
        time.sleep(0.05)
    assert path.stat().st_size > written
    assert store._checkpoints is not None
    thread = store._checkpoints[0]
    store.stop_checkpoints()
    assert not thread.is_alive()
    assert store.count() == len(contacts)


@pytest.mark.parametrize(
    ("url", "file"),
    [
        ("sqlite:///store.db", "store.db"),
        ("sqlite:////abs/store.db", "/abs/store.db"),
        ("sqlite+pysqlite:///store.db", "store.db"),
        ("sqlite+pysqlite:////abs/store.db?timeout=30", "/abs/store.db"),
        ("sqlite://", None),
        ("sqlite:///:memory:", None),
        ("sqlite+pysqlite:///:memory:", None),
        ("postgresql://user@host/db", None),
        ("postgresql+psycopg:///db", None),
    ],
)
def test_a_sqlite_url_names_its_file_whatever_its_driver(url: str, file: str | None, tmp_path: Path) -> None:
    """A URL naming SQLite's driver was read as a store in memory: no helpers, no locks across processes, and
    (since its commits leave the log to a thread) no checkpoints. Made absolute under a home, its driver and
    query stay."""
    from predictor.config import sqlite_file, under
    from predictor.contacts.store import lock_path_of

    assert sqlite_file(url) == (None if file is None else Path(file))
    if file is None:
        assert under(tmp_path, url) == url
        return
    assert lock_path_of(url) == Path(file).with_name(Path(file).name + ".locks")
    made = under(tmp_path, url)
    assert sqlite_file(made) == (Path(file) if Path(file).is_absolute() else tmp_path / file)
    _, mark, query = url.partition("?")
    assert made.split(":///")[0] == url.split(":///")[0] and made.endswith(mark + query)


def test_a_service_store_named_with_its_driver_gets_its_checkpoints(tmp_path: Path) -> None:
    store = ContactStore(f"sqlite+pysqlite:///{tmp_path / 's.db'}", checkpoints=False)
    store.start_checkpoints(60)
    assert store._checkpoints is not None
    store.stop_checkpoints()
