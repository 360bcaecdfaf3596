"""Starting, waiting for, stopping and calling the prediction server.

``serve`` runs ``python -m bentoml serve serving.service:ATRXService`` as a child process in its
own session (process group), with ``ATRX_HOME``/``BENTOML_HOME`` and either ``ATRX_API_KEY`` or
``ATRX_NO_AUTH=1`` in its environment (never both; no key and no ``no_auth`` refuses to start,
:mod:`serving.auth`). Why a subprocess and not ``bentoml.serve()`` in-process: BentoML resolves
``BENTOML_HOME`` once per process and its arbiter spawns worker processes anyway; a child with
its own environment and process group can be stopped completely (``killpg``) by whoever started
it, which is what tests and the CLI need. Before spawning, the same version check the service
does is run here, so a refusal is an exception with the reason, not a dead child.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from types import TracebackType
from typing import IO, Any, Final

from atrx.errors import ServiceError
from atrx.workspace import Workspace
from serving.auth import API_KEY_ENV, NO_AUTH_ENV, AuthMode, resolve_auth

ROOT: Final[Path] = Path(__file__).resolve().parents[1]
SERVICE: Final[str] = "serving.service:ATRXService"
READY_PATH: Final[str] = "/readyz"


class ServerStartError(ServiceError):
    """The server process exited or never became ready; carries the tail of its log."""


class ServingHTTPError(ServiceError):
    """A non-2xx answer of the prediction server: ``status`` and the server's ``detail``."""

    def __init__(self, status: int, detail: str) -> None:
        self.status = status
        self.detail = detail
        fix = f"set {API_KEY_ENV} to the server's key" if status == 401 else None
        super().__init__(f"HTTP {status}: {detail}", fix=fix)


def free_port(host: str = "127.0.0.1") -> int:
    """A TCP port free on ``host`` right now (the OS picks it)."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return int(s.getsockname()[1])


def server_env(
    ws: Workspace, api_key: str | None = None, extra: Mapping[str, str] | None = None,
    *, no_auth: bool = False,
) -> dict[str, str]:
    """The child's environment: workspace, model store, key (or ``ATRX_NO_AUTH=1``), no
    telemetry. An ``ATRX_NO_AUTH`` inherited from this process is dropped unless ``no_auth``."""
    env = dict(os.environ)
    env.pop(NO_AUTH_ENV, None)
    if no_auth:
        env.pop(API_KEY_ENV, None)
        env[NO_AUTH_ENV] = "1"
    env.update(
        {
            "ATRX_HOME": ws.home,
            "BENTOML_HOME": ws.bentoml_home,
            "BENTOML_DO_NOT_TRACK": "True",
            "PYTHONPATH": os.pathsep.join([str(ROOT), *filter(None, [env.get("PYTHONPATH")])]),
        }
    )
    if api_key is not None:
        env[API_KEY_ENV] = api_key
    env.update(extra or {})
    return env


@dataclass
class ServerProcess:
    """A running ``bentoml serve``; a context manager that always stops it."""

    process: subprocess.Popen[bytes]
    url: str
    log_path: Path | None = None
    _log: IO[bytes] | None = field(default=None, repr=False)

    def __enter__(self) -> ServerProcess:
        return self

    def __exit__(
        self, exc_type: type[BaseException] | None, exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    @property
    def running(self) -> bool:
        return self.process.poll() is None

    def log_tail(self, chars: int = 8000) -> str:
        """The end of the server's log file ('' when it logs to the terminal)."""
        if self.log_path is None or not self.log_path.is_file():
            return ""
        return self.log_path.read_text(encoding="utf-8", errors="replace")[-chars:]

    def wait_ready(self, timeout: float = 120.0) -> None:
        """Block until ``/readyz`` answers 200; raise with the log tail if the process dies."""
        wait_ready(self.url, timeout, server=self)

    def wait(self) -> int:
        """Block until the server exits (Ctrl-C stops it); returns its exit code.

        Polls rather than parking in one ``waitpid``: a signal the kernel hands to another thread
        of this process (DuckDB, Feast and BentoML start some) runs its Python handler only when
        the main thread next executes bytecode, which a thread blocked in ``waitpid`` never does.
        """
        try:
            while True:
                try:
                    return self.process.wait(timeout=0.5)
                except subprocess.TimeoutExpired:
                    continue
        except KeyboardInterrupt:
            self.stop()
            return 130

    def stop(self, timeout: float = 20.0) -> int | None:
        """SIGTERM the server's process group, SIGKILL what is left after ``timeout`` seconds.

        BentoML's workers run in process groups of their own, so they are found as the arbiter's
        descendants first: a killed arbiter must not leave one holding memory or the port.
        """
        descendants = _descendants(self.process.pid)
        if self.process.poll() is None:
            _signal_group(self.process.pid, signal.SIGTERM)
            try:
                self.process.wait(timeout=timeout)
            except subprocess.TimeoutExpired:
                _signal_group(self.process.pid, signal.SIGKILL)
                self.process.wait(timeout=timeout)
        _signal_group(self.process.pid, signal.SIGKILL)
        _kill_left(descendants, timeout)
        if self._log is not None:
            self._log.close()
            self._log = None
        return self.process.returncode


