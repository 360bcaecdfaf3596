"""Serving fails closed: the API key, the open routes, patient ids, body size, a schemathesis run.

The first half needs no server (the refusals happen before anything starts; the middleware runs
in-process over httpx's ASGI transport). The second half shares ONE real ``bentoml serve`` per
module, with a key, over a workspace built like ``tests/test_serving.py`` builds it.
"""

from __future__ import annotations

import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from atrx.cli import app
from atrx.errors import ExitCode, InputError

pytestmark = pytest.mark.timeout(600)

KEY = "k" * 8 + "-0123456789abcdefghijklmnopqrstuv"  # 41 characters
AUTH = {"X-API-Key": KEY}
#: ids that must never come back nor reach the log (none has the pseudonym shape)
NOT_PSEUDONYMS = ["Jane Doe 1961-02-03", "A-1", "MRN004711", "A-3F2A9C1B0D4E", "A-3f2a9c1b0d4e ",
                  "A-3f2a9c1b0d4e\n", "../../etc/passwd"]
#: pseudonym-shaped but in no online view
UNKNOWN = "Q-0a1b2c3d4e5f"
runner = CliRunner()


@pytest.fixture
def no_auth_env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    from serving.auth import API_KEY_ENV, NO_AUTH_ENV

    monkeypatch.delenv(API_KEY_ENV, raising=False)
    monkeypatch.delenv(NO_AUTH_ENV, raising=False)
    return monkeypatch


# --- refusals at start (no server) -------------------------------------------------------------


def test_resolve_auth_fails_closed(no_auth_env: pytest.MonkeyPatch) -> None:
    from serving.auth import AuthSetupError, resolve_auth
    from serving.server import auth_mode

    with pytest.raises(AuthSetupError, match="without an API key") as err:
        resolve_auth()
    assert isinstance(err.value, InputError) and err.value.exit_code == ExitCode.BAD_INPUT
    fix = err.value.fix or ""
    assert "export ATRX_API_KEY" in fix and "secrets.token_urlsafe(32)" in fix
    assert "--no-auth" in fix and "32" in fix
    short = "s" * 31
    with pytest.raises(AuthSetupError, match="31 characters.*at least 32") as err:
        resolve_auth(short)
    assert short not in str(err.value) + (err.value.fix or "")
    with pytest.raises(AuthSetupError, match="spaces"):
        resolve_auth(" " + "x" * 40)
    with pytest.raises(AuthSetupError, match="not both"):
        resolve_auth(KEY, no_auth=True)
    assert resolve_auth(KEY).key == KEY and KEY not in repr(resolve_auth(KEY))
    assert resolve_auth(no_auth=True).open
    no_auth_env.setenv("ATRX_NO_AUTH", "1")
    assert resolve_auth().open  # the worker reads the variable the CLI sets for it
    with pytest.raises(AuthSetupError):  # a process that starts a server does not
        auth_mode()


def test_serve_refuses_before_starting_anything(no_auth_env: pytest.MonkeyPatch,
                                                tmp_path: Path) -> None:
    from atrx.workspace import Workspace
    from serving.auth import AuthSetupError
    from serving.server import free_port, serve

    ws = Workspace.at(tmp_path / "empty")  # no model either: the key is checked first
    with pytest.raises(AuthSetupError, match="without an API key"):
        serve(ws, free_port(), check=False)
    with pytest.raises(AuthSetupError, match="at least 32"):
        serve(ws, free_port(), api_key="short-key", check=False)


@pytest.mark.parametrize(
    ("key", "args", "expected"),
    [
        (None, [], "refusing to serve without an API key"),
        ("x" * 31, [], "ATRX_API_KEY is 31 characters long; the service needs at least 32"),
        (KEY, ["--no-auth"], "both ATRX_API_KEY and --no-auth (ATRX_NO_AUTH) are set"),
    ],
    ids=["no-key", "short-key", "key-and-no-auth"],
)
def test_cli_serve_refuses_with_error_and_fix(
    no_auth_env: pytest.MonkeyPatch, tmp_path: Path, key: str | None, args: list[str],
    expected: str,
) -> None:
    if key is not None:
        no_auth_env.setenv("ATRX_API_KEY", key)
    result = runner.invoke(app, ["serve", "--home", str(tmp_path / "empty"), *args])
    assert result.exit_code == ExitCode.BAD_INPUT == 2, result.output
    assert f"error: {expected}" in " ".join(result.stderr.split())
    assert "fix:" in result.stderr and "Traceback" not in result.output
    if key is not None:
        assert key not in result.output


@pytest.mark.parametrize(("key", "args", "mode"),
                         [(KEY, [], "auth: X-API-Key required"), (None, ["--no-auth"], "auth: OPEN")],
                         ids=["key", "no-auth"])
