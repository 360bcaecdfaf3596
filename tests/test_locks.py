"""Lock files for commands that must not overlap: the second one exits 2 naming the holder."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from atrx.errors import ExitCode
from atrx.locks import LockedError, exclusive, holder

HOLD = """
import sys, time
from atrx.locks import exclusive
with exclusive(sys.argv[1], "ingest-A", "ingest of center A"):
    print("held", flush=True)
    time.sleep(60)
"""


def test_second_holder_is_refused_with_the_holder_named(tmp_path: Path) -> None:
    with exclusive(tmp_path, "ingest-A", "ingest of center A") as path:
        info = holder(tmp_path, "ingest-A")
        assert info and info["pid"] == os.getpid() and path.exists()
        with pytest.raises(LockedError) as err:
            with exclusive(tmp_path, "ingest-A", "ingest of center A"):
                pass
        assert err.value.exit_code == ExitCode.BAD_INPUT
        assert "ingest of center A is already running" in str(err.value)
        assert f"pid {os.getpid()}" in str(err.value) and "wait" in (err.value.fix or "")
        with exclusive(tmp_path, "ingest-B", "ingest of center B"):  # other names are free
            pass
    with exclusive(tmp_path, "ingest-A", "ingest of center A"):  # released at the end
        pass
    assert holder(tmp_path, "ingest-A") is None  # the holder line is cleared on release


def test_a_killed_holder_leaves_no_stale_lock(tmp_path: Path) -> None:
    proc = subprocess.Popen([sys.executable, "-c", HOLD, str(tmp_path)], stdout=subprocess.PIPE,
                            text=True)
    try:
        assert proc.stdout is not None and proc.stdout.readline().strip() == "held"
        with pytest.raises(LockedError, match=f"pid {proc.pid}"):
            with exclusive(tmp_path, "ingest-A", "ingest of center A"):
                pass
        assert json.loads((tmp_path / "locks" / "ingest-A.lock").read_text())["pid"] == proc.pid
    finally:
        proc.send_signal(signal.SIGKILL)
        proc.wait(10)
    deadline = time.monotonic() + 5
    while True:  # the kernel drops the flock with the process
        try:
            with exclusive(tmp_path, "ingest-A", "ingest of center A"):
                break
        except LockedError:
            if time.monotonic() > deadline:
                raise
            time.sleep(0.05)


def test_a_second_features_job_exits_2_naming_the_first(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from atrx.cli import app

    home = tmp_path / "home"
    with exclusive(home, "features", "a features job on this workspace"):
        result = CliRunner().invoke(app, ["features", "--home", str(home), "--weights", "random:0"])
    assert result.exit_code == 2, result.output
    assert "a features job on this workspace is already running" in result.output
    assert f"pid {os.getpid()}" in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)


def test_a_second_ingest_of_one_center_exits_2_and_other_centers_are_free(tmp_path: Path) -> None:
    from typer.testing import CliRunner

    from atrx.cli import app

    home = tmp_path / "home"
    (tmp_path / "cohort" / "A").mkdir(parents=True)  # the lock is taken before the export is read
    env = {"ATRX_COHORT": str(tmp_path / "cohort")}
    with exclusive(home, "ingest-A", "an ingest of center A"):
        result = CliRunner().invoke(app, ["ingest", "centers/A.yaml", "--home", str(home)], env=env)
        assert result.exit_code == 2, result.output
        assert "an ingest of center A is already running" in result.output
        assert f"pid {os.getpid()}" in result.output
        assert result.exception is None or isinstance(result.exception, SystemExit)
        with exclusive(home, "ingest-B", "an ingest of center B"):  # another center's lock is free
            pass
