"""The offline store's layout and column contract, without importing Feast.

Writers (feature extraction, clinical export) need the names and folders but not Feast, whose
import alone takes seconds; :mod:`feature_repo.definitions` builds the Feast objects from these.

Layout: ``<home>/offline/{view}/{feature_version}/part-*.parquet``. One folder per feature
version, so a registered view reads exactly one recipe's numbers.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Final

from atrx.errors import InputError
from atrx.names import KINDS, ROIS, SEQUENCES, all_views, view_name
from atrx.workspace import Workspace
from feature_repo.errors import FeatureViewError, NoPartsError

PROJECT: Final[str] = "atrx"
ENTITY: Final[str] = "patient"
JOIN_KEY: Final[str] = "patient_id"
EVENT_TIMESTAMP: Final[str] = "event_timestamp"
CREATED_TIMESTAMP: Final[str] = "created_timestamp"
FEATURE_VERSION: Final[str] = "feature_version"
STUDY_ID: Final[str] = "study_id"
SCAN_VERSION: Final[str] = "scan_version"

CLINICAL: Final[str] = "clinical"
LABELS: Final[str] = "labels"
IMAGING_VIEWS: Final[tuple[str, ...]] = tuple(view_name(*v) for v in all_views())
ALL_VIEWS: Final[tuple[str, ...]] = (*IMAGING_VIEWS, CLINICAL, LABELS)

#: feature columns of the tabular views and their Parquet dtype (pandas name)
CLINICAL_FEATURES: Final[dict[str, str]] = {
    "age": "float64",
    "sex": "string",
    "who_grade": "int64",
    "vasari_score": "float64",
}
LABEL_FEATURES: Final[dict[str, str]] = {"atrx_mutant": "int64", "atrx_status": "string"}
#: every imaging feature is stored and registered as float32 (Feast ``Float32``)
IMAGING_FEATURE_DTYPE: Final[str] = "float32"
SEX_VALUES: Final[frozenset[str]] = frozenset({"male", "female"})
ATRX_STATUS_VALUES: Final[frozenset[str]] = frozenset({"mutant", "wildtype"})

#: the key columns every file starts with, then the imaging extras, then the features
KEY_COLUMNS: Final[tuple[str, ...]] = (
    JOIN_KEY,
    EVENT_TIMESTAMP,
    CREATED_TIMESTAMP,
    FEATURE_VERSION,
)
IMAGING_EXTRA_COLUMNS: Final[tuple[str, ...]] = (STUDY_ID, SCAN_VERSION)

PART_PREFIX: Final[str] = "part-"
PART_SUFFIX: Final[str] = ".parquet"
#: what Feast and DuckDB read; temporary files start with a dot so they never match
PART_GLOB: Final[str] = f"{PART_PREFIX}*{PART_SUFFIX}"

_VERSION_RE = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")


def check_view(view: str) -> str:
    """Return ``view`` if it is one of the 14 feature views, else raise naming the known ones."""
    if view not in ALL_VIEWS:
        raise FeatureViewError(
            f"unknown feature view {view!r}; expected one of {list(ALL_VIEWS)}",
            fix="use a view name such as 'rad_tumor_t1c', 'dl_edema_t2f' or 'clinical'",
        )
    return view


def check_version(version: str) -> str:
    """Return ``version`` if it is usable as a folder name (and inside a SQL string literal)."""
    if not isinstance(version, str) or not _VERSION_RE.match(version):
        raise FeatureViewError(
            f"bad feature_version {version!r}: use letters, digits, '.', '_' or '-' (not first), "
            "at most 128 characters, e.g. 'rad-3f2a9c1b0d4e' or 'v1'",
            fix="use the name of a version folder under <home>/offline/<view>/",
        )
    return version


def imaging_spec(view: str) -> tuple[str, str, str] | None:
    """``(kind, roi, sequence)`` of an imaging view, ``None`` for ``clinical``/``labels``."""
    check_view(view)
    if view in (CLINICAL, LABELS):
        return None
    kind, roi, sequence = view.split("_")
    assert kind in KINDS and roi in ROIS and sequence in SEQUENCES
    return kind, roi, sequence


def _local_offline(ws: Workspace) -> Path:
    if not ws.is_local:
        raise InputError(
            f"the Feast offline store must be on a local path, but home is {ws.home!r}",
            fix="run the feature store with a local --home",
        )
    return Path(ws.offline)


def version_dir(ws: Workspace, view: str, version: str) -> Path:
    """``<home>/offline/{view}/{version}``: the one folder a registered view reads."""
    return _local_offline(ws) / check_view(view) / check_version(version)


def parts_glob(ws: Workspace, view: str, version: str) -> str:
    """The Parquet glob of one version folder, as Feast's FileSource and DuckDB read it."""
    return str(version_dir(ws, view, version) / PART_GLOB)


def part_files(ws: Workspace, view: str, version: str) -> list[Path]:
    """Committed part files of one version folder, oldest name first (empty if none)."""
    folder = version_dir(ws, view, version)
    return sorted(folder.glob(PART_GLOB)) if folder.is_dir() else []


def available_versions(ws: Workspace) -> dict[str, list[str]]:
    """Every view's version folders that hold at least one part file."""
    out: dict[str, list[str]] = {}
    root = _local_offline(ws)
    for view in ALL_VIEWS:
        folder = root / view
        if not folder.is_dir():
            continue
        versions = sorted(
            d.name
            for d in folder.iterdir()
            if d.is_dir() and _VERSION_RE.match(d.name) and any(d.glob(PART_GLOB))
        )
        if versions:
            out[view] = versions
    return out


def feature_names(ws: Workspace, view: str, version: str) -> list[str]:
    """The feature columns of one version folder: the fixed tabular names, or the newest part's schema.

    Imaging names are whatever the extractor wrote (its own name functions made them), so the
    Feast layer never imports an extractor (torch, pyradiomics) to learn them.
    """
    if imaging_spec(view) is None:
        return list(CLINICAL_FEATURES if view == CLINICAL else LABEL_FEATURES)
    parts = part_files(ws, view, version)
    if not parts:
        raise NoPartsError(
            f"view {view!r} has no Parquet parts in {version_dir(ws, view, version)}",
            fix="run `atrx features` first, or pass the feature names explicitly",
        )
    import pyarrow.parquet as pq

    skip = {*KEY_COLUMNS, *IMAGING_EXTRA_COLUMNS}
    return [n for n in pq.read_schema(parts[-1]).names if n not in skip]
