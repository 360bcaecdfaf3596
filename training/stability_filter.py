"""The feature-stability filter: drop radiomics features that a small mask or grid perturbation
changes (not in the paper; issue 12).

``atrx stability`` (the features stage) writes, per radiomics feature version, the ICC(2,1) of
every radiomics feature over patients x perturbations (original, eroded and dilated mask, a
half-voxel shift): :mod:`atrx.stability`. With ``stability.min_icc`` set, the protocol sees only
the radiomics columns whose ICC reaches it; deep-feature and clinical columns are kept. The filter
uses no label and no patient of the training frame, so it cannot leak.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

__all__ = ["StabilityFilter", "apply_stability", "filter_frame", "is_radiomics_column",
           "stability_line"]


def is_radiomics_column(name: str) -> bool:
    """A radiomics view's feature column (``rad_{roi}_{seq}__...``)."""
    return str(name).startswith("rad_") and "__" in str(name)


@dataclass
class StabilityFilter:
    """What the filter kept and dropped, for metrics.json and the report."""

    min_icc: float
    kept: int = 0
    dropped: list[str] = field(default_factory=list)
    unscored: int = 0  # radiomics columns the table has no ICC for (dropped)

    def to_json(self) -> dict[str, Any]:
        return {"min_icc": self.min_icc, "radiomics_kept": self.kept,
                "radiomics_dropped": len(self.dropped), "radiomics_unscored": self.unscored}


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


def apply_stability(frame: pd.DataFrame, ws: Any, feature_versions: Mapping[str, str],
                    min_icc: float | None) -> tuple[pd.DataFrame, StabilityFilter | None]:
    """Read the ICC table of every radiomics version the frame's views were computed with and
    filter (``min_icc`` None: the frame unchanged)."""
    if min_icc is None:
        return frame, None
    from atrx.stability import read_stability

    icc: dict[str, float] = {}
    versions = sorted({v for view, v in feature_versions.items() if view.startswith("rad_")})
    for version in versions:
        table = read_stability(ws, version)
        icc.update(zip(table["feature"].astype(str), table["icc"].astype(float), strict=True))
    return filter_frame(frame, icc, min_icc)


def stability_line(info: Mapping[str, Any] | None) -> str:
    """One report line: off, or the threshold and what it kept."""
    if not info:
        return "off"
    return (f"radiomics features with ICC(2,1) >= {info['min_icc']} under mask/grid perturbation: "
            f"{info['radiomics_kept']} kept, {info['radiomics_dropped']} dropped "
            f"({info['radiomics_unscored']} without an ICC)")
