"""Every pipeline command through the real ``predictor`` command line, in a folder outside the checkout.

A new user's path: simulate a log, train (twice: a challenger), mine the plan, write the report, move the
champion by hand. Each command exits 0 on good input; bad input ends in one line and exit 2.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pandas as pd
import pytest

PREDICTOR = str(Path(sys.executable).parent / "predictor")


@pytest.fixture(scope="module")
def folder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("new-user")


@pytest.fixture(scope="module")
def env(folder: Path) -> dict[str, str]:
    return {
        **os.environ,
        "PREDICTOR_REGISTRY__TRACKING_URI": f"sqlite:///{folder / 'mlflow.db'}",
        "PREDICTOR_REGISTRY__ARTIFACT_ROOT": str(folder / "artifacts"),
        "PREDICTOR_SERVICE__PLAN_PATH": str(folder / "plan.yaml"),
        # The service sends every follow-up by e-mail: the report must recommend the same channel.
        "PREDICTOR_SERVICE__FOLLOW_UP_CHANNEL": "email",
        "COLUMNS": "200",
    }


def run(env: dict[str, str], cwd: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([PREDICTOR, *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=900)


@pytest.mark.slow
def test_train_plan_report_promote_through_the_command_line(folder: Path, env: dict[str, str]) -> None:
    done = run(env, folder, "simulate", "--n", "2500", "--seed", "31", "--out", "log.csv")
    assert done.returncode == 0, done.stderr

    first = run(env, folder, "train", "log.csv", "--no-text", "--metrics-json", "first.json")
    assert first.returncode == 0, first.stderr[-2000:]
    assert "promoted: first champion" in " ".join(first.stdout.split())
    figures = json.loads((folder / "first.json").read_text())
    assert figures["registration"]["version"] == "1" and figures["by_slice"]

    second = run(env, folder, "train", "log.csv", "--no-text", "--metrics-json", "second.json")
    assert second.returncode == 0, second.stderr[-2000:]
    assert json.loads((folder / "second.json").read_text())["registration"]["version"] == "2"

    plan = run(env, folder, "plan", "log.csv", "--out", "plan.yaml")
    assert plan.returncode == 0, plan.stderr
    assert (folder / "plan.yaml").exists() and "plan written to" in " ".join(plan.stdout.split())

    report = run(env, folder, "report", "log.csv", "--out", "report.html")
    assert report.returncode == 0, report.stderr[-2000:]
    assert (folder / "report.html").stat().st_size > 10_000
    high_risk = pd.read_csv(next(folder.glob("report*.csv")))
    assert len(high_risk) and set(high_risk["channel_to_use"]) == {"email"}

    promoted = run(env, folder, "promote", "1", "--reason", "rollback drill")
    assert promoted.returncode == 0, promoted.stderr
    assert "champion -> " in promoted.stdout and "version 1" in promoted.stdout


def test_promoting_a_version_that_does_not_exist_exits_2_with_one_line(folder: Path, env: dict[str, str]) -> None:
    done = run(env, folder, "promote", "99")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout and "99" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1
