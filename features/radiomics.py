"""Radiomics features of one ROI on one sequence, under the canonical names of :mod:`atrx.names`.

Pure computation: images and masks come in as SimpleITK images, features go out as a flat
``{canonical name: float}`` dict. Scheduling and storage live in the driver.

Two engines compute the same features from the same PyRadiomics parameter file, chosen by its
top-level ``engine`` key: ``atrx`` (:mod:`features.engine`, ours, numba; what the repository's
``radiomics.yaml`` chooses) and ``pyradiomics`` (PyRadiomics 3.0.1, the reference the engine is
tested against, and the meaning of a file without the key, so that a parameter file written before
the engine existed keeps its numbers and its feature version).
:func:`extract_features` is the one entry point for both (PyRadiomics' own keys); the canonical
names sit on top of it. The engine's name and version are part of the feature version, so
features of the two engines never mix in Feast.

PyRadiomics is imported lazily because importing it installs a stderr handler on its logger.
"""

from __future__ import annotations

import copy
import hashlib
import json
import logging
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk
import yaml

from atrx.names import radiomics_feature_name, view_name
from features.errors import FeatureError, RadiomicsParamsError

DEFAULT_PARAMS_PATH = Path(__file__).resolve().parent / "params" / "radiomics.yaml"

_TOP_LEVEL_KEYS = frozenset({"imageType", "featureClass", "setting", "engine", "reference"})
#: engines of the ``engine`` key
ENGINES = ("atrx", "pyradiomics")
#: the engine of a parameter file without the key (files from before the engine existed)
DEFAULT_ENGINE = "pyradiomics"
_PARAMS_FIX = (f"start from {DEFAULT_PARAMS_PATH.name} (features/params/) and keep to PyRadiomics' "
               "parameter file format")
_QUIET_LEVEL = logging.CRITICAL + 10
_QUIET_LOGGERS = ("radiomics", "pykwalify")


class _QuietState:
    """Reference count of running extractions.

    The first one in silences the loggers and saves SimpleITK's process-wide tolerances
    (PyRadiomics overwrites them when geometryTolerance is set); the last one out restores both,
    so concurrent threads never un-silence each other.
    """

    def __init__(self) -> None:
        self.lock = threading.Lock()
        self.depth = 0
        self.saved: dict[str, Any] = {}


_QUIET = _QuietState()
# PyRadiomics validates parameters with pykwalify/ruamel.yaml, whose schema parsing is not
# thread-safe (concurrent constructions fail at random): build extractors one at a time.
_CONSTRUCT_LOCK = threading.Lock()


def load_params(path: str | Path | None = None) -> dict[str, Any]:
    """Read and validate a PyRadiomics parameter file (default: the repository's ``radiomics.yaml``)."""
    source = Path(path) if path is not None else DEFAULT_PARAMS_PATH
    params = yaml.safe_load(source.read_text())
    check_params(params, source=str(source))
    return params


def check_params(params: Any, source: str = "params") -> None:
    """Fail early, naming ``source``, if ``params`` is not a PyRadiomics parameter dict for binary masks."""
    if not isinstance(params, Mapping):
        raise RadiomicsParamsError(
            f"{source}: expected a mapping of PyRadiomics parameters, got {type(params).__name__}",
            fix=_PARAMS_FIX,
        )
    unknown = set(params) - _TOP_LEVEL_KEYS
    if unknown:
        raise RadiomicsParamsError(
            f"{source}: unknown top-level keys {sorted(unknown)}; expected only {sorted(_TOP_LEVEL_KEYS)}",
            fix=_PARAMS_FIX,
        )
    engine = params.get("engine", DEFAULT_ENGINE)
    if engine not in ENGINES:
        raise RadiomicsParamsError(
            f"{source}: engine must be one of {list(ENGINES)}, got {engine!r}",
            fix="set engine: atrx (ours) or engine: pyradiomics (the reference)")
    from features.reference import reference_settings

    reference_settings(params, source)
    label = (params.get("setting") or {}).get("label", 1)
    if label != 1:
        raise RadiomicsParamsError(
            f"{source}: setting.label must be 1 (masks are binary 0/1), got {label!r}",
            fix="remove setting.label or set it to 1")
    if engine == "atrx":
        from features.engine.settings import parse_params

        try:
            parse_params(pyradiomics_params(params))
        except RadiomicsParamsError as e:
            raise RadiomicsParamsError(f"{source}: {e}", fix=e.fix) from None
    else:
        with _quiet_pyradiomics():
            _new_extractor(pyradiomics_params(params), source)


