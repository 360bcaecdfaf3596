"""The ingest task boundary on one tiny hand-made study: no cohort, no Dask.

A failure inside preprocessing becomes a quarantine row naming the study, with the patient's raw
id redacted; with ``ATRX_DEBUG=1`` an unexpected error propagates raw instead, while a verdict
on the data (degenerate images) is a quarantine row either way.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

import ingest.patient
from atrx.config.center import CenterConfig
from atrx.errors import DEBUG_ENV
from ingest.discover import PatientPlan, SourceRef, StudyPlan
from ingest.patient import StudyOutcome, ingest_patient, ingest_versions
from ingest.preprocess import PREPROCESS_VERSION, PreprocessParams

RAW_ID = "RAW0042"
PSEUDONYM = "T-0123456789ab"


def _write(path: Path, array: np.ndarray) -> str:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing((1.5, 1.5, 3.0))
    sitk.WriteImage(image, str(path))
    return str(path)


@pytest.fixture
def study(tmp_path: Path) -> tuple[PatientPlan, CenterConfig]:
    folder = tmp_path / "export" / RAW_ID
    folder.mkdir(parents=True)
    rng = np.random.default_rng(0)
    seg = np.zeros((8, 12, 12), np.uint8)
    seg[2:6, 3:9, 3:9] = 2
    seg[3:5, 5:7, 5:7] = 1
    refs = {
        "t1c": _write(folder / f"{RAW_ID}-t1c.nii.gz", np.zeros((8, 12, 12), np.float32)),
        "t2f": _write(folder / f"{RAW_ID}-t2f.nii.gz", rng.random((8, 12, 12), np.float32)),
        "seg": _write(folder / f"{RAW_ID}-seg.nii.gz", seg),
    }
    cfg = CenterConfig.model_validate({
        "center": "T", "source": "export", "preset": "brats2023", "base_dir": str(tmp_path),
        "clinical": {"path": "clinical.csv", "columns": {
            "patient_id": "ID", "age": "Age", "sex": "Sex", "who_grade": "WHO", "vasari_score": "VASARI",
            "atrx_status": "ATRX", "pathology_date": "Date"}},
        "synthetic": True, "deid": {"key": "k" * 32},
    })

    def ref(role: str) -> SourceRef:
        return SourceRef("file", (refs[role],), Path(refs[role]).name)

    plan = PatientPlan(RAW_ID, PSEUDONYM, str(folder), studies=[StudyPlan(
        "s0123456789", None, ref("t1c"), ref("t2f"), ref("seg"), ref("seg"))])
    return plan, cfg


def _ingest(study: tuple[PatientPlan, CenterConfig], tmp_path: Path) -> list[StudyOutcome]:
    plan, cfg = study
    return ingest_patient(plan, cfg, str(tmp_path / "images.zarr"), PreprocessParams(), {})


def _set_debug(monkeypatch: pytest.MonkeyPatch, value: str | None) -> None:
    if value is None:
        monkeypatch.delenv(DEBUG_ENV, raising=False)
    else:
        monkeypatch.setenv(DEBUG_ENV, value)


def _boom(*args: object, **kwargs: object) -> None:
    raise RuntimeError(f"a library failed on {RAW_ID}")


@pytest.mark.parametrize("debug", [None, "0"])
def test_unexpected_error_in_preprocessing_is_quarantined(
        study: tuple[PatientPlan, CenterConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        debug: str | None) -> None:
    _set_debug(monkeypatch, debug)
    monkeypatch.setattr(ingest.patient, "preprocess_study", _boom)
    (out,) = _ingest(study, tmp_path)
    assert (out.status, out.stage, out.study_id) == ("quarantined", "internal", "s0123456789")
    assert out.reason is not None and out.reason.startswith("unexpected error: RuntimeError: a library failed")
    assert RAW_ID not in out.reason and PSEUDONYM in out.reason
    assert out.fix is not None and f"{DEBUG_ENV}=1" in out.fix


@pytest.mark.parametrize("debug", ["1", "true"])
def test_unexpected_error_propagates_raw_with_debug(
        study: tuple[PatientPlan, CenterConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        debug: str) -> None:
    _set_debug(monkeypatch, debug)
    monkeypatch.setattr(ingest.patient, "preprocess_study", _boom)
    with pytest.raises(RuntimeError, match=f"a library failed on {RAW_ID}"):
        _ingest(study, tmp_path)


@pytest.mark.parametrize("debug", [None, "1"])
def test_degenerate_data_is_quarantined_with_the_errors_fix(
        study: tuple[PatientPlan, CenterConfig], tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
        debug: str | None) -> None:
    _set_debug(monkeypatch, debug)
    (out,) = _ingest(study, tmp_path)  # the T1c is all zeros: nothing for N4 to fit on
    assert (out.status, out.stage, out.file) == ("quarantined", "preprocess", None)
    assert out.reason == "head mask of t1c for N4 is empty; expected a foreground above Otsu"
    assert out.fix == "check that the image is not empty or all one value"
    assert set(out.sources) == {"t1c", "t2f", "lesion", "tumor"}
    assert out.sources["lesion"]["labels"] == [1, 2, 3] and out.sources["tumor"]["labels"] == [1, 3]


def test_versions_keep_their_keys_and_order() -> None:
    versions = ingest_versions()
    assert list(versions) == ["atrx", "preprocess", "SimpleITK", "numpy", "zarr"]
    assert versions["preprocess"] == PREPROCESS_VERSION
    assert versions["SimpleITK"] == sitk.Version_VersionString() and versions["numpy"] == np.__version__
