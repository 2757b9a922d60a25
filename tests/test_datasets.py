"""Two datasets in one home, through the CLI from a folder outside the checkout: each its own registered model,
champion and plan; the gate refuses a champion of another dataset; nothing is written outside the home."""

from __future__ import annotations

import os
import subprocess
import sys

import pandas as pd
import pytest
import yaml

from predictor.config import Settings
from predictor.contacts.schema import write_table
from predictor.registry.tracking import load_version

pytestmark = pytest.mark.slow  # trains four small models
PREDICTOR = [sys.executable, "-m", "predictor.cli"]


@pytest.fixture(scope="module")
def home(tmp_path_factory: pytest.TempPathFactory, small_log) -> dict:
    """A home, a working folder elsewhere, and two logs: the simulator's telecom taxonomy and a retailer's."""
    base = tmp_path_factory.mktemp("datasets")
    telecom = small_log.contacts
    retail = telecom.assign(
        issue="shop_" + telecom["issue"].astype(str),
        contact_id="R" + telecom["contact_id"].astype(str),
        customer_id="R" + telecom["customer_id"].astype(str),
    )
    logs = {
        name: write_table(log, base / "in" / f"{name}.csv") for name, log in (("telecom", telecom), ("retail", retail))
    }
    (base / "work").mkdir()
    env = {**os.environ, "PREDICTOR_HOME": str(base / "home"), "PREDICTOR_SEED": "0"}
    env.pop("PREDICTOR_REGISTRY__MODEL_NAME", None)
    return {"base": base, "logs": logs, "env": env, "work": base / "work"}


def cli(home: dict, *args: str) -> subprocess.CompletedProcess:
    done = subprocess.run([*PREDICTOR, *args], cwd=home["work"], env=home["env"], capture_output=True, text=True,
                          timeout=600)  # fmt: skip
    assert "Traceback" not in done.stderr, done.stderr[-3000:]
    return done


def train(home: dict, log: str, name: str, *extra: str) -> subprocess.CompletedProcess:
    return cli(home, "train", str(home["logs"][log]), "--model-name", name, "--no-text", "--no-ablation", *extra)


def settings_for(home: dict, name: str) -> Settings:
    settings = Settings(home=home["base"] / "home")
    return settings.model_copy(update={"registry": settings.registry.model_copy(update={"model_name": name})})


def test_each_dataset_keeps_its_own_champion_and_plan(home: dict) -> None:
    for log in ("telecom", "retail"):
        done = train(home, log, log)
        assert done.returncode == 0, done.stderr[-3000:]
        assert "promoted: first champion" in done.stdout
    for log, prefix in (("telecom", ""), ("retail", "shop_")):
        model, version, plan = load_version(settings_for(home, log))
        assert version == "1" and plan is not None
        assert all(code.startswith(prefix) or code == "other" for code in model.issue_codes)
        primaries = [p["issue"] for p in yaml.safe_load(plan.read_text())["primaries"]]
        assert primaries and all(issue.startswith("shop_") == (log == "retail") for issue in primaries)
    shown = cli(home, "info", "--model-name", "retail")
    assert "champion" in shown.stdout and "version 1" in shown.stdout
    # MLflow: an experiment per model, runs named by their data and time, a description, the input dataset.
    from predictor.registry.tracking import connect

    settings = settings_for(home, "retail")
    client = connect(settings.registry)
    run = client.search_runs([client.get_experiment_by_name("retail").experiment_id])[0]
    assert run.info.run_name.startswith("retail-") and "trained on" in run.data.tags["mlflow.note.content"]
    assert "promoted" in run.data.tags["mlflow.note.content"]
    assert [i.dataset.name for i in run.inputs.dataset_inputs] == ["retail.csv"]
    # Listed by name, the model's own figures come first, the baselines after everything else.
    names = sorted(run.data.metrics)
    assert names[0].startswith("model.") and "model.roc_auc" in names
    assert all(n.startswith("vs_") for n in names[names.index(next(n for n in names if n.startswith("vs_"))) :])
    assert any(n.startswith("seconds.") for n in names)  # the training's duration, stage by stage


def test_the_gate_refuses_a_champion_of_another_dataset(home: dict) -> None:
    """The retailer's model was gated against the telecom demo champion, lost, and the report then
    predicted telecom issues with telecom scripts."""
    done = train(home, "retail", "telecom")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "not promoted" in done.stdout and "another issue taxonomy" in done.stdout
    assert "predictor promote" in done.stdout
    model, version, _ = load_version(settings_for(home, "telecom"))
    assert version == "1" and not any(code.startswith("shop_") for code in model.issue_codes)


def test_the_service_pinned_to_one_model_never_sees_the_other(home: dict) -> None:
    from predictor.serving.scorer import Scorer

    for name, prefix in (("retail", "shop_"), ("telecom", "")):
        settings = settings_for(home, name)
        service = settings.service.model_copy(update={"store_url": f"sqlite:///{home['base'] / f'{name}.db'}"})
        scorer = Scorer.from_settings(settings.model_copy(update={"service": service}))
        assert all(code.startswith(prefix) or code == "other" for code in scorer.model.issue_codes)
        assert scorer.plan.timing  # the plan of its own version
        assert all(primary.startswith("shop_") == (name == "retail") for primary, _ in scorer.plan.timing)


def test_no_register_writes_nothing_the_service_reads_and_nothing_outside_the_home(home: dict) -> None:
    plan_file = home["base"] / "home" / "models" / "next_issue_plan.yaml"
    plan_file.unlink(missing_ok=True)
    done = train(home, "telecom", "scratch", "--no-register")
    assert done.returncode == 0, done.stderr[-3000:]
    assert "nothing registered, no plan written" in done.stdout
    assert not plan_file.exists()
    assert "none" in cli(home, "info", "--model-name", "scratch").stdout
    # Commands run from the working folder left nothing in it: every default lies under the home.
    for args in (("labels", str(home["logs"]["telecom"])), ("score", str(home["logs"]["retail"]), "--model-name",
                                                           "retail"), ("info",)):  # fmt: skip
        assert cli(home, *args).returncode == 0
    assert list(home["work"].iterdir()) == []
    assert (home["base"] / "home" / "predictions.parquet").exists()
    assert len(pd.read_parquet(home["base"] / "home" / "predictions.parquet")) > 0
