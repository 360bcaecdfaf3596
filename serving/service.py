"""The BentoML 1.4 service: ``bentoml serve serving.service:ATRXService``.

The process finds its workspace from ``ATRX_HOME`` and its model store from ``BENTOML_HOME``
(both exported by :func:`serving.server.serve`; in a container, by the deployment). Each worker
loads the served model ONCE in ``__init__`` and refuses to start when it has no usable API key
and was not told to serve without one (:mod:`serving.auth`), when the feature store's
registered feature versions differ from the model's, or when the model cannot be loaded: it logs
the reason and stops the whole ``bentoml serve`` process, which BentoML would otherwise keep
respawning the failed worker under. It logs its auth mode at start.

Endpoints (all ``POST``, JSON): ``/predict``, ``/predict_batch``, ``/predict_features``,
``/model``. Errors carry their HTTP status: 401 wrong/missing ``X-API-Key`` (every route but
``/livez``, ``/readyz``, ``/metrics``), 413 body over 64 KiB, 415 body not JSON, 404 unknown
patient (the id is not echoed), 422 malformed payload (values not echoed) / missing / stale
features. BentoML 1.4
wraps 4xx bodies as ``[{"error": "..."}]`` (a one-element list); :func:`serving.server.error_message`
reads either shape.
"""

from __future__ import annotations

import logging
import os
import signal
from typing import Any, Final

import bentoml
from bentoml.exceptions import BentoMLException

from atrx.errors import debug_enabled
from atrx.workspace import Workspace
from serving.auth import OPEN_PATHS, ApiKeyMiddleware, resolve_auth
from serving.predictor import FusionPredictor
from serving.schemas import (
    BatchPrediction,
    BatchPredictRequest,
    FeaturesRequest,
    ModelDescription,
    ModelRequest,
    Prediction,
    PredictRequest,
)

__all__ = ["OPEN_PATHS", "SERVICE_SETTINGS", "ATRXService", "ClientErrorFilter"]

#: the logger BentoML 1.4 writes every failed request's traceback to
_BENTOML_REQUEST_LOGGER: Final[str] = "bentoml._internal.server.http_app"

log = logging.getLogger("atrx.serving")


class ClientErrorFilter(logging.Filter):
    """Turn BentoML's ERROR + traceback for a 4xx answer into one WARNING line.

    A wrong id or a missing feature is the caller's problem, not a server fault; the one line
    keeps the reason (ids and feature names, never values) without a traceback per request.
    """

    def filter(self, record: logging.LogRecord) -> bool:
        exc = record.exc_info[1] if record.exc_info else None
        if not (isinstance(exc, BentoMLException) and int(exc.error_code) < 500):
            return True
        try:  # a filter must never raise: a logging error inside a request hangs it
            args = (record.getMessage(), int(exc.error_code), type(exc).__name__, str(exc))
        except Exception:
            return True
        record.msg, record.args = "%s -> %d %s: %s", args
        record.levelno, record.levelname = logging.WARNING, "WARNING"
        record.exc_info, record.exc_text = None, None
        return True


def _install_client_error_filter() -> None:
    target = logging.getLogger(_BENTOML_REQUEST_LOGGER)
    if not any(isinstance(f, ClientErrorFilter) for f in target.filters):
        target.addFilter(ClientErrorFilter())


def _stop_bentoml_server() -> None:
    """SIGTERM the ``bentoml serve`` arbiter that spawned this worker.

    BentoML (circus) respawns a worker whose start-up fails, forever outside a container; a
    refusal must stop the whole server so it exits instead of looping.
    """
    try:
        import psutil

        parent = psutil.Process(os.getppid())
        cmdline = parent.cmdline()
    except Exception:  # no parent to inspect: nothing to stop
        return
    if "bentoml" in " ".join(cmdline) and "serve" in cmdline:
        os.kill(parent.pid, signal.SIGTERM)


#: worker, traffic and access-log settings of the service (the serving benchmark's bare baseline
#: runs with the same ones)
SERVICE_SETTINGS: Final[dict[str, Any]] = {
    "workers": 1,
    "traffic": {"timeout": 30, "max_concurrency": 256},
    "logging": {"access": {"enabled": True, "request_content_length": True,
                           "response_content_length": True}},
}


@bentoml.service(name="atrx_fusion_service", **SERVICE_SETTINGS)
class ATRXService:
    """ATRX mutation risk from the production fusion model and Feast online features."""

    def __init__(self) -> None:
        # ATRX_HOME / BENTOML_HOME come from the environment; loading happens once per worker
        _install_client_error_filter()
        if log.level == logging.NOTSET:  # the worker's root logger is at WARNING
            log.setLevel(logging.INFO)
        try:
            auth = resolve_auth()  # fails closed: no key (and no --no-auth) or a short key
            (log.warning if auth.open else log.info)("%s", auth.describe())
            self.predictor = FusionPredictor.load(Workspace.at(None))
        except Exception as exc:  # any load failure is fatal: never loop on respawns
            log.critical("%s: %s", type(exc).__name__, exc, exc_info=debug_enabled())
            _stop_bentoml_server()
            raise
        log.info("serving %s (features %s)", self.predictor.served.tag,
                 self.predictor.served.feature_versions)

    @bentoml.api(route="/predict")
    def predict(self, request: PredictRequest, /) -> Prediction:
        """One patient by pseudonymous id: online lookup of exactly the model's features."""
        return self.predictor.predict_ids([request.patient_id])[0]

    @bentoml.api(route="/predict_batch")
    def predict_batch(self, request: BatchPredictRequest, /) -> BatchPrediction:
        """Several patients with ONE online lookup; any unknown id or missing feature fails all."""
        return BatchPrediction(
            model_version=self.predictor.served.tag,
            predictions=self.predictor.predict_ids(request.patient_ids),
        )

    @bentoml.api(route="/predict_features")
    def predict_features(self, request: FeaturesRequest, /) -> Prediction:
        """Explicit clinical values and imaging features; no lookup."""
        return self.predictor.predict_values(request.clinical, request.imaging, request.patient_id)

    @bentoml.api(route="/model")
    def model(self, request: ModelRequest, /) -> ModelDescription:
        """The served model's tag, required features, feature versions and cutoff."""
        return self.predictor.describe()


ATRXService.add_asgi_middleware(ApiKeyMiddleware)
