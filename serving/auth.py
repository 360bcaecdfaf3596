"""How the prediction service guards its door: the API key, the open mode, the body size limit.

Fails closed. The service serves only with a key of at least :data:`MIN_KEY_LENGTH` characters
in ``ATRX_API_KEY``, or with authentication explicitly switched off (``ATRX_NO_AUTH=1``, which
``atrx serve --no-auth`` sets for its child); anything else refuses to start
(:class:`AuthSetupError`). With a key, every route but :data:`OPEN_PATHS` (the probes and
Prometheus) answers 401 without it, the OpenAPI document (``/docs.json``), its UI (``/``) and
``/model`` included. Every request body is limited to :data:`MAX_BODY_BYTES` (413 beyond), checked
before BentoML reads it.
"""

from __future__ import annotations

import hmac
import json
import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any, Final

from atrx.errors import InputError

__all__ = [
    "API_KEY_ENV",
    "API_KEY_HEADER",
    "MAX_BODY_BYTES",
    "MIN_KEY_LENGTH",
    "NO_AUTH_ENV",
    "OPEN_PATHS",
    "ApiKeyMiddleware",
    "AuthMode",
    "AuthSetupError",
    "resolve_auth",
]

#: the API key the server requires (and ``predict_http`` sends)
API_KEY_ENV: Final[str] = "ATRX_API_KEY"
#: ``1`` serves without a key (``atrx serve --no-auth`` sets it for the ``bentoml serve`` child)
NO_AUTH_ENV: Final[str] = "ATRX_NO_AUTH"
API_KEY_HEADER: Final[str] = "x-api-key"
MIN_KEY_LENGTH: Final[int] = 32
#: the largest request body accepted (a full ``/predict_batch`` of 1,000 ids is ~20 KiB)
MAX_BODY_BYTES: Final[int] = 64 * 1024
#: probes and metrics stay open so Kubernetes and Prometheus need no key; nothing else does
OPEN_PATHS: Final[frozenset[str]] = frozenset({"/livez", "/readyz", "/metrics"})
MAKE_KEY: Final[str] = 'python -c "import secrets;print(secrets.token_urlsafe(32))"'
_TRUE: Final[frozenset[str]] = frozenset({"1", "true", "yes", "on"})


class AuthSetupError(InputError):
    """The service's authentication is missing or unusable: it refuses to start."""


@dataclass(frozen=True)
class AuthMode:
    """What the service requires: ``key`` (never shown in a repr), or ``None`` for open."""

    key: str | None = field(default=None, repr=False)

    @property
    def open(self) -> bool:
        return self.key is None

    def describe(self) -> str:
        """One line for the start-up log (no key in it)."""
        if self.open:
            return ("auth: OPEN (--no-auth / ATRX_NO_AUTH=1): every route answers without an "
                    "API key")
        return (f"auth: X-API-Key required on every route except "
                f"{', '.join(sorted(OPEN_PATHS))}")


def _flag(value: str | None) -> bool:
    return (value or "").strip().lower() in _TRUE


def check_key(key: str) -> str:
    """``key`` when it is usable as an API key; :class:`AuthSetupError` (naming no key) if not."""
    if len(key) < MIN_KEY_LENGTH:
        raise AuthSetupError(
            f"{API_KEY_ENV} is {len(key)} characters long; the service needs at least "
            f"{MIN_KEY_LENGTH}",
            fix=f"export {API_KEY_ENV}=$({MAKE_KEY}), or pass --no-auth to serve without a key",
        )
    if not (key.isascii() and key.isprintable()) or any(c.isspace() for c in key):
        raise AuthSetupError(
            f"{API_KEY_ENV} holds spaces or non-ASCII characters, which an HTTP header cannot "
            "carry reliably",
            fix=f"export {API_KEY_ENV}=$({MAKE_KEY})",
        )
    return key