def _descendants(pid: int) -> list[Any]:
    """The live descendants of ``pid`` (psutil handles, which know each process's start time,
    so a recycled pid is never signalled)."""
    import psutil

    try:
        return psutil.Process(pid).children(recursive=True)
    except psutil.Error:
        return []


def _kill_left(processes: list[Any], timeout: float) -> None:
    """SIGKILL whichever of ``processes`` is still running, and reap-wait for them."""
    import psutil

    alive = [p for p in processes if p.is_running()]
    for p in alive:
        try:
            p.kill()
        except psutil.Error:
            pass
    psutil.wait_procs(alive, timeout=timeout)


def _signal_group(pgid: int, sig: signal.Signals) -> None:
    try:
        os.killpg(pgid, sig)
    except (ProcessLookupError, PermissionError):
        pass


def auth_mode(api_key: str | None = None, no_auth: bool = False) -> AuthMode:
    """The auth mode ``serve`` would start with (``api_key`` defaults to ``$ATRX_API_KEY``);
    :class:`serving.auth.AuthSetupError` when there is none. ``$ATRX_NO_AUTH`` is not read here:
    only ``no_auth`` (``atrx serve --no-auth``) opens a server started from this process."""
    return resolve_auth(api_key, no_auth=no_auth)


def preflight(ws: Workspace) -> str:
    """What the service checks at start, in this process: returns the tag it would serve.

    Raises :class:`serving.errors.ServingSetupError` when there is no production model or the
    registered feature versions differ from the model's.
    """
    from serving.model import needed_versions, production_record
    from serving.online import open_feature_store, require_versions, store_versions

    record = production_record(ws)
    expected = needed_versions(record.metadata, record.metadata.get("required_features") or [])
    require_versions(str(record.tag), expected, store_versions(open_feature_store(ws)))
    return str(record.tag)


