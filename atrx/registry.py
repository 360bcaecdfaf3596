"""Model registry: fused models in the workspace's BentoML model store, with stages.

Models are saved with ``bentoml.sklearn.save_model`` as ``atrx_fusion:<version>`` (joblib of the
:class:`training.fusion.FusionModel`; ``bentoml.sklearn.load_model`` or :func:`load_model` gives
it back), labelled ``{"stage": "candidate"}`` and with metadata describing the run.

Where the store lives. BentoML resolves ``BENTOML_HOME`` once per process: the container's
``bentoml_home`` / ``model_store`` providers are memoising singletons, so changing
``os.environ["BENTOML_HOME"]`` after the first use does nothing, and the default is
``~/bentoml``. This module never relies on it: every function opens
``ModelStore(<ws.bentoml_home>/models)`` explicitly and passes it (``_model_store=`` of
``bentoml.models.get/list``), and around ``bentoml.sklearn.save_model`` (which has no store
argument) it patches the container's ``model_store`` provider with simple-di's ``patch``
context manager, the mechanism BentoML's own service loader uses to switch stores. So several
workspaces can be used from one process. A serving process should export
``BENTOML_HOME=<home>/bentoml`` before BentoML is imported (``bentoml serve`` reads it), which is
also what ``Workspace.bentoml_home`` returns when that variable is set. Usage telemetry is
switched off (``BENTOML_DO_NOT_TRACK``, unless the caller set it).

Stages. A BentoML 1.4 model's labels cannot change after saving: ``ModelInfo`` is a frozen attrs
class, written once to ``model.yaml``, and neither the SDK nor the ``bentoml models`` CLI can
update labels of a local model. So the save-time label records how the model was born
(``candidate``) and the current stage lives in ``<bentoml_home>/atrx_stages.json`` next to the
store: ``{"stages": {tag: stage}, "history": [...]}``, rewritten atomically under a file lock.
Exactly one model is ``production``; promoting another archives the previous one.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import logging
import os
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from atrx.errors import NotFoundError
from atrx.workspace import Workspace

__all__ = [
    "MODEL_NAME",
    "STAGES",
    "ModelList",
    "ModelRecord",
    "Promotion",
    "RegistryError",
    "list_models",
    "load_model",
    "production",
    "promote",
    "save_candidate",
    "show",
    "stages_path",
]

log = logging.getLogger(__name__)

MODEL_NAME = "atrx_fusion"
STAGES: tuple[str, ...] = ("candidate", "production", "archived")
STAGE_FILE = "atrx_stages.json"


class RegistryError(NotFoundError):
    """A tag is unknown, or the stage file is inconsistent."""


def _bentoml() -> Any:
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")
    import bentoml

    return bentoml


def _store(ws: Workspace) -> Any:
    """The workspace's BentoML model store (``<bentoml_home>/models``), created if missing."""
    _bentoml()
    from bentoml._internal.models import ModelStore

    path = Path(ws.bentoml_home) / "models"
    path.mkdir(parents=True, exist_ok=True)
    return ModelStore(path)


def stages_path(ws: Workspace) -> Path:
    """The stage file next to the workspace's model store."""
    return Path(ws.bentoml_home) / STAGE_FILE


@contextlib.contextmanager
def _locked_stages(ws: Workspace) -> Iterator[dict[str, Any]]:
    """Read-modify-write of the stage file under an exclusive lock; written atomically on exit."""
    path = stages_path(ws)
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path.with_suffix(".lock"), "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        try:
            state = _read_stages(path)
            yield state
            tmp = path.with_name(f".{path.name}.tmp")
            tmp.write_text(json.dumps(state, indent=2, sort_keys=True), encoding="utf-8")
            os.replace(tmp, path)
        finally:
            fcntl.flock(lock, fcntl.LOCK_UN)


