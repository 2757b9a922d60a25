"""The bento pins what the project pins, and `bentoml build` succeeds."""

from __future__ import annotations

import os
import subprocess
import sys
import tomllib
from pathlib import Path

import pytest
import yaml

ROOT = Path(__file__).parents[1]


def _pins(requirements: list[str]) -> dict[str, str]:
    out = {}
    for line in requirements:
        name = line.split("==")[0].split(">=")[0].split("[")[0].strip().lower()
        out[name] = line.strip()
    return out


def test_bentofile_pins_the_projects_dependencies() -> None:
    project = _pins(tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"])
    bento = _pins(yaml.safe_load((ROOT / "bentofile.yaml").read_text())["python"]["packages"])
    for name in ("torch", "bentoml", "mlflow"):
        assert bento[name] == project[name]
    # Optional backends (ONNX) and the cluster path (Dask: the CLI's, not the service's) stay out of the bento;
    # model2vec is the default embedding backend, so it is in.
    runtime_needs = set(project) - {"onnx", "onnxruntime", "dask"}
    assert runtime_needs <= set(bento) | {"psycopg"}, runtime_needs - set(bento)


@pytest.mark.slow
def test_bentoml_build_succeeds(tmp_path: Path) -> None:
    env = {**os.environ, "BENTOML_HOME": str(tmp_path), "BENTOML_DO_NOT_TRACK": "true"}
    done = subprocess.run(
        [sys.executable, "-m", "bentoml", "build", "-f", "bentofile.yaml", "."],
        cwd=ROOT, env=env, capture_output=True, text=True, timeout=600,
    )  # fmt: skip
    assert done.returncode == 0, done.stdout[-2000:] + done.stderr[-2000:]
    assert list((tmp_path / "bentos" / "repeat-contact-predictor").glob("*/bento.yaml"))