def serve(
    ws: Workspace,
    port: int,
    host: str = "127.0.0.1",
    api_key: str | None = None,
    log_file: str | os.PathLike[str] | None = None,
    check: bool = True,
    extra_env: Mapping[str, str] | None = None,
    service: str = SERVICE,
    no_auth: bool = False,
) -> ServerProcess:
    """Start ``bentoml serve`` for the workspace on ``host:port``; returns at once.

    Use ``wait_ready`` (or ``ServerProcess.wait_ready``) before calling it, and ``stop()`` (or a
    ``with`` block) to end it. ``api_key`` defaults to ``$ATRX_API_KEY``; it must be at least 32
    characters, and without one the server refuses to start unless ``no_auth`` (every route open)
    is given: :class:`serving.auth.AuthSetupError`, before anything is started.
    ``log_file``: where the server's output goes (default: this terminal). ``check`` runs the
    service's start-up checks here first so a refusal raises with its reason. ``service``: another
    BentoML service spec (``module:Class``, importable from the repository root; benchmarks).
    """
    auth = auth_mode(api_key, no_auth)
    if check:
        preflight(ws)
    log_path = Path(log_file) if log_file is not None else None
    log = open(log_path, "ab") if log_path is not None else None  # noqa: SIM115 - owned by handle
    cmd = [
        sys.executable, "-m", "bentoml", "serve", service,
        "--host", host, "--port", str(int(port)), "--working-dir", str(ROOT),
    ]
    process = subprocess.Popen(
        cmd,
        cwd=str(ROOT),
        env=server_env(ws, auth.key, extra_env, no_auth=auth.open),
        stdin=subprocess.DEVNULL,
        stdout=log if log is not None else None,
        stderr=subprocess.STDOUT if log is not None else None,
        start_new_session=True,
    )
    shown = f"[{host}]" if ":" in host else host
    return ServerProcess(process, f"http://{shown}:{int(port)}", log_path, log)


def wait_ready(url: str, timeout: float = 120.0, server: ServerProcess | None = None) -> None:
    """Poll ``{url}/readyz`` until it answers 200 or ``timeout`` seconds pass.

    With ``server``, a process that exits while starting (e.g. the refusal on a feature
    version mismatch) raises :class:`ServerStartError` at once, with its log tail.
    """
    import httpx

    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if server is not None and not server.running:
            raise ServerStartError(
                f"the server exited with code {server.process.returncode} while starting:\n"
                f"{server.log_tail()}"
            )
        try:
            r = httpx.get(f"{url}{READY_PATH}", timeout=2.0)
            if r.status_code == 200:
                return
            last = f"HTTP {r.status_code}"
        except httpx.HTTPError as exc:
            last = type(exc).__name__
        time.sleep(0.25)
    tail = server.log_tail() if server is not None else ""
    raise ServerStartError(f"{url} not ready after {timeout:.0f} s ({last})\n{tail}")


def error_message(response: Any) -> str:
    """The ``error`` text of a BentoML error answer (``{"error"}`` or ``[{"error"}]``)."""
    try:
        body = response.json()
    except (ValueError, json.JSONDecodeError):
        return response.text
    if isinstance(body, list) and body and isinstance(body[0], dict):
        body = body[0]
    if isinstance(body, dict) and "error" in body:
        return str(body["error"])
    return response.text


def _headers(api_key: str | None) -> dict[str, str]:
    key = api_key if api_key is not None else os.environ.get(API_KEY_ENV)
    return {"X-API-Key": key} if key else {}


def post_json(
    url: str, route: str, payload: Mapping[str, Any], api_key: str | None = None,
    timeout: float = 30.0, client: Any = None,
) -> dict[str, Any]:
    """POST ``payload`` to ``url + route``; the JSON answer.

    Raises :class:`ServingHTTPError` for a non-2xx answer and :class:`atrx.errors.ServiceError`
    when no server answers at ``url`` (refused, unreachable, timed out).
    """
    import httpx

    target = f"{url.rstrip('/')}{route}"
    post = httpx.post if client is None else client.post
    try:
        r = post(target, json=dict(payload), headers=_headers(api_key), timeout=timeout)
    except httpx.TransportError as exc:
        raise ServiceError(f"cannot reach {url} ({str(exc) or type(exc).__name__})",
                           fix="start it with `atrx serve`") from exc
    if r.status_code >= 400:
        raise ServingHTTPError(r.status_code, error_message(r))
    return dict(r.json())


def predict_http(
    url: str, patient_id: str, api_key: str | None = None, timeout: float = 30.0
) -> dict[str, Any]:
    """``POST /predict`` for one patient (``atrx predict PATIENT_ID``); key from ``$ATRX_API_KEY``."""
    return post_json(url, "/predict", {"patient_id": patient_id}, api_key, timeout)
