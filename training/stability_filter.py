"""The feature-stability filter: drop radiomics features that a small mask or grid perturbation
changes (not in the paper; issue 12).

``atrx stability`` (the features stage) writes, per radiomics feature version, the ICC(2,1) of
every radiomics feature over patients x perturbations (original, eroded and dilated mask, a
half-voxel shift): :mod:`atrx.stability`. With ``stability.min_icc`` set, the protocol sees only
the radiomics columns whose ICC reaches it; deep-feature and clinical columns are kept. The filter
uses no label and no patient of the training frame, so it cannot leak.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["StabilityFilter", "StabilityRunner", "apply_stability", "filter_frame",
           "is_radiomics_column", "stability_line", "table_problem"]

#: measures the table of a radiomics version on the given centers: (version, centers, patients,
#: seed). The CLI passes one that runs ``atrx stability`` (the features stage) when the table is
#: missing; training itself never computes features.
StabilityRunner = Callable[[str, list[str], int, int], None]


def is_radiomics_column(name: str) -> bool:
    """A radiomics view's feature column (``rad_{roi}_{seq}__...``; its reference-tissue columns
    are not features, :mod:`training.reference_norm`)."""
    return str(name).startswith("rad_") and "__" in str(name) and "__reference__" not in str(name)


@dataclass
class StabilityFilter:
    """What the filter kept and dropped, for metrics.json and the report."""

    min_icc: float
    kept: int = 0
    dropped: list[str] = field(default_factory=list)
    unscored: int = 0  # radiomics columns the table has no ICC for (dropped)
    tables: dict[str, dict[str, Any]] = field(default_factory=dict)  # version -> how it was made

    def to_json(self) -> dict[str, Any]:
        return {"min_icc": self.min_icc, "radiomics_kept": self.kept,
                "radiomics_dropped": len(self.dropped), "radiomics_unscored": self.unscored,
                "tables": self.tables}


def filter_frame(frame: pd.DataFrame, icc: Mapping[str, float],
                 min_icc: float) -> tuple[pd.DataFrame, StabilityFilter]:
    """``frame`` without the radiomics columns whose ICC is below ``min_icc`` or unknown."""
    info = StabilityFilter(min_icc)
    drop = []
    for col in frame.columns:
        if not is_radiomics_column(col):
            continue
        value = icc.get(col)
        if value is None or not np.isfinite(value):
            info.unscored += 1
            drop.append(col)
        elif value < min_icc:
            drop.append(col)
        else:
            info.kept += 1
    info.dropped = drop
    return frame.drop(columns=drop), info


def table_problem(meta: Mapping[str, Any], development_centers: Sequence[str]) -> str | None:
    """Why a table must not choose this study's features (None: it may).

    The table is label-free, but a table measured on a test center's images would let that
    center's scans decide which features the model may use: only development centers may be
    sampled, and a table that does not say which centers it sampled is not trusted."""
    centers = meta.get("centers")
    if centers is None:
        return "does not record which centers it sampled (made before tables recorded them)"
    outside = sorted(set(centers) - set(development_centers))
    if outside:
        return (f"sampled patients of {', '.join(outside)}, which the study does not develop on "
                f"(development centers: {', '.join(development_centers)})")
    return None


def apply_stability(frame: pd.DataFrame, ws: Any, feature_versions: Mapping[str, str],
                    min_icc: float | None, development_centers: Sequence[str],
                    patients: int = 10, seed: int = 0,
                    runner: StabilityRunner | None = None) -> tuple[pd.DataFrame, StabilityFilter | None]:
    """Read the ICC table of every radiomics version the frame's views were computed with and
    filter (``min_icc`` None: the frame unchanged).

    A table that is missing or sampled outside ``development_centers`` is measured by ``runner``
    on ``patients`` development-center patients when one is given, else bad input naming the
    ``atrx stability`` command that makes the right one."""
    if min_icc is None:
        return frame, None
    icc: dict[str, float] = {}
    tables: dict[str, dict[str, Any]] = {}
    versions = sorted({v for view, v in feature_versions.items() if view.startswith("rad_")})
    for version in versions:
        table, made_now = _table(ws, version, list(development_centers), patients, seed, runner)
        meta = table.attrs.get("stability", {})
        tables[version] = {"centers": meta.get("centers"), "patients": len(meta.get("patients", [])),
                           "seed": meta.get("seed"), "measured_by_this_run": made_now}
        icc.update(zip(table["feature"].astype(str), table["icc"].astype(float), strict=True))
    out, info = filter_frame(frame, icc, min_icc)
    info.tables = tables
    return out, info


def _table(ws: Any, version: str, centers: list[str], patients: int, seed: int,
           runner: StabilityRunner | None) -> tuple[pd.DataFrame, bool]:
    from atrx.errors import InputError
    from atrx.stability import StabilityNotFoundError, read_stability

    command = f"atrx stability --centers {','.join(centers)} --patients {patients} --seed {seed}"
    try:
        table = read_stability(ws, version)
        problem = table_problem(table.attrs.get("stability", {}), centers)
    except StabilityNotFoundError as e:
        if runner is None:
            raise StabilityNotFoundError(str(e), fix=f"run `{command}` (or `atrx train`, which "
                                         "runs it first)") from None
        problem = "missing"
    if problem is None:
        return table, False
    if runner is None:
        raise InputError(f"the feature-stability table of {version} {problem}",
                         fix=f"run `{command}` to measure it on the development centers only")
    runner(version, centers, patients, seed)
    table = read_stability(ws, version)
    problem = table_problem(table.attrs.get("stability", {}), centers)
    if problem is not None:
        raise InputError(f"the feature-stability table of {version} {problem}", fix=f"run `{command}`")
    return table, True


def stability_line(info: Mapping[str, Any] | None) -> str:
    """One report line: off, or the threshold and what it kept."""
    if not info:
        return "off"
    made = "; ".join(f"{version} measured on {t.get('patients')} patients of "
                     f"{', '.join(t.get('centers') or [])}" for version, t in info.get("tables", {}).items())
    return (f"radiomics features with ICC(2,1) >= {info['min_icc']} under mask/grid perturbation: "
            f"{info['radiomics_kept']} kept, {info['radiomics_dropped']} dropped "
            f"({info['radiomics_unscored']} without an ICC)" + (f"; {made}" if made else ""))
