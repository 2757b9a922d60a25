"""Per-key locks for scoring, shared by the processes scoring into one store.

A customer's contacts are scored one after the other (the second sees the first in its history), and one
contact id is decided once (replay or conflict). A batch may be scored by several processes at once
(``serving.split``), and a /score runs beside them: so a key is locked in this process (its threads) and, on a
lock file beside the store, against the other processes of this host.
"""

from __future__ import annotations

import errno
import fcntl
import hashlib
import os
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from predictor.serving.api import OutOfTime

# A key's byte in the lock file: 62 bits of its hash (POSIX offsets are signed 64-bit). Two keys sharing a
# byte only wait for each other; at a few thousand keys held at once that is ~1 in 10^12.
SLOT_BITS = 62
# Another process holding a key is polled (a POSIX lock cannot wait with a timeout): from this pause,
# doubling up to the longest. Such a wait is rare (the same customer in two processes at once).
POLL_FIRST_S = 0.0002
POLL_LONGEST_S = 0.005


_BY_FILE: dict[tuple[int, Path], KeyLocks] = {}  # (process, lock file) -> its locks
_BY_FILE_GUARD = threading.Lock()


def locks_for(path: Path | None) -> KeyLocks:
    """This process's locks on a store's lock file: one object per file and process. A second one would take
    the same bytes as this process (POSIX locks are the process's, not the thread's), so it would not keep two
    threads apart, and its unlocking a byte would drop the other's hold. None: locks of this process alone."""
    if path is None:
        return KeyLocks()
    with _BY_FILE_GUARD:
        key = (os.getpid(), path.resolve())
        if key not in _BY_FILE:
            _BY_FILE[key] = KeyLocks(key[1])
        return _BY_FILE[key]


def slot(key: str) -> int:
    """A key's byte in the lock file, the same in every process (Python's ``hash`` is salted per process)."""
    return int.from_bytes(hashlib.blake2b(key.encode(), digest_size=8).digest(), "big") >> (64 - SLOT_BITS)


class KeyLocks:
    """A lock per key (a contact id, a customer id), held only while in use: callers scoring other customers
    never wait for each other.

    Keys are taken in the order of their slots, in every process alike, so two callers never deadlock; a
    caller gives up when its deadline passes. ``path``: the lock file shared with the other processes scoring
    into the same store (None: this process is the only one)."""

    def __init__(self, path: Path | None = None) -> None:
        self._guard = threading.Lock()
        self._locks: dict[int, tuple[threading.Lock, list[int]]] = {}  # slot -> (lock, [users])
        self.path = path
        self._file: int | None = None
        if path is not None:
            path.parent.mkdir(parents=True, exist_ok=True)
            # Open once for the life of the process: closing any descriptor of the file would drop every POSIX
            # lock this process holds on it.
            self._file = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)

    @contextmanager
    def holding(self, keys: list[str], deadline: float | None, budget_s: float) -> Iterator[None]:
        slots = sorted({slot(key) for key in keys})
        with self._guard:
            entries = [(s, self._locks.setdefault(s, (threading.Lock(), [0]))) for s in slots]
            for _, (_, users) in entries:
                users[0] += 1
        taken: list[tuple[int, threading.Lock, bool]] = []  # (slot, lock, locked in the file too)
        try:
            for s, (lock, _) in entries:
                wait = -1 if deadline is None else max(0.0, deadline - time.monotonic())
                if not lock.acquire(timeout=wait):
                    raise OutOfTime(budget_s)
                taken.append((s, lock, False))
                if self._file is not None:
                    self._lock_file(s, deadline, budget_s)
                    taken[-1] = (s, lock, True)
            yield
        finally:
            for s, lock, in_file in reversed(taken):
                if in_file:
                    fcntl.lockf(self._file, fcntl.LOCK_UN, 1, s)
                lock.release()
            with self._guard:
                for s in slots:
                    lock, users = self._locks[s]
                    users[0] -= 1
                    if users[0] == 0:
                        del self._locks[s]

    def _lock_file(self, offset: int, deadline: float | None, budget_s: float) -> None:
        """This process's hold on the slot's byte (its threads are kept apart by the slot's own lock)."""
        pause = POLL_FIRST_S
        while True:
            try:
                fcntl.lockf(self._file, fcntl.LOCK_EX | fcntl.LOCK_NB, 1, offset)
                return
            except OSError as exc:
                if exc.errno not in (errno.EACCES, errno.EAGAIN):
                    raise  # not a lock held elsewhere: waiting would not help
            if deadline is not None and time.monotonic() + pause > deadline:
                raise OutOfTime(budget_s)
            time.sleep(pause)
            pause = min(pause * 2, POLL_LONGEST_S)
