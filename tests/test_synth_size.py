"""``atrx synth --size clinical``: hospital-sized fields of view, everything else unchanged."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from typer.testing import CliRunner

from atrx.cli import app
from ingest.synth import generate_cohort
from ingest.synth.acquire import plan_grid
from ingest.synth.centers import CENTERS, SIZES
from ingest.synth.cohort import center_plan
from ingest.synth.export import acquired_spec


@pytest.mark.parametrize("center", CENTERS)
def test_clinical_fields_of_view_are_those_hospitals_send(center: str) -> None:
    compact = center_plan(center, scale=0.05, seed=1)
    clinical = center_plan(center, scale=0.05, seed=1, size="clinical")
    for small, big in zip(compact, clinical, strict=True):
        assert big.size == "clinical" and small.size == "compact"
        assert {**vars(small), "size": None} == {**vars(big), "size": None}  # same patients
        for series in ("t1c", "t2f"):
            spec = getattr(acquired_spec(big), series)
            grid = plan_grid(spec, (0.0, 0.0, 0.0))
            extent = np.asarray(grid.size) * np.asarray(grid.spacing)
            assert 0.9 <= min(spec.spacing[:2]) <= max(spec.spacing[:2]) <= 1.4
            assert 200.0 <= extent[0] <= 240.5 and 200.0 <= extent[1] <= 240.5
            assert extent[2] >= 140.0 - spec.spacing[2] / 2
            small_grid = plan_grid(getattr(acquired_spec(small), series), (0.0, 0.0, 0.0))
            assert np.prod(grid.size) > 2.5 * np.prod(small_grid.size)


def test_clinical_cohort_writes_clinical_scans_and_records_the_size(tmp_path: Path) -> None:
    summary = generate_cohort(tmp_path, scale=0.05, seed=1, centers=("C",), per_center=1,
                              size="clinical")
    assert summary.size == "clinical"
    assert json.loads((tmp_path / "synth.json").read_text())["size"] == "clinical"
    import SimpleITK as sitk

    t1c = next((tmp_path / "C").rglob("*t1c*.nii.gz"))
    image = sitk.ReadImage(str(t1c))
    extent = np.asarray(image.GetSize()) * np.asarray(image.GetSpacing())
    assert extent[0] >= 200.0 and extent[2] >= 140.0


def test_unknown_size_is_refused_before_anything_is_written(tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["synth", "--out", str(tmp_path / "c"), "--size", "huge"])
    assert result.exit_code == 2
    assert "huge" in result.output and ", ".join(SIZES) in result.output
    assert not (tmp_path / "c").exists()
    with pytest.raises(ValueError, match="huge"):
        generate_cohort(tmp_path / "d", scale=0.05, size="huge")
    assert not (tmp_path / "d").exists()
