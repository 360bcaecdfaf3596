"""Pack what the lent GPU machine lacks for ``benchmarks/gpu/check.sh`` into ``.gpu/`` (git-ignored).

    .venv/bin/python benchmarks/gpu/carry.py [--out .gpu] [--python-version 3.12]

The lent H200's image (../.library/device/KINDS.md) has python3 3.12 with torch, numba, scipy,
numpy and pytest, but none of SimpleITK, PyWavelets, connected-components-3d or pyradiomics, and
it cannot fetch anything. This downloads, here, the wheels of the versions installed in this
checkout's environment for that Python (manylinux, x86-64), unpacks them into one ``site/`` tree
(without PyWavelets' own test data), and packs it as ``site.tar.xz``: xz brings SimpleITK's
272 MB library to well under the 64 MiB a device call may carry with the working tree, where
its wheel alone is 53 MB. pyradiomics 3.0.1 has no wheel and C extensions, and no Python 3.12
is to be had here, so its package sources (``radiomics/``, with ``src/*.c``) go as
``pyradiomics-3.0.1-src.tar.gz``; check.sh compiles its two extensions there with the machine's
C compiler (falling back to the CUDA-against-numba tests, and saying so, when it cannot).

Use: run this (``.gpu/`` is in .gitignore), then on the device
``PY=python3 benchmarks/gpu/check.sh`` with ``.gpu`` in the run's ``carry``. A summary line gives
the sizes and the room left under the 64 MiB limit (the working tree counted in).
"""
from __future__ import annotations

import argparse
import hashlib
import importlib.metadata as metadata
import shutil
import subprocess
import sys
import tarfile
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
LIMIT = 64 * 2 ** 20  # what one device call carries, working tree included
# distribution -> what of it goes into site/ (top-level names in the wheel)
WHEELS = {
    "SimpleITK": ("SimpleITK",),
    "PyWavelets": ("pywt",),
    "connected-components-3d": ("cc3d", "fastcc3d"),
    "pykwalify": ("pykwalify",),
    "ruamel.yaml": ("ruamel",),
}
PYRADIOMICS = "3.0.1"
PLATFORMS = ["manylinux_2_28_x86_64", "manylinux_2_27_x86_64", "manylinux_2_24_x86_64",
             "manylinux_2_17_x86_64", "manylinux2014_x86_64", "manylinux1_x86_64"]
DROP = ("pywt/tests/",)  # PyWavelets' own tests and their data


def _dropped(member: str) -> bool:
    """Files the engine never reads: PyWavelets' tests and example signals (its data module stays)."""
    return member.startswith(DROP) or (member.startswith("pywt/data/") and not member.endswith(".py"))


def _pip(*args: str) -> None:
    cmd = [sys.executable, "-m", "pip", "download", "-q", "--no-deps", *args]
    if subprocess.run(cmd, check=False).returncode != 0:
        sys.exit(f"carry.py: pip failed: {' '.join(cmd)}")


def _wheels(dest: Path, python: str) -> list[Path]:
    """The cp``python`` wheels of the installed versions, downloaded into ``dest``."""
    platform = [f for p in PLATFORMS for f in ("--platform", p)]
    try:
        names = [f"{name}=={metadata.version(name)}" for name in WHEELS]
    except metadata.PackageNotFoundError as exc:
        sys.exit(f"carry.py: {exc.name} is not installed in {sys.prefix}; run `make install` "
                 "first (the carry takes the installed versions)")
    _pip("--only-binary=:all:", "--python-version", python, "--implementation", "cp",
         *platform, "-d", str(dest), *names)
    return sorted(dest.glob("*.whl"))


