"""Shared fixtures: small generated logs and hand-built contacts."""

from __future__ import annotations

import os
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pandas as pd
import pytest

os.environ.setdefault("HF_HUB_OFFLINE", "1")
os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
os.environ.setdefault("BENTOML_DO_NOT_TRACK", "true")
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

from predictor.contacts.simulate import SimulatedLog, SimulatorConfig, simulate

T0 = pd.Timestamp("2026-03-02 09:00", tz="UTC")


def contact(
    contact_id: str,
    customer_id: str = "U1",
    opened_hours: float = 0.0,
    minutes: float = 10.0,
    issue: str = "billing_question",
    transfers: int = 0,
    channel: str = "chat",
    **extra: object,
) -> dict[str, object]:
    """One valid contact, opened ``opened_hours`` after T0, lasting ``minutes``."""
    opened = T0 + pd.Timedelta(hours=opened_hours)
    row: dict[str, object] = {
        "contact_id": contact_id,
        "customer_id": customer_id,
        "opened_at": opened,
        "closed_at": opened + pd.Timedelta(minutes=minutes),
        "channel": channel,
        "issue": issue,
        "transcript": "Customer: hi. Agent: all done.",
        "agent_id": "A1",
        "handle_seconds": minutes * 60.0,
        "hold_seconds": 0.0,
        "transfers": transfers,
        "queue": "consumer",
        "csat": float("nan"),
    }
    row.update(extra)
    return row


def frame(*rows: dict[str, object]) -> pd.DataFrame:
    return pd.DataFrame(list(rows))


@pytest.fixture(scope="session")
def small_log() -> SimulatedLog:
    return simulate(SimulatorConfig(n_contacts=1500, seed=3, days=60))


@pytest.fixture(scope="session")
def default_log() -> SimulatedLog:
    """A log at the simulator's defaults, large enough for its statistics to settle."""
    return simulate(SimulatorConfig(n_contacts=20_000, seed=5))


@pytest.fixture
def small_log_csv(tmp_path: Path, small_log: SimulatedLog) -> Path:
    from predictor.contacts.schema import write_table
    from predictor.contacts.simulate import truth_path

    path = tmp_path / "contacts.csv"
    write_table(small_log.contacts, path)
    write_table(small_log.truth, truth_path(path))
    return path


@pytest.fixture(scope="session")
def train_log() -> SimulatedLog:
    """Big enough for a time split with every slice populated, small enough to embed in under a minute."""
    return simulate(SimulatorConfig(n_contacts=1800, seed=21, days=90))


@pytest.fixture(scope="session")
def workdir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("work")


@pytest.fixture(scope="session")
def settings(workdir: Path):
    """Settings pointing every store (MLflow, artifacts, embedding cache) into a temporary folder."""
    from predictor.config import EmbeddingConfig, RegistryConfig, Settings

    return Settings(
        models_dir=workdir,
        embedding=EmbeddingConfig(cache_dir=Path(os.environ.get("PREDICTOR_TEST_CACHE", workdir / "cache"))),
        registry=RegistryConfig(
            tracking_uri=f"sqlite:///{workdir / 'mlflow.db'}",
            artifact_root=workdir / "mlartifacts",
            model_name="test-predictor",
        ),
    )


@pytest.fixture(scope="session")
def trained(train_log: SimulatedLog, settings, workdir: Path):
    """One real training run (MiniLM embeddings included), shared by the tests that need a model."""
    from predictor.contacts.schema import validate
    from predictor.training.train import fit

    contacts = validate(train_log.contacts).contacts
    return fit(contacts, settings, ablation=False, oracle=train_log.truth, plots_dir=workdir / "plots"), contacts


def _postgres_bin() -> Path | None:
    candidates = sorted(Path("/usr/lib/postgresql").glob("*/bin/pg_ctl"))
    return candidates[-1].parent if candidates else None


@pytest.fixture(scope="session")
def postgres_url() -> Iterator[str]:
    """A throwaway PostgreSQL cluster on a loopback port (run as the postgres user when we are root)."""
    bin_dir = _postgres_bin()
    if bin_dir is None:
        pytest.fail("PostgreSQL is not installed: `make test` installs it (apt-get install postgresql)")
    base = Path(tempfile.mkdtemp(prefix="predictor-pg-"))
    as_user: list[str] = []
    if os.geteuid() == 0:  # initdb refuses to run as root
        shutil.chown(base, "postgres", "postgres")
        base.chmod(0o700)
        Path(tempfile.gettempdir()).chmod(0o1777)
        as_user = ["runuser", "-u", "postgres", "--"]
    from predictor.serving.devserver import free_port

    port = free_port()
    data = base / "data"
    subprocess.run([*as_user, bin_dir / "initdb", "-D", data, "-A", "trust", "-U", "postgres", "-E", "UTF8"],
                   check=True, capture_output=True)  # fmt: skip
    options = f"-p {port} -k {base} -c listen_addresses=127.0.0.1 -c fsync=off"
    subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-o", options, "-l", base / "log", "-w", "start"],
                   check=True, capture_output=True)  # fmt: skip
    try:
        yield f"postgresql+psycopg://postgres@127.0.0.1:{port}/postgres"
    finally:
        subprocess.run([*as_user, bin_dir / "pg_ctl", "-D", data, "-m", "immediate", "stop"], capture_output=True)
        shutil.rmtree(base, ignore_errors=True)
