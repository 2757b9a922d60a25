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


def fits_80_columns(done: subprocess.CompletedProcess) -> None:
    """No line wider than 80 characters, and no table cell cut short with an ellipsis."""
    lines = (done.stdout + done.stderr).splitlines()
    assert not [line for line in lines if len(line) > 80], "\n".join(line for line in lines if len(line) > 80)
    assert not [line for line in lines if "\u2026" in line]
    assert "nan" not in done.stdout.replace("nano", "").lower().split()


@pytest.mark.parametrize(
    "args",
    [("validate", "log.csv"), ("labels", "log.csv"), ("plan", "log.csv", "--out", "plan80.yaml"), ("info",),
     ("mapping", "list"), ("train", "log.csv", "--no-text", "--no-register")],
    ids=lambda a: " ".join(a[:2]),
)  # fmt: skip
def test_table_commands_read_in_an_80_column_terminal(folder: Path, env: dict[str, str], args: tuple[str, ...]) -> None:
    """Every table command at COLUMNS=80: nothing wider, nothing cut; and the same tables as CSV and JSON."""
    narrow = {**env, "COLUMNS": "80"}
    if not (folder / "log.csv").exists():  # run alone, without the test that simulates it
        assert run(env, folder, "simulate", "--n", "2500", "--seed", "31", "--out", "log.csv").returncode == 0
    done = run(narrow, folder, *args)
    assert done.returncode == 0, done.stderr[-2000:]
    fits_80_columns(done)
    # The last column of each table is there (a table too wide for the terminal loses its right edge).
    last = {"plan": ["script"], "train": ["AUC long", "ECE", "top-3"], "labels": ["explicit share"]}
    flat = " ".join(done.stdout.split())
    assert all(header in flat for header in last.get(args[0], [])), done.stdout
    if args[0] in ("mapping",):
        return
    as_json = run(narrow, folder, *args, "--format", "json")
    assert as_json.returncode == 0, as_json.stderr[-2000:]
    tables = json.loads(as_json.stdout)  # stdout holds only the data: everything else went to stderr
    assert tables and all(isinstance(rows, list) for rows in tables.values())
    as_csv = run(narrow, folder, *args, "--format", "csv")
    assert as_csv.returncode == 0 and as_csv.stdout.lstrip().startswith("#")


def test_promoting_a_version_that_does_not_exist_exits_2_with_one_line(folder: Path, env: dict[str, str]) -> None:
    done = run(env, folder, "promote", "99")
    assert done.returncode == 2
    assert "Traceback" not in done.stderr + done.stdout and "99" in done.stderr
    assert len(done.stderr.strip().splitlines()) == 1


def test_serve_refuses_an_open_address_without_a_token(folder: Path, env: dict[str, str]) -> None:
    open_env = {k: v for k, v in env.items() if k != "PREDICTOR_API_TOKEN"}
    done = run(open_env, folder, "serve", "--host", "0.0.0.0")
    assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout
    assert "PREDICTOR_API_TOKEN" in done.stderr and len(done.stderr.strip().splitlines()) == 1


def test_what_the_service_says_about_auth_at_start() -> None:
    from pydantic import SecretStr

    from predictor.serving.devserver import auth_notice, exposure_problem

    assert "accept every caller" in auth_notice(None)
    assert "empty" in auth_notice(SecretStr(""))
    assert auth_notice(SecretStr("t0ken")) is None
    assert exposure_problem("127.0.0.1", None, allow_open=False) is None
    assert exposure_problem("0.0.0.0", "t0ken", allow_open=False) is None
    assert exposure_problem("0.0.0.0", None, allow_open=True) is None
    assert "refusing" in exposure_problem("0.0.0.0", "", allow_open=False)


@pytest.mark.slow
def test_serve_starts_the_real_service_on_loopback(folder: Path, env: dict[str, str]) -> None:
    """`make serve` runs `predictor serve`: the champion trained above answers /readyz on 127.0.0.1."""
    import time

    import httpx

    from predictor.serving.devserver import free_port, stop

    port = free_port()
    serve_env = {
        **env,
        "BENTOML_HOME": str(folder / "bentoml"),
        "PREDICTOR_SERVICE__STORE_URL": f"sqlite:///{folder / 'store.db'}",
    }
    process = subprocess.Popen(
        [PREDICTOR, "serve", "--port", str(port)], cwd=folder, env=serve_env, start_new_session=True,
        stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
    )  # fmt: skip
    try:
        deadline, ready = time.monotonic() + 240, False
        while time.monotonic() < deadline and process.poll() is None and not ready:
            try:
                ready = httpx.get(f"http://127.0.0.1:{port}/readyz", timeout=2).status_code == 200
            except httpx.HTTPError:
                time.sleep(1)
        assert ready, process.stderr.read() if process.poll() is not None else "not ready in 240 s"
    finally:
        stop(process)


