"""training.clinical_selection: the fusion keeps the clinical variables that transfer between centers."""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest

from training.clinical_selection import select_clinical
from training.fusion import FusionModel
from training.models import make_imaging_pipeline


def _cohort(seed: int = 0, n: int = 120) -> tuple[np.ndarray, pd.DataFrame, np.ndarray, np.ndarray]:
    """Two centers; ``steady`` predicts the label the same way in both, ``flips`` opposite ways."""
    rng = np.random.default_rng(seed)
    y = np.tile([0, 1], n)
    centers = np.repeat(["A", "B"], n)
    sign = np.where(centers == "A", 1.0, -1.0)
    score = 1.2 * (y - 0.5) + rng.normal(0, 1, y.size)
    clinical = pd.DataFrame({
        "steady": 1.5 * (y - 0.5) + rng.normal(0, 1, y.size),
        "flips": 2.5 * sign * (y - 0.5) + rng.normal(0, 1, y.size),
        "noise": rng.normal(0, 1, y.size),
    })
    return score, clinical, y, centers


def test_loco_drops_a_variable_whose_direction_flips_between_centers() -> None:
    score, clinical, y, centers = _cohort()
    chosen = select_clinical("loco", score, clinical, y, centers)
    assert "flips" in chosen.dropped and "steady" in chosen.kept
    assert chosen.kept == [c for c in ["steady", "flips", "noise"] if c in chosen.kept]  # study order
    aucs = [s["loco_auc"] for s in chosen.steps]
    assert aucs == sorted(aucs) and aucs[-1] > aucs[0]  # each step raised the held-out AUC
    assert sorted(s["dropped"] for s in chosen.steps[1:]) == sorted(chosen.dropped)
    assert chosen.to_json()["dropped"] == chosen.dropped and "flips" in chosen.note


def test_loco_keeps_everything_when_every_variable_transfers() -> None:
    score, clinical, y, centers = _cohort(seed=1)
    also = 1.5 * (y - 0.5) + np.random.default_rng(2).normal(0, 1, y.size)
    chosen = select_clinical("loco", score, clinical[["steady"]].assign(also=also), y, centers)
    assert chosen.kept == ["steady", "also"] and chosen.dropped == []
    assert "all variables kept" in chosen.note


def test_none_and_no_loco_keep_every_variable() -> None:
    score, clinical, y, centers = _cohort()
    assert select_clinical("none", score, clinical, y, centers).kept == list(clinical.columns)
    one = select_clinical("loco", score, clinical, y, None)
    assert one.kept == list(clinical.columns) and "not possible" in one.note
    with pytest.raises(ValueError, match="unknown clinical selection"):
        select_clinical("aic", score, clinical, y, centers)


def test_a_fusion_without_clinical_variables_scores_explains_and_describes() -> None:
    """What the fusion becomes when every clinical variable is dropped: the imaging score alone."""
    rng = np.random.default_rng(0)
    y = np.tile([0, 1], 40)
    X = pd.DataFrame(rng.normal(0, 1, (y.size, 6)), columns=[f"f{i}" for i in range(6)])
    X["f0"] += 1.5 * y
    model = FusionModel(imaging_pipeline=make_imaging_pipeline(), imaging_features=list(X.columns),
                        clinical_columns=[]).fit(X, y)
    prob, score, points = model.explain(X)
    assert np.allclose(prob, model.predict_proba(X)[:, 1])
    assert list(points.columns) == ["imaging_score", "total_points", "linear_predictor", "probability"]
    assert model.required_features == model.selected_imaging_features_
    assert model.describe()["fusion"]["coefficients"].keys() == {"imaging_score", "intercept"}
