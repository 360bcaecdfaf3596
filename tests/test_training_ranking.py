"""Ranking the imaging models by leave-one-center-out (LOCO) CV: folds, leakage, the choice rule,
and a cohort where random CV and LOCO disagree (one center's scanner signature).

The frames are small and synthetic (three centers, two radiomics views of eight features), so the
whole protocol runs in seconds; ``make_frame`` and ``study`` are shared with
``tests/test_training_baseline.py``.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import roc_auc_score

from atrx.errors import InputError
from training.dataset import LABEL, split
from training.protocol import run_protocol
from training.ranking import LOCO, RANDOM, choose_ranking, loco_fit, loco_problem
from training.study import StudyConfig

CENTERS = {"A": 50, "B": 50, "C": 30}
VIEWS = ("rad_tumor_t1c", "rad_overall_t1c", "rad_overall_t2f")
FIRST_ORDER = ("mean", "energy", "skewness", "kurtosis")


def make_frame(seed: int = 0, centers: dict[str, int] = CENTERS) -> pd.DataFrame:
    """Rows as ``training.dataset.training_frame`` makes them: keys, label, clinical, features.

    Overall (T1c and T2f): a moderate ATRX signal, the same in every center. Tumor T1c: a strong
    signal in center A only (a texture feature), noise elsewhere: a model that learns it looks
    good in CV folds that mix A and B, and fails on any other center.
    """
    rng = np.random.default_rng(seed)
    center = np.repeat(list(centers), list(centers.values()))
    n = center.size
    y = np.concatenate([rng.permutation(np.arange(k) % 2) for k in centers.values()])
    frame = pd.DataFrame({
        "patient_id": [f"{c}-{i:012x}" for i, c in enumerate(center)],
        "center": center,
        LABEL: y,
        "age": rng.normal(55, 10, n),
        "sex": rng.integers(0, 2, n).astype(np.float64),
        "who_grade": rng.choice([3.0, 4.0], n),
        "vasari_score": rng.normal(70, 6, n),
    })
    signed = 2.0 * (y - 0.5)
    feats = {}
    for view in VIEWS:
        for name in FIRST_ORDER:
            feats[f"{view}__original__firstorder__{name}"] = rng.normal(size=n)
        feats[f"{view}__log_sigma_1_0_mm_3d__firstorder__mean"] = rng.normal(size=n)
        for j in range(3):
            feats[f"{view}__wavelet_lll__glcm__f{j}"] = rng.normal(size=n)
    for view in ("rad_overall_t1c", "rad_overall_t2f"):
        feats[f"{view}__original__firstorder__mean"] += 0.45 * signed
        feats[f"{view}__wavelet_lll__glcm__f0"] += 0.3 * signed
    in_a = center == "A"
    feats["rad_tumor_t1c__wavelet_lll__glcm__f1"][in_a] += 3.0 * signed[in_a]
    return pd.concat([frame, pd.DataFrame(feats)], axis=1)


def study(**imaging: object) -> StudyConfig:
    """Two imaging models (tumor and overall radiomics), a cheap LASSO search, LR only."""
    return StudyConfig.model_validate({
        "selection": {"lasso_cv": 3, "lasso_cs": 5},
        "imaging": {"feature_types": ["radiomics"], "rois": ["tumor", "overall"],
                    "compare_classifiers": ["lr"], **imaging},
    })


@pytest.fixture(scope="module")
def frame() -> pd.DataFrame:
    return make_frame()


@pytest.fixture(scope="module")
def ranked(frame):
    """The protocol with ranking auto (-> LOCO over A and B) and forced random, same data."""
    auto, rand = study(), study(ranking="random")
    sp = split(frame, auto)
    return sp, run_protocol(frame, sp, auto), run_protocol(frame, sp, rand)


# --- the folds ---------------------------------------------------------------------------------
def test_loco_folds_hold_out_one_center_and_never_fit_on_it(frame) -> None:
    """A feature that encodes the center: each fold model's scaler saw only the other centers'
    values, and permuting one center's labels leaves the model that held it out unchanged."""
    from training.protocol import imaging_template

    X = frame.filter(like="rad_overall_").copy()
    codes = {"A": 0.0, "B": 10.0, "C": 20.0}
    X.insert(0, "center_code", frame["center"].map(codes) + np.random.default_rng(1).normal(
        0, 0.1, len(frame)))
    y, groups = frame[LABEL].to_numpy(), frame["center"].to_numpy()
    pipe = imaging_template(study())
    fit = loco_fit(pipe, X, y, groups)
    assert fit.centers == ["A", "B", "C"]
    for center, (train, test), model in zip(fit.centers, fit.folds, fit.fold_models, strict=True):
        assert set(groups[test]) == {center} and test.size == CENTERS[center]
        assert center not in set(groups[train]) and train.size + test.size == len(frame)
        scaler = model.named_steps["scale"]
        assert scaler.n_samples_seen_ == train.size
        assert np.allclose(scaler.mean_, X.iloc[train].mean().to_numpy())
        others = [c for c in CENTERS if c != center]  # the held-out center's code never seen
        assert scaler.mean_[0] == pytest.approx(
            np.average([codes[c] for c in others], weights=[CENTERS[c] for c in others]), abs=0.1)

    flipped = y.copy()
    in_b = groups == "B"
    flipped[in_b] = 1 - flipped[in_b]
    again = loco_fit(pipe, X, flipped, groups)
    b = fit.centers.index("B")
    assert np.allclose(again.fold_models[b][-1].coef_, fit.fold_models[b][-1].coef_)
    assert np.allclose(again.oof_scores[in_b], fit.oof_scores[in_b])
    assert fit.center_aucs["B"] == pytest.approx(1.0 - again.center_aucs["B"])


