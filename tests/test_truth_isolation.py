"""Nothing in the pipeline reads the simulator's ground truth; only the oracle in evaluation may."""

from __future__ import annotations

import sys
from pathlib import Path

from typer.testing import CliRunner

from predictor.cli import app

SRC = Path(__file__).parents[1] / "src" / "predictor"
ALLOWED = {"simulate.py", "evaluate.py"}  # the writer, and the oracle


def test_commands_never_open_the_truth_file(small_log_csv: Path) -> None:
    opened: list[str] = []

    def audit(event: str, args: tuple) -> None:
        if event == "open" and args and isinstance(args[0], str | Path) and ".truth." in str(args[0]):
            opened.append(str(args[0]))

    sys.addaudithook(audit)
    runner = CliRunner()
    for command in (["validate", str(small_log_csv)], ["labels", str(small_log_csv)]):
        result = runner.invoke(app, command)
        assert result.exit_code == 0, result.output
    assert opened == []


def test_only_evaluation_refers_to_the_truth() -> None:
    offenders = [
        path.name
        for path in SRC.glob("*.py")
        if path.name not in ALLOWED and ("truth_path" in path.read_text() or "true_repeat" in path.read_text())
    ]
    assert offenders == []
