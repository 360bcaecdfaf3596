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


def test_train_cannot_measure_stability_for_features_the_parameter_file_no_longer_makes(
        tmp_path: Path) -> None:
    """The shipped study filters by stability; with no table, ``atrx train`` measures one, but
    only for the radiomics version the parameter file makes: Feast's ``test-v1`` views are not."""
    from test_training_job import build_workspace

    from atrx.stability import stability_path

    ws = build_workspace(tmp_path / "home")
    Path(stability_path(ws, "test-v1")).unlink()
    result = runner.invoke(app, ["train", "--home", ws.home])
    assert result.exit_code == ExitCode.BAD_INPUT == 2, result.output
    assert "radiomics features in Feast are version test-v1" in result.stderr
    assert "fix: rerun `atrx features`" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