def _site_tree(wheels: list[Path], site: Path) -> list[str]:
    """Unpack the wheels' packages (and their dist-info) into ``site``; the manifest lines."""
    tops = {t for names in WHEELS.values() for t in names}
    lines = []
    for wheel in wheels:
        with zipfile.ZipFile(wheel) as zf:
            for member in zf.namelist():
                top = member.split("/", 1)[0]
                keep = (top.split(".")[0] in tops or top.endswith(".dist-info")) and \
                    not _dropped(member)
                if keep and not member.endswith("/"):
                    target = site / member
                    target.parent.mkdir(parents=True, exist_ok=True)
                    target.write_bytes(zf.read(member))
        lines.append(f"{wheel.name} sha256={hashlib.sha256(wheel.read_bytes()).hexdigest()}")
    return lines


def _docopt(dest: Path, site: Path) -> str:
    """docopt (pykwalify's need) exists only as an sdist: its one module."""
    _pip("--no-binary=:all:", "-d", str(dest), "docopt==0.6.2")
    sdist = next(dest.glob("docopt-*.tar.gz"))
    with tarfile.open(sdist) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("/docopt.py"))
        (site / "docopt.py").write_bytes(tf.extractfile(member).read())
    return f"{sdist.name} sha256={hashlib.sha256(sdist.read_bytes()).hexdigest()} (docopt.py)"


def _pyradiomics(dest: Path, out: Path) -> str:
    """pyradiomics' package sources from its sdist, without the 34 MB of example data."""
    _pip("--no-binary=:all:", "--no-build-isolation", "-d", str(dest), f"pyradiomics=={PYRADIOMICS}")
    sdist = next(dest.glob(f"pyradiomics-{PYRADIOMICS}.tar.gz"))
    target = out / f"pyradiomics-{PYRADIOMICS}-src.tar.gz"
    with tarfile.open(sdist) as src, tarfile.open(target, "w:gz") as dst:
        for member in src.getmembers():
            rel = member.name.split("/", 1)[-1]
            if member.isfile() and (rel.startswith("radiomics/") or rel == "LICENSE.txt"):
                member.name = rel
                dst.addfile(member, src.extractfile(member))
    return f"{sdist.name} sha256={hashlib.sha256(sdist.read_bytes()).hexdigest()} (radiomics/ only)"


def _tree_bytes() -> int:
    """Bytes of what travels besides the carry: tracked and untracked-not-ignored files."""
    listed = subprocess.run(["git", "ls-files", "-z", "--cached", "--others", "--exclude-standard"],
                            cwd=ROOT, capture_output=True, check=True).stdout.split(b"\0")
    return sum((ROOT / p.decode()).stat().st_size for p in listed if p and (ROOT / p.decode()).is_file())


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / ".gpu")
    ap.add_argument("--python-version", default="3.12", help="the device's Python (KINDS.md)")
    args = ap.parse_args()
    out: Path = args.out
    shutil.rmtree(out, ignore_errors=True)
    out.mkdir(parents=True)
    with tempfile.TemporaryDirectory() as tmp:
        dest, site = Path(tmp) / "dl", Path(tmp) / "site"
        dest.mkdir()
        site.mkdir()
        manifest = _site_tree(_wheels(dest, args.python_version), site)
        manifest.append(_docopt(dest, site))
        manifest.append(_pyradiomics(dest, out))
        print(f"carry.py: packing {sum(f.stat().st_size for f in site.rglob('*') if f.is_file()) / 1e6:.0f} "
              "MB of packages with xz (a minute or two)", flush=True)
        with tarfile.open(out / "site.tar.xz", mode="w:xz", preset=6) as tf:
            for path in sorted(site.iterdir()):
                tf.add(path, arcname=path.name)
    (out / "MANIFEST.txt").write_text(f"python {args.python_version}\n" + "\n".join(manifest) + "\n")
    carried = sum(f.stat().st_size for f in out.iterdir())
    tree = _tree_bytes()
    room = LIMIT - carried - tree
    print(f"carry.py: {out} holds {carried / 2**20:.1f} MiB; with the working tree's "
          f"{tree / 2**20:.1f} MiB that is {(carried + tree) / 2**20:.1f} of 64 MiB "
          f"({room / 2**20:.1f} MiB left)")
    if room < 0:
        sys.exit(2)


if __name__ == "__main__":
    main()
