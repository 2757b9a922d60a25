"""Run the real BentoML service in a child process on a loopback port (demo, tests, benchmarks)."""

from __future__ import annotations

import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path

import httpx
from pydantic import SecretStr

# The checkout that holds ``service/service.py`` (the BentoML service is served from there).
ROOT = next((p for p in Path(__file__).resolve().parents if (p / "service" / "service.py").exists()), Path.cwd())


LOOPBACK_HOSTS = frozenset({"127.0.0.1", "localhost", "::1"})


def exposure_problem(host: str, token: str | None, allow_open: bool) -> str | None:
    """Why the service must not start on ``host`` (None: it may): no token on an address others can reach."""
    if token or host in LOOPBACK_HOSTS or allow_open:
        return None
    return (
        f"refusing to serve on {host} without a token: anyone who can reach it could score and fill the contact "
        "store. Set PREDICTOR_API_TOKEN, bind to 127.0.0.1, or set PREDICTOR_SERVICE__ALLOW_OPEN=true"
    )


def auth_notice(token: SecretStr | None) -> str | None:
    """What to say at start about authentication (None: a token is set)."""
    if token is None:
        return "no PREDICTOR_API_TOKEN: the scoring routes accept every caller (fine on 127.0.0.1 only)"
    if not token.get_secret_value():
        return "PREDICTOR_API_TOKEN is set but empty, which disables authentication: the routes accept every caller"
    return None


@dataclass
class RunningService:
    base_url: str
    process: subprocess.Popen
    log_path: Path


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


@contextmanager
def running_service(
    env: dict[str, str], log_path: Path, port: int | None = None, ready_timeout: float = 240.0
) -> Iterator[RunningService]:
    """Start `bentoml serve service.service:Predictor`, wait for /readyz, stop it on exit."""
    port = port or free_port()
    # The service runs from the checkout; its home stays the caller's (relative paths resolve there).
    home = env.get("PREDICTOR_HOME") or os.environ.get("PREDICTOR_HOME") or str(Path.cwd())
    # BentoML's own files (its home defaults to ~/bentoml) stay under the project home too.
    bentoml_home = os.environ.get("BENTOML_HOME") or str(Path(home) / "models" / "bentoml")
    full_env = {**os.environ, "BENTOML_DO_NOT_TRACK": "true", "HF_HUB_OFFLINE": "1", "PREDICTOR_HOME": home,
                "BENTOML_HOME": bentoml_home, **env}  # fmt: skip
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with log_path.open("w") as log:
        process = subprocess.Popen(
            [sys.executable, "-m", "bentoml", "serve", "service.service:Predictor", "--host", "127.0.0.1",
             "--port", str(port)],
            cwd=ROOT, env=full_env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True,
        )  # fmt: skip
        base = f"http://127.0.0.1:{port}"
        try:
            wait_ready(base, process, log_path, ready_timeout)
            yield RunningService(base, process, log_path)
        finally:
            stop(process)


def wait_ready(base: str, process: subprocess.Popen, log_path: Path, timeout: float) -> None:
    deadline = time.monotonic() + timeout
    while True:
        if process.poll() is not None:
            raise RuntimeError(f"the service exited with {process.returncode}:\n{log_path.read_text()[-4000:]}")
        try:
            if httpx.get(f"{base}/readyz", timeout=2).status_code == 200:
                return
        except httpx.HTTPError:
            pass
        if time.monotonic() > deadline:
            raise TimeoutError(f"service not ready after {timeout:.0f} s; see {log_path}")
        time.sleep(0.1)


def kill(process: subprocess.Popen) -> None:
    """SIGKILL the server and all its workers at once: a crash, not a shutdown."""
    import psutil

    try:
        tree = [psutil.Process(process.pid), *psutil.Process(process.pid).children(recursive=True)]
    except psutil.NoSuchProcess:
        tree = []
    for member in tree:  # workers may sit in process groups of their own: kill each one
        with contextlib.suppress(psutil.NoSuchProcess):
            member.send_signal(signal.SIGKILL)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(process.pid, signal.SIGKILL)
    process.wait()


def stop(process: subprocess.Popen) -> None:
    if process.poll() is None:
        process.terminate()
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            kill(process)