def engine_of(params: Mapping[str, Any]) -> str:
    """The engine ``params`` choose (PyRadiomics when the file names none)."""
    return str(params.get("engine", DEFAULT_ENGINE))


def pyradiomics_params(params: Mapping[str, Any]) -> dict[str, Any]:
    """``params`` without our own keys (``engine``, ``reference``): the PyRadiomics parameter file
    both engines read."""
    return {k: v for k, v in params.items() if k not in ("engine", "reference")}


def params_hash(params: Mapping[str, Any]) -> str:
    """sha256 of the canonical JSON of the settings, ``reference`` included (the engine is hashed
    apart, by :func:`features.versioning.radiomics_version`): the same settings give the same id."""
    return hashlib.sha256(_canonical_json({k: v for k, v in params.items() if k != "engine"})
                          .encode("utf-8")).hexdigest()


def extract_radiomics(
    image: sitk.Image, mask: sitk.Image, roi: str, sequence: str, params: Mapping[str, Any]
) -> dict[str, float]:
    """Features of one binary ROI mask (value 1, on the image grid) as ``{canonical name: float}``.

    Each ROI is its own binary mask because PyRadiomics takes one label per call and the edema ROI
    is not a single label of the source segmentation. The keys and their order always equal
    :func:`radiomics_feature_names`, so feature-store schemas stay fixed; values may be NaN where
    PyRadiomics defines a feature as undefined (e.g. a flat ROI).
    """
    view_name("rad", roi, sequence)  # unknown roi/sequence -> ValueError before any work
    what = f"roi {roi!r} of sequence {sequence!r}"
    return _canonical(extract_features(image, mask, params, what=what), roi, sequence, params, what)


def extract_radiomics_rois(
    image: sitk.Image, masks: Mapping[str, sitk.Image], sequence: str, params: Mapping[str, Any],
    device: str | None = None,
) -> dict[str, dict[str, float] | FeatureError]:
    """:func:`extract_radiomics` of several ROIs of one image (``{roi: mask}``), in that order.

    Why: the atrx engine filters the image once for all of a patient's ROIs
    (:func:`features.engine.batch.extract_rois`, bitwise equal to one ROI at a time). Each ROI gets
    its features or the :class:`FeatureError` saying why it has none; one bad ROI never stops the
    others. PyRadiomics computes them one after another. ``device`` (``"cpu"``, ``"cuda"``) runs the
    atrx engine's firstorder and texture classes on torch (:mod:`features.engine.tensor`, one
    batched call for all ROIs); None runs its numba backend. Both agree to 1e-10 (tests), so the
    feature version does not depend on it. PyRadiomics has no device: giving one is an error.
    """
    whats = {roi: f"roi {roi!r} of sequence {sequence!r}" for roi in masks}
    for roi in masks:
        view_name("rad", roi, sequence)
    if engine_of(params) == "pyradiomics":
        if device is not None:
            raise RadiomicsParamsError(
                f"radiomics device {device!r} asked for, but the parameter file chooses the "
                "pyradiomics engine, which runs on the CPU only",
                fix="set engine: atrx in the radiomics parameter file, or run without --gpus")
        out: dict[str, dict[str, float] | FeatureError] = {}
        for roi, mask in masks.items():
            try:
                out[roi] = extract_radiomics(image, mask, roi, sequence, params)
            except FeatureError as e:
                out[roi] = e
        return out
    from features.engine.batch import extract_rois

    checked: dict[str, FeatureError | int] = {}
    for roi, mask in masks.items():
        try:
            checked[roi] = _check_mask(image, mask, whats[roi])
        except FeatureError as e:
            checked[roi] = e
    valid = {roi: masks[roi] for roi, c in checked.items() if not isinstance(c, FeatureError)}
    with np.errstate(all="ignore"):
        raw = extract_rois(image, valid, pyradiomics_params(params), device) if valid else {}
    out = {}
    for roi, c in checked.items():
        got = c if isinstance(c, FeatureError) else raw[roi]
        if isinstance(got, FeatureError):
            out[roi] = got if isinstance(c, FeatureError) else FeatureError(
                f"{whats[roi]} ({c} voxels): {got}", fix=got.fix)
            continue
        try:
            out[roi] = _canonical(got, roi, sequence, params, whats[roi])
        except FeatureError as e:
            out[roi] = e
    return out


