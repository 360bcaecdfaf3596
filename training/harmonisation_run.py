"""Harmonisation inside a training run: which frame the protocol fits on, and what is reported.

With ``harmonisation.method: combat`` (:mod:`training.harmonise`) the protocol fits and
evaluates on harmonised imaging columns, the test center mapped by its own estimates. The run
also reports what the models give on the **raw** test features (the center left unharmonised)
and a first-order baseline fitted on raw features, so the gain is visible, and registers a
:class:`training.harmonised.HarmonisedModel` that serving feeds raw online features.
"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd
from sklearn.metrics import roc_auc_score

from training.baseline import BASELINE, baseline_problem, fit_baseline
from training.dataset import LABEL, Split
from training.harmonise import Harmoniser, harmonise_frame
from training.harmonised import HarmonisedModel
from training.study import StudyConfig

__all__ = ["HarmonisationRun", "finish", "imaging_feature_columns", "prepare", "report_line"]


def imaging_feature_columns(frame: pd.DataFrame) -> list[str]:
    """The frame's imaging feature columns (canonical ``{view}__...`` names; clinical have none)."""
    return [c for c in frame.columns if "__" in str(c)]


@dataclass
class HarmonisationRun:
    """The protocol's frame and, when harmonised, the estimates and the raw-test comparison."""

    method: str
    frame: pd.DataFrame
    harmoniser: Harmoniser | None = None
    seconds: float = 0.0
    raw_test_auc: dict[str, float | None] = field(default_factory=dict)
    harmonised_test_auc: dict[str, float | None] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        out: dict[str, Any] = {"method": self.method, "seconds": round(self.seconds, 2)}
        if self.harmoniser is not None:
            out.update(self.harmoniser.describe())
            out["test_auc_harmonised"] = self.harmonised_test_auc
            out["test_auc_raw"] = self.raw_test_auc
        return out


def prepare(frame: pd.DataFrame, split: Split, study: StudyConfig) -> HarmonisationRun:
    """The frame the protocol fits on: ``frame`` itself, or harmonised (fit on the training rows)."""
    method = study.harmonisation.method
    if method == "none":
        return HarmonisationRun(method, frame)
    t0 = time.perf_counter()
    harmonised, h = harmonise_frame(frame, split.train, imaging_feature_columns(frame))
    return HarmonisationRun(method, harmonised, h, time.perf_counter() - t0)


def _auc(y: np.ndarray, p: np.ndarray) -> float | None:
    return float(roc_auc_score(y, p)) if len(np.unique(y)) == 2 else None


def finish(run: HarmonisationRun, result: Any, raw: pd.DataFrame, split: Split,
           study: StudyConfig) -> None:
    """After the protocol: the raw-test AUCs, then wrap the fusion model for registry and serving.

    ``result.fusion`` becomes a :class:`HarmonisedModel` restricted to its own features; call this
    after anything that scores the harmonised frame with the bare fusion model (diagnostics)."""
    if run.harmoniser is None:
        return
    t0 = time.perf_counter()
    test_raw = raw.iloc[split.test].reset_index(drop=True)
    test_h = run.frame.iloc[split.test].reset_index(drop=True)
    y = test_raw[LABEL].to_numpy().astype(np.int64)
    best = result.best
    run.harmonised_test_auc = {
        "fusion": _auc(y, result.fusion.predict_proba(test_h)[:, 1]),
        "best_imaging": _auc(y, best.final.predict_proba(test_h[best.columns])[:, 1]),
    }
    run.raw_test_auc = {
        "fusion": _auc(y, result.fusion.predict_proba(test_raw)[:, 1]),
        "best_imaging": _auc(y, best.final.predict_proba(test_raw[best.columns])[:, 1]),
    }
    if result.baseline is not None:
        cols = result.baseline.columns
        run.harmonised_test_auc[BASELINE] = _auc(
            y, result.baseline.final.predict_proba(test_h[cols])[:, 1])
    if baseline_problem(raw.columns, study) is None:
        train_raw = raw.iloc[split.train].reset_index(drop=True)
        plain = fit_baseline(train_raw, train_raw[LABEL].to_numpy().astype(np.int64), study, None)
        run.raw_test_auc[f"{BASELINE} (raw features)"] = _auc(
            y, plain.final.predict_proba(test_raw[plain.columns])[:, 1])
    fusion = result.fusion
    result.fusion = HarmonisedModel(fusion, run.harmoniser.restricted(fusion.required_features))
    run.seconds += time.perf_counter() - t0


def report_line(h: dict[str, Any] | None) -> str:
    """One report line: the method and, for ComBat, the test AUCs harmonised vs raw."""
    if not h or h.get("method") == "none":
        return "none (raw features)"
    aucs = ", ".join(f"{k} {v:.3f} (raw {h['test_auc_raw'].get(k, float('nan')):.3f})"
                     for k, v in h["test_auc_harmonised"].items() if v is not None)
    return f"ComBat fitted on the training rows, the test center by its own estimates; test AUC {aucs}"