def resolve_auth(
    api_key: str | None = None,
    no_auth: bool | None = None,
    env: Mapping[str, str] | None = None,
) -> AuthMode:
    """The auth mode to serve with; :class:`AuthSetupError` when there is none (fails closed).

    ``api_key`` defaults to ``$ATRX_API_KEY`` and ``no_auth`` to ``$ATRX_NO_AUTH`` (the worker
    reads both from its environment; ``atrx serve`` passes ``no_auth`` explicitly, so a stray
    ``ATRX_NO_AUTH`` in a shell never opens a server). A key AND no-auth is refused as ambiguous.
    """
    env = os.environ if env is None else env
    key = api_key if api_key is not None else env.get(API_KEY_ENV, "")
    wants_open = _flag(env.get(NO_AUTH_ENV)) if no_auth is None else no_auth
    if wants_open:
        if key:
            raise AuthSetupError(
                f"both {API_KEY_ENV} and --no-auth ({NO_AUTH_ENV}) are set: serve with the key "
                "or without one, not both",
                fix=f"unset {API_KEY_ENV} to serve without a key, or drop --no-auth",
            )
        return AuthMode(None)
    if not key:
        raise AuthSetupError(
            f"refusing to serve without an API key: {API_KEY_ENV} is not set",
            fix=f"export {API_KEY_ENV} (at least {MIN_KEY_LENGTH} characters, e.g. "
                f"`export {API_KEY_ENV}=$({MAKE_KEY})`) and send it as X-API-Key, or pass "
                "--no-auth to serve without a key (loopback/demo only)",
        )
    return AuthMode(check_key(key))


async def _answer(send: Any, status: int, message: str, extra: list[tuple[bytes, bytes]]) -> None:
    body = json.dumps({"error": message}).encode("utf-8")
    headers = [(b"content-type", b"application/json"),
               (b"content-length", str(len(body)).encode("latin-1")), *extra]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


class ApiKeyMiddleware:
    """ASGI middleware: 401 without the right ``X-API-Key``, 413 over :data:`MAX_BODY_BYTES`.

    Runs before BentoML parses the body, so an unauthenticated caller learns nothing about the
    payload's validity. The mode is read when the app is built (:func:`resolve_auth` on the
    environment), not at import; when it cannot be resolved every request, probes included,
    answers 503, so a misconfigured worker is never ready (the service's ``__init__`` refuses
    to start with the reason).
    """

    def __init__(self, app: Any, api_key: str | None = None, no_auth: bool | None = None,
                 max_body: int = MAX_BODY_BYTES) -> None:
        self.app = app
        self.max_body = int(max_body)
        self.refusal: str | None = None
        self.key: bytes | None = None
        try:
            mode = resolve_auth(api_key, no_auth)
        except AuthSetupError as exc:
            self.refusal = exc.message
        else:
            self.key = mode.key.encode("utf-8") if mode.key is not None else None

    async def __call__(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        if scope.get("type") != "http":
            await self.app(scope, receive, send)
            return
        if self.refusal is not None:
            await _answer(send, 503, f"server misconfigured: {self.refusal}", [])
            return
        headers = dict(scope.get("headers") or [])
        if self.key is not None and scope.get("path") not in OPEN_PATHS:
            given = headers.get(API_KEY_HEADER.encode("latin-1"), b"")
            if not hmac.compare_digest(given, self.key):
                await _answer(send, 401, "missing or wrong API key: send it in the X-API-Key "
                                         f"header (configured with {API_KEY_ENV})",
                              [(b"www-authenticate", b'ApiKey header="X-API-Key"')])
                return
        length = headers.get(b"content-length")
        if length is not None:
            if not length.isdigit():
                await _answer(send, 400, "invalid Content-Length header", [])
                return
            if int(length) > self.max_body:
                await self._too_large(send)
                return
            await self.app(scope, receive, send)
            return
        await self._buffered(scope, receive, send)

    async def _too_large(self, send: Any) -> None:
        await _answer(send, 413, f"request body over {self.max_body} bytes", [])

    async def _buffered(self, scope: dict[str, Any], receive: Any, send: Any) -> None:
        """A body without Content-Length (chunked): read it up to the limit, then replay it."""
        chunks: list[bytes] = []
        total = 0
        while True:
            message = await receive()
            if message["type"] != "http.request":  # the client went away
                return
            chunk = message.get("body", b"")
            total += len(chunk)
            if total > self.max_body:
                await self._too_large(send)
                return
            chunks.append(chunk)
            if not message.get("more_body", False):
                break
        replayed = False

        async def replay() -> dict[str, Any]:
            nonlocal replayed
            if not replayed:
                replayed = True
                return {"type": "http.request", "body": b"".join(chunks), "more_body": False}
            return await receive()

        await self.app(scope, replay, send)