def test_a_bad_setting_exits_2_naming_the_variable(folder: Path, env: dict[str, str]) -> None:
    bad = {**env, "PREDICTOR_SERVICE__ALLOW_OPEN": "sometimes"}
    for args in (("promote", "1"), ("serve",), ("report", "--from-store")):
        done = run(bad, folder, *args)
        assert done.returncode == 2 and "Traceback" not in done.stderr + done.stdout, done.stderr
        assert "PREDICTOR_SERVICE__ALLOW_OPEN" in done.stderr and len(done.stderr.strip().splitlines()) == 1


@pytest.fixture(scope="module")
def mistakes(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A fresh folder (no registry) with the files a new user gets wrong."""
    folder = tmp_path_factory.mktemp("mistakes")
    sample = Path(__file__).parents[1] / "data" / "sample" / "contacts.csv"
    lines = sample.read_text().splitlines()
    (folder / "log.csv").write_text("\n".join(lines[:400]) + "\n")
    (folder / "tiny.csv").write_text("\n".join(lines[:11]) + "\n")
    (folder / "header.csv").write_text(lines[0] + "\n")
    (folder / "empty.csv").write_text("")
    (folder / "bad.yaml").write_text("a: [\n")
    return folder


@pytest.mark.parametrize(
    ("args", "extra_env", "says"),
    [
        (("train", "empty.csv"), {}, "the file is empty"),
        (("train", "header.csv"), {}, "no rows"),
        (("train", "tiny.csv", "--no-text"), {}, "window"),
        (("train", "missing.csv"), {}, "no input files"),
        (("train", "log.csv", "--assume-timezone", "Mars/Base"), {}, "not a time zone"),
        (("train", "log.csv", "--metrics-json", "m.txt"), {}, "unsupported file type"),
        (("train", "log.csv", "--model-name", "two words"), {}, "--model-name"),
        (("train", "log.csv", "--no-text"), {"PREDICTOR_HYPERPARAMS_PATH": "nope.yaml"}, "no such hyperparameter"),
        (("train", "log.csv", "--no-text"), {"PREDICTOR_HYPERPARAMS_PATH": "bad.yaml"}, "not valid YAML"),
        (("score", "log.csv"), {}, "train a model first"),
        (("score", "log.csv", "--out", "p.csv"), {}, "unsupported file type"),
        (("report", "log.csv"), {}, "train a model first"),
        (("report", "log.csv", "--out", "r.pdf"), {}, "unsupported file type"),
        (("serve-demo", "log.csv"), {}, "train a model first"),
        (("serve",), {}, "train a model first"),
        (("simulate", "--n", "50", "--out", "x.xlsx"), {}, "unsupported file type"),
        (("validate", "log.csv", "--out", "x.txt"), {}, "unsupported file type"),
        (("validate", "log.csv", "--mapping", "no-such-mapping"), {}, "shipped mappings"),
        (("labels", "log.csv", "--as-of", "soon"), {}, "--as-of"),
        (("mapping", "draft", "empty.csv"), {}, "the file is empty"),
        (("promote", "3"), {}, "cannot promote"),
    ],
)
def test_every_user_mistake_is_one_line_and_exit_2(
    mistakes: Path, args: tuple[str, ...], extra_env: dict[str, str], says: str
) -> None:
    """A fresh folder, no model: each mistake says what is wrong and what to do; no traceback, ever."""
    env = {**os.environ, "PREDICTOR_HOME": str(mistakes), "COLUMNS": "300", **extra_env}
    env.pop("PREDICTOR_REGISTRY__TRACKING_URI", None)
    done = run(env, mistakes, *args)
    assert done.returncode == 2, (args, done.stdout[-500:], done.stderr[-2000:])
    assert "Traceback" not in done.stderr + done.stdout
    assert says in " ".join(done.stderr.split()), done.stderr


def test_version_and_info(mistakes: Path) -> None:
    env = {**os.environ, "PREDICTOR_HOME": str(mistakes), "COLUMNS": "300"}
    assert run(env, mistakes, "--version").stdout.startswith("predictor ")
    shown = run(env, mistakes, "info")
    assert shown.returncode == 0 and str(mistakes) in shown.stdout and "none yet" in shown.stdout
