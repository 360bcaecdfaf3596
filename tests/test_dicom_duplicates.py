"""Copies in a DICOM export: a byte-identical copy of a series or patient folder (``P013 - Copy``,
same SOPInstanceUIDs, same bytes) is processed once with a note; copies whose content differs
are refused, both, as before. Real DICOM files (``ingest.synth.write_dicom_series``), no mocks.
"""

from __future__ import annotations

import re
import shutil
from pathlib import Path

import duckdb
import pydicom
import pytest
import SimpleITK as sitk
import yaml
from dicom_phantom import dicom_center, dicom_patient, phantom

from atrx.config.center import CenterConfig, load_center
from atrx.workspace import Workspace
from ingest.deid import pseudonymise_patient
from ingest.discover import plan_center
from ingest.discover.dicom import drop_identical_copies, identical_folders
from ingest.discover.redact import center_redactor
from ingest.driver import run_ingest

N_SLICES = 8


def _patient(root: Path, raw: str, n: int) -> Path:
    """One patient folder: a T1c and a FLAIR series (one folder each) and NIfTI masks."""
    images = phantom((36, 40, N_SLICES), (0, 3, 4), (2.2, 6, 7), skull=True)
    who = {"PatientName": f"DUP^{raw}", "PatientID": raw, "PatientBirthDate": "19600101"}
    return dicom_patient(root, raw, f"1.2.826.0.1.3680043.8.498.77.{n}", images, who)


@pytest.fixture
def export(tmp_path: Path) -> Path:
    """Two patients, P013 and P014, a clinical sheet and a center file ``D.yaml`` beside them."""
    src = tmp_path / "export"
    _patient(src, "P013", 13)
    _patient(src, "P014", 14)
    (src / "clinical.csv").write_text("id,age,sex,who,vasari,atrx,path\n"
                                      "P013,50,F,4,70,mutant,2020-01-20\nP014,61,M,3,40,wildtype,2020-02-01\n")
    cfg = dicom_center("D", "export", "k" * 32)
    (tmp_path / "D.yaml").write_text(yaml.safe_dump(cfg))
    return src


def _cfg(export: Path) -> CenterConfig:
    return load_center(export.parent / "D.yaml")


def _alter_one_file(folder: Path) -> None:
    """Same SOPInstanceUID, other bytes: a re-export that is not a copy."""
    path = sorted(folder.rglob("IM*.dcm"))[2]
    ds = pydicom.dcmread(path)
    ds.WindowWidth = "1234"
    ds.save_as(path)


def _problems(plan, blocking: bool) -> list[str]:
    return [p.what for p in plan.problems if p.blocking == blocking]


def test_a_series_folder_copied_inside_a_patient_is_used_once(export: Path) -> None:
    shutil.copytree(export / "P013" / "FLAIR", export / "P013" / "FLAIR - Copy")
    plan = plan_center(_cfg(export), "k" * 32)
    p013 = next(p for p in plan.patients if p.raw_id == "P013")
    assert p013.ok, _problems(p013, True)
    assert f"P013/FLAIR - Copy: same {N_SLICES} instances as P013/FLAIR, processed once" in _problems(p013, False)
    (study,) = p013.studies
    assert len(study.t2f.files) == N_SLICES and all("/FLAIR/" in f for f in study.t2f.files)
    assert plan.counts()["patients_ready"] == 2


def test_a_series_copy_with_other_content_is_refused(export: Path) -> None:
    shutil.copytree(export / "P013" / "FLAIR", export / "P013" / "FLAIR - Copy")
    _alter_one_file(export / "P013" / "FLAIR - Copy")
    plan = plan_center(_cfg(export), "k" * 32)
    p013 = next(p for p in plan.patients if p.raw_id == "P013")
    assert not p013.ok
    assert any(w.startswith("two different files carry one SOPInstanceUID (P013/FLAIR/")
               for w in _problems(p013, True))
    # the identical instances of that copy are still only noted
    assert f"P013/FLAIR - Copy: same {N_SLICES - 1} instances as P013/FLAIR, processed once" in _problems(p013, False)


def test_identical_folders_are_byte_identical_copies_only(export: Path) -> None:
    shutil.copytree(export / "P013", export / "P013 - Copy")
    (copy,) = identical_folders([export / "P014", export / "P013 - Copy", export / "P013"])
    assert (copy.copy, copy.original, copy.instances) == (export / "P013 - Copy", export / "P013", 2 * N_SLICES)
    assert copy.note() == f"P013 - Copy: same {2 * N_SLICES} instances as P013, processed once"
    _alter_one_file(export / "P013 - Copy")
    assert identical_folders([export / "P013", export / "P013 - Copy", export / "P014"]) == []
    # masks are files of the folder too: a copy with another mask is not identical
    shutil.rmtree(export / "P013 - Copy")
    shutil.copytree(export / "P013", export / "P013 - Copy")
    mask = export / "P013 - Copy" / "masks" / "tumor.nii.gz"
    sitk.WriteImage(sitk.ReadImage(str(mask)) * 0, str(mask))
    assert identical_folders([export / "P013", export / "P013 - Copy"]) == []


