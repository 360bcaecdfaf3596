"""Transfer diagnostics: per-center feature shift and the selection's bootstrap stability, on
small seeded frames; and their way through a real protocol run into metrics.json and the report."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
from sklearn.base import clone

from training.dataset import LABEL, Split
from training.diagnostics import diagnose, feature_shift, selection_stability
from training.protocol import imaging_template
from training.study import StudyConfig

FAST = {"selection": {"lasso_cv": 5, "lasso_cs": 8}}
SMALL = {
    **FAST,
    "name": "diag",
    "imaging": {"feature_types": ["radiomics"], "rois": ["overall"], "compare_classifiers": ["lr"]},
    "baseline": {"views": ["rad_overall_t1c", "rad_overall_t2f"]},
}


def _split(centers: np.ndarray, test: str = "C", every_nth_validation: int = 0) -> Split:
    dev = np.flatnonzero(centers != test)
    val = dev[::every_nth_validation] if every_nth_validation else np.array([], dtype=np.int64)
    return Split(train=np.setdiff1d(dev, val), validation=val,
                 test=np.flatnonzero(centers == test), data_hash="", train_hash="")


# --- feature shift -------------------------------------------------------------------------------
def test_shift_is_small_within_one_distribution_and_large_for_a_shifted_center() -> None:
    rng = np.random.default_rng(0)
    centers = np.repeat(["A", "B", "C"], 400)
    same = rng.normal(0.0, 1.0, centers.size)
    shifted = np.where(centers == "C", rng.normal(2.0, 1.0, centers.size), same[::-1])
    frame = pd.DataFrame({"center": centers, "same": same, "shifted": shifted})
    result = feature_shift(frame, _split(centers), ["same", "shifted"])

    assert [f.feature for f in result.features] == ["shifted", "same"]  # largest shift first
    assert result.centers == ["A", "B", "C"] and result.test_centers == ["C"]
    by = {f.feature: {c.center: c for c in f.centers} for f in result.features}
    for c in "ABC":
        assert abs(by["same"][c].smd) < 0.15 and by["same"][c].ks < 0.1
    assert by["shifted"]["C"].smd == pytest.approx(2.0, abs=0.2) and by["shifted"]["C"].ks > 0.6
    assert abs(by["shifted"]["A"].smd) < 0.15  # A against B: one distribution
    # a development center is compared with the other centers' training rows, a test center
    # with every training row
    assert by["same"]["A"].n_reference == 400 and by["same"]["C"].n_reference == 800
    assert by["same"]["C"].role == "test" and by["same"]["A"].role == "development"
    box = by["shifted"]["C"].box
    assert box["whislo"] <= box["q1"] <= box["med"] <= box["q3"] <= box["whishi"]
    assert json.dumps(result.to_json())  # JSON-ready


def test_shift_of_a_missing_column_is_an_error() -> None:
    frame = pd.DataFrame({"center": ["A", "C"], "x": [1.0, 2.0]})
    with pytest.raises(ValueError, match="lacks column"):
        feature_shift(frame, _split(frame["center"].to_numpy()), ["y"])


# --- selection stability -------------------------------------------------------------------------
def _planted(n: int = 100, p: int = 30, seed: int = 0) -> tuple[pd.DataFrame, list[str]]:
    rng = np.random.default_rng(seed)
    y = rng.permutation(np.arange(n) % 2)
    X = rng.standard_normal((n, p))
    X[:, 0] += 2.0 * (y - 0.5) * 2  # one strong feature; the others are noise
    cols = [f"rad_overall_t1c__f{j:04d}" for j in range(p)]
    frame = pd.DataFrame(X, columns=cols).assign(**{LABEL: y, "center": "A"})
    return frame, cols


@pytest.fixture(scope="module")
def template():
    return imaging_template(StudyConfig.model_validate(FAST))


def test_a_planted_feature_is_stable_and_noise_is_not(template) -> None:
    frame, cols = _planted()
    split = Split(train=np.arange(len(frame)), validation=np.array([], dtype=np.int64),
                  test=np.array([], dtype=np.int64), data_hash="", train_hash="")
    result = selection_stability(template, frame, split, cols, [cols[0]], n_resamples=12, seed=0)
    freq = result.frequency
    assert freq[cols[0]] >= 0.95
    assert np.mean([freq.get(c, 0.0) for c in cols[1:]]) < 0.15
    assert max(freq.get(c, 0.0) for c in cols[1:]) < 0.6
    summary = result.summary()
    assert summary["n_resamples"] == 12 and summary["n_rows"] == 100
    assert 0.0 < summary["mean_jaccard"] <= 1.0
    reported = result.reported()
    assert reported[0] == {"feature": cols[0], "frequency": freq[cols[0]], "final": True}
    assert all(r["final"] or r["frequency"] >= 0.2 for r in reported)
    # seeded: the same resamples again
    again = selection_stability(template, frame, split, cols, [cols[0]], n_resamples=12, seed=0)
    assert again.selections == result.selections


def test_the_bootstrap_uses_training_rows_only(template) -> None:
    """Validation and test rows carry a perfect signal in a column that is noise in the training
    rows (and none in the planted one): fitted on them too the chain would select it; the
    bootstrap does not, and its result does not change when those rows change."""
    frame, cols = _planted(n=140, seed=1)
    centers = np.repeat(["A", "B", "C"], [60, 40, 40])
    frame["center"] = centers
    split = _split(centers, every_nth_validation=5)
    leak = cols[5]
    held = np.concatenate([split.validation, split.test])
    y = frame[LABEL].to_numpy()
    frame.loc[held, leak] = 10.0 * (y[held] - 0.5)
    frame.loc[held, cols[0]] = np.random.default_rng(2).standard_normal(held.size)
    everything = np.concatenate([split.train, held])
    fitted = clone(template)[:-1].fit(frame.iloc[everything][cols], y[everything])
    assert leak in set(fitted.get_feature_names_out())  # the held-out rows would change it

    result = selection_stability(template, frame, split, cols, [cols[0]], n_resamples=6, seed=3)
    assert result.frequency.get(leak, 0.0) <= 0.2
    scrambled = frame.copy()
    rng = np.random.default_rng(7)
    scrambled.loc[held, cols] = rng.standard_normal((held.size, len(cols)))
    scrambled.loc[held, LABEL] = 1 - y[held]
    other = selection_stability(template, scrambled, split, cols, [cols[0]], n_resamples=6, seed=3)
    assert other.selections == result.selections


# --- through a real protocol run -----------------------------------------------------------------
def col(view: str, j: int) -> str:
    """Feature j of a view: 0-3 original first-order (the baseline reads them), 4-7 texture."""
    kind = "original__firstorder" if j < 4 else "wavelet-LLH__glcm"
    return f"{view}__{kind}__x{j}"


def _cohort(seed: int = 0) -> pd.DataFrame:
    """Three centers; two radiomics views whose feature 0 carries the label; on center C the T1c
    one is shifted (a scanner's gain, say)."""
    rng = np.random.default_rng(seed)
    centers = np.repeat(["A", "B", "C"], [44, 52, 34])
    n = centers.size
    y = rng.permutation(np.arange(n) % 2)
    data = {"patient_id": [f"{c}-{i:012x}" for i, c in enumerate(centers)], "center": centers,
            LABEL: y, "age": rng.normal(55, 10, n), "sex": rng.integers(0, 2, n),
            "who_grade": rng.choice([3, 4], n), "vasari_score": rng.normal(70, 6, n)}
    for view in ("rad_overall_t1c", "rad_overall_t2f"):
        values = rng.standard_normal((n, 8))
        values[:, 0] += 0.8 * (y - 0.5) * 2
        if view == "rad_overall_t1c":
            values[:, 0] += np.where(centers == "C", 2.5, 0.0)
        data.update({col(view, j): values[:, j] for j in range(8)})
    return pd.DataFrame(data)


@pytest.fixture(scope="module")
def protocol_run():
    from training.dataset import split
    from training.protocol import run_protocol

    study = StudyConfig.model_validate({**SMALL, "diagnostics": {"bootstrap": 4, "seed": 1}})
    frame = _cohort()
    sp = split(frame, study)
    return study, frame, sp, run_protocol(frame, sp, study)


def test_diagnose_a_protocol_run(protocol_run) -> None:
    study, frame, sp, result = protocol_run
    lines: list[str] = []
    diag = diagnose(frame, sp, result, study, progress=lines.append)
    assert diag.model == result.best.spec.label
    sources = {f.feature: f.source for f in diag.shift.features}
    assert result.fusion.clinical_columns  # the fusion's clinical inputs (LOCO-selected) are shown
    assert {f for f, s in sources.items() if s == "fusion"} == {"imaging_score", *result.fusion.clinical_columns}
    assert {f for f, s in sources.items() if s == "imaging"} == set(
        result.fusion.selected_imaging_features_)
    assert diag.stability is not None and diag.stability.n_resamples == 4
    assert diag.stability.n_rows == sp.train.size
    assert len(lines) == 1 and lines[0].startswith("selection stability of Overall radiomics")
    json.dumps(diag.to_json())


def test_bootstrap_zero_skips_stability(protocol_run) -> None:
    study, frame, sp, result = protocol_run
    off = study.model_copy(update={"diagnostics": study.diagnostics.model_copy(
        update={"bootstrap": 0})})
    lines: list[str] = []
    diag = diagnose(frame, sp, result, off, progress=lines.append)
    assert diag.stability is None and diag.to_json()["stability"] is None and not lines
    assert diag.shift.features  # the shift is still measured


def test_metrics_and_report_carry_the_diagnostics(protocol_run, tmp_path) -> None:
    from training.artifacts import TrainingRun, write_figures, write_metrics, write_report
    from training.dataset import TrainingFrame

    study, frame, sp, result = protocol_run
    diag = diagnose(frame, sp, result, study)
    data = TrainingFrame(frame, pd.Timestamp("2025-01-01", tz="UTC"), [], {}, "test", len(frame),
                         0, pd.DataFrame({"patient_id": [], "reason": []}))
    run = TrainingRun("run-1", study, None, data, sp, result, tmp_path, {}, {}, diagnostics=diag)
    figures = write_figures(result, tmp_path, diag)
    assert figures["feature_shift"].read_bytes()[:4] == b"\x89PNG"
    metrics = json.loads(write_metrics(run).read_text())
    stored = metrics["diagnostics"]
    assert stored["model"] == result.best.spec.label and stored["stability"]["n_resamples"] == 4
    shifted = {f["feature"]: f["shift"] for f in stored["shift"]["features"]}
    assert shifted[col("rad_overall_t1c", 0)] > 1.0 > shifted[col("rad_overall_t2f", 0)]
    top = stored["shift"]["features"][0]
    assert top["shift"] == max(shifted.values())
    html = write_report(run, figures).read_text()
    for text in ("Transfer to a new center", "Transfer check", "Ranking of the imaging models",
                 "leave-one-center-out CV over 2 development centers (A, B)", "LOCO AUC",
                 "baseline (not ranked)", "Per-center shift", "Selection stability",
                 "Figure S1.", top["feature"]):
        assert text in html, text
    assert html.count("Figure S1.") == 2  # alt text + caption: embedded once
    # the baseline has a row in Tables 2-3 and in the transfer check, with its LOCO AUC
    check = html[html.index("Transfer check"):html.index("Ranking of the imaging models")]
    assert "first-order baseline" in check and "Fusion" in check


def test_transfer_check_reads_the_ranking_and_the_baseline(protocol_run) -> None:
    import copy

    from training.protocol import FUSION
    from training.transfer import ranking_record, transfer_check

    _, _, _, result = protocol_run
    ranking = ranking_record(result)
    assert ranking["strategy"] == "loco" and "criterion" in ranking
    rows = {r["label"]: r for r in ranking["models"]}
    best = rows[result.best.spec.label]
    assert best["best"] and best["loco_auc"] == result.best.loco_auc
    assert set(best["loco_centers"]) == {"A", "B"}
    base = ranking["models"][-1]
    assert base.get("baseline") and base["label"] == result.baseline.label
    assert base["ranking_auc"] == result.baseline.loco_auc  # by the criterion that ranked

    check = transfer_check(result)
    assert [r["role"] for r in check["rows"]] == ["fusion", "best imaging model", "clinical",
                                                  "first-order baseline"]
    # the baseline above the fusion on the test set: the report says so at once
    won = copy.copy(result)
    won.metrics = {**result.metrics, result.baseline.label: {
        **result.metrics[result.baseline.label],
        "test": {**result.metrics[result.baseline.label]["test"], "auc": 1.0}}}
    warnings = transfer_check(won)["warnings"]
    assert warnings and f"is above {FUSION} (" in warnings[0] and "DeLong p" in warnings[0]
