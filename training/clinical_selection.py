"""Which clinical variables the fusion LR takes: all of the study's, or those that transfer.

Why (issue 12): the clinical variables of Table 1 do not mean the same thing in every hospital.
WHO grade 4 goes with the ATRX mutant in centers A and B and with the wild type in C; sex points
one way in A and the other in B. A fusion LR fitted on pooled development centers learns the
pooled direction with a weight the imaging score cannot outvote, and a new center pays for it.

``loco`` is backward elimination by leave-one-center-out AUC of the fusion LR on the development
centers: starting from all variables, drop the one whose removal raises the mean held-out-center
AUC most, while a removal raises it (ties keep the variable). Each fold's fusion LR learns from
the other centers' rows only, on the imaging model's out-of-fold scores (the same inputs the final
fusion LR is fitted on), so a variable survives only if what one center teaches about it holds
in another. Labels of validation and test rows are never seen. With fewer than two development
centers that each leave both classes behind, nothing can be judged and every variable is kept
(the result says why).
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from numpy.typing import ArrayLike

from training.models import make_fusion_pipeline
from training.ranking import loco_fit

__all__ = ["ClinicalSelection", "select_clinical"]

_SCORE = "imaging_score"


@dataclass(frozen=True)
class ClinicalSelection:
    """The fusion's clinical variables and how they were chosen (metrics.json, the report)."""

    method: str  # none | loco
    requested: list[str]
    kept: list[str]
    note: str
    #: one row per elimination step: variables in the fusion, their mean LOCO AUC, what was dropped
    steps: list[dict[str, Any]] = field(default_factory=list)

    @property
    def dropped(self) -> list[str]:
        return [v for v in self.requested if v not in self.kept]

    def to_json(self) -> dict[str, Any]:
        return {"method": self.method, "requested": self.requested, "kept": self.kept,
                "dropped": self.dropped, "note": self.note, "steps": self.steps}


def select_clinical(method: str, oof_scores: ArrayLike, clinical: pd.DataFrame, y: ArrayLike,
                    groups: ArrayLike | None) -> ClinicalSelection:
    """The clinical variables of the fusion LR (columns of ``clinical``, encoded as floats).

    ``oof_scores``: the best imaging model's out-of-fold scores of the same training rows;
    ``groups``: each row's center, or None when leave-one-center-out CV is not possible.
    """
    requested = list(clinical.columns)
    if method == "none":
        return ClinicalSelection("none", requested, requested, "all of the study's clinical variables")
    if method != "loco":
        raise ValueError(f"unknown clinical selection {method!r}; use none or loco")
    if groups is None:
        return ClinicalSelection("loco", requested, requested,
                                 "leave-one-center-out CV is not possible on these training rows "
                                 "(fewer than two usable development centers): all variables kept")
    design = clinical.reset_index(drop=True).assign(**{_SCORE: np.asarray(oof_scores, dtype=np.float64)})
    y01 = np.asarray(y).ravel().astype(np.int64)

    def loco_auc(variables: Sequence[str]) -> float | None:
        return loco_fit(make_fusion_pipeline((_SCORE, *variables)), design, y01, groups).mean_auc

    current = list(requested)
    best = loco_auc(current)
    steps: list[dict[str, Any]] = [{"variables": list(current), "loco_auc": best, "dropped": None}]
    while current and best is not None:
        trials = [(v, loco_auc([c for c in current if c != v])) for v in current]
        scored = [(v, a) for v, a in trials if a is not None]
        if not scored:
            break
        drop, auc = max(scored, key=lambda t: t[1])  # the first of equal maxima: study order
        if not auc > best:
            break
        current = [c for c in current if c != drop]
        best = auc
        steps.append({"variables": list(current), "loco_auc": auc, "dropped": drop})
    dropped = [v for v in requested if v not in current]
    note = (f"leave-one-center-out backward elimination: dropped {', '.join(dropped)} "
            f"(mean LOCO AUC {steps[0]['loco_auc']:.3f} -> {best:.3f})" if dropped and best is not None
            else "leave-one-center-out backward elimination: no removal raised the mean held-out-"
                 "center AUC, all variables kept")
    return ClinicalSelection("loco", requested, current, note, steps)
