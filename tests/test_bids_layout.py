"""A BIDS-like NIfTI export works with ``preset: bids`` and only the clinical mapping."""

from __future__ import annotations

from pathlib import Path

import duckdb
import SimpleITK as sitk
import yaml

from atrx.config.center import load_center
from atrx.workspace import Workspace
from ingest.discover import plan_center
from ingest.driver import run_ingest
from ingest.synth import generate_cohort


def _dicom(folder: Path) -> sitk.Image:
    reader = sitk.ImageSeriesReader()
    reader.SetFileNames(sitk.ImageSeriesReader.GetGDCMSeriesFileNames(str(folder)))
    return reader.Execute()


def test_bids_preset_finds_sequences_masks_and_session_dates(tmp_path: Path) -> None:
    cohort = tmp_path / "cohort"
    generate_cohort(cohort, scale=0.2, seed=5, per_center=1, centers=("A",))
    patient = next(p for p in (cohort / "A").iterdir() if p.is_dir())
    anat = tmp_path / "bids" / "sub-0001" / "ses-20200314" / "anat"
    anat.mkdir(parents=True)
    series = {d.name: d for d in patient.iterdir() if d.is_dir()}
    t1c = next(d for n, d in series.items() if "+C" in n)
    t2f = next(d for n, d in series.items() if "FLAIR" in n)
    sitk.WriteImage(_dicom(t1c), str(anat / "sub-0001_ses-20200314_ce-gd_T1w.nii.gz"))
    sitk.WriteImage(_dicom(t2f), str(anat / "sub-0001_ses-20200314_FLAIR.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(patient / "masks" / "lesion_t2f.nii.gz")),
                    str(anat / "sub-0001_ses-20200314_desc-lesion_mask.nii.gz"))
    sitk.WriteImage(sitk.ReadImage(str(patient / "masks" / "tumor_t1c.nii.gz")),
                    str(anat / "sub-0001_ses-20200314_desc-tumor_mask.nii.gz"))
    (tmp_path / "bids" / "participants.csv").write_text(
        "participant_id,age,sex,who,vasari,atrx,pathology\n0001,61,male,4,72.5,mutant,2020-03-30\n")
    cfg = {"center": "BIDS1", "source": "bids", "preset": "bids", "synthetic": True, "deid": {"key": "k" * 32},
           "clinical": {"path": "participants.csv", "columns": {
               "patient_id": "participant_id", "age": "age", "sex": "sex", "who_grade": "who",
               "vasari_score": "vasari", "atrx_status": "atrx", "pathology_date": "pathology"}}}
    (tmp_path / "bids.yaml").write_text(yaml.safe_dump(cfg))
    config = load_center(tmp_path / "bids.yaml")
    plan = plan_center(config, "k" * 32)
    assert [p.raw_id for p in plan.patients] == ["0001"]
    assert plan.patients[0].ok, plan.patients[0].problems
    study = plan.patients[0].studies[0]
    assert str(study.scan_date) == "2020-03-14"  # from the session folder name
    summary = run_ingest(config, Workspace.at(tmp_path / "home"), workers=1)
    assert summary.studies["ingested"] == 1, summary.quarantined
    con = duckdb.connect(str(tmp_path / "home" / "catalog.duckdb"), read_only=True)
    assert con.execute("select scan_date::varchar from scans").fetchone()[0] == "2020-03-14"