def test_cli_serve_says_its_auth_mode(
    no_auth_env: pytest.MonkeyPatch, tmp_path: Path, key: str | None, args: list[str], mode: str
) -> None:
    if key is not None:
        no_auth_env.setenv("ATRX_API_KEY", key)
    result = runner.invoke(app, ["serve", "--home", str(tmp_path / "empty"), *args])
    assert mode in result.stdout
    # then the workspace's own refusal (no production model): the auth check came first
    assert result.exit_code == ExitCode.BAD_INPUT and "production" in result.stderr


def test_the_service_worker_refuses_without_a_usable_key(no_auth_env: pytest.MonkeyPatch,
                                                         tmp_path: Path) -> None:
    """``bentoml serve`` run directly (a container) goes through the same check in ``__init__``."""
    from serving.auth import AuthSetupError
    from serving.service import ATRXService

    no_auth_env.setenv("ATRX_HOME", str(tmp_path / "empty"))
    with pytest.raises(AuthSetupError, match="without an API key"):
        ATRXService.inner()
    no_auth_env.setenv("ATRX_API_KEY", "x" * 20)
    with pytest.raises(AuthSetupError, match="at least 32"):
        ATRXService.inner()


def test_server_env_passes_exactly_one_auth_setting(no_auth_env: pytest.MonkeyPatch,
                                                    tmp_path: Path) -> None:
    from atrx.workspace import Workspace
    from serving.server import server_env

    ws = Workspace.at(tmp_path / "w")
    no_auth_env.setenv("ATRX_NO_AUTH", "1")  # inherited from a shell: must not open the child
    keyed = server_env(ws, KEY)
    assert keyed["ATRX_API_KEY"] == KEY and "ATRX_NO_AUTH" not in keyed
    no_auth_env.setenv("ATRX_API_KEY", KEY)
    opened = server_env(ws, None, no_auth=True)
    assert opened["ATRX_NO_AUTH"] == "1" and "ATRX_API_KEY" not in opened


# --- the middleware, in-process ----------------------------------------------------------------


async def _echo_app(scope: dict[str, Any], receive: Any, send: Any) -> None:
    """A stand-in for BentoML's app: answers 200 with the body it read."""
    body = b""
    while True:
        message = await receive()
        body += message.get("body", b"")
        if not message.get("more_body"):
            break
    await send({"type": "http.response.start", "status": 200, "headers": []})
    await send({"type": "http.response.body", "body": body})


def _call(middleware: Any, method: str, path: str, **kwargs: Any) -> httpx.Response:
    import asyncio

    async def go() -> httpx.Response:
        transport = httpx.ASGITransport(app=middleware)
        async with httpx.AsyncClient(transport=transport, base_url="http://t") as client:
            return await client.request(method, path, **kwargs)

    return asyncio.run(go())


def test_middleware_routes_modes_and_body_limit(no_auth_env: pytest.MonkeyPatch) -> None:
    from serving.auth import MAX_BODY_BYTES, ApiKeyMiddleware

    keyed = ApiKeyMiddleware(_echo_app, api_key=KEY)
    for path in ("/", "/docs", "/docs.json", "/schema.json", "/healthz", "/model", "/livez/",
                 "/static_content/index.js"):
        assert _call(keyed, "GET", path).status_code == 401, path
    for path in ("/livez", "/readyz", "/metrics"):
        assert _call(keyed, "GET", path).status_code == 200, path
    assert _call(keyed, "GET", "/docs.json", headers={"X-API-Key": KEY[:-1]}).status_code == 401
    assert _call(keyed, "POST", "/predict", headers=AUTH, content=b"{}").content == b"{}"

    big = b"x" * (MAX_BODY_BYTES + 1)
    r = _call(keyed, "POST", "/predict", headers=AUTH, content=big)
    assert r.status_code == 413 and str(MAX_BODY_BYTES) in r.json()["error"]

    async def chunks(body: bytes):  # no Content-Length: chunked transfer
        for i in range(0, len(body), 4096):
            yield body[i:i + 4096]

    assert _call(keyed, "POST", "/predict", headers=AUTH, content=chunks(big)).status_code == 413
    ok = b"y" * MAX_BODY_BYTES
    r = _call(keyed, "POST", "/predict", headers=AUTH, content=chunks(ok))
    assert r.status_code == 200 and r.content == ok  # replayed to the app unchanged

    opened = ApiKeyMiddleware(_echo_app, no_auth=True)
    assert _call(opened, "GET", "/docs.json").status_code == 200
    assert _call(opened, "POST", "/predict", content=big).status_code == 413

    refused = ApiKeyMiddleware(_echo_app)  # no key, no --no-auth: never ready
    r = _call(refused, "GET", "/readyz")
    assert r.status_code == 503 and "without an API key" in r.json()["error"]


