"""benchmarks/gpu/unpack.py, what check.sh runs on an offline GPU machine after its GPU checks: it unpacks the
carried packages and compiles pyradiomics' C extensions with this machine's compiler (gcc here,
as on CI, where ``ATRX_REQUIRE_COMPILER=1`` turns a missing toolchain from a skip into a
failure). The carry is a small stand-in with the real layout: a module in site.tar.xz and two C
extension modules under radiomics/src/ in the sources' archive."""

from __future__ import annotations

import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
UNPACK = ROOT / "benchmarks" / "gpu" / "unpack.py"

_MODULE = """#include <Python.h>
static struct PyModuleDef def = {PyModuleDef_HEAD_INIT, "_%(name)s", NULL, -1, NULL};
PyMODINIT_FUNC PyInit__%(name)s(void) { return PyModule_Create(&def); }
"""


def _carry(folder: Path) -> Path:
    stage = folder / "stage"
    (stage / "site" / "carried_pkg").mkdir(parents=True)
    (stage / "site" / "carried_pkg" / "__init__.py").write_text("VALUE = 42\n")
    src = stage / "src" / "radiomics" / "src"
    src.mkdir(parents=True)
    (src.parent / "__init__.py").write_text("")
    for name in ("cmatrices", "cshape"):
        (src / f"_{name}.c").write_text(_MODULE % {"name": name})
        (src / f"{name}.c").write_text(f"int {name}_helper(void) {{ return 1; }}\n")
    carry = folder / ".gpu"
    carry.mkdir()
    with tarfile.open(carry / "site.tar.xz", "w:xz") as tf:
        tf.add(stage / "site" / "carried_pkg", arcname="carried_pkg")
    with tarfile.open(carry / "pyradiomics-3.0.1-src.tar.gz", "w:gz") as tf:
        tf.add(stage / "src" / "radiomics", arcname="radiomics")
    return carry


def test_unpack_builds_the_extensions_and_names_the_paths(tmp_path: Path) -> None:
    carry = _carry(tmp_path)
    dest = tmp_path / "dest"
    run = subprocess.run([sys.executable, str(UNPACK), str(carry), str(dest)],
                         check=False, capture_output=True, text=True, timeout=300)
    if run.returncode == 3 and "pyradiomics is not available" in run.stderr:
        if os.environ.get("ATRX_REQUIRE_COMPILER") == "1":  # CI builds pyradiomics with gcc too
            pytest.fail(f"ATRX_REQUIRE_COMPILER=1 but {run.stderr.strip()}")
        pytest.skip(f"no C toolchain for this Python: {run.stderr.strip()}")
    assert run.returncode == 0, run.stderr
    paths = run.stdout.strip().splitlines()[-1]
    assert paths == f"{dest / 'site'}:{dest / 'pyradiomics'}"
    check = subprocess.run(
        [sys.executable, "-c", "import carried_pkg, radiomics._cmatrices, radiomics._cshape; "
         "print(carried_pkg.VALUE, radiomics._cshape.__file__)"],
        env={"PYTHONPATH": paths, "PATH": "/usr/bin:/bin"}, check=False, capture_output=True,
        text=True, timeout=60)
    assert check.returncode == 0, check.stderr
    assert check.stdout.startswith("42 ") and str(dest) in check.stdout


def test_unpack_without_a_carry_says_what_to_run(tmp_path: Path) -> None:
    run = subprocess.run([sys.executable, str(UNPACK), str(tmp_path / "nothing"), str(tmp_path / "d")],
                         check=False, capture_output=True, text=True, timeout=60)
    assert run.returncode == 2
    assert "benchmarks/gpu/carry.py" in run.stderr
