"""ComBat harmonisation: the estimates, the run that uses them, and serving the same transform.

Unit tests run on generated frames with planted per-center location/scale effects. The end-to-end
test trains with ``harmonisation: {method: combat}`` through Feast, promotes, materialises, and
asks a REAL BentoML server for a test-center patient: the answer must equal the protocol's own
in-process probability for that patient (serving applies exactly the training run's transform).
"""

from __future__ import annotations

from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest

from training.harmonise import UnknownCenter, fit_harmoniser, harmonise_frame

pytestmark = pytest.mark.timeout(600)


def _frame(seed: int = 0, n: int = 40, p: int = 60) -> pd.DataFrame:
    """Three centers; B and C differ from A by a per-feature gain and offset; f0 carries a label."""
    rng = np.random.default_rng(seed)
    centers = np.repeat(["A", "B", "C"], n)
    y = rng.integers(0, 2, 3 * n)
    X = rng.normal(size=(3 * n, p))
    X[:, 0] += 1.5 * y
    gain = {"A": 1.0, "B": 2.5, "C": 0.4}
    offset = {"A": 0.0, "B": 3.0, "C": -2.0}
    for c in "ABC":
        X[centers == c] = X[centers == c] * gain[c] + offset[c]
    frame = pd.DataFrame(X, columns=[f"v__f{j}" for j in range(p)])
    frame.insert(0, "center", centers)
    frame["atrx_mutant"] = y
    frame["age"] = rng.normal(50, 10, 3 * n)  # a clinical column: never harmonised
    return frame


COLUMNS = [f"v__f{j}" for j in range(60)]


def test_own_estimates_of_a_training_center_equal_neurocombats() -> None:
    """The label-free step that maps a new center is ComBat's own per-batch step: applied to a
    training center's rows it reproduces neuroCombat's gamma*/delta* for that center."""
    frame = _frame()
    train = frame[frame.center != "C"]
    h = fit_harmoniser(train, train.center, COLUMNS)
    h.adapt(train[train.center == "B"], "B again")
    np.testing.assert_allclose(h.centers["B again"].gamma, h.centers["B"].gamma, atol=1e-10)
    np.testing.assert_allclose(h.centers["B again"].delta, h.centers["B"].delta, rtol=1e-10)
    assert h.centers["B again"].source == "own" and h.centers["B"].source == "training"


def test_centers_are_aligned_and_the_signal_kept() -> None:
    frame = _frame()
    out, h = harmonise_frame(frame, np.flatnonzero(frame.center != "C").astype(int), COLUMNS)

    def spread(f: pd.DataFrame) -> float:  # how far the centers' means of f1..f59 lie apart
        means = f.groupby("center")[COLUMNS[1:]].mean()
        return float((means.max() - means.min()).mean())

    assert spread(frame) > 3.0 and spread(out) < 0.5
    sds = out.groupby("center")[COLUMNS[1:]].std().mean(axis=1)
    assert sds.max() / sds.min() < 1.3, sds
    # the planted label signal in f0 survives inside every center
    for c in "ABC":
        rows = out[out.center == c]
        gap = rows.loc[rows.atrx_mutant == 1, "v__f0"].mean() - rows.loc[rows.atrx_mutant == 0,
                                                                           "v__f0"].mean()
        assert gap > 0.5, (c, gap)
    pd.testing.assert_series_equal(out["age"], frame["age"])
    assert set(h.centers) == {"A", "B", "C"} and h.centers["C"].source == "own"


def test_labels_of_other_centers_never_move_the_transform() -> None:
    frame = _frame()
    train_rows = np.flatnonzero(frame.center != "C").astype(int)
    shuffled = frame.copy()
    test = shuffled.center == "C"
    shuffled.loc[test, "atrx_mutant"] = 1 - shuffled.loc[test, "atrx_mutant"]
    a, _ = harmonise_frame(frame, train_rows, COLUMNS)
    b, _ = harmonise_frame(shuffled, train_rows, COLUMNS)
    pd.testing.assert_frame_equal(a[COLUMNS], b[COLUMNS])


