"""``atrx train`` / ``atrx retrain`` on a workspace without features: bad input, exit code 2.

``train`` lets its ``TrainingDataError`` reach the CLI's one handler (``error:`` + ``fix:``);
``retrain`` never raises, it turns the error into its decision and exit code for schedulers.
"""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from atrx.cli import app
from atrx.errors import ExitCode

runner = CliRunner()


def test_train_without_features_names_the_fix(tmp_path: Path) -> None:
    result = runner.invoke(app, ["train", "--home", str(tmp_path / "home")])
    assert result.exit_code == ExitCode.BAD_INPUT == 2, result.output
    assert "error: no labels in" in result.stderr and "'labels' view is not registered" in result.stderr
    assert "fix: run `atrx features` first" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_retrain_without_features_decides_bad_input(tmp_path: Path) -> None:
    result = runner.invoke(app, ["retrain", "--home", str(tmp_path / "home")])
    assert result.exit_code == ExitCode.BAD_INPUT == 2, result.output
    assert "bad_input" in result.stdout and "labels" in result.stdout
    assert "Traceback" not in result.stderr + result.stdout