def test_patient_ids_must_be_pseudonyms_and_errors_do_not_echo() -> None:
    from pydantic import ValidationError

    from atrx.pseudonym import PATIENT_RE
    from serving.schemas import (
        BatchPredictRequest,
        FeaturesRequest,
        PredictRequest,
        describe_validation_error,
    )

    assert PredictRequest(patient_id="A-3f2a9c1b0d4e").patient_id == "A-3f2a9c1b0d4e"
    assert PATIENT_RE.match("Center_7-3f2a9c1b0d4e")
    for bad in NOT_PSEUDONYMS:
        with pytest.raises(ValidationError) as err:
            PredictRequest(patient_id=bad)
        assert bad.strip() not in describe_validation_error(err.value)
    with pytest.raises(ValidationError) as err:
        BatchPredictRequest(patient_ids=["A-3f2a9c1b0d4e", "Jane Doe"])
    assert describe_validation_error(err.value).startswith("patient_ids[1]:")
    odd_key = "Jane Doe, born 1961"
    with pytest.raises(ValidationError) as err:
        FeaturesRequest.model_validate(
            {"clinical": {"age": 50, "sex": "male", "who_grade": 3, "vasari_score": 70},
             "imaging": {odd_key: 1.0}, odd_key: 2})
    text = describe_validation_error(err.value)
    assert odd_key not in text and "<key>" in text


# --- one real server ---------------------------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Any]:
    """A trained, promoted, materialised workspace served with :data:`KEY`."""
    from test_serving import START_TIMEOUT, TINY_STUDY, build_workspace

    from atrx import registry
    from feature_repo.offline import read_offline
    from serving.materialize import run_materialize
    from serving.server import free_port, serve
    from training.run import run_train

    root = tmp_path_factory.mktemp("serving_auth")
    ws = build_workspace(root / "home")
    study = root / "tiny.yaml"
    study.write_text(TINY_STUDY)
    registry.promote(ws, run_train(ws, as_of="2025-01-01", study_path=study).tag, reason="test")
    run_materialize(ws)
    known = read_offline(ws, "clinical", "v1")["patient_id"].iloc[0]
    handle = serve(ws, free_port(), api_key=KEY, log_file=root / "server.log")
    try:
        handle.wait_ready(START_TIMEOUT)
        handle.known = known  # type: ignore[attr-defined]
        yield handle
    finally:
        handle.stop()


def _post(server: Any, route: str, payload: Any, headers: dict[str, str] | None = None,
          ) -> httpx.Response:
    if isinstance(payload, bytes):
        return httpx.post(f"{server.url}{route}", content=payload, timeout=30,
                          headers={"Content-Type": "application/json", **(headers or AUTH)})
    return httpx.post(f"{server.url}{route}", json=payload, headers=headers or AUTH, timeout=30)


def test_docs_and_model_need_the_key_only_probes_are_open(served) -> None:
    for path in ("/", "/docs", "/docs.json", "/schema.json", "/healthz"):
        assert httpx.get(f"{served.url}{path}", timeout=10).status_code == 401, path
    assert _post(served, "/model", {}, headers={"X-API-Key": "wrong"}).status_code == 401
    for path in ("/livez", "/readyz", "/metrics"):
        assert httpx.get(f"{served.url}{path}", timeout=10).status_code == 200, path
    spec = httpx.get(f"{served.url}/docs.json", headers=AUTH, timeout=10)
    assert spec.status_code == 200 and "/predict" in spec.json()["paths"]
    assert httpx.get(f"{served.url}/", headers=AUTH, timeout=10).status_code == 200
    assert _post(served, "/model", {}).status_code == 200
    assert httpx.post(f"{served.url}/model", headers=AUTH, timeout=10).status_code == 200  # no body
    assert "auth: X-API-Key required" in served.log_tail(10**6)  # the worker logs its mode


def test_ids_not_pseudonyms_are_422_unknown_404_neither_echoed_nor_logged(served) -> None:
    for bad in NOT_PSEUDONYMS:
        for route, body in (("/predict", {"patient_id": bad}),
                            ("/predict_batch", {"patient_ids": [served.known, bad]})):
            r = _post(served, route, body)
            assert r.status_code == 422, (bad, r.text)
            assert "patient_id" in r.text and bad.strip() not in r.text
            assert json.dumps(bad)[1:-1] not in r.text
    r = _post(served, "/predict", {"patient_id": UNKNOWN})
    assert r.status_code == 404 and UNKNOWN not in r.text and "position 0" in r.text
    r = _post(served, "/predict_batch", {"patient_ids": [served.known, UNKNOWN]})
    assert r.status_code == 404 and "position 1" in r.text
    assert UNKNOWN not in r.text and served.known not in r.text
    log = served.log_tail(10**7)
    assert UNKNOWN not in log and "Jane Doe" not in log and "MRN004711" not in log
    assert "unknown patient id" in log  # the refusal itself is logged, without the id