def _read_stages(path: Path) -> dict[str, Any]:
    if not path.is_file():
        return {"model": MODEL_NAME, "stages": {}, "history": []}
    try:
        state = json.loads(path.read_text(encoding="utf-8"))
    except json.JSONDecodeError as exc:
        raise RegistryError(f"{path} is not valid JSON ({exc}); restore it from the history") from exc
    state.setdefault("stages", {})
    state.setdefault("history", [])
    return state


def _now() -> str:
    return datetime.now(UTC).isoformat(timespec="seconds")


@dataclass
class ModelRecord:
    """One saved model: tag, current stage, creation time, labels and metadata."""

    tag: str
    stage: str
    created: datetime
    labels: dict[str, str]
    metadata: dict[str, Any] = field(repr=False)
    path: str = ""

    def summary_row(self) -> list[str]:
        """One line of ``list_models``: tag, stage, created, run, as of, best imaging, AUCs."""
        m = self.metadata
        auc = m.get("metrics", {}).get("Fusion", {})

        def fmt(set_name: str) -> str:
            value = (auc.get(set_name) or {}).get("auc")
            return "-" if value is None else f"{value:.3f}"

        return [
            self.tag,
            self.stage,
            self.created.strftime("%Y-%m-%d %H:%M:%S"),
            str(m.get("run_id", "-")),
            str(m.get("as_of", "-"))[:10],
            str(m.get("best_imaging_model", "-")),
            fmt("validation"),
            fmt("test"),
        ]

    def rows(self) -> list[tuple[str, str]]:
        """Key/value rows for ``show``."""
        m = self.metadata
        out = [("tag", self.tag), ("stage", self.stage), ("created", self.created.isoformat()),
               ("path", self.path)]
        for key in ("run_id", "as_of", "study_name", "study_hash", "data_hash", "train_hash",
                    "best_imaging_model", "cutoff", "cutoff_policy"):
            if key in m:
                out.append((key, str(m[key])))
        for model, per_set in (m.get("metrics") or {}).items():
            for set_name, values in per_set.items():
                if values and values.get("auc") is not None:
                    out.append((f"AUC {model} ({set_name})",
                                f"{values['auc']:.3f} ({values.get('auc_lo') or 0:.3f}-"
                                f"{values.get('auc_hi') or 0:.3f})"))
        req = m.get("required_features") or []
        out.append(("required features", f"{len(req)}: {', '.join(req)}"))
        for view, version in (m.get("feature_versions") or {}).items():
            out.append((f"feature version {view}", str(version)))
        return out


@dataclass
class ModelList:
    """Every ``atrx_fusion`` model, oldest first; ``rows()`` feeds the CLI table."""

    models: list[ModelRecord]
    exit_code: int = 0
    columns: tuple[str, ...] = ("tag", "stage", "created", "run", "as of", "best imaging",
                                "AUC val", "AUC test")

    def rows(self) -> list[list[str]]:
        return [m.summary_row() for m in self.models]


@dataclass
class Promotion:
    """What ``promote`` changed."""

    tag: str
    previous: str | None
    exit_code: int = 0

    def rows(self) -> list[tuple[str, str]]:
        return [("production", self.tag), ("archived", self.previous or "-")]


def _record(bento_model: Any, stages: Mapping[str, str]) -> ModelRecord:
    tag = str(bento_model.tag)
    info = bento_model.info
    labels = dict(info.labels)
    return ModelRecord(
        tag=tag,
        stage=stages.get(tag, labels.get("stage", "candidate")),
        created=info.creation_time,
        labels=labels,
        metadata=dict(info.metadata),
        path=str(bento_model.path),
    )


def _get(ws: Workspace, tag: str) -> Any:
    bentoml = _bentoml()
    from bentoml.exceptions import NotFound

    try:
        return bentoml.models.get(tag, _model_store=_store(ws))
    except NotFound as exc:
        raise RegistryError(f"no model {tag!r} in {Path(ws.bentoml_home) / 'models'}") from exc


