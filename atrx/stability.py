"""The feature-stability table: where it lives and what its columns mean (features write, training reads).

``atrx stability`` measures, per radiomics feature, how much its value moves when the ROI mask is
eroded or dilated by one voxel and when image and mask are resampled by half a voxel: the
ICC(2,1) over sampled patients x those conditions. Training's stability filter keeps the features
whose ICC clears a threshold. The table is keyed by the radiomics feature version, because a new
parameter file or engine makes new numbers with their own stability.

One Parquet file per radiomics version, ``<home>/stability/<radiomics_version>.parquet``, one row
per (view, feature):

========================= =====================================================================
``view``                  the feature view, e.g. ``rad_tumor_t1c``
``feature``               the full canonical name, ``rad_tumor_t1c__original__firstorder__mean``
``base_feature``          the same name without the view prefix, ``original__firstorder__mean``
``icc``                   ICC(2,1), two-way random, absolute agreement, single measure; NaN when
                          undefined (a constant feature, fewer than two complete patients)
``n_patients``            patients with a finite value under every condition (the ICC's rows)
``n_conditions``          conditions in the ICC (its columns: original, eroded, dilated, shifted)
========================= =====================================================================

How it was made (seed, patients, perturbations, engine, radiomics version, library versions, the
creation time) is stored as JSON in the file's key-value metadata under :data:`META_KEY` and comes
back in ``frame.attrs["stability"]``.
"""

from __future__ import annotations

import json
import os
import uuid
from collections.abc import Mapping
from pathlib import Path
from typing import Any, Final

import pandas as pd
import pyarrow as pa
import pyarrow.parquet as pq

from atrx.errors import InputError, NotFoundError
from atrx.workspace import Workspace

__all__ = ["COLUMNS", "META_KEY", "StabilityNotFoundError", "read_stability", "stability_path",
           "write_stability"]

#: the table's columns, in order
COLUMNS: Final[tuple[str, ...]] = ("view", "feature", "base_feature", "icc", "n_patients",
                                   "n_conditions")
#: the Parquet key-value metadata key holding the run's JSON
META_KEY: Final[str] = "atrx.stability"
_FIX = "run `atrx stability` (with the same --home) to measure feature stability"


class StabilityNotFoundError(NotFoundError, FileNotFoundError):
    """No stability table for this radiomics version yet."""


def stability_path(ws: Workspace, radiomics_version: str) -> str:
    """``<home>/stability/<radiomics_version>.parquet``: one table per radiomics feature version."""
    if not radiomics_version or "/" in radiomics_version or radiomics_version.startswith("."):
        raise InputError(f"not a radiomics feature version: {radiomics_version!r}",
                         fix="pass the version features.versioning.radiomics_version gives, e.g. rad-0123abcd4567")
    return "/".join([ws.home, "stability", f"{radiomics_version}.parquet"])


def write_stability(ws: Workspace, radiomics_version: str, frame: pd.DataFrame,
                    meta: Mapping[str, Any]) -> str:
    """Write the table atomically (temp file in the same folder, then rename); returns its path.

    A reader never sees half a file, and a rerun replaces the table whole. ``frame`` must have
    exactly :data:`COLUMNS`; ``meta`` must be JSON-able.
    """
    if not ws.is_local:
        raise InputError(f"the stability table is written on a local path, but home is {ws.home!r}",
                         fix="run `atrx stability` with a local --home")
    missing = [c for c in COLUMNS if c not in frame.columns]
    extra = [c for c in frame.columns if c not in COLUMNS]
    if missing or extra:
        raise InputError(f"stability frame columns differ from {list(COLUMNS)}: missing {missing}, "
                         f"unexpected {extra}", fix="build the frame with features.stability")
    out = pd.DataFrame({
        "view": frame["view"].astype(str), "feature": frame["feature"].astype(str),
        "base_feature": frame["base_feature"].astype(str),
        "icc": frame["icc"].astype("float64"),
        "n_patients": frame["n_patients"].astype("int64"),
        "n_conditions": frame["n_conditions"].astype("int64"),
    }).reset_index(drop=True)
    table = pa.Table.from_pandas(out, preserve_index=False)
    meta_json = json.dumps({**meta, "radiomics_version": radiomics_version}, sort_keys=True, default=str)
    table = table.replace_schema_metadata({**(table.schema.metadata or {}), META_KEY.encode(): meta_json.encode()})
    path = Path(stability_path(ws, radiomics_version))
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{uuid.uuid4().hex[:8]}.tmp")
    try:
        pq.write_table(table, tmp)
        os.replace(tmp, path)
    finally:
        tmp.unlink(missing_ok=True)
    return str(path)


def read_stability(ws: Workspace, radiomics_version: str) -> pd.DataFrame:
    """The table of ``radiomics_version`` with its run's metadata in ``frame.attrs["stability"]``."""
    path = stability_path(ws, radiomics_version)
    if not Path(path).exists():
        raise StabilityNotFoundError(
            f"no feature-stability table for radiomics version {radiomics_version} at {path}", fix=_FIX)
    table = pq.read_table(path)
    frame = table.to_pandas()[list(COLUMNS)]
    raw = (table.schema.metadata or {}).get(META_KEY.encode())
    frame.attrs["stability"] = json.loads(raw) if raw else {}
    return frame
