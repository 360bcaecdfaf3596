"""Metrics, calibration, decision curves, clinical impact and the nomogram."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from scipy.special import expit, logit
from sklearn.metrics import brier_score_loss, roc_auc_score

from training.evaluation import (
    Nomogram,
    binary_metrics,
    calibration,
    clinical_impact,
    decision_curve,
    delong_table,
    roc_curve_data,
    youden_cutoff,
)
from training.models import make_clinical_pipeline, raw_coefficients

Y = np.array([1, 1, 1, 1, 0, 0, 0, 0, 0, 0])
P = np.array([0.9, 0.8, 0.6, 0.3, 0.7, 0.4, 0.2, 0.2, 0.1, 0.05])


def _strict_json(obj) -> str:
    return json.dumps(obj, allow_nan=False)


def test_binary_metrics_by_hand():
    m = binary_metrics(Y, P, cutoff=0.5)
    # calls: 0.9 0.8 0.6 | 0.7 -> TP 3, FN 1, FP 1, TN 5
    assert m["sensitivity"] == pytest.approx(3 / 4)
    assert m["specificity"] == pytest.approx(5 / 6)
    assert m["accuracy"] == pytest.approx(8 / 10)
    assert m["auc"] == pytest.approx(roc_auc_score(Y, P))
    assert m["auc_lo"] <= m["auc"] <= m["auc_hi"] <= 1.0
    assert (m["n"], m["n_pos"], m["cutoff"]) == (10, 4, 0.5)
    _strict_json(m)


def test_binary_metrics_cutoff_is_inclusive():
    assert binary_metrics(Y, P, cutoff=0.6)["sensitivity"] == pytest.approx(3 / 4)


def test_binary_metrics_one_class():
    m = binary_metrics([1, 1, 1], [0.2, 0.6, 0.9], cutoff=0.5)
    assert m["specificity"] is None and m["auc"] is None
    assert m["sensitivity"] == pytest.approx(2 / 3)
    _strict_json(m)


def test_youden_cutoff():
    cut = youden_cutoff(Y, P)
    # J at 0.6: 3/4 - 1/6 = 0.583; at 0.3: 1 - 2/6 = 0.667 (best); at 0.7: 2/4 - 1/6 = 0.333
    assert cut == pytest.approx(0.3)
    m = binary_metrics(Y, P, cut)
    assert m["sensitivity"] + m["specificity"] - 1 == pytest.approx(2 / 3)


def test_roc_curve_data_and_delong_table():
    rng = np.random.default_rng(0)
    y = rng.integers(0, 2, 80)
    a, b = 2 * y + rng.normal(0, 1, 80), rng.normal(0, 1, 80)
    roc = roc_curve_data(y, a)
    assert roc["fpr"][0] == 0.0 and roc["tpr"][-1] == 1.0
    assert roc["auc"] == pytest.approx(roc_auc_score(y, a))
    rows = delong_table(y, {"imaging": a, "noise": b, "same": a}, set_name="test")
    assert [(r["model_a"], r["model_b"]) for r in rows] == [
        ("imaging", "noise"),
        ("imaging", "same"),
        ("noise", "same"),
    ]
    assert rows[1]["p"] == 1.0 and rows[0]["p"] < 0.05
    _strict_json([roc, rows])


def test_calibration_of_calibrated_probabilities():
    rng = np.random.default_rng(1)
    p = expit(rng.normal(-0.3, 1.5, 20_000))
    y = (rng.random(p.size) < p).astype(int)
    cal = calibration(y, p, n_bins=10)
    assert cal["slope"] == pytest.approx(1.0, abs=0.06)
    assert cal["intercept"] == pytest.approx(0.0, abs=0.05)
    assert cal["brier"] == pytest.approx(brier_score_loss(y, p))
    curve = cal["curve"]
    assert len(curve["mean_predicted"]) == len(curve["fraction_positive"]) == len(curve["count"])
    assert sum(curve["count"]) == y.size
    assert np.allclose(curve["mean_predicted"], curve["fraction_positive"], atol=0.03)
    _strict_json(cal)


def test_calibration_detects_overfitting_and_bias():
    rng = np.random.default_rng(2)
    lp = rng.normal(0, 1.2, 20_000)
    y = (rng.random(lp.size) < expit(lp)).astype(int)
    overconfident = calibration(y, expit(2 * lp))
    assert overconfident["slope"] == pytest.approx(0.5, abs=0.05)
    too_low = calibration(y, expit(lp - 1.0))
    assert too_low["slope"] == pytest.approx(1.0, abs=0.06)
    assert too_low["intercept"] > 0.8  # risks under-estimated on average


def test_calibration_not_estimable_is_none():
    cal = calibration([1, 1, 1, 1], [0.2, 0.4, 0.6, 0.8], strategy="quantile", n_bins=2)
    assert cal["slope"] is None and cal["intercept"] is None
    assert cal["curve"]["count"] == [2, 2]
    _strict_json(cal)


def test_decision_curve_treat_all_and_perfect_model():
    rng = np.random.default_rng(3)
    y = (rng.random(300) < 0.3).astype(int)
    prevalence = y.mean()
    t = np.array([0.0, 0.1, 0.25, 0.5, 0.9])
    perfect = decision_curve(y, y.astype(float), t)
    assert np.allclose(perfect["net_benefit_all"], prevalence - (1 - prevalence) * t / (1 - t))
    assert perfect["net_benefit_none"] == [0.0] * t.size
    # prob >= pt is always "treat" at pt = 0, and a perfect model's net benefit is the prevalence
    assert np.allclose(perfect["net_benefit_model"][1:], prevalence)
    assert perfect["net_benefit_model"][0] == pytest.approx(prevalence)
    p = np.clip(0.3 + 0.3 * (y - 0.3) + rng.normal(0, 0.1, y.size), 0, 1)
    dca = decision_curve(y, p, t)
    calls = p >= 0.25
    expected = ((calls & (y == 1)).sum() - (calls & (y == 0)).sum() * 0.25 / 0.75) / y.size
    assert dca["net_benefit_model"][2] == pytest.approx(expected)
    assert dca["thresholds"] == t.tolist()
    default = decision_curve(y, p)
    assert default["thresholds"][0] == 0.01 and default["thresholds"][-1] == 0.99
    _strict_json(dca)


@pytest.mark.parametrize("bad", [[1.0], [-0.1], [np.nan], []])
def test_decision_curve_rejects_bad_thresholds(bad):
    with pytest.raises(ValueError, match="thresholds"):
        decision_curve(Y, P, bad)


def test_rejects_non_probabilities():
    with pytest.raises(ValueError, match="probabilities"):
        calibration(Y, P + 1)


def test_clinical_impact():
    ci = clinical_impact(Y, P, thresholds=[0.0, 0.5, 0.95], population=1000)
    assert ci["n_high_risk"] == pytest.approx([1000, 400, 0])
    assert ci["n_high_risk_with_event"] == pytest.approx([400, 300, 0])
    _strict_json(ci)


def _clinical_frame(rng: np.random.Generator, n: int = 200) -> tuple[pd.DataFrame, np.ndarray]:
    df = pd.DataFrame(
        {
            "age": rng.normal(45, 12, n).round(),
            "sex": rng.integers(0, 2, n),
            "who_grade": rng.choice([3, 4], n),
            "vasari_score": rng.normal(10, 3, n),
        }
    )
    lp = (
        -0.05 * (df["age"] - 45)
        + 0.4 * df["sex"]
        - 0.8 * (df["who_grade"] - 3)
        + 0.2 * (df["vasari_score"] - 10)
    )
    y = (rng.random(n) < expit(lp.to_numpy())).astype(int)
    return df, y


def test_nomogram_round_trip_with_a_fitted_model():
    rng = np.random.default_rng(4)
    df, y = _clinical_frame(rng)
    model = make_clinical_pipeline().fit(df, y)
    raw = raw_coefficients(model)
    intercept = raw.pop("intercept")
    ranges = {c: (float(df[c].min()), float(df[c].max())) for c in raw}
    nomo = Nomogram.from_logistic(raw, intercept, ranges)
    expected = model.predict_proba(df)[:, 1]
    got = [nomo.probability(nomo.total_points(row)) for row in df.to_dict("records")]
    assert np.allclose(got, expected, rtol=1e-9, atol=1e-12)
    # the widest effect spans exactly 0-100, the others less, all >= 0 inside their range
    spans = {
        n: abs(nomo.variable_points(n, hi) - nomo.variable_points(n, lo))
        for n, (lo, hi) in ranges.items()
    }
    widest = max(spans, key=spans.get)
    assert spans[widest] == pytest.approx(100.0)
    assert all(0 <= s <= 100 + 1e-9 for s in spans.values())
    for row in df.to_dict("records"):
        assert all(pt >= -1e-9 for pt in nomo.points(row).values())
    p = 0.37
    assert nomo.probability(nomo.total_points_for_probability(p)) == pytest.approx(p)
    _strict_json(nomo.to_dict())


def test_nomogram_negative_coefficient_scores_from_the_top():
    nomo = Nomogram.from_logistic({"a": 2.0, "b": -1.0}, 0.5, {"a": (0, 1), "b": (0, 1)})
    assert nomo.points({"a": 1, "b": 0}) == {"a": pytest.approx(100.0), "b": pytest.approx(50.0)}
    assert nomo.points({"a": 0, "b": 1}) == {"a": pytest.approx(0.0), "b": pytest.approx(0.0)}
    total = nomo.total_points({"a": 0.3, "b": 0.6})
    assert nomo.probability(total) == pytest.approx(expit(0.5 + 2 * 0.3 - 0.6))
    assert logit(nomo.probability(0.0)) == pytest.approx(0.5 - 1.0)


def test_nomogram_validation():
    with pytest.raises(ValueError, match="no range given"):
        Nomogram.from_logistic({"a": 1.0, "intercept": 2.0}, 0.0, {"a": (0, 1)})
    with pytest.raises(ValueError, match="min < max"):
        Nomogram.from_logistic({"a": 1.0}, 0.0, {"a": (1, 1)})
    with pytest.raises(ValueError, match="every coefficient is zero"):
        Nomogram.from_logistic({"a": 0.0}, 0.0, {"a": (0, 1)})
    nomo = Nomogram.from_logistic({"a": 1.0}, 0.0, {"a": (0, 1)})
    with pytest.raises(ValueError, match="lack"):
        nomo.points({})
