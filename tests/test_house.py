"""The house rules, as tests: layers (import-linter), one error family, files that do one job."""

from __future__ import annotations

import importlib
import inspect
import pkgutil
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from atrx.errors import AtrxError, ExitCode

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("atrx", "ingest", "features", "feature_repo", "training", "serving")
MAX_LINES = 450
#: raises at import on purpose: it stops the Feast CLI from loading our package as a repo
NOT_IMPORTABLE = {"feature_repo._feast_cli_guard"}


def _exempt_bases() -> tuple[type[BaseException], ...]:
    """BentoML's HTTP exceptions: serving subclasses them so each carries its HTTP status."""
    from bentoml.exceptions import BentoMLException

    return (BentoMLException,)


def _modules() -> list[str]:
    names = []
    for pkg in PACKAGES:
        names.append(pkg)
        path = ROOT / pkg
        for info in pkgutil.walk_packages([str(path)], prefix=f"{pkg}."):
            if ".synth" in info.name or info.name.endswith("__main__") or info.name in NOT_IMPORTABLE:
                continue
            names.append(info.name)
    return names


def test_import_linter_contracts_hold() -> None:
    exe = shutil.which("lint-imports", path=str(Path(sys.executable).parent))
    if exe is None:
        pytest.fail("lint-imports is not installed; `make install` installs the dev extra")
    done = subprocess.run([exe], check=False, cwd=ROOT, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, done.stdout[-4000:] + done.stderr[-2000:]
    assert "broken" not in done.stdout.split("Contracts:")[-1].replace("0 broken", "")


def test_no_source_file_over_the_limit() -> None:
    files = [p for pkg in (*PACKAGES, "benchmarks") for p in (ROOT / pkg).rglob("*.py")
             if "synth" not in p.relative_to(ROOT).parts]
    too_long = {str(p.relative_to(ROOT)): n for p in files
                if (n := len(p.read_text(encoding="utf-8").splitlines())) > MAX_LINES}
    assert not too_long, f"split these files (> {MAX_LINES} lines): {too_long}"


@pytest.mark.parametrize("module", _modules())
def test_every_error_is_in_the_family(module: str) -> None:
    mod = importlib.import_module(module)
    for name, obj in vars(mod).items():
        if not (inspect.isclass(obj) and issubclass(obj, Exception) and obj.__module__ == module):
            continue
        if issubclass(obj, _exempt_bases()) or name.startswith("_"):
            continue
        assert issubclass(obj, AtrxError), f"{module}.{name} does not derive from atrx.errors.AtrxError"
        assert obj.exit_code in set(ExitCode), f"{module}.{name} has exit code {obj.exit_code}"