def test_body_size_content_type_junk_and_extreme_values(served) -> None:
    from serving.auth import MAX_BODY_BYTES

    padded = b'{"patient_id": "' + b"a" * MAX_BODY_BYTES + b'"}'
    r = _post(served, "/predict", padded)
    assert r.status_code == 413 and str(MAX_BODY_BYTES) in r.text
    r = httpx.post(f"{served.url}/predict", content=b"patient_id=A-3f2a9c1b0d4e", timeout=10,
                   headers={**AUTH, "Content-Type": "application/x-www-form-urlencoded"})
    assert r.status_code == 415 and "A-3f2a9c1b0d4e" not in r.text
    for junk in (b"\xff\xfe", b'{"patient_id": "MRN004711"', b"null", b'"MRN004711"'):
        r = _post(served, "/predict", junk)
        assert r.status_code == 422 and "MRN004711" not in r.text, (junk, r.text)
    r = _post(served, "/model", b'{"MRN004711": 1}')
    assert r.status_code == 422 and "MRN004711" not in r.text and "unexpected key" in r.text
    r = _post(served, "/predict", {"patient_id": served.known, "jane_doe_1961": 1})
    assert r.status_code == 422 and "jane_doe" not in r.text and "unexpected key" in r.text
    imaging = dict.fromkeys(_post(served, "/model", {}).json()["imaging_features"], 1e308)
    clinical = {"age": 120, "sex": "female", "who_grade": 4, "vasari_score": -1e308}
    r = _post(served, "/predict_features",
              {"clinical": clinical, "imaging": imaging, "patient_id": UNKNOWN})
    assert r.status_code in (200, 422), r.text  # never a 500, whatever the model makes of it
    assert UNKNOWN not in served.log_tail(10**7)  # not looked up: only its center is logged


def _strings(value: Any) -> Iterator[tuple[str, bool]]:
    """(text, is a dict key) for every string and number of a JSON-like value."""
    if isinstance(value, dict):
        for k, v in value.items():
            yield str(k), True
            yield from _strings(v)
    elif isinstance(value, list | tuple):
        for v in value:
            yield from _strings(v)
    elif isinstance(value, bytes):
        yield value.decode("utf-8", "replace"), False
    elif isinstance(value, str | int | float) and not isinstance(value, bool):
        yield str(value), False


def test_schemathesis_finds_no_5xx_and_no_echo(served) -> None:
    """Positive and negative cases of every operation of the live OpenAPI document, bounded.

    An echo is a submitted string or number of 4+ characters (not a word of the document itself,
    nor a key that is a plain name: an unknown imaging feature name is named as unknown; other
    unexpected keys are not named, see test_body_size_content_type_junk_and_extreme_values) in a non-2xx answer;
    2xx answers carry the caller's own pseudonym back by design.
    """
    import re

    import schemathesis
    from hypothesis import HealthCheck, Phase, given, settings
    from hypothesis import strategies as st
    from schemathesis.generation import GenerationMode

    url = served.url
    schema = schemathesis.openapi.from_url(f"{url}/docs.json", headers=AUTH, timeout=30)
    schema_text = json.dumps(schema.raw_schema)
    operations = [result.ok() for result in schema.get_all_operations()]
    assert {"/predict", "/predict_batch", "/predict_features", "/model"} <= {
        op.path for op in operations}
    strategy = st.one_of([op.as_strategy(generation_mode=mode) for op in operations
                          for mode in (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)])
    plain_name = re.compile(r"^[A-Za-z_][A-Za-z0-9_]*$")
    seen: list[int] = []

    @settings(max_examples=80, deadline=None, derandomize=True, database=None,
              phases=[Phase.explicit, Phase.generate], suppress_health_check=list(HealthCheck))
    @given(case=strategy)
    def check(case: Any) -> None:
        response = case.call(base_url=url, headers=AUTH, timeout=30)
        seen.append(response.status_code)
        sent = f"{case.method} {case.path} {case.body!r}"
        assert response.status_code < 500, f"{sent} -> {response.status_code} {response.content!r}"
        if response.status_code < 300:
            return
        text = response.content.decode("utf-8", "replace")
        for raw, is_key in set(_strings(case.body)):
            value = raw.strip()
            if len(value) < 4 or value in schema_text or (is_key and plain_name.match(value)):
                continue
            assert value not in text and json.dumps(value)[1:-1] not in text, (
                f"{sent} -> {response.status_code} echoes {value!r}: {text[:300]}")

    check()
    assert len(seen) >= 40 and any(400 <= s < 500 for s in seen)