def test_restricted_estimates_give_the_full_fits_values() -> None:
    frame = _frame()
    out, h = harmonise_frame(frame, np.flatnonzero(frame.center != "C").astype(int), COLUMNS)
    keep = ["v__f3", "v__f0", "age"]
    r = h.restricted(keep)
    assert r.features == ["v__f3", "v__f0"]
    got = r.transform(frame[keep], frame.center.tolist())
    np.testing.assert_allclose(got[["v__f3", "v__f0"]], out[["v__f3", "v__f0"]], rtol=1e-12)


def test_constant_and_missing_columns_pass_through_and_unknown_centers_are_named() -> None:
    frame = _frame()
    frame["v__const"] = 2.0
    frame.loc[3, "v__nan"] = np.nan
    frame["v__nan"] = frame["v__nan"].fillna(1.0)
    frame.loc[3, "v__nan"] = np.nan
    cols = COLUMNS + ["v__const", "v__nan"]
    train = frame[frame.center != "C"]
    h = fit_harmoniser(train, train.center, cols)
    assert h.passthrough == ["v__const", "v__nan"]
    out = h.transform(train, train.center.tolist())
    pd.testing.assert_series_equal(out["v__const"], train["v__const"])
    with pytest.raises(UnknownCenter, match=r"\['C'\].*known: \['A', 'B'\]") as info:
        h.transform(frame, frame.center.tolist())
    assert "retrain" in info.value.fix


def test_a_center_with_too_few_rows_is_refused() -> None:
    from training.harmonise import HarmonisationError

    frame = _frame()
    train = pd.concat([frame[frame.center == "A"], frame[frame.center == "B"].head(2)])
    with pytest.raises(HarmonisationError, match=r"'B': 2"):
        fit_harmoniser(train, train.center, COLUMNS)


# --- end to end: train, register, serve --------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A workspace whose production model was trained with ComBat, materialised and served."""
    from test_serving import served_lever

    yield from served_lever(tmp_path_factory.mktemp("harmonise"), "harmonisation:\n  method: combat\n")


def test_the_run_records_the_transform_and_both_test_aucs(served) -> None:
    import json

    from atrx import registry
    from training.harmonised import HarmonisedModel

    ws, trained, _, _ = served
    metrics = json.loads(Path(trained.summary.metrics_path).read_text())
    h = metrics["harmonisation"]
    assert h["method"] == "combat" and h["library"] == "neuroCombat"
    assert h["centers"]["C"]["source"] == "own" and h["centers"]["A"]["source"] == "training"
    assert set(h["test_auc_raw"]) >= {"fusion", "best_imaging"}
    assert set(h["test_auc_harmonised"]) >= {"fusion", "best_imaging"}
    record = registry.show(ws, trained.run.tag)
    assert record.metadata["harmonisation"]["method"] == "combat"
    assert record.metadata["harmonisation"]["features"] >= 1
    model = registry.load_model(ws, trained.run.tag)
    assert isinstance(model, HarmonisedModel)
    assert "ComBat" in Path(trained.summary.report_path).read_text()


def test_served_prediction_of_a_new_center_patient_equals_the_protocols(served) -> None:
    from test_serving import assert_served_test_patients_match

    _, trained, handle, key = served
    assert_served_test_patients_match(trained, handle, key, abs_tol=1e-9)


def test_explicit_values_without_a_patient_id_are_422_naming_the_center(served) -> None:
    from atrx import registry

    ws, trained, handle, key = served
    model = registry.load_model(ws, trained.run.tag)
    imaging = {f: 0.1 for f in model.required_features if "__" in f}
    payload = {"imaging": imaging,
               "clinical": {"age": 50, "sex": "male", "who_grade": 4, "vasari_score": 70}}
    r = httpx.post(f"{handle.url}/predict_features", json=payload,
                   headers={"X-API-Key": key}, timeout=30)
    assert r.status_code == 422, r.text
    assert "center" in r.text and "patient_id" in r.text
