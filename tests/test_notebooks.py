"""The three notebooks run top to bottom against a small simulated log (nbclient, the venv's kernel)."""

from __future__ import annotations

import os
from pathlib import Path

import nbformat
import pytest
from nbclient import NotebookClient

from predictor.config import PACKAGE_DATA
from predictor.contacts.schema import write_table
from predictor.contacts.simulate import truth_path

ROOT = Path(__file__).parents[1]
NOTEBOOKS = ["01_explore_contacts", "02_train_and_compare", "03_score_and_report"]
pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def notebook_env(train_log, settings, workdir: Path) -> dict[str, str]:
    log = write_table(train_log.contacts, workdir / "notebook-log" / "contacts.csv")
    write_table(train_log.truth, truth_path(log))
    return {
        "PREDICTOR_NOTEBOOK_LOG": str(log),
        "PREDICTOR_NOTEBOOK_OUT": str(workdir / "notebook-report.html"),
        "PREDICTOR_REGISTRY__TRACKING_URI": f"sqlite:///{workdir / 'notebooks-mlflow.db'}",
        "PREDICTOR_REGISTRY__ARTIFACT_ROOT": str(workdir / "notebooks-artifacts"),
        "PREDICTOR_EMBEDDING__CACHE_DIR": str(settings.embedding.cache_dir),  # warm from the training fixture
        "PREDICTOR_SERVICE__SCRIPTS_PATH": str(PACKAGE_DATA / "followup_scripts.yaml"),
    }


def test_notebooks_are_stored_without_outputs() -> None:
    for name in NOTEBOOKS:
        book = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
        assert all(not cell.get("outputs") for cell in book.cells if cell.cell_type == "code"), name


def run(name: str) -> nbformat.NotebookNode:
    book = nbformat.read(ROOT / "notebooks" / f"{name}.ipynb", as_version=4)
    NotebookClient(
        book, kernel_name="python3", timeout=600, resources={"metadata": {"path": str(ROOT / "notebooks")}}
    ).execute()
    return book


def test_training_notebook_registers_only_when_asked_and_shows_its_plots(
    notebook_env: dict[str, str], workdir: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Each execution registered a new version, and the plots went to files nobody opened."""
    for key, value in {
        **notebook_env,
        "PREDICTOR_REGISTRY__TRACKING_URI": f"sqlite:///{workdir / 'nb-dry.db'}",
    }.items():
        monkeypatch.setenv(key, value)
    monkeypatch.delenv("PREDICTOR_NOTEBOOK_REGISTER", raising=False)
    before = sorted(p.name for p in ROOT.iterdir())
    book = run("02_train_and_compare")
    outputs = [o for cell in book.cells if cell.cell_type == "code" for o in cell.get("outputs", [])]
    assert sum("image/png" in o.get("data", {}) for o in outputs) >= 4  # the evaluation plots and SHAP, inline
    assert any("not registered" in o.get("text", "") for o in outputs)
    html = " ".join(o.get("data", {}).get("text/html", "") for o in outputs)
    assert "precision" in html and "roc_auc" in html  # the threshold choice and the per-slice table, as tables
    warned = [o.get("text", "") for o in outputs if o.get("name") == "stderr"]
    assert not [w for w in warned if "Warning" in w or "widget" in w.lower()], warned
    assert not (workdir / "nb-dry.db").exists()  # no registry touched, not even created
    assert sorted(p.name for p in ROOT.iterdir()) == before  # nothing written into the checkout's root


def test_notebooks_execute_in_order(notebook_env: dict[str, str], monkeypatch: pytest.MonkeyPatch) -> None:
    for key, value in {**notebook_env, "PREDICTOR_NOTEBOOK_REGISTER": "1"}.items():
        monkeypatch.setenv(key, value)  # the kernel inherits the environment
    for name in NOTEBOOKS:  # 02 registers the champion that 03 scores with
        run(name)
    assert Path(notebook_env["PREDICTOR_NOTEBOOK_OUT"]).stat().st_size > 50_000
    assert os.environ["PREDICTOR_NOTEBOOK_LOG"].endswith("contacts.csv")
