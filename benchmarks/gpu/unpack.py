"""On the GPU machine: unpack what ``benchmarks/gpu/carry.py`` packed and build pyradiomics there.

    python3 benchmarks/gpu/unpack.py .gpu /tmp/atrx-gpu

Unpacks ``site.tar.xz`` into ``DEST/site`` and pyradiomics' sources into ``DEST/pyradiomics``,
then compiles its two C extensions (``radiomics._cmatrices``, ``radiomics._cshape``) with the C
compiler and headers of the Python running this, the same sources and flags pyradiomics'
setup.py gives them. Its last line is the folders to put on PYTHONPATH, colon-separated.
Exit status: 0 with both; 3 with the packages but without pyradiomics (no compiler or no
Python.h: the reason is printed); 2 when the carried files are missing or broken.
"""
from __future__ import annotations

import shutil
import subprocess
import sys
import sysconfig
import tarfile
from pathlib import Path

import numpy


def _build(root: Path) -> str | None:
    """Compile pyradiomics' extensions in place under ``root``; None, or why it could not."""
    include = [sysconfig.get_paths()["include"], numpy.get_include()]
    if not (Path(include[0]) / "Python.h").exists():
        return f"no Python.h under {include[0]} (the Python headers are not installed)"
    cc = (sysconfig.get_config_var("CC") or "cc").split()[0]
    if shutil.which(cc) is None:
        return f"no C compiler ({cc}) on PATH"
    suffix = sysconfig.get_config_var("EXT_SUFFIX")
    for name in ("cmatrices", "cshape"):
        src = root / "radiomics" / "src"
        cmd = [cc, "-O2", "-shared", "-fPIC", *[f"-I{d}" for d in include],
               str(src / f"_{name}.c"), str(src / f"{name}.c"),
               "-o", str(root / "radiomics" / f"_{name}{suffix}")]
        print(" ".join(cmd), flush=True)
        if subprocess.run(cmd, check=False).returncode != 0:
            return f"{cc} could not build radiomics._{name}"
    return None


def main() -> int:
    if len(sys.argv) != 3:
        print(__doc__, file=sys.stderr)
        return 2
    carry, dest = Path(sys.argv[1]), Path(sys.argv[2])
    archives = sorted(carry.glob("pyradiomics-*-src.tar.gz"))
    if not (carry / "site.tar.xz").is_file() or not archives:
        print(f"unpack.py: {carry} lacks site.tar.xz or pyradiomics-*-src.tar.gz; run "
              "benchmarks/gpu/carry.py where pip works", file=sys.stderr)
        return 2
    site, pyrad = dest / "site", dest / "pyradiomics"
    shutil.rmtree(dest, ignore_errors=True)
    site.mkdir(parents=True)
    pyrad.mkdir()
    try:
        with tarfile.open(carry / "site.tar.xz") as tf:
            tf.extractall(site, filter="data")
        with tarfile.open(archives[-1]) as tf:
            tf.extractall(pyrad, filter="data")
    except (tarfile.TarError, OSError) as exc:
        print(f"unpack.py: cannot unpack {carry}: {exc}", file=sys.stderr)
        return 2
    why = _build(pyrad)
    if why is not None:
        print(f"unpack.py: pyradiomics is not available here: {why}", file=sys.stderr)
        print(site)
        return 3
    print(f"{site}:{pyrad}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
