"""A large batch scored by several processes at once: the worker and helpers it starts.

One worker process scores ~1,000 contacts/s here, and threads cannot add a core: most of a contact's work
holds Python's GIL (two batches on two threads ran 1.03-1.13x one). A helper is a whole scorer in a process of
its own (the worker's model, plan and settings, sent at start; the same store), given a share of a batch.

Contacts sharing a customer or a contact id go to one share, in their order: a customer's contacts are still
scored one after the other, and one contact id is decided once. Across processes, the keys are locked on the
store's lock file (``serving.locks``), so a /score beside a batch, or two workers, keep the same rules. A share
is scored as a call of its own at the same moment would be: a contact sees another share's contacts once they
are stored, which for contacts closing now (a ticketing system's close-time batch) changes nothing, an agent's
repeat windows counting only once they have ended.

    python -m predictor.serving.split READ_FD WRITE_FD     # started by the worker, never by hand
"""

from __future__ import annotations

import contextlib
import logging
import os
import pickle
import signal
import stat
import subprocess
import sys
import threading
import time
from multiprocessing.connection import Connection
from typing import TYPE_CHECKING, Any

from predictor.serving.api import ContactIn

if TYPE_CHECKING:
    from predictor.serving.scorer import Outcome, Scorer

log = logging.getLogger(__name__)
# A helper that has not answered this long after its share's deadline is taken for hung and replaced (it
# checks the deadline between chunks: one chunk of work past it at most).
HUNG_AFTER_S = 60.0
# A lost helper is replaced no sooner than this after it was started.
RESTART_AFTER_S = 30.0
# A helper whose pipe was closed has this long to stop by itself (mid-share it finishes a chunk first).
STOP_WAIT_S = 1.0


