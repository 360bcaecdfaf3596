"""No raw id or PHI in what the ingest writes (issue 14, item 1), on a tiny real DICOM export.

Folder and file names hold a planted name, birth date and MRN besides the id; the export has an
identical copy of a patient folder, two patients sharing a series, a folder that matches no id, an
unreadable slice and an unreadable mask. After ``atrx ingest`` every table of the catalog, every
``zarr.json``, the printed output, the log records and the files under the workspace hold none of
the planted strings, nor the export's absolute path, while the quarantine still says what happened.
"""

from __future__ import annotations

import logging
import shutil
from pathlib import Path

import duckdb
import pytest
import SimpleITK as sitk
import yaml
from dicom_phantom import dicom_center, phantom
from typer.testing import CliRunner

from atrx.cli import app
from atrx.config.center import CenterConfig, load_center
from ingest.deid import pseudonymise_patient
from ingest.discover import plan_center
from ingest.patient import ingest_patient
from ingest.preprocess import PreprocessParams
from ingest.synth import write_dicom_series

KEY = "no-phi-test-key-of-at-least-32-bytes"
NAME, GIVEN, BIRTH, MRN = "DOE", "JANE", "19610203", "4455667"
OTHER = ("ROE", "RICHARD", "19700405", "7654321")  # the patients who share a series
PLANTED = (NAME, GIVEN, BIRTH, MRN, *OTHER)
FOLDERS = {  # raw id -> its folder: the id, then what a hospital's export tool adds
    "P001": f"P001_{NAME}^{GIVEN}_{BIRTH}_MRN{MRN}",
    "P002": "P002_{}^{}_{}_MRN{}".format(*OTHER),
    "P003": "P003_{}^{}_{}_MRN{}".format(*OTHER),
    "P004": f"P004_{GIVEN}_{NAME}_{BIRTH}_MRN{MRN}",
}


def _patient(root: Path, raw: str, n: int, images: tuple[sitk.Image, sitk.Image, sitk.Image],
             series: tuple[str, str] | None = None) -> Path:
    """A T1c and a FLAIR series whose folders and slices carry the name, and masks named so too."""
    folder = root / FOLDERS[raw]
    image, lesion, tumor = images
    common = {"study_uid": f"1.2.826.0.1.3680043.8.498.79.{n}", "study_date": "20200102", "quantize": True,
              "patient": {"PatientName": f"{NAME}^{GIVEN}", "PatientID": raw, "PatientBirthDate": BIRTH}}
    for i, (sub, desc, number) in enumerate(((f"T1_POST_{NAME}", "T1 POST GD", 3), (f"FLAIR_{GIVEN}", "FLAIR AX", 2))):
        write_dicom_series(image, folder / sub, series_description=desc, protocol_name=sub, series_number=number,
                           series_uid=series[i] if series else None, filename_pattern=f"{NAME}_{GIVEN}_{{index:04d}}.dcm",
                           **common)
    (folder / "masks").mkdir()
    sitk.WriteImage(lesion, str(folder / "masks" / f"{NAME}_{GIVEN}_{BIRTH}_lesion.nii.gz"))
    sitk.WriteImage(tumor, str(folder / "masks" / f"{NAME}_{GIVEN}_{BIRTH}_tumor.nii.gz"))
    return folder


