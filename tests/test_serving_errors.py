"""Serving's errors: members of the AtrxError family that keep their HTTP status, and what the
CLI makes of them (one ``error:`` line, one ``fix:`` line, the error's exit code, no traceback).

No server is started: an unreachable URL is a free loopback port nobody listens on.
"""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

from atrx.cli import app
from atrx.errors import AtrxError, ExitCode, ServiceError

runner = CliRunner()


def _nobody_listens() -> str:
    from serving.server import free_port

    return f"http://127.0.0.1:{free_port()}"


def test_http_errors_carry_their_status_and_exit_code() -> None:
    from bentoml.exceptions import BentoMLException

    from serving.errors import FeaturesUnavailable, ServingSetupError, UnknownPatient
    from serving.schemas import InvalidPayload

    for err, status in ((UnknownPatient(["Z-000000000000"]), 404),
                        (FeaturesUnavailable(missing={"imaging": ["x__y"]}), 422),
                        (InvalidPayload("invalid PredictRequest body: patient_id: missing"), 422)):
        assert isinstance(err, BentoMLException) and int(err.error_code) == status
        assert isinstance(err, AtrxError) and err.exit_code == ExitCode.BAD_INPUT
        assert err.message == str(err)
    unknown = UnknownPatient(["Z-000000000000", "Z-000000000001"], [0, 3])
    assert "Z-00000000000" not in str(unknown) and "positions 0, 3" in str(unknown)  # never echoed
    assert unknown.patient_ids == ["Z-000000000000", "Z-000000000001"]  # for in-process callers
    setup = ServingSetupError("no production model")
    assert isinstance(setup, ValueError) and setup.exit_code == ExitCode.BAD_INPUT


def test_a_non_2xx_answer_is_a_service_error() -> None:
    from serving.server import ServerStartError, ServingHTTPError

    err = ServingHTTPError(401, "missing or wrong API key")
    assert isinstance(err, ServiceError) and isinstance(err, RuntimeError)
    assert err.exit_code == ExitCode.FAILURE and (err.status, err.detail) == (401, "missing or wrong API key")
    assert str(err) == "HTTP 401: missing or wrong API key" and "ATRX_API_KEY" in err.fix
    assert ServingHTTPError(404, "unknown").fix is None
    assert issubclass(ServerStartError, ServiceError) and issubclass(ServerStartError, RuntimeError)


def test_unreachable_server_is_a_service_error_naming_the_fix() -> None:
    from serving.server import predict_http

    url = _nobody_listens()
    with pytest.raises(ServiceError, match=f"cannot reach {url}") as err:
        predict_http(url, "A-000000000000", timeout=5)
    assert err.value.exit_code == ExitCode.FAILURE and "atrx serve" in err.value.fix


def test_cli_predict_unreachable_prints_error_and_fix_and_exits_1() -> None:
    url = _nobody_listens()
    result = runner.invoke(app, ["predict", "A-000000000000", "--url", url])
    assert result.exit_code == ExitCode.FAILURE == 1, result.output
    assert f"error: cannot reach {url}" in result.stderr
    assert "fix: start it with `atrx serve`" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_cli_materialize_without_production_model_exits_2(tmp_path: Path) -> None:
    result = runner.invoke(app, ["materialize", "--home", str(tmp_path / "empty")])
    assert result.exit_code == ExitCode.BAD_INPUT == 2, result.output
    assert "error:" in result.stderr and "atrx train" in result.stderr
    assert "Traceback" not in result.stderr + result.stdout
