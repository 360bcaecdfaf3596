"""The agreement table: every pyradiomics 3.0.1 feature against the engine, run in the same test.

Rows: brain1 with our parameter file and with pyradiomics' own exampleSettings/Params.yaml, and
every generated case of tests/engine_cases.py with our parameter file (the ~100k-voxel lesions
are marked slow). Each row runs on every backend in ``BACKENDS``: all of pyradiomics' keys
(diagnostics dropped), in its order, each within relative 1e-4 (absolute 1e-9 where the
reference is near 0), NaN exactly where pyradiomics gives NaN; a ROI pyradiomics refuses must be
refused with a FeatureError.

The helpers here (reference run, tolerance check) are shared with tests/test_engine_core.py.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable, Iterator, Mapping
from contextlib import contextmanager
from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import SimpleITK as sitk
import torch
import yaml
from engine_cases import Case, brain1, cases

from features.engine import extract
from features.errors import FeatureError

ROOT = Path(__file__).resolve().parents[1]
OURS = ROOT / "features" / "params" / "radiomics.yaml"
PYRADIOMICS_PARAMS = ROOT / "tests" / "data" / "pyradiomics" / "Params.yaml"
REL, ABS = 1e-4, 1e-9

logging.getLogger("radiomics").setLevel(logging.ERROR)


def load(path: Path) -> dict[str, Any]:
    """The parameter file as both engines read it: without our ``reference`` block, which the
    features job reads itself (features/reference.py, features.radiomics.pyradiomics_params)."""
    return {k: v for k, v in yaml.safe_load(path.read_text()).items() if k != "reference"}


@cache
def table() -> tuple[Case, ...]:
    """The generated cases, built once per session (about 1.5 s)."""
    return tuple(cases(large=True))


def case(name: str) -> Case:
    return next(c for c in (*table(), brain1()) if c.name == name)


def only(params: Mapping[str, Any], **feature_classes: Any) -> dict[str, Any]:
    """``params`` with its featureClass replaced (e.g. ``only(p, firstorder=None)``)."""
    out = copy.deepcopy(dict(params))
    out["featureClass"] = feature_classes
    return out


@contextmanager
def sitk_tolerances() -> Iterator[None]:
    """Undo pyradiomics' process-wide SimpleITK tolerance change (it sets them from geometryTolerance)."""
    saved = (sitk.ProcessObject.GetGlobalDefaultCoordinateTolerance(),
             sitk.ProcessObject.GetGlobalDefaultDirectionTolerance())
    try:
        yield
    finally:
        sitk.ProcessObject.SetGlobalDefaultCoordinateTolerance(saved[0])
        sitk.ProcessObject.SetGlobalDefaultDirectionTolerance(saved[1])


def reference(image: sitk.Image, mask: sitk.Image, params: Mapping[str, Any]) -> dict[str, float]:
    """pyradiomics 3.0.1's features (``execute``; diagnostics dropped, the engine key removed)."""
    from radiomics import featureextractor

    params = copy.deepcopy(dict(params))
    params.pop("engine", None)
    (params.get("setting") or {}).pop("engine", None)
    with sitk_tolerances(), np.errstate(all="ignore"):
        result = featureextractor.RadiomicsFeatureExtractor(params).execute(image, mask)
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def assert_features_equal(ref: Mapping[str, float], got: Mapping[str, float]) -> float:
    """Same keys in the same order, values within the tolerance; returns the worst relative error."""
    missing, extra = [k for k in ref if k not in got], [k for k in got if k not in ref]
    assert not missing and not extra, f"missing {missing[:8]}, extra {extra[:8]}"
    assert list(ref) == list(got), "same keys, different order"
    bad, worst = [], 0.0
    for key, r in ref.items():
        g = got[key]
        if math.isnan(r) or math.isnan(g):
            if not (math.isnan(r) and math.isnan(g)):
                bad.append((key, r, g))
            continue
        if math.isinf(r) or math.isinf(g):
            if r != g:
                bad.append((key, r, g))
            continue
        err = abs(g - r)
        if err > max(REL * abs(r), ABS):
            bad.append((key, r, g))
        if abs(r) > ABS:
            worst = max(worst, err / abs(r))
    assert not bad, f"{len(bad)} features differ, e.g. {bad[:6]}"
    return worst


def same_outcome(image: sitk.Image, mask: sitk.Image, params: Mapping[str, Any], engine=extract
                 ) -> float | None:
    """pyradiomics and the engine agree: the worst relative error, or None when both refuse the ROI."""
    try:
        ref = reference(image, mask, params)
    except (ValueError, RuntimeError):  # how pyradiomics refuses a ROI
        with pytest.raises(FeatureError):
            engine(image, mask, params)
        return None
    return assert_features_equal(ref, engine(image, mask, params))


# ---------------------------------------------------------------- the table

#: Backends the table runs on: the numba engine ("cpu"), the torch backend on the CPU device
#: ("torch-cpu", always) and on CUDA ("cuda", where torch sees a GPU: benchmarks/gpu/check.sh).
BACKENDS = ["cpu", "torch-cpu", *(["cuda"] if torch.cuda.is_available() else [])]
PARAMS = {"ours": OURS, "pyradiomics": PYRADIOMICS_PARAMS}


def engine(backend: str) -> Callable[[sitk.Image, sitk.Image, Mapping[str, Any]], dict[str, float]]:
    if backend == "cpu":
        return extract
    if backend in ("torch-cpu", "cuda"):
        device = "cpu" if backend == "torch-cpu" else "cuda"
        return lambda image, mask, params: extract(image, mask, params, device=device)
    raise ValueError(f"unknown backend {backend!r}")


def _rows() -> list[Any]:
    rows = [pytest.param("brain1", "ours", id="brain1-ours"),
            pytest.param("brain1", "pyradiomics", id="brain1-pyradiomics_params")]
    for c in table():
        marks = [pytest.mark.slow] if c.name.startswith("large") else []
        rows.append(pytest.param(c.name, "ours", marks=marks, id=c.name))
    return rows


@cache
def _reference(name: str, params_name: str) -> dict[str, float] | Exception:
    """pyradiomics' result for one row, computed once for all backends (or how it refused)."""
    c = case(name)
    try:
        return reference(c.image, c.mask, load(PARAMS[params_name]))
    except (ValueError, RuntimeError) as e:
        return e


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize("name, params_name", _rows())
def test_engine_agrees_with_pyradiomics(backend: str, name: str, params_name: str) -> None:
    c = case(name)
    params = load(PARAMS[params_name])
    ref = _reference(name, params_name)
    if isinstance(ref, Exception):
        with pytest.raises(FeatureError):
            engine(backend)(c.image, c.mask, params)
        return
    assert_features_equal(ref, engine(backend)(c.image, c.mask, params))


def test_table_covers_all_1130_features_and_refusals() -> None:
    ref = _reference("brain1", "ours")
    assert isinstance(ref, dict) and len(ref) == 1130
    refused = [c.name for c in table() if not c.name.startswith("large")
               and isinstance(_reference(c.name, "ours"), Exception)]
    assert refused == ["tiny_20"]  # exactly minimumROISize voxels: pyradiomics wants more