@pytest.fixture(scope="module")
def export(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """The export and its center file ``PHI.yaml`` beside it."""
    src = tmp_path_factory.mktemp("phi") / "export"
    images = phantom((24, 28, 6), (0, 2, 3), (2.0, 5, 5))
    _patient(src, "P001", 1, images)
    shutil.copytree(src / FOLDERS["P001"], src / f"{FOLDERS['P001']} - Copy")  # identical: processed once
    shared = ("1.2.826.0.1.3680043.8.498.79.90", "1.2.826.0.1.3680043.8.498.79.91")
    _patient(src, "P002", 2, images, shared)  # P002 and P003 share their series: both refused
    p3 = _patient(src, "P003", 3, images, shared)
    (p3 / f"FLAIR_{GIVEN}" / f"{NAME}_{GIVEN}_9999.dcm").write_bytes(b"\x00garbage, not a DICOM slice" * 20)
    p4 = _patient(src, "P004", 4, images)
    (p4 / "masks" / f"{NAME}_{GIVEN}_{BIRTH}_tumor.nii.gz").write_bytes(b"not a NIfTI file at all" * 20)
    stray = src / f"{NAME}^{GIVEN}_{BIRTH}_MRN{MRN}_unsorted"  # no id: matches no patient
    stray.mkdir()
    (stray / f"{NAME}_{GIVEN}.txt").write_text("notes\n")
    rows = "".join(f"{raw},50,F,4,70,mutant,2020-01-20\n" for raw in FOLDERS)
    (src / "clinical.csv").write_text("id,age,sex,who,vasari,atrx,path\n" + rows)
    cfg = dicom_center("PHI", "export", KEY, patients={"glob": "*", "id_regex": r"^(?P<patient>P\d{3})_"},
                       masks={"lesion": {"glob": "masks/*_lesion.nii.gz", "space": "t2f"},
                              "tumor": {"glob": "masks/*_tumor.nii.gz", "space": "t1c"}})
    (src.parent / "PHI.yaml").write_text(yaml.safe_dump(cfg))
    return src


def _cfg(export: Path) -> CenterConfig:
    return load_center(export.parent / "PHI.yaml")


def _secrets(export: Path) -> list[str]:
    return [*PLANTED, *FOLDERS, str(export), str(export.resolve())]


def _hits(text: str, export: Path) -> list[str]:
    return [s for s in _secrets(export) if s in text]


def _catalog_text(db: Path) -> dict[str, str]:
    """Every table of the catalog, every column cast to text: table -> its rows, one per line."""
    out = {}
    with duckdb.connect(str(db), read_only=True) as con:
        for (table,) in con.execute("select table_name from information_schema.tables").fetchall():
            cols = [c for (c,) in con.execute("select column_name from information_schema.columns "
                                              "where table_name = ?", [table]).fetchall()]
            cast = ", ".join(f"coalesce(cast({c} as varchar), '')" for c in cols)
            out[table] = "\n".join(" | ".join(r) for r in con.execute(f"select {cast} from {table}").fetchall())
    return out


@pytest.fixture(scope="module")
def ingested(export: Path, tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, str, list[str]]:
    """``atrx ingest`` of the export: (home, what it printed, the log records' messages)."""
    home = tmp_path_factory.mktemp("home")
    records: list[str] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(self.format(record))

    handler = Keep(logging.DEBUG)
    root = logging.getLogger()
    root.addHandler(handler)
    try:
        result = CliRunner().invoke(app, ["-v", "ingest", str(export.parent / "PHI.yaml"), "--home", str(home),
                                          "--workers", "1"])
    finally:
        root.removeHandler(handler)
    assert result.exit_code == 0, result.stdout + result.stderr
    return home, result.stdout + result.stderr, records


def test_the_planted_strings_are_in_the_export(export: Path) -> None:
    """Sanity: without redaction the plan's paths and messages would carry every planted string."""
    plan = plan_center(_cfg(export), KEY)
    raw_text = "\n".join(f"{p.what} {p.fix} {p.file} {export / (p.file or '')}" for p in plan.all_problems())
    raw_text += "\n".join(f for pp in plan.patients for s in pp.studies for f in s.t1c.files + s.lesion.files)
    assert _hits(raw_text, export) == _secrets(export)


def test_ingest_records_no_planted_string(export: Path, ingested: tuple[Path, str, list[str]]) -> None:
    home, printed, logs = ingested
    tables = _catalog_text(home / "catalog.duckdb")
    assert tables["scans"] and tables["scan_sources"] and tables["quarantine"]
    for table, text in tables.items():
        assert _hits(text, export) == [], (table, text)
    zarr = sorted(home.rglob("zarr.json"))
    assert zarr
    for path in zarr:
        assert _hits(path.read_text(), export) == [], path
    assert "quarantined" in printed and "unreadable mask" in printed  # the table was printed
    assert _hits(printed, export) == [], printed
    assert _hits("\n".join(logs), export) == [], logs
    for path in (p for p in home.rglob("*") if p.is_file() and p.suffix in (".log", ".html", ".txt", ".json")):
        assert _hits(path.read_text(errors="replace"), export) == [], path


def test_the_quarantine_still_says_what_happened(export: Path, ingested: tuple[Path, str, list[str]]) -> None:
    home = ingested[0]
    with duckdb.connect(str(home / "catalog.duckdb"), read_only=True) as con:
        rows = con.execute("select patient_id, reason, file, blocking from quarantine").fetchall()
        labels = con.execute("select role, kind, label from scan_sources").fetchall()
    pid = {raw: pseudonymise_patient("PHI", raw, KEY) for raw in FOLDERS}

    def reasons(raw: str | None) -> str:
        return " | ".join(r[1] for r in rows if r[0] == (pid[raw] if raw else None))

    assert "does not match patients.id_regex" in reasons(None)  # the stray folder, by its token
    assert f"same 12 instances as {pid['P001']}, processed once" in reasons("P001")  # the copy
    for raw, other in (("P002", "P003"), ("P003", "P002")):  # the other patient by pseudonym
        assert "duplicate patient: the same series is also exported under" in reasons(raw)
        assert pid[other] in reasons(raw)
    assert "unreadable DICOM file" in reasons("P003") and "unreadable mask" in reasons("P004")
    files = [r[2] for r in rows if r[0] == pid["P003"] and "unreadable" in r[1]]
    assert [f.split("/")[0] for f in files] == [pid["P003"]] and files[0].endswith(".dcm"), files
    assert all(part.startswith("#") for part in files[0].split("/")[1:]), files  # names as tokens
    files = [r[2] for r in rows if r[0] == pid["P004"] and "unreadable" in r[1]]
    assert files[0].startswith(f"{pid['P004']}/masks/#"), files  # the center file's own names are kept
    # recorded labels: series descriptions as tokens, mask files as pseudonymous paths
    kinds = {role: (kind, label) for role, kind, label in labels}
    assert kinds["t1c"][0] == "dicom" and kinds["t1c"][1].startswith("#")
    assert kinds["lesion"][1].startswith("masks/#") and kinds["lesion"][1].endswith(".nii.gz")
    # P001's tumour mask and P004's have one name (the person's): two tokens, no link between them
    assert kinds["tumor"][1] != files[0].removeprefix(f"{pid['P004']}/")


def test_a_worker_read_error_is_redacted(export: Path, tmp_path: Path) -> None:
    """A file the plan did not read (masks unchecked) fails in the worker: SimpleITK's message,
    which names the absolute path, is recorded without it."""
    cfg = _cfg(export)
    plan = plan_center(cfg, KEY, read_masks=False)
    (p4,) = [pp for pp in plan.patients if pp.raw_id == "P004"]
    (out,) = ingest_patient(p4, cfg, str(tmp_path / "images.zarr"), PreprocessParams(), {})
    assert (out.status, out.stage) == ("quarantined", "read")
    assert "cannot read mask" in out.reason and out.fix
    assert out.file.startswith(f"{p4.patient_id}/masks/#") and out.file.endswith(".nii.gz")
    assert _hits(f"{out.reason} {out.fix} {out.file}", export) == [], out


def test_validate_report_shows_each_raw_path_beside_its_token(export: Path, tmp_path: Path) -> None:
    result = CliRunner().invoke(app, ["center", "validate", str(export.parent / "PHI.yaml"),
                                      "--report", str(tmp_path / "report")])
    assert result.exit_code == 1, result.stdout + result.stderr
    page = (tmp_path / "report" / "onboarding-PHI.html").read_text()
    plan = plan_center(_cfg(export), KEY)
    (p4,) = [pp for pp in plan.patients if pp.raw_id == "P004"]
    red = plan.redactor.merged(p4.redactor)
    (bad,) = [p.file for p in p4.problems if "unreadable mask" in p.what]
    assert bad in page and red.path(bad) in page  # the raw path, and what the ingest records for it
