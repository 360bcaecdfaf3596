"""Commands side by side on one catalog (issue 14, item 4): a job keeps its Catalog for the whole
run, yet other processes read and write the DuckDB file meanwhile; a command that cannot get the
file waits for a short transaction and, past its limit, exits 2 naming the holder. Real DuckDB
files and real processes."""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import duckdb
import pytest

from atrx.catalog import Catalog
from atrx.dbfile import WAIT_ENV, CatalogBusyError, connect
from atrx.errors import ExitCode

HOLD = """
import sys, time, duckdb
con = duckdb.connect(sys.argv[1])
con.execute("BEGIN TRANSACTION")
con.execute("INSERT INTO meta VALUES ('held-by', 'other')")
print("held", flush=True)
time.sleep(float(sys.argv[2]))
con.execute("COMMIT")
con.close()
"""


def _atrx(*args: str, env: dict[str, str] | None = None, timeout: float = 120) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "atrx.cli", *args], check=False, capture_output=True, text=True,
                          timeout=timeout, env={**os.environ, **(env or {})})


def _hold(path: str, seconds: float) -> subprocess.Popen[str]:
    """Another process holding the file read-write (a raw connection, inside a transaction)."""
    proc = subprocess.Popen([sys.executable, "-c", HOLD, path, str(seconds)], stdout=subprocess.PIPE, text=True)
    assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
    return proc


def test_other_commands_read_and_write_while_a_job_keeps_its_catalog(tmp_path: Path) -> None:
    home = tmp_path / "home"
    with Catalog(str(home / "catalog.duckdb")) as cat:  # what an ingest or features job keeps for its run
        run_id = cat.start_run("ingest", "A", "cfg", "params", {"atrx": "test"})
        out = _atrx("catalog", "select stage, center, status from runs", "--home", str(home), "--csv")
        assert out.returncode == 0, out.stderr
        assert out.stdout.splitlines() == ["stage,center,status", "ingest,A,running"]
        other = subprocess.run(  # a second writer (a retrain recording its run) gets the file too
            [sys.executable, "-c", "import sys; from atrx.catalog import Catalog; "
             "print(Catalog(sys.argv[1]).start_run('train', None, None, None, {}))", cat.path],
            check=False, capture_output=True, text=True, timeout=120)
        assert other.returncode == 0, other.stderr
        cat.finish_run(run_id, "ok", {"patients": 0})
        assert {r[0]: r[1] for r in cat.query("select stage, status from runs")} == {"ingest": "ok", "train": "running"}


def test_a_writer_waits_for_another_process_s_short_transaction(tmp_path: Path) -> None:
    path = str(tmp_path / "catalog.duckdb")
    Catalog(path).close()
    proc = _hold(path, 1.5)
    try:
        t0 = time.monotonic()
        with Catalog(path) as cat:
            cat.start_run("features", None, None, None, {})
            waited = time.monotonic() - t0
            assert waited > 0.5  # it found the file held and waited for the commit
            assert cat.query("select value from meta where key = 'held-by'") == [("other",)]
    finally:
        proc.wait(30)


def test_a_command_that_cannot_get_the_file_exits_2_naming_the_holder(tmp_path: Path) -> None:
    home = tmp_path / "home"
    path = str(home / "catalog.duckdb")
    Catalog(path).close()
    proc = _hold(path, 60)
    try:
        out = _atrx("catalog", "select * from runs", "--home", str(home), env={WAIT_ENV: "0.5"})
        assert out.returncode == ExitCode.BAD_INPUT, out.stderr
        assert f"held by process {proc.pid}" in out.stderr and "Traceback" not in out.stderr
        assert "fix:" in out.stderr and WAIT_ENV in out.stderr
        with pytest.raises(CatalogBusyError, match=str(proc.pid)):
            connect(path, read_only=False, wait_s=0.2)
    finally:
        proc.kill()
        proc.wait(30)


def test_catalog_query_is_read_only_and_names_a_bad_query(tmp_path: Path) -> None:
    home = tmp_path / "home"
    Catalog(str(home / "catalog.duckdb")).close()
    out = _atrx("catalog", "delete from runs", "--home", str(home))
    assert out.returncode == ExitCode.BAD_INPUT and "read-only" in out.stderr, out.stderr
    out = _atrx("catalog", "select nothing from nowhere", "--home", str(home))
    assert out.returncode == ExitCode.BAD_INPUT and "the query failed" in out.stderr and "Traceback" not in out.stderr
    missing = _atrx("catalog", "select 1", "--home", str(tmp_path / "none"))
    assert missing.returncode != 0 and "atrx ingest" in missing.stderr


def test_a_batch_keeps_one_connection_and_a_failed_transaction_leaves_nothing(tmp_path: Path) -> None:
    path = str(tmp_path / "catalog.duckdb")
    cat = Catalog(path)
    with cat.batch() as con:
        cat.start_run("ingest", "A", None, None, {})
        with cat.batch() as inner:  # nested calls reuse it
            assert inner is con
    bad = {"patient_id": "P", "study_id": "S", "version": 1, "scan_date": None, "zarr_path": "z", "source_hash": "h",
           "content_hash": "c", "shape": [1], "roi_voxels": {}, "sources": {"t1c": {}}}  # a source without "kind"
    with pytest.raises(KeyError):
        cat.record_scan("A", "run", bad, "p", "v")
    assert cat.query("select count(*) from scans") == [(0,)]  # rolled back with its sources
    duckdb.connect(path, read_only=True).close()  # nothing holds the file between calls
