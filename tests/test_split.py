"""A batch shared with helper processes: the shares, the locks across processes, and the helper itself."""

from __future__ import annotations

import logging
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from types import SimpleNamespace

import pandas as pd
import pytest

from predictor.contacts.store import ContactStore
from predictor.reports.plan import follow_up_plan
from predictor.serving import split
from predictor.serving.api import ContactIn, OutOfTime, contact_json
from predictor.serving.locks import KeyLocks, locks_for
from predictor.serving.scorer import Scorer
from predictor.serving.split import Helper, shares


def _contacts(*pairs: tuple[str, str]) -> list[SimpleNamespace]:
    return [SimpleNamespace(contact_id=contact_id, customer_id=customer) for contact_id, customer in pairs]


def test_shares_keep_a_customer_and_a_contact_id_together_in_order() -> None:
    contacts = _contacts(
        ("a1", "U1"), ("b1", "U2"), ("a2", "U1"), ("c1", "U3"), ("dup", "U4"), ("d1", "U5"),
        ("dup", "U6"), ("e1", "U6"), ("f1", "U7"), ("a3", "U1"),
    )  # fmt: skip
    parts = shares(contacts, 2)  # type: ignore[arg-type]  # only the two ids are read
    assert sorted(i for part in parts for i in part) == list(range(len(contacts)))
    assert all(part == sorted(part) for part in parts)  # each share in the batch's order
    share_of = {i: k for k, part in enumerate(parts) for i in part}
    assert len({share_of[i] for i in (0, 2, 9)}) == 1  # U1's three contacts
    # The id sent twice (two customers) and, through U6, that customer's other contact.
    assert len({share_of[i] for i in (4, 6, 7)}) == 1
    assert abs(len(parts[0]) - len(parts[1])) <= 3  # the largest group: U1's three
    # Three shares for three contacts: the two sharing an id still go together.
    assert sorted(shares(_contacts(("dup", "U1"), ("x", "U2"), ("dup", "U3")), 3)) == [[], [0, 2], [1]]  # type: ignore[arg-type]
    assert shares(contacts, 1) == [list(range(len(contacts)))]  # type: ignore[arg-type]
    assert shares([], 3) == [[], [], []]


@pytest.mark.parametrize("argv", [[], ["x", "y"], ["1"], ["9997", "9998"]])
def test_the_helper_started_by_hand_says_so(argv: list[str], capsys: pytest.CaptureFixture[str]) -> None:
    assert split.main(argv) == 2
    err = capsys.readouterr().err
    assert err.startswith("error: ") and err.count("\n") == 1 and "BATCH_PROCESSES" in err


def test_the_helper_given_pipes_without_a_worker_says_so() -> None:
    """Pipe ends that carry something else than a worker's start (it was a traceback)."""
    import os
    from multiprocessing.connection import Connection

    to_read, to_write = os.pipe()
    from_read, from_write = os.pipe()
    Connection(to_write, readable=False).send_bytes(b"not what a worker sends")
    done = subprocess.run(
        [sys.executable, "-m", "predictor.serving.split", str(to_read), str(from_write)],
        pass_fds=(to_read, from_write), capture_output=True, text=True, timeout=120,
    )  # fmt: skip
    for fd in (to_read, from_read, from_write):
        os.close(fd)
    assert done.returncode == 2 and done.stderr.startswith("error: ") and done.stderr.count("\n") == 1


HOLDER = """
import sys
from pathlib import Path
from predictor.serving.locks import KeyLocks, locks_for
locks = KeyLocks(Path(sys.argv[1]))
with locks.holding([k.replace("|", "\\0") for k in sys.argv[2:]], deadline=None, budget_s=1):
    print("held", flush=True)
    sys.stdin.readline()
"""