def share_cores(processes: int) -> int:
    """Give this process its part of the cores when ``processes`` score at once (the worker and its helpers):
    LightGBM's larger predictions and BLAS then use that many threads, not every core each (spinning OpenMP
    and BLAS threads of two processes on two cores cost a split batch ~15%). Returns the threads."""
    from threadpoolctl import threadpool_limits

    from predictor.model.fitted import set_predict_threads

    threads = max(1, len(os.sched_getaffinity(0)) // processes)
    set_predict_threads(threads)
    threadpool_limits(threads, user_api="blas")  # process-wide for OpenBLAS (LightGBM's OpenMP is per call)
    return threads


class HelperLost(RuntimeError):
    """The helper process died, hung or failed on a share: the worker scores that share itself."""


def shares(contacts: list[ContactIn], n: int) -> list[list[int]]:
    """Positions of ``contacts`` in ``n`` shares of about equal size, each share in the contacts' order;
    contacts sharing a customer or a contact id (and so, in a chain, any linked by them) in one share."""
    parent = list(range(len(contacts)))

    def root(i: int) -> int:
        while parent[i] != i:
            parent[i] = parent[parent[i]]
            i = parent[i]
        return i

    first: dict[tuple[str, str], int] = {}
    for i, contact in enumerate(contacts):
        for key in (("customer", contact.customer_id), ("contact", contact.contact_id)):
            a, b = root(i), root(first.setdefault(key, i))
            if a != b:
                parent[max(a, b)] = min(a, b)
    groups: dict[int, list[int]] = {}
    for i in range(len(contacts)):
        groups.setdefault(root(i), []).append(i)
    out: list[list[int]] = [[] for _ in range(n)]
    # The largest groups first, each onto the share with the fewest so far (ties: the earlier share).
    for group in sorted(groups.values(), key=len, reverse=True):
        min(out, key=len).extend(group)
    return [sorted(share) for share in out]


class Helper:
    """One helper process and the worker's end of its two pipes. Used by one batch at a time (``take``)."""

    def __init__(self, process: subprocess.Popen[bytes], inbox: Connection, outbox: Connection) -> None:
        self.process = process
        self._to = outbox  # requests to the helper
        self._from = inbox  # its answers
        self._busy = threading.Lock()
        self._ready = False  # set once by the thread awaiting the helper's first word (``_await_ready``)
        self.lost = False
        self.started = time.monotonic()
        self.shares_scored = 0
        self.closed = False

    @classmethod
    def spawn(cls) -> Helper:
        """Start a helper process: it imports what scoring needs (most of its start) while this process loads
        the model; ``load`` then sends it what it scores with, and ``ready`` says when it has loaded."""
        to_read, to_write = os.pipe()
        from_read, from_write = os.pipe()
        process = subprocess.Popen(
            [sys.executable, "-m", __name__, str(to_read), str(from_write)],
            pass_fds=(to_read, from_write),
            # Out of the terminal's process group: a Ctrl-C stops the worker, whose pipe closing stops this.
            start_new_session=True,
        )
        os.close(to_read)
        os.close(from_write)
        return cls(process, Connection(from_read, writable=False), Connection(to_write, readable=False))

    def load(self, scorer: Scorer, processes: int) -> None:
        """Send the helper the scorer's model, plan, settings and store, and how many processes share the cores
        (without waiting for it to read)."""
        # A worker scoring a model's lean copy runs without scikit-learn, and so does its helper; one scoring a
        # full bundle (tests, a model without a lean copy) needs LightGBM's estimator classes before unpickling.
        whole = "sklearn" in sys.modules
        parts = (scorer.model, scorer.model_version, scorer.plan, scorer.settings, scorer.store.url,
                 scorer.store.pseudonym_key, processes)  # fmt: skip
        # ~3 MB through a 64 KB pipe: the send waits for the helper to read, which it does once imported.
        threading.Thread(target=self._send_parts, args=(whole, parts), name="helper-load", daemon=True).start()
        threading.Thread(target=self._await_ready, name="helper-ready", daemon=True).start()

    def _send_parts(self, whole: bool, parts: tuple[Any, ...]) -> None:
        with contextlib.suppress(OSError):  # it died first: ``ready`` sees it
            self._to.send(whole)
            self._to.send(parts)

    def _await_ready(self) -> None:
        """Wait for the helper's first word (on a thread of its own: the log says when it is ready)."""
        try:
            message = self._from.recv()
        except (EOFError, OSError):
            if not self.closed:  # not stopped by this process on purpose
                self._lose(f"batch helper process {self.process.pid} stopped while loading")
            return
        log.info("batch helper process %s ready in %.1f s", message[1], time.monotonic() - self.started)
        self._ready = True

    def ready(self) -> bool:
        """Whether the helper has loaded (without waiting); False for good once it is lost."""
        return self._ready and not self.lost

    def take(self) -> bool:
        """Reserve the helper for one batch (False: not ready, lost, or busy with another batch)."""
        if not self.ready() or not self._busy.acquire(blocking=False):
            return False
        if self.lost:
            self._busy.release()
            return False
        return True

    def score(self, contacts: list[ContactIn], deadline: float | None) -> None:
        """Send a share (the helper must be taken); ``result`` waits for it. The deadline is ``time.monotonic``'s:
        the system's clock since boot, the same in every process."""
        try:
            self._to.send((contacts, deadline))
        except OSError:
            self._lose(f"batch helper process {self.process.pid} is gone")

    def result(self, deadline: float | None) -> list[Outcome]:
        """The share's outcomes, in its order; gives the helper back. Raises ``HelperLost``."""
        try:
            if self.lost:
                raise HelperLost("the helper was lost before its share was sent")
            wait = None if deadline is None else max(0.0, deadline - time.monotonic()) + HUNG_AFTER_S
            try:
                if not self._from.poll(wait):
                    self._lose(f"batch helper process {self.process.pid} did not answer in time: stopped")
                    raise HelperLost("the helper did not answer in time")
                status, payload = self._from.recv()
            except (EOFError, OSError) as exc:
                self._lose(f"batch helper process {self.process.pid} stopped")
                raise HelperLost("the helper stopped") from exc
            if status != "scored":
                raise HelperLost(f"the helper failed on its share: {payload}")
            self.shares_scored += 1
            return payload
        finally:
            self._busy.release()

    def _lose(self, why: str) -> None:
        was_lost, self.lost = self.lost, True
        self.close()
        if was_lost:
            return
        code = self.process.returncode
        if code in (-signal.SIGTERM, -signal.SIGINT):
            # Asked to stop (a server stopping signals its workers' children too): not a fault.
            log.info("%s (%s)", why, signal.Signals(-code).name)
        else:
            status = f"signal {signal.Signals(-code).name}" if code < 0 else f"exit {code}"
            log.error("%s (%s); its batches' shares are scored by the worker until a new one is ready", why, status)

    def close(self) -> None:
        """Stop the helper: its pipe closes, so it stops by itself; killed if it has not within a second."""
        self.closed = True
        for end in (self._to, self._from):
            with contextlib.suppress(OSError):
                end.close()
        try:
            self.process.wait(timeout=STOP_WAIT_S)
        except subprocess.TimeoutExpired:
            self.process.kill()
            self.process.wait()


class NotFromAWorker(RuntimeError):
    """The helper's pipe ends do not carry a worker's start: it was run by hand."""


def serve(read_fd: int, write_fd: int) -> None:
    """The helper's side: load, say ready, score shares until the worker's pipe closes. Raises
    ``NotFromAWorker`` when what it reads first is not a worker's start."""
    from predictor import logs
    from predictor.model.lean import lightgbm_alone, lightgbm_whole

    lightgbm_alone()  # like the worker: the model's lean copy scores without scikit-learn
    logs.setup(plain=True)
    from predictor.contacts.store import ContactStore
    from predictor.serving.scorer import Scorer

    inbox, outbox = Connection(read_fd, writable=False), Connection(write_fd, readable=False)
    try:
        if inbox.recv():
            lightgbm_whole()
        model, version, plan, settings, url, key, processes = inbox.recv()
    except EOFError:
        return  # the worker stopped before sending it
    except (OSError, pickle.UnpicklingError, ValueError, TypeError) as exc:
        raise NotFromAWorker from exc  # not a readable pipe, or not what a worker sends
    share_cores(processes)  # as many as the worker counted
    # Its commits leave the write-ahead log to the worker's checkpoints, as the worker's own do.
    scorer = Scorer(model, version, ContactStore(url, pseudonym_key=key, checkpoints=False), plan, settings)
    scorer.warm_up()
    if not _tell(outbox, ("ready", os.getpid())):
        return
    while True:
        try:
            contacts, deadline = inbox.recv()
        except EOFError:
            return  # the worker stopped
        try:
            answer: tuple[str, Any] = ("scored", scorer.score_share(contacts, deadline))
        except Exception as exc:  # reported to the worker, which scores the share itself
            log.exception("batch helper failed on a share of %d contacts", len(contacts))
            answer = ("failed", f"{type(exc).__name__}: {exc}")
        if not _tell(outbox, answer):
            return  # what was stored of the share stays: a retry replays it


def _tell(outbox: Connection, message: tuple[str, Any]) -> bool:
    """Send the worker a message; False when it has stopped (its end of the pipe closed while this helper
    loaded or scored): the helper then ends quietly, no broken-pipe traceback in the service's log."""
    try:
        outbox.send(message)
    except OSError:
        return False
    return True


def main(argv: list[str]) -> int:
    """The helper's command line: the two pipe ends its worker passed it."""
    try:
        read_fd, write_fd = (int(arg) for arg in argv)
        pipes = all(stat.S_ISFIFO(os.fstat(fd).st_mode) for fd in (read_fd, write_fd))
    except (ValueError, OSError):
        pipes = False
    try:
        if not pipes:
            raise NotFromAWorker
        serve(read_fd, write_fd)
    except NotFromAWorker:
        print(
            "error: python -m predictor.serving.split is started by the scoring service's worker with its two pipe "
            "ends (READ_FD WRITE_FD), not by hand: set PREDICTOR_SERVICE__BATCH_PROCESSES instead",
            file=sys.stderr,
        )
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
