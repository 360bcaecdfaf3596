"""The catalog remembers each center's key by a fingerprint, and ingest refuses another key.

No images are ingested here: an empty export plans no tasks, and the catalog is given patients
directly, so every test runs in well under a second. ``tests/test_ingest.py`` checks the
fingerprint a real ``atrx ingest`` records, and that the catalog holds no raw key.
"""

from __future__ import annotations

from pathlib import Path

import duckdb
import pytest
import yaml
from typer.testing import CliRunner

from atrx.catalog import Catalog
from atrx.cli import app
from atrx.config.center import load_center
from atrx.errors import ExitCode, InputError
from atrx.workspace import Workspace
from ingest.deid import key_fingerprint
from ingest.driver import check_key, run_ingest

runner = CliRunner()
KEY = "first-key-of-this-center-32-bytes-long"
OTHER = "another-key-of-this-center-32-bytes-long"


def center_file(tmp_path: Path, key: str, center: str = "K") -> Path:
    """A synthetic NIfTI center with an empty export (no patients: nothing to ingest)."""
    (tmp_path / "export").mkdir(exist_ok=True)
    path = tmp_path / f"{center}.yaml"
    path.write_text(yaml.safe_dump({
        "center": center, "source": "export", "preset": "brats2023", "synthetic": True, "deid": {"key": key},
        "clinical": {"path": "clinical.csv", "columns": {
            "patient_id": "id", "age": "age", "sex": "sex", "who_grade": "who", "vasari_score": "vasari",
            "atrx_status": "atrx", "pathology_date": "date"}}}))
    return path


def give_patients(ws: Workspace, center: str, n: int) -> None:
    """``n`` pseudonymised clinical rows of ``center``, as an earlier ingest would have left."""
    rows = [{"patient_id": f"{center}-{i:012x}", "age": 50.0, "sex": "male", "who_grade": 4, "vasari_score": 10.0,
             "atrx_status": "wildtype", "pathology_date": None, "row_hash": str(i)} for i in range(n)]
    with Catalog(ws.catalog) as cat:
        cat.upsert_clinical(center, "ingest-earlier", rows)


def test_fingerprint_is_a_keyed_hash_never_the_key() -> None:
    fp = key_fingerprint(KEY)
    assert len(fp) == 64 and int(fp, 16) >= 0
    assert fp == key_fingerprint(KEY) != key_fingerprint(OTHER)
    assert KEY not in fp


def test_first_ingest_records_the_fingerprint_and_another_key_is_refused(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path / "home")
    run_ingest(load_center(center_file(tmp_path, KEY)), ws)
    with Catalog(ws.catalog) as cat:
        assert cat.key_fingerprint("K") == key_fingerprint(KEY)
        assert cat.key_fingerprint("other") is None
    give_patients(ws, "K", 3)
    assert check_key(ws, "K", KEY) == key_fingerprint(KEY)
    with pytest.raises(InputError) as e:
        run_ingest(load_center(center_file(tmp_path, OTHER)), ws)
    assert "center K" in str(e.value) and "3 patient(s)" in str(e.value)
    assert e.value.fix and "restore the original key" in e.value.fix and "new center id" in e.value.fix
    assert e.value.exit_code == ExitCode.BAD_INPUT
    with Catalog(ws.catalog) as cat:  # the refused key left nothing behind
        assert cat.key_fingerprint("K") == key_fingerprint(KEY)
        assert cat.query("select count(*) from runs")[0][0] == 1


def test_a_key_recorded_for_a_center_without_patients_may_change(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path / "home")
    run_ingest(load_center(center_file(tmp_path, KEY)), ws)
    run_ingest(load_center(center_file(tmp_path, OTHER)), ws)
    with Catalog(ws.catalog) as cat:
        assert cat.key_fingerprint("K") == key_fingerprint(OTHER)


def test_atrx_ingest_with_another_key_exits_2_before_any_center_starts(tmp_path: Path) -> None:
    home = tmp_path / "home"
    ws = Workspace.at(home)
    run_ingest(load_center(center_file(tmp_path, KEY)), ws)
    give_patients(ws, "K", 2)
    first_ok = center_file(tmp_path, KEY, center="J")  # would be ingested first, were keys not checked first
    result = runner.invoke(app, ["ingest", str(first_ok), str(center_file(tmp_path, OTHER)), "--home", str(home)])
    assert result.exit_code == ExitCode.BAD_INPUT == 2, result.stderr
    assert "center K" in result.stderr and "2 patient(s)" in result.stderr
    assert "restore the original key" in result.stderr
    assert KEY not in result.output and OTHER not in result.output
    with Catalog(ws.catalog) as cat:
        assert cat.key_fingerprint("J") is None


def test_a_catalog_made_before_fingerprints_gains_the_table(tmp_path: Path) -> None:
    path = str(tmp_path / "catalog.duckdb")
    Catalog(path).close()
    con = duckdb.connect(path)
    con.execute("DROP TABLE deid_keys")
    con.close()
    with Catalog(path) as cat:
        assert cat.key_fingerprint("K") is None
        cat.record_key_fingerprint("K", key_fingerprint(KEY), None)
        assert cat.key_fingerprint("K") == key_fingerprint(KEY)
        rows = cat.query("select * from deid_keys")
    assert KEY not in repr(rows)