def _holder(path: Path, *keys: str) -> subprocess.Popen[str]:
    """Another process holding ``keys`` until told to let go (a line on its stdin)."""
    process = subprocess.Popen(
        [sys.executable, "-c", HOLDER, str(path), *(k.replace("\0", "|") for k in keys)],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert process.stdout is not None and process.stdout.readline().strip() == "held"
    return process


def test_a_key_held_by_another_process_waits_and_gives_up_at_the_deadline(tmp_path: Path) -> None:
    """A helper scoring a customer's contact and a /score of the same customer in the worker: one waits."""
    path = tmp_path / "store.db.locks"
    other = _holder(path, "customer\0U1", "contact\0c1")
    locks = KeyLocks(path)
    with pytest.raises(OutOfTime), locks.holding(["customer\0U1"], time.monotonic() + 0.2, 0.2):
        pass
    with locks.holding(["customer\0U2", "contact\0c2"], time.monotonic() + 0.2, 0.2):
        pass  # other keys: no wait
    assert other.stdin is not None
    other.stdin.write("\n")
    other.stdin.flush()  # the other process lets go...
    with locks.holding(["contact\0c1", "customer\0U1"], time.monotonic() + 5, 5):
        pass  # ...and this one takes both
    assert other.wait(5) == 0
    assert not locks._locks


def test_the_scorers_of_one_process_share_its_locks_on_a_store(tmp_path: Path) -> None:
    """Two lock objects of one process on one file would both "hold" a byte (POSIX locks are the process's)."""
    path = tmp_path / "store.db.locks"
    first, second = locks_for(path), locks_for(tmp_path / "." / "store.db.locks")
    assert first is second and locks_for(None) is not locks_for(None)
    with (
        first.holding(["customer\0U1"], None, 1),
        pytest.raises(OutOfTime),
        second.holding(["customer\0U1"], time.monotonic() + 0.1, 0.1),
    ):
        pass


def test_a_killed_holder_leaves_no_key_locked(tmp_path: Path) -> None:
    path = tmp_path / "store.db.locks"
    other = _holder(path, "customer\0U1")
    other.send_signal(signal.SIGKILL)
    other.wait(5)
    started = time.monotonic()
    with KeyLocks(path).holding(["customer\0U1"], time.monotonic() + 2, 2):
        pass
    assert time.monotonic() - started < 0.5


# -- the helper process (needs the trained model) ----------------------------------------------------------
BATCH = 48


@pytest.fixture(autouse=True)
def _threads_as_they_were() -> Iterator[None]:
    """A scorer given helpers limits this process's prediction and BLAS threads (``share_cores``): the tests
    after these get them back."""
    from threadpoolctl import threadpool_info, threadpool_limits

    from predictor.model import fitted

    before = fitted._PREDICT_THREADS
    blas = [info["num_threads"] for info in threadpool_info() if info["user_api"] == "blas"]
    yield
    fitted.set_predict_threads(before)
    if blas:
        threadpool_limits(max(blas), user_api="blas")


def _close_time_batch(trained) -> tuple[pd.DataFrame, list[ContactIn]]:
    """The history before them, and contacts closing within a minute of each other, as a ticketing system's
    batch at close time sends them (no repeat window ends among them: a share sees the others' contacts
    only once stored, like a call of its own)."""
    _, contacts = trained
    ordered = contacts.sort_values("closed_at").reset_index(drop=True)
    history, batch = ordered.iloc[:1200], ordered.iloc[1200 : 1200 + BATCH].copy()
    start = history["closed_at"].max() + pd.Timedelta(hours=1)
    duration = batch["closed_at"] - batch["opened_at"]
    batch["closed_at"] = [start + pd.Timedelta(seconds=k) for k in range(len(batch))]
    batch["opened_at"] = batch["closed_at"] - duration
    bodies = [ContactIn.model_validate({**contact_json(r), "contact_id": f"split-{k}"})
              for k, r in enumerate(batch.to_dict("records"))]  # fmt: skip
    return history, bodies


def _scorer(trained, settings, url: str, history: pd.DataFrame) -> Scorer:
    result, _ = trained
    service = settings.service.model_copy(update={"store_url": url, "split_min": 8})
    store = ContactStore(url)
    store.load_frame(history)
    scorer = Scorer(result.model, "1", store, follow_up_plan(service), settings.model_copy(update={"service": service}))
    scorer.warm_up()
    return scorer


def _wait_ready(helper: Helper) -> None:
    deadline = time.monotonic() + 120
    while not helper.ready():
        assert not helper.lost and time.monotonic() < deadline, "the helper did not load"
        time.sleep(0.05)


def _store_urls(kind: str, request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, str]:
    """Two empty stores of the kind: the batch scored by one process, and shared."""
    if kind == "sqlite":
        return f"sqlite:///{tmp_path / 'alone.db'}", f"sqlite:///{tmp_path / 'shared.db'}"
    from sqlalchemy import create_engine

    server = request.getfixturevalue("postgres_url")
    engine = create_engine(server, isolation_level="AUTOCOMMIT")
    with engine.connect() as db:
        for name in ("split_alone", "split_shared"):
            db.exec_driver_sql(f"DROP DATABASE IF EXISTS {name}")
            db.exec_driver_sql(f"CREATE DATABASE {name}")
    engine.dispose()
    base = server.rsplit("/", 1)[0]
    return f"{base}/split_alone", f"{base}/split_shared"


@pytest.mark.slow
@pytest.mark.parametrize("kind", ["sqlite", pytest.param("postgresql", marks=pytest.mark.postgres)])
def test_a_batch_shared_with_a_helper_gets_the_answers_of_one_process(
    kind: str, trained, settings, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    history, batch = _close_time_batch(trained)
    items = [c.model_dump(mode="json", exclude_none=True) for c in batch]
    alone_url, shared_url = _store_urls(kind, request, tmp_path)
    alone = _scorer(trained, settings, alone_url, history).score_batch(items)
    shared = _scorer(trained, settings, shared_url, history)
    helper = Helper.spawn()
    shared.attach([helper])
    try:
        _wait_ready(helper)
        out = shared.score_batch(items)
        assert helper.shares_scored == 1  # it did score a share
        assert out.scored == BATCH and out.model_dump() == alone.model_dump()
        assert shared.store.count() == len(history) + BATCH
        # A retry is replayed, whichever process answered first.
        again = shared.score_batch(items)
        assert again.scored == BATCH and all(item.result.replayed for item in again.results)
        assert helper.shares_scored == 2
    finally:
        shared.close()
    assert helper.process.poll() is not None  # stopped with its scorer


@pytest.mark.slow
def test_a_lost_helpers_share_is_scored_by_the_worker_and_the_helper_replaced(
    trained, settings, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    history, batch = _close_time_batch(trained)
    items = [c.model_dump(mode="json", exclude_none=True) for c in batch]
    scorer = _scorer(trained, settings, f"sqlite:///{tmp_path / 's.db'}", history)
    helper = Helper.spawn()
    scorer.attach([helper])
    try:
        _wait_ready(helper)
        helper.process.send_signal(signal.SIGKILL)
        helper.process.wait(5)
        with caplog.at_level(logging.WARNING):
            out = scorer.score_batch(items[:24])
        assert out.scored == 24 and scorer.store.count() == len(history) + 24
        assert helper.lost and "scoring a share" in caplog.text
        monkeypatch.setattr(split, "RESTART_AFTER_S", 0.0)
        monkeypatch.setattr("predictor.serving.scorer.RESTART_AFTER_S", 0.0)
        assert scorer.score_batch(items[24:36]).scored == 12  # the new one is loading: scored here
        replacement = scorer._helpers[0]
        assert replacement is not helper and not replacement.lost
        _wait_ready(replacement)
        assert scorer.score_batch(items[36:]).scored == 12
        assert replacement.shares_scored == 1
    finally:
        scorer.close()


@pytest.mark.slow
def test_a_helper_whose_worker_stops_mid_share_ends_quietly(trained, settings, tmp_path: Path) -> None:
    """The worker's end of the answer pipe closes while the helper scores a share (the worker died): the
    helper stored what it scored and ends, exit 0, without a broken-pipe traceback in the service's log."""
    import os
    from multiprocessing.connection import Connection

    history, batch = _close_time_batch(trained)
    scorer = _scorer(trained, settings, f"sqlite:///{tmp_path / 's.db'}", history)
    to_read, to_write = os.pipe()
    from_read, from_write = os.pipe()
    helper = subprocess.Popen(
        [sys.executable, "-m", "predictor.serving.split", str(to_read), str(from_write)],
        pass_fds=(to_read, from_write), stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    os.close(to_read)
    os.close(from_write)
    to_helper, from_helper = Connection(to_write, readable=False), Connection(from_read, writable=False)
    try:
        to_helper.send(True)  # the test's model is a full bundle: LightGBM's estimator classes first
        store = scorer.store
        to_helper.send((scorer.model, "1", scorer.plan, scorer.settings, store.url, store.pseudonym_key, 2))
        assert from_helper.poll(120) and from_helper.recv()[0] == "ready"
        to_helper.send((batch[:12], None))
        from_helper.close()  # the worker is gone before the share's answers
        deadline = time.monotonic() + 60
        while store.count() < len(history) + 12 and time.monotonic() < deadline:
            time.sleep(0.05)
        to_helper.close()
        _, errors = helper.communicate(timeout=60)
    finally:
        scorer.close()
        if helper.poll() is None:
            helper.kill()
    assert store.count() == len(history) + 12
    assert helper.returncode == 0 and "Traceback" not in errors, errors