def test_loco_auc_is_the_mean_of_per_center_aucs(frame) -> None:
    from training.baseline import make_baseline_pipeline

    X = frame.filter(like="__original__firstorder__")
    y, groups = frame[LABEL].to_numpy(), frame["center"].to_numpy()
    fit = loco_fit(make_baseline_pipeline(), X, y, groups)
    per = {c: roc_auc_score(y[groups == c], fit.oof_scores[groups == c]) for c in CENTERS}
    assert fit.center_aucs == pytest.approx(per)
    assert fit.mean_auc == pytest.approx(np.mean(list(per.values())))
    assert fit.pooled_auc == pytest.approx(roc_auc_score(y, fit.oof_scores))
    assert not np.isnan(fit.oof_scores).any()
    assert set(fit.summary()) == {"loco_auc_mean", "loco_auc_pooled", "loco_auc_centers"}


# --- the choice ------------------------------------------------------------------------------------
def test_auto_picks_loco_with_two_centers_and_random_with_one() -> None:
    y = np.arange(40) % 2
    two, one = np.repeat(["A", "B"], 20), np.repeat(["A"], 40)
    auto = choose_ranking("auto", two, y, 5)
    assert auto.strategy == LOCO and auto.loco_possible and auto.centers == ("A", "B")
    assert auto.reason == "loco: 2 development centers in the training rows (A, B)"
    assert "leave-one-center-out" in auto.criterion
    single = choose_ranking("auto", one, y, 5)
    assert single.strategy == RANDOM and not single.loco_possible
    assert "one center (A)" in single.reason and "5-fold" in single.criterion
    forced = choose_ranking("random", two, y, 5)
    assert forced.strategy == RANDOM and forced.loco_possible  # LOCO still computed, reported
    assert choose_ranking("loco", two, y, 5).strategy == LOCO
    assert set(auto.to_json()) == {"requested", "strategy", "reason", "criterion", "centers",
                                   "cv_folds", "loco_computed"}
    # a center whose absence leaves one class cannot be held out: auto falls back to random
    lopsided = np.r_[np.zeros(20, int), y[:20]]  # center A all wild type
    assert loco_problem(two, lopsided) == (
        "without center B the training rows hold fewer than 2 of an ATRX class")
    assert choose_ranking("auto", two, lopsided, 5).strategy == RANDOM