def _metadata_safe(value: Any) -> Any:
    """BentoML metadata rejects None: drop None entries of mappings, NaN for None in lists.

    Readers use ``metadata.get(key)``, so a dropped key reads back as None.
    """
    if isinstance(value, dict):
        return {k: _metadata_safe(v) for k, v in value.items() if v is not None}
    if isinstance(value, list):
        return [float("nan") if v is None else _metadata_safe(v) for v in value]
    return value


def save_candidate(
    ws: Workspace,
    model: Any,
    metadata: Mapping[str, Any],
    labels: Mapping[str, str] | None = None,
) -> str:
    """Save a fitted FusionModel as a new ``atrx_fusion`` version labelled ``stage=candidate``."""
    bentoml = _bentoml()
    from bentoml._internal.configuration.containers import BentoMLContainer

    store = _store(ws)
    all_labels = {"stage": "candidate", **{k: str(v) for k, v in (labels or {}).items()}}
    with BentoMLContainer.model_store.patch(store):
        saved = bentoml.sklearn.save_model(
            MODEL_NAME,
            model,
            labels=all_labels,
            metadata=_metadata_safe(json.loads(json.dumps(dict(metadata), default=str))),
            signatures={
                "predict_proba": {"batchable": True, "batch_dim": 0},
                "predict": {"batchable": True, "batch_dim": 0},
            },
        )
    tag = str(saved.tag)
    with _locked_stages(ws) as state:
        state["stages"][tag] = "candidate"
        state["history"].append({"tag": tag, "from": None, "to": "candidate", "at": _now()})
    return tag


def list_models(ws: Workspace) -> ModelList:
    """Every saved ``atrx_fusion`` model with its current stage, oldest first."""
    bentoml = _bentoml()
    from bentoml.exceptions import NotFound

    try:
        found = bentoml.models.list(MODEL_NAME, _model_store=_store(ws))
    except NotFound:
        found = []
    stages = _read_stages(stages_path(ws))["stages"]
    records = [_record(m, stages) for m in found]
    return ModelList(sorted(records, key=lambda r: r.created))


def production(ws: Workspace) -> ModelRecord | None:
    """The production model, or None before the first promotion."""
    stages = _read_stages(stages_path(ws))["stages"]
    tags = [t for t, s in stages.items() if s == "production"]
    if len(tags) > 1:
        raise RegistryError(f"{stages_path(ws)} names {len(tags)} production models: {tags}")
    if not tags:
        return None
    return _record(_get(ws, tags[0]), stages)


def show(ws: Workspace, tag: str) -> ModelRecord:
    """One model by tag (``atrx_fusion:<version>``, a bare version, ``latest`` or ``production``)."""
    if tag == "production":
        record = production(ws)
        if record is None:
            raise RegistryError("no production model yet; promote one first")
        return record
    full = tag if ":" in tag else f"{MODEL_NAME}:{tag}"
    return _record(_get(ws, full), _read_stages(stages_path(ws))["stages"])


def promote(ws: Workspace, tag: str, reason: str = "") -> Promotion:
    """Make ``tag`` the one production model; the previous production model becomes archived."""
    record = show(ws, tag)
    with _locked_stages(ws) as state:
        stages = state["stages"]
        previous = [t for t, s in stages.items() if s == "production" and t != record.tag]
        at = _now()
        for old in previous:
            stages[old] = "archived"
            state["history"].append({"tag": old, "from": "production", "to": "archived", "at": at,
                                     "reason": f"replaced by {record.tag}"})
        before = stages.get(record.tag, record.labels.get("stage", "candidate"))
        stages[record.tag] = "production"
        if before != "production":
            state["history"].append({"tag": record.tag, "from": before, "to": "production",
                                     "at": at, "reason": reason})
    return Promotion(record.tag, previous[0] if previous else None)


def load_model(ws: Workspace, tag: str | None = None) -> Any:
    """The FusionModel of ``tag`` (default: the production model)."""
    bentoml = _bentoml()
    record = show(ws, tag or "production")
    return bentoml.sklearn.load_model(_get(ws, record.tag))