def _canonical(raw: Mapping[str, float], roi: str, sequence: str, params: Mapping[str, Any],
               what: str) -> dict[str, float]:
    """PyRadiomics' keys -> canonical names, refusing a result without exactly the expected keys."""
    expected = _keys_of(params)
    if len(raw) != len(expected) or not all(key in raw for key in expected):
        missing = [k for k in expected if k not in raw]
        extra = sorted(set(raw) - set(expected))
        raise FeatureError(
            f"{engine_of(params)} returned {len(raw)} features for {what}, expected {len(expected)}; "
            f"missing {missing[:5]}{'...' if len(missing) > 5 else ''}, "
            f"unexpected {extra[:5]}{'...' if len(extra) > 5 else ''} "
            "(LoG sigmas are skipped when the image is smaller than sigma/spacing + 1 voxels)"
        )
    return {radiomics_feature_name(roi, sequence, key): raw[key] for key in expected}


def extract_features(
    image: sitk.Image, mask: sitk.Image, params: Mapping[str, Any], *, what: str = "ROI"
) -> dict[str, float]:
    """Features of a binary mask by the engine ``params["engine"]`` chooses, PyRadiomics' keys
    (``original_glcm_Contrast``), ``diagnostics_*`` dropped; a failure is a :class:`FeatureError`
    naming ``what``."""
    if engine_of(params) == "pyradiomics":
        return extract_pyradiomics(image, mask, params, what=what)
    from features.engine import extract

    n_voxels = _check_mask(image, mask, what)
    try:
        with np.errstate(all="ignore"):
            return extract(image, mask, pyradiomics_params(params))
    except FeatureError as e:
        raise FeatureError(f"{what} ({n_voxels} voxels): {e}", fix=e.fix) from None


def extract_pyradiomics(
    image: sitk.Image, mask: sitk.Image, params: Mapping[str, Any], *, what: str = "ROI"
) -> dict[str, float]:
    """Run PyRadiomics with explicit ``params`` on a binary mask; keys stay PyRadiomics' own.

    The lower level of :func:`extract_radiomics`, also used to reproduce PyRadiomics' published
    baselines. ``diagnostics_*`` entries are dropped; every PyRadiomics failure becomes a
    :class:`FeatureError` that says which ROI (``what``) and how many voxels it had.
    """
    n_voxels = _check_mask(image, mask, what)
    min_size = (params.get("setting") or {}).get("minimumROISize")
    if min_size is not None and n_voxels < min_size:
        raise FeatureError(
            f"{what}: ROI has {n_voxels} voxels, fewer than minimumROISize={min_size}"
        )
    with _quiet_pyradiomics(), np.errstate(all="ignore"):
        extractor = _new_extractor(pyradiomics_params(params), what)
        try:
            result = extractor.execute(image, mask, label=1)
        except Exception as e:
            raise FeatureError(
                f"PyRadiomics failed on {what} ({n_voxels} voxels): {type(e).__name__}: {e}"
            ) from e
    return {k: float(v) for k, v in result.items() if not k.startswith("diagnostics_")}


def radiomics_feature_names(
    roi: str, sequence: str, params: Mapping[str, Any] | None = None
) -> list[str]:
    """The exact ordered canonical names :func:`extract_radiomics` returns for ``params``."""
    params = load_params() if params is None else params
    view_name("rad", roi, sequence)
    keys = _keys_of(params)
    return [radiomics_feature_name(roi, sequence, key) for key in keys]


def view_feature_names(roi: str, sequence: str, params: Mapping[str, Any] | None = None) -> list[str]:
    """A radiomics view's columns: the features, then the reference-tissue columns when the
    parameter file has a ``reference`` block (:mod:`features.reference`)."""
    from features.reference import reference_feature_names

    params = load_params() if params is None else params
    return radiomics_feature_names(roi, sequence, params) + reference_feature_names(roi, sequence, params)


def _keys_of(params: Mapping[str, Any]) -> tuple[str, ...]:
    """The PyRadiomics keys ``params`` produce: what the engine reads, our own blocks left out."""
    engine = {"engine": params["engine"]} if "engine" in params else {}
    return _pyradiomics_keys(_canonical_json(pyradiomics_params(params) | engine))


def feature_count(params: Mapping[str, Any] | None = None) -> int:
    """Number of features per ROI for ``params`` (1130 for the repository's parameter file)."""
    params = load_params() if params is None else params
    return len(_keys_of(params))


def _canonical_json(params: Mapping[str, Any]) -> str:
    return json.dumps(params, sort_keys=True, separators=(",", ":"), ensure_ascii=True)