def test_loco_with_one_center_is_bad_input_naming_the_key(frame) -> None:
    with pytest.raises(InputError) as err:
        choose_ranking("loco", np.repeat(["A"], 10), np.arange(10) % 2, 5)
    assert "imaging.ranking" in str(err.value) and "one center (A)" in str(err.value)
    assert "imaging.ranking: auto" in err.value.fix and err.value.exit_code == 2

    one = study(ranking="loco").model_copy(update={"split": StudyConfig().split.model_copy(
        update={"development_centers": ["A"], "test_centers": ["C"]})})
    with pytest.raises(InputError, match="imaging.ranking"):
        run_protocol(frame, split(frame, one), one)


# --- the protocol ----------------------------------------------------------------------------------
def test_protocol_ranks_by_loco_and_reports_both(ranked) -> None:
    sp, auto, rand = ranked
    assert auto.ranking.strategy == LOCO and rand.ranking.strategy == RANDOM
    for res in (auto, rand):
        for r in res.imaging:
            assert r.loco is not None and set(r.loco.centers) == {"A", "B"}
            assert r.loco_auc is not None and 0.0 <= r.cv_auc <= 1.0
    by = {r.spec.name: r for r in auto.imaging}
    tumor, overall = by["tumor_radiomics"], by["overall_radiomics"]
    # center A's scanner signature: fine in mixed random folds, useless on the other center
    assert tumor.cv_auc > overall.cv_auc and tumor.loco_auc < overall.loco_auc
    assert tumor.cv_auc - tumor.loco_auc > 0.15
    assert auto.best.spec.name == "overall_radiomics" and auto.best.ranking_auc == overall.loco_auc
    assert rand.best.spec.name == "tumor_radiomics" and rand.best.ranking_auc == tumor.cv_auc
    # both CVs are the same computation whichever ranks: only the choice differs
    for a, b in zip(auto.imaging, rand.imaging, strict=True):
        assert a.cv_auc == b.cv_auc and a.loco_auc == b.loco_auc
    assert auto.best.columns == auto.fusion.imaging_features  # the fusion uses the LOCO winner

    js = auto.to_json()
    assert js["ranking"]["strategy"] == "loco" and js["ranking"]["requested"] == "auto"
    assert js["ranking"]["reason"].startswith("loco: 2 development centers")
    assert js["best_imaging_model"]["ranked_by"] == "loco"
    assert js["best_imaging_model"]["ranking_auc"] == js["best_imaging_model"]["loco_auc_mean"]
    for m in js["imaging_models"]:
        assert {"cv_auc_mean", "loco_auc_mean", "loco_auc_pooled", "ranked_by", "ranking_auc"} <= set(m)
        assert set(m["loco_auc_centers"]) == {"A", "B"}
    assert rand.to_json()["ranking"]["reason"].startswith("random: imaging.ranking is 'random'")
    assert all("loco_auc_mean" in c for c in js["classifier_comparison"])


def test_one_development_center_ranks_by_random_cv(frame) -> None:
    one = study().model_copy(update={"split": StudyConfig().split.model_copy(
        update={"development_centers": ["A"], "test_centers": ["B", "C"]})})
    res = run_protocol(frame, split(frame, one), one)
    assert res.ranking.strategy == RANDOM and "one center (A)" in res.ranking.reason
    assert all(r.loco is None and r.ranking_auc == r.cv_auc for r in res.imaging)
    assert res.to_json()["imaging_models"][0]["loco_auc_mean"] is None
    assert res.to_json()["ranking"]["loco_computed"] is False


def test_a_small_cohort_compares_the_calibrated_svm_without_failing() -> None:
    """About 20 training rows: a fold's training part (one center, in a leave-one-center-out fold)
    holds fewer than 5 of a class, so the SVM's 5-fold calibration cannot run as configured; it calibrates on as many folds as the rarer
    class allows, and the comparison reports every classifier (it used to stop the run)."""
    small = make_frame(seed=3, centers={"A": 14, "B": 14, "C": 10})
    cfg = study(compare_classifiers=["lr", "svm"], ranking="random")
    res = run_protocol(small, split(small, cfg), cfg)
    by_name = {c["classifier"]: c for c in res.to_json()["classifier_comparison"]}
    assert set(by_name) == {"lr", "svm"}
    svm = by_name["svm"]
    assert svm["cv_auc_mean"] is not None and 0.0 <= svm["cv_auc_mean"] <= 1.0
    assert len(svm["cv_auc_folds"]) == len(by_name["lr"]["cv_auc_folds"])