def test_drop_identical_copies_keeps_the_first_by_sorted_path(export: Path) -> None:
    shutil.copytree(export / "P013", export / "P013 - Copy")
    shutil.copytree(export / "P013", export / "P099")  # the same images under another id, no row
    entries = {"P013": [export / "P013", export / "P013 - Copy"], "P014": [export / "P014"],
               "P099": [export / "P099"]}
    notes = drop_identical_copies(entries, {"P013", "P014"})
    assert entries == {"P013": [export / "P013"], "P014": [export / "P014"]}
    assert notes == {"P013": [f"P013 - Copy: same {2 * N_SLICES} instances as P013, processed once",
                              f"P099: same {2 * N_SLICES} instances as P013, processed once"]}
    # recorded, every folder is its patient's pseudonym (a second folder of one id: with its token)
    red = center_redactor(_cfg(export), "k" * 32, {"P013": [export / "P013", export / "P013 - Copy"],
                                                   "P099": [export / "P099"]}, [])
    p013, p099 = (pseudonymise_patient("D", raw, "k" * 32) for raw in ("P013", "P099"))
    assert red.text(notes["P013"][1]) == f"{p099}: same {2 * N_SLICES} instances as {p013}, processed once"
    copy = red.text(notes["P013"][0])
    assert copy.startswith(f"{p013}#") and copy.endswith(f": same {2 * N_SLICES} instances as {p013}, processed once")
    # another id with a clinical row of its own: two patients claim one set of images, both stay
    entries = {"P013": [export / "P013"], "P099": [export / "P099"]}
    assert drop_identical_copies(entries, {"P013", "P099"}) == {}
    assert entries == {"P013": [export / "P013"], "P099": [export / "P099"]}


def test_copies_with_different_content_stay_refused_both(export: Path) -> None:
    shutil.copytree(export / "P013", export / "P013 - Copy")
    _alter_one_file(export / "P013 - Copy")
    shutil.copytree(export / "P014", export / "P099")
    _alter_one_file(export / "P099")
    with (export / "clinical.csv").open("a") as fh:
        fh.write("P099,45,F,4,55,mutant,2020-03-01\n")
    plan = plan_center(_cfg(export), "k" * 32)
    by_id = {p.raw_id: p for p in plan.patients}
    assert any("duplicate patient: id 'P013' is in 2 folders" in w for w in _problems(by_id["P013"], True))
    for raw in ("P014", "P099"):
        assert any("duplicate patient: the same series is also exported under" in w
                   for w in _problems(by_id[raw], True)), raw
    assert plan.counts()["patients_ready"] == 0


def test_a_copied_patient_folder_is_validated_and_ingested_once(export: Path, tmp_path: Path) -> None:
    shutil.copytree(export / "P013", export / "P013 - Copy")
    cfg = _cfg(export)
    plan = plan_center(cfg, cfg.deid.resolve_key())  # what `atrx center validate` prints
    by_id = {p.raw_id: p for p in plan.patients}
    assert sorted(by_id) == ["P013", "P014"] and all(p.ok for p in plan.patients)
    note = f"P013 - Copy: same {2 * N_SLICES} instances as P013, processed once"
    assert note in _problems(by_id["P013"], False)
    assert by_id["P013"].folder == str(export / "P013")
    home = tmp_path / "home"
    summary = run_ingest(cfg, Workspace.at(home), workers=1)  # the ingest plans the same way
    assert summary.studies["ingested"] == 2 and summary.patients_quarantined == 0, summary.quarantined
    with duckdb.connect(str(home / "catalog.duckdb"), read_only=True) as con:
        rows = con.execute("select patient_id, reason, blocking from quarantine").fetchall()
    pid = pseudonymise_patient("D", "P013", "k" * 32)
    # the copy's folder is recorded as the patient's pseudonym with the folder name's keyed token
    recorded = rf"{pid}#[0-9a-f]{{8}}: same {2 * N_SLICES} instances as {pid}, processed once"
    assert any(r[0] == pid and re.fullmatch(recorded, r[1]) and not r[2] for r in rows), rows
    assert not any("P013" in (r[1] or "") or "Copy" in (r[1] or "") for r in rows)  # no raw name in the catalog


def test_a_dicom_file_linking_out_of_source_is_refused_not_read(export: Path, tmp_path: Path) -> None:
    outside = tmp_path / "elsewhere"
    shutil.copytree(export / "P014" / "FLAIR", outside)
    (export / "P013" / "EXTRA").mkdir()
    (export / "P013" / "EXTRA" / "IM9999.dcm").symlink_to(next(outside.glob("IM*.dcm")))
    plan = plan_center(_cfg(export), "k" * 32)
    p013 = next(p for p in plan.patients if p.raw_id == "P013")
    assert not p013.ok
    assert any("EXTRA/IM9999.dcm leads outside source" in w for w in _problems(p013, True))
    assert next(p for p in plan.patients if p.raw_id == "P014").ok
