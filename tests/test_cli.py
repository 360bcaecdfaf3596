"""The installed ``atrx`` entry point: one error handler, exit codes, Ctrl-C, ATRX_DEBUG.

Tests invoke the very Typer app the console script runs (``atrx.cli:main`` calls ``app``), with
Typer's CliRunner, so what is tested is what users get.
"""

from __future__ import annotations

from importlib import metadata
from pathlib import Path

import pytest
from typer.testing import CliRunner

from atrx import registry
from atrx.cli import app
from atrx.errors import ExitCode

runner = CliRunner()


def test_console_script_is_the_entry_point_with_the_handler() -> None:
    (ep,) = [e for e in metadata.entry_points(group="console_scripts") if e.name == "atrx"]
    assert ep.value == "atrx.cli:main"
    assert ep.load().__module__ == "atrx.cli"


def test_bad_input_prints_error_and_fix_and_exits_2(tmp_path: Path) -> None:
    missing = tmp_path / "nope.yaml"
    result = runner.invoke(app, ["center", "validate", str(missing)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "error:" in result.stderr and str(missing) in result.stderr
    assert "fix:" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_unknown_model_exits_2_naming_the_tag(tmp_path: Path) -> None:
    result = runner.invoke(app, ["models", "show", "nosuchtag", "--home", str(tmp_path)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "nosuchtag" in result.stderr
    assert "Traceback" not in result.stderr


def center_file(tmp_path: Path, key_env: str) -> Path:
    """A valid center file D.yaml over an empty export, its key in the variable ``key_env``."""
    (tmp_path / "export").mkdir()
    cfg = tmp_path / "D.yaml"
    cfg.write_text(
        "center: D\nsource: export\nformat: nifti\npreset: brats2023\n"
        "clinical:\n  path: clinical.csv\n"
        "  columns: {patient_id: id, age: age, sex: sex, who_grade: who, vasari_score: vasari,\n"
        "            atrx_status: atrx, pathology_date: date}\n"
        f"deid: {{key_env: {key_env}}}\n")
    return cfg


def test_missing_deid_key_is_bad_input_with_the_variable_named(tmp_path: Path,
                                                               monkeypatch: pytest.MonkeyPatch) -> None:
    cfg = center_file(tmp_path, "ATRX_TEST_KEY_THAT_IS_UNSET")
    monkeypatch.delenv("ATRX_TEST_KEY_THAT_IS_UNSET", raising=False)
    result = runner.invoke(app, ["ingest", str(cfg), "--home", str(tmp_path / "home")])
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert "ATRX_TEST_KEY_THAT_IS_UNSET" in result.stderr
    assert "fix:" in result.stderr


def test_ctrl_c_exits_130(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def interrupted(*_a: object, **_k: object) -> None:
        raise KeyboardInterrupt

    monkeypatch.setattr(registry, "list_models", interrupted)
    result = runner.invoke(app, ["models", "list", "--home", str(tmp_path)])
    assert result.exit_code == ExitCode.INTERRUPTED == 130
    assert "interrupted" in result.stderr


def test_atrx_debug_shows_the_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ATRX_DEBUG", "1")
    result = runner.invoke(app, ["models", "show", "nosuchtag", "--home", str(tmp_path)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert "Traceback" in result.stderr and "RegistryError" in result.stderr


def test_a_bug_keeps_its_traceback(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    def broken(*_a: object, **_k: object) -> None:
        raise ZeroDivisionError("a bug, not an AtrxError")

    monkeypatch.setattr(registry, "list_models", broken)
    result = runner.invoke(app, ["models", "list", "--home", str(tmp_path)])
    assert result.exit_code == ExitCode.FAILURE
    assert isinstance(result.exception, ZeroDivisionError)


def test_help_lists_every_command() -> None:
    result = runner.invoke(app, ["--help"])
    assert result.exit_code == 0
    for command in ("synth", "center", "ingest", "features", "train", "retrain", "models",
                    "materialize", "serve", "predict", "demo"):
        assert command in result.stdout


def test_ingest_preprocess_file_is_validated_naming_file_and_key(tmp_path: Path) -> None:
    """``atrx ingest --preprocess FILE``: a key PreprocessParams does not have is bad input that
    names the file and the key, before any center is read; the shipped example file loads."""
    from atrx.config.base import load_yaml_model
    from ingest.preprocess import PreprocessParams

    bad = tmp_path / "preprocess.yaml"
    bad.write_text("reg_sampling_strategy: lattice\nreg_max_sample: 25000\n")
    result = runner.invoke(app, ["ingest", str(tmp_path / "no-center.yaml"), "--home", str(tmp_path),
                                 "--preprocess", str(bad)])
    assert result.exit_code == ExitCode.BAD_INPUT
    assert str(bad) in result.stderr and "reg_max_sample" in result.stderr
    example = Path(__file__).resolve().parents[1] / "ingest" / "preprocess" / "1.2.0.yaml"
    params = load_yaml_model(PreprocessParams, example)
    assert (params.reg_fixed_mask, params.reg_max_samples, params.n4_field_interpolation) == (
        "none", 100_000, "itk")
    assert params.digest() != PreprocessParams().digest()


@pytest.mark.parametrize("command", ["ingest", "features", "stability"])
def test_workers_with_a_scheduler_is_refused_before_any_work(tmp_path: Path, command: str,
                                                             monkeypatch: pytest.MonkeyPatch) -> None:
    """A running cluster keeps the workers it was started with: ``--workers`` would be ignored."""
    monkeypatch.setenv("ATRX_TEST_CLI_KEY", "a-test-key-of-enough-length-0123456789")
    cfg = center_file(tmp_path, "ATRX_TEST_CLI_KEY")
    home = tmp_path / "home"
    args = [command, *([str(cfg)] if command == "ingest" else []), "--home", str(home),
            "--scheduler", "tcp://127.0.0.1:9", "--workers", "2"]
    result = runner.invoke(app, args)
    assert result.exit_code == ExitCode.BAD_INPUT, result.stderr
    assert "--workers does not apply with --scheduler" in result.stderr
    assert "dask worker tcp://127.0.0.1:9" in result.stderr
    assert not (home / "catalog.duckdb").exists()
