"""Reference-tissue normalisation (training/reference_norm.py): the map, the frame it gives, and end
to end: a model trained with ``normalisation: reference`` through Feast, registered, materialised
and served by a REAL BentoML server answers a test-center patient with the protocol's own
probability (serving applies exactly the training run's map to the online features)."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atrx.errors import DataError
from training.reference_norm import (
    ReferenceNormalisedModel,
    drop_reference_columns,
    mapped_columns,
    normalise_for_study,
    normalise_frame,
)

V = "rad_tumor_t1c"


def _frame() -> pd.DataFrame:
    return pd.DataFrame({
        "patient_id": ["A-1", "B-2"],
        f"{V}__original__firstorder__mean": [3.0, 5.0],
        f"{V}__original__firstorder__90percentile": [4.0, 9.0],
        f"{V}__original__firstorder__range": [2.0, 8.0],
        f"{V}__original__firstorder__variance": [4.0, 16.0],
        f"{V}__original__firstorder__skewness": [0.3, -0.2],
        f"{V}__original__firstorder__energy": [100.0, 200.0],
        f"{V}__wavelet_lll__firstorder__mean": [1.0, 2.0],
        f"{V}__original__glcm__contrast": [0.5, 0.6],
        f"{V}__reference__shell__median": [1.0, 1.0],
        f"{V}__reference__shell__iqr": [2.0, 4.0],
        f"{V}__reference__shell__voxels": [500.0, 600.0],
        "dl_tumor_t1c__f0001": [7.0, 8.0],
        "age": [50.0, 60.0],
    })


def test_the_map_is_affine_on_intensities_and_leaves_the_rest() -> None:
    frame = _frame()
    out = normalise_frame(frame)
    np.testing.assert_allclose(out[f"{V}__original__firstorder__mean"], [(3 - 1) / 2, (5 - 1) / 4])
    np.testing.assert_allclose(out[f"{V}__original__firstorder__90percentile"], [1.5, 2.0])
    np.testing.assert_allclose(out[f"{V}__original__firstorder__range"], [1.0, 2.0])
    np.testing.assert_allclose(out[f"{V}__original__firstorder__variance"], [1.0, 1.0])
    for same in ("original__firstorder__skewness", "original__firstorder__energy",
                 "wavelet_lll__firstorder__mean", "original__glcm__contrast"):
        pd.testing.assert_series_equal(out[f"{V}__{same}"], frame[f"{V}__{same}"])
    pd.testing.assert_series_equal(out["dl_tumor_t1c__f0001"], frame["dl_tumor_t1c__f0001"])
    assert not [c for c in out.columns if "__reference__" in c]
    assert list(drop_reference_columns(frame).columns) == list(out.columns)
    assert len(mapped_columns(frame.columns)) == 4
    # the map equals z-scoring the image by the reference first: check one statistic directly
    rng = np.random.default_rng(0)
    voxels, shell = rng.normal(3, 2, 1000), rng.normal(1, 1.5, 5000)
    q25, m, q75 = np.percentile(shell, [25, 50, 75])
    s = q75 - q25
    direct = np.percentile((voxels - m) / s, 90)
    via_map = (np.percentile(voxels, 90) - m) / s
    assert direct == pytest.approx(via_map, rel=1e-12)


def test_missing_or_flat_reference_is_a_data_error_naming_view_and_patient() -> None:
    frame = _frame()
    with pytest.raises(DataError, match=f"{V}.*no reference-tissue columns") as info:
        normalise_frame(frame.drop(columns=[f"{V}__reference__shell__iqr"]))
    assert "reference" in info.value.fix and "normalisation.method: none" in info.value.fix
    flat = frame.assign(**{f"{V}__reference__shell__iqr": [2.0, 0.0]})
    with pytest.raises(DataError, match="missing or flat for 1 row.*B-2"):
        normalise_frame(flat)
    none, info_none = normalise_for_study(frame, "none")
    assert info_none == {"method": "none"} and "__reference__" not in " ".join(none.columns)
    _, info_ref = normalise_for_study(frame, "reference")
    assert info_ref == {"method": "reference", "tissue": "shell", "views": [V], "features_mapped": 4}


def test_stability_filter_and_dataset_never_treat_reference_columns_as_features() -> None:
    from training.stability_filter import filter_frame, is_radiomics_column

    assert not is_radiomics_column(f"{V}__reference__shell__median")
    out, info = filter_frame(_frame(), {}, 0.75)  # no ICCs: every radiomics feature is dropped
    assert f"{V}__reference__shell__median" in out.columns and info.kept == 0


# --- end to end: train, register, serve --------------------------------------------------------


@pytest.fixture(scope="module")
def served(tmp_path_factory: pytest.TempPathFactory):
    """A workspace whose production model was trained with the reference map, served."""
    from test_serving import served_lever

    study = "normalisation:\n  method: reference\nbaseline:\n  views: [rad_overall_t1c, rad_overall_t2f]\n"
    yield from served_lever(tmp_path_factory.mktemp("reference"), study, reference=True)


def test_the_run_records_the_map_and_the_model_asks_for_the_references(served) -> None:
    from atrx import registry

    ws, trained, _, _ = served
    metrics = json.loads(Path(trained.summary.metrics_path).read_text())
    assert metrics["normalisation"] == {"method": "reference", "tissue": "shell",
                                        "views": ["rad_overall_t1c", "rad_overall_t2f"],
                                        "features_mapped": 10}
    model = registry.load_model(ws, trained.run.tag)
    assert isinstance(model, ReferenceNormalisedModel)
    refs = [f for f in model.required_features if "__reference__" in f]
    assert refs and set(refs) <= {f"{v}__reference__shell__{s}" for v in model.views
                                  for s in ("median", "iqr")}
    assert not [f for f in model.model.required_features if "__reference__" in f]
    record = registry.show(ws, trained.run.tag)
    assert record.metadata["normalisation"]["method"] == "reference"
    assert set(refs) <= set(record.metadata["required_features"])
    # every feature the protocol selected was seen normalised: refit-free check on the raw frame
    raw = trained.run.data.frame
    assert np.allclose(model.predict_proba(raw)[:, 1],
                       model.model.predict_proba(normalise_frame(raw))[:, 1])
    assert "reference tissue" in Path(trained.summary.report_path).read_text()


def test_served_prediction_of_a_test_center_patient_equals_the_protocols(served) -> None:
    from test_serving import assert_served_test_patients_match

    _, trained, handle, key = served
    assert_served_test_patients_match(trained, handle, key, abs_tol=1e-6)
