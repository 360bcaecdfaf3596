"""The first-order baseline beside the paper's models: its columns, no leakage, where it shows up,
and that ``baseline.enabled: false`` leaves the protocol as it was.

Frames and the two-model study come from ``tests/test_training_ranking.py``.
"""

from __future__ import annotations

import logging

import numpy as np
import pandas as pd
import pytest
from test_training_ranking import FIRST_ORDER, make_frame, study

from training.baseline import BASELINE, baseline_problem, firstorder_columns
from training.dataset import LABEL, split
from training.protocol import CLINICAL, FUSION, run_protocol
from training.study import StudyConfig

VIEWS = ["rad_overall_t2f", "rad_overall_t1c", "rad_tumor_t1c"]  # the default baseline.views


def one_model(**baseline: object) -> StudyConfig:
    """Overall radiomics as the only imaging model, so the baseline's tumor view is its own."""
    base = study(rois=["overall"])
    return base.model_copy(update={"baseline": base.baseline.model_copy(update=baseline)})


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame(seed=3)


@pytest.fixture(scope="module")
def fitted(frame):
    s = one_model()
    sp = split(frame, s)
    return s, sp, run_protocol(frame, sp, s)


def test_firstorder_columns_are_the_original_first_order_features_of_the_views(frame) -> None:
    cols = firstorder_columns(frame.columns, ["rad_tumor_t1c", "rad_overall_t2f"])
    assert cols == [f"{v}__original__firstorder__{n}" for v in ("rad_tumor_t1c", "rad_overall_t2f")
                    for n in FIRST_ORDER]
    # not the filtered images' first order, not texture, not another view
    assert not any("log_sigma" in c or "glcm" in c or "rad_overall_t1c" in c for c in cols)
    assert baseline_problem(frame.columns, StudyConfig()) is None


def test_feature_views_add_the_baseline_views_no_imaging_model_uses() -> None:
    s = one_model()
    assert s.imaging_views() == ["rad_overall_t1c", "rad_overall_t2f"]
    assert s.feature_views() == ["rad_overall_t1c", "rad_overall_t2f", "rad_tumor_t1c"]
    assert one_model(enabled=False).feature_views() == s.imaging_views()
    assert StudyConfig().feature_views() == StudyConfig().imaging_views()  # all 12 already


def test_baseline_uses_its_columns_and_only_the_training_rows(frame, fitted) -> None:
    s, sp, res = fitted
    base = res.baseline
    assert base is not None and base.columns == firstorder_columns(frame.columns, VIEWS)
    assert len(base.columns) == 3 * len(FIRST_ORDER)
    assert list(base.final.feature_names_in_) == base.columns
    assert base.final["clf"].C == s.baseline.lr_c
    train = frame.iloc[sp.train]
    scaler = base.final["scale"]
    assert scaler.n_samples_seen_ == sp.train.size
    assert np.allclose(scaler.mean_, train[base.columns].mean().to_numpy())
    # LOCO over the two development centers, random CV on the imaging models' folds
    assert set(base.loco.centers) == {"A", "B"} and base.loco_auc is not None
    assert [t.tolist() for _, t in base.cross.folds] == [
        t.tolist() for _, t in res.imaging[0].cross.folds]

    # permuting the labels of every validation and test row changes nothing the baseline learnt
    shuffled = frame.copy()
    held_out = np.concatenate([sp.validation, sp.test])
    rng = np.random.default_rng(5)
    shuffled.loc[held_out, LABEL] = rng.permutation(shuffled.loc[held_out, LABEL].to_numpy())
    again = run_protocol(shuffled, sp, s)
    assert np.allclose(again.baseline.final["clf"].coef_, base.final["clf"].coef_)
    assert again.baseline.cross.fold_aucs == base.cross.fold_aucs
    assert again.baseline.loco.center_aucs == base.loco.center_aucs
    assert again.metrics[BASELINE]["train"] == res.metrics[BASELINE]["train"]
    assert again.cutoffs[BASELINE] == res.cutoffs[BASELINE]


def test_baseline_is_in_the_tables_metrics_and_delong(fitted) -> None:
    _, _, res = fitted
    assert res.model_order == ["Overall radiomics", BASELINE, CLINICAL, FUSION]
    js = res.to_json()
    assert list(js["models"]) == res.model_order
    assert set(js["models"][BASELINE]) == {"train", "validation", "test"}
    assert js["models"][BASELINE]["test"]["auc"] is not None and BASELINE in js["cutoffs"]
    b = js["baseline"]
    assert b["fitted"] and b["label"] == BASELINE and b["views"] == VIEWS
    assert b["n_features"] == len(b["features"]) == 12
    assert set(b["coefficients"]) == {*b["features"], "intercept"}
    assert b["cv_auc_mean"] is not None and set(b["loco_auc_centers"]) == {"A", "B"}
    pairs = {(r["set"], r["model_a"], r["model_b"]) for r in js["delong"]}
    for s in ("train", "validation", "test"):
        assert {(s, FUSION, BASELINE), (s, "Overall radiomics", BASELINE)} <= pairs
    assert BASELINE in js["calibration"] and BASELINE in js["decision_curve"]
    assert BASELINE not in res.headline()  # the paper's three models stay the headline


def test_disabled_baseline_leaves_the_protocol_as_it_was(frame, fitted) -> None:
    s, sp, res = fitted
    off = run_protocol(frame, sp, one_model(enabled=False))
    assert off.baseline is None and BASELINE not in off.model_order
    assert off.to_json()["baseline"] == {
        "fitted": False, "label": BASELINE,
        "reason": "disabled in the study file (baseline.enabled: false)"}
    assert off.model_order == [m for m in res.model_order if m != BASELINE]
    for m in off.model_order:
        assert off.metrics[m] == res.metrics[m]
    assert off.delong == [r for r in res.delong if BASELINE not in (r["model_a"], r["model_b"])]
    assert set(off.calibration) == set(res.calibration) - {BASELINE}


def test_missing_baseline_view_skips_the_baseline_with_the_reason(
    frame, caplog: pytest.LogCaptureFixture
) -> None:
    s = one_model()
    lacking = frame.drop(columns=[c for c in frame.columns if c.startswith("rad_tumor_t1c__")])
    with caplog.at_level(logging.WARNING, logger="training.protocol"):
        res = run_protocol(lacking, split(lacking, s), s)
    assert res.baseline is None and BASELINE not in res.metrics
    reason = res.to_json()["baseline"]["reason"]
    assert "['rad_tumor_t1c']" in reason and "baseline.enabled: false" in reason
    assert "no first-order baseline" in caplog.text