@lru_cache(maxsize=32)
def _pyradiomics_keys(canonical_params: str) -> tuple[str, ...]:
    """PyRadiomics keys produced by ``params``, found by one run on a synthetic noisy sphere.

    Which keys appear depends only on the parameters (image types, classes, settings), not on the
    data, as long as the ROI is valid; the 32 mm volume is large enough for LoG sigmas up to 31 mm
    (a single-slice disk replaces the sphere when shape2D is enabled).
    The order is PyRadiomics' own for the key-sorted parameters (shape, then image types
    alphabetically), so it does not depend on the order of keys in a caller's dict.
    """
    params = json.loads(canonical_params)
    rng = np.random.default_rng(0)
    n = 32
    z, y, x = np.mgrid[:n, :n, :n]
    roi = (z - n // 2) ** 2 + (y - n // 2) ** 2 + (x - n // 2) ** 2 <= 8**2
    if "shape2D" in (params.get("featureClass") or {}):
        # 2D shape needs a single-slice ROI in the forced 2D dimension (array axis, 0 = z)
        axis = int((params.get("setting") or {}).get("force2Ddimension", 0))
        coords = (z, y, x)[axis]
        roi &= coords == n // 2
    image = sitk.GetImageFromArray(rng.standard_normal((n, n, n)).astype(np.float32))
    mask = sitk.GetImageFromArray(roi.astype(np.uint8))
    mask.CopyInformation(image)
    try:
        raw = extract_features(image, mask, params, what="the synthetic probe sphere")
    except FeatureError as e:
        raise RadiomicsParamsError(f"cannot determine the feature names these parameters produce: {e}",
                                   fix=_PARAMS_FIX) from e
    return tuple(raw)


def _check_mask(image: sitk.Image, mask: sitk.Image, what: str) -> int:
    """Return the ROI voxel count; raise FeatureError for an empty, non-binary or misfit mask."""
    if not isinstance(image, sitk.Image) or not isinstance(mask, sitk.Image):
        raise TypeError(
            f"{what}: expected SimpleITK images, got image={type(image).__name__}, "
            f"mask={type(mask).__name__}"
        )
    if image.GetDimension() != 3 or mask.GetDimension() != 3:
        raise FeatureError(
            f"{what}: expected 3D image and mask, got {image.GetDimension()}D and {mask.GetDimension()}D"
        )
    if image.GetSize() != mask.GetSize():
        raise FeatureError(
            f"{what}: mask size {mask.GetSize()} differs from image size {image.GetSize()}; "
            "the mask must be on the image grid"
        )
    values = sitk.GetArrayViewFromImage(mask)
    n_voxels = int(np.count_nonzero(values == 1))
    n_nonzero = int(np.count_nonzero(values))
    if n_nonzero != n_voxels:
        raise FeatureError(
            f"{what}: expected a binary mask (0 and 1), got {n_nonzero - n_voxels} voxels "
            f"with other values (e.g. {np.unique(values[(values != 0) & (values != 1)])[:5].tolist()})"
        )
    if n_voxels == 0:
        raise FeatureError(f"{what}: empty mask, 0 voxels with value 1")
    return n_voxels


def _new_extractor(params: Mapping[str, Any], source: str) -> Any:
    """A fresh extractor per call (milliseconds) so that threads never share an extractor."""
    from radiomics import featureextractor

    try:
        # deepcopy: PyRadiomics keeps references to the nested dicts and updates settings in place
        with _CONSTRUCT_LOCK:
            return featureextractor.RadiomicsFeatureExtractor(copy.deepcopy(dict(params)))
    except Exception as e:
        raise RadiomicsParamsError(
            f"{source}: PyRadiomics rejected the parameters: {type(e).__name__}: {e}", fix=_PARAMS_FIX
        ) from e


@contextmanager
def _quiet_pyradiomics() -> Iterator[None]:
    """Silence PyRadiomics (and its schema validator) and undo its global SimpleITK tolerance change."""
    import radiomics  # noqa: F401  (its import sets the logger level: import before saving it)

    state = _QUIET
    with state.lock:
        if state.depth == 0:
            state.saved = {
                "levels": {n: logging.getLogger(n).level for n in _QUIET_LOGGERS},
                "coordinate": sitk.ProcessObject.GetGlobalDefaultCoordinateTolerance(),
                "direction": sitk.ProcessObject.GetGlobalDefaultDirectionTolerance(),
            }
            for name in _QUIET_LOGGERS:
                logging.getLogger(name).setLevel(_QUIET_LEVEL)
        state.depth += 1
    try:
        yield
    finally:
        with state.lock:
            state.depth -= 1
            if state.depth == 0:
                for name, level in state.saved["levels"].items():
                    logging.getLogger(name).setLevel(level)
                sitk.ProcessObject.SetGlobalDefaultCoordinateTolerance(state.saved["coordinate"])
                sitk.ProcessObject.SetGlobalDefaultDirectionTolerance(state.saved["direction"])
