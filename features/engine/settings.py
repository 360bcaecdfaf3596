"""PyRadiomics parameter dicts parsed into the typed, frozen settings the engine runs on.

The engine computes what pyradiomics 3.0.1 computes for a subset of its parameters. Everything
outside that subset is refused here, naming the key, instead of being silently ignored: a file
that needs more runs on pyradiomics itself (``engine: pyradiomics``).

Merging follows ``featureextractor``: the settings of an image type are the global ``setting``
updated with that image type's own entries (so ``binCount`` under ``Wavelet`` applies to the
wavelet sub-bands only).
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import pywt

from features.errors import RadiomicsParamsError

__all__ = ["CLASSES", "DEPRECATED", "FEATURES", "IMAGE_TYPES", "EngineParams", "ImageTypeParams",
           "parse_params"]

FIX = "set engine: pyradiomics for this parameter file, or change the entry named"

#: Non-deprecated features per class, in pyradiomics' order (``getFeatureNames``: sorted by the
#: name of the ``get<Name>FeatureValue`` method), which is the order of its output keys.
FEATURES: dict[str, tuple[str, ...]] = {
    "firstorder": ("10Percentile", "90Percentile", "Energy", "Entropy", "InterquartileRange",
                   "Kurtosis", "Maximum", "MeanAbsoluteDeviation", "Mean", "Median", "Minimum",
                   "Range", "RobustMeanAbsoluteDeviation", "RootMeanSquared", "Skewness",
                   "TotalEnergy", "Uniformity", "Variance"),
    "glcm": ("Autocorrelation", "ClusterProminence", "ClusterShade", "ClusterTendency", "Contrast",
             "Correlation", "DifferenceAverage", "DifferenceEntropy", "DifferenceVariance", "Id",
             "Idm", "Idmn", "Idn", "Imc1", "Imc2", "InverseVariance", "JointAverage",
             "JointEnergy", "JointEntropy", "MCC", "MaximumProbability", "SumAverage",
             "SumEntropy", "SumSquares"),
    "gldm": ("DependenceEntropy", "DependenceNonUniformity", "DependenceNonUniformityNormalized",
             "DependenceVariance", "GrayLevelNonUniformity", "GrayLevelVariance",
             "HighGrayLevelEmphasis", "LargeDependenceEmphasis",
             "LargeDependenceHighGrayLevelEmphasis", "LargeDependenceLowGrayLevelEmphasis",
             "LowGrayLevelEmphasis", "SmallDependenceEmphasis",
             "SmallDependenceHighGrayLevelEmphasis", "SmallDependenceLowGrayLevelEmphasis"),
    "glrlm": ("GrayLevelNonUniformity", "GrayLevelNonUniformityNormalized", "GrayLevelVariance",
              "HighGrayLevelRunEmphasis", "LongRunEmphasis", "LongRunHighGrayLevelEmphasis",
              "LongRunLowGrayLevelEmphasis", "LowGrayLevelRunEmphasis", "RunEntropy",
              "RunLengthNonUniformity", "RunLengthNonUniformityNormalized", "RunPercentage",
              "RunVariance", "ShortRunEmphasis", "ShortRunHighGrayLevelEmphasis",
              "ShortRunLowGrayLevelEmphasis"),
    "glszm": ("GrayLevelNonUniformity", "GrayLevelNonUniformityNormalized", "GrayLevelVariance",
              "HighGrayLevelZoneEmphasis", "LargeAreaEmphasis", "LargeAreaHighGrayLevelEmphasis",
              "LargeAreaLowGrayLevelEmphasis", "LowGrayLevelZoneEmphasis",
              "SizeZoneNonUniformity", "SizeZoneNonUniformityNormalized", "SmallAreaEmphasis",
              "SmallAreaHighGrayLevelEmphasis", "SmallAreaLowGrayLevelEmphasis", "ZoneEntropy",
              "ZonePercentage", "ZoneVariance"),
    "ngtdm": ("Busyness", "Coarseness", "Complexity", "Contrast", "Strength"),
    "shape": ("Elongation", "Flatness", "LeastAxisLength", "MajorAxisLength",
              "Maximum2DDiameterColumn", "Maximum2DDiameterRow", "Maximum2DDiameterSlice",
              "Maximum3DDiameter", "MeshVolume", "MinorAxisLength", "Sphericity", "SurfaceArea",
              "SurfaceVolumeRatio", "VoxelVolume"),
}
#: Deprecated features: pyradiomics computes some of them only when named; the engine never does.
DEPRECATED: dict[str, tuple[str, ...]] = {
    "firstorder": ("StandardDeviation",),
    "glcm": ("Dissimilarity", "Homogeneity1", "Homogeneity2", "SumVariance"),
    "gldm": ("DependencePercentage", "GrayLevelNonUniformityNormalized"),
    "glrlm": (), "glszm": (), "ngtdm": (),
    "shape": ("Compactness1", "Compactness2", "SphericalDisproportion"),
}
#: Classes in pyradiomics' ``getFeatureClasses`` order: an empty ``featureClass`` enables them all.
CLASSES: tuple[str, ...] = ("firstorder", "glcm", "gldm", "glrlm", "glszm", "ngtdm", "shape")
IMAGE_TYPES: tuple[str, ...] = ("Original", "Wavelet", "LoG")
_TOP_LEVEL = frozenset({"imageType", "featureClass", "setting", "engine"})
_INTERPOLATORS = frozenset({
    "sitkNearestNeighbor", "sitkLinear", "sitkBSpline", "sitkGaussian", "sitkLabelGaussian",
    "sitkHammingWindowedSinc", "sitkCosineWindowedSinc", "sitkWelchWindowedSinc",
    "sitkLanczosWindowedSinc", "sitkBlackmanWindowedSinc"})


def _is_int(v: Any) -> bool:
    return isinstance(v, int) and not isinstance(v, bool)


def _is_number(v: Any) -> bool:
    return isinstance(v, int | float) and not isinstance(v, bool)


def _same(value: Any, default: Any) -> bool:
    """``value == default`` without ``True == 1`` or ``[1] == (1,)`` surprises."""
    if isinstance(value, bool) or isinstance(default, bool) or value is None or default is None:
        return value is default
    if isinstance(default, list | tuple):
        return isinstance(value, list | tuple) and list(value) == list(default)
    comparable = type(value) is type(default) or (_is_number(value) and _is_number(default))
    return comparable and value == default


def _interpolator(v: Any) -> bool:
    """Any value pyradiomics accepts: without resampling the interpolator is never used."""
    return v is None or v in _INTERPOLATORS or (_is_int(v) and 1 <= v <= 10)


# Settings with an effect: name -> (check, what the check wants).
_VALUES: dict[str, tuple[Callable[[Any], bool], str]] = {
    "binWidth": (lambda v: _is_number(v) and v > 0, "a number > 0"),
    "binCount": (lambda v: v is None or (_is_int(v) and v > 0), "an integer > 0 or null"),
    "voxelArrayShift": (_is_int, "an integer"),
    "label": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "preCrop": (lambda v: isinstance(v, bool), "true or false"),
    "padDistance": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    "minimumROIDimensions": (lambda v: _is_int(v) and 1 <= v <= 3, "1, 2 or 3"),
    "minimumROISize": (lambda v: v is None or (_is_int(v) and v > 0), "an integer > 0 or null"),
    "geometryTolerance": (lambda v: v is None or (_is_number(v) and v > 0), "a number > 0 or null"),
    "correctMask": (lambda v: isinstance(v, bool), "true or false"),
    "sigma": (lambda v: isinstance(v, list | tuple) and all(_is_number(s) and s > 0 for s in v),
              "a list of numbers > 0"),
    "wavelet": (lambda v: isinstance(v, str) and v in pywt.wavelist(kind="discrete"),
                "a discrete pywt wavelet name (pywt.wavelist(kind='discrete'))"),
    "level": (lambda v: _is_int(v) and v > 0, "an integer > 0"),
    "start_level": (lambda v: _is_int(v) and v >= 0, "an integer >= 0"),
    # no effect here, any value pyradiomics accepts
    "interpolator": (_interpolator, "a SimpleITK interpolator name (unused: no resampling)"),
    "additionalInfo": (lambda v: v is None or isinstance(v, bool), "true or false"),
}
# Settings that change nothing at their default value only (no resampling, no normalisation,
# 3D, GLCM at distance 1, ...): name -> accepted values (the default, and null where
# pyradiomics reads null as the default).
_DEFAULT_ONLY: dict[str, tuple[Any, ...]] = {
    "normalize": (False, None), "normalizeScale": (1,), "removeOutliers": (None,),
    "resampledPixelSpacing": (None,), "resegmentRange": (None,), "resegmentMode": ("absolute",),
    "resegmentShape": (False,), "label_channel": (0,), "force2D": (False, None),
    "force2Ddimension": (0,), "distances": ([1],), "symmetricalGLCM": (True,),
    "weightingNorm": (None,), "gldm_a": (0,), "gradientUseSpacing": (True,),
}
_FILTER_KEYS = {"sigma": "LoG", "wavelet": "Wavelet", "level": "Wavelet", "start_level": "Wavelet"}
# Settings read per image type by the filters and feature classes (the rest act before filtering).
_PER_IMAGE_TYPE = frozenset({"binWidth", "binCount", "voxelArrayShift", *_FILTER_KEYS})


@dataclass(frozen=True)
class ImageTypeParams:
    """One enabled image type with its merged settings (global ``setting`` + its own entries)."""

    kind: str
    bin_width: float = 25
    bin_count: int | None = None
    voxel_array_shift: int = 0
    sigma: tuple[float, ...] = ()
    wavelet: str = "coif1"
    level: int = 1
    start_level: int = 0


@dataclass(frozen=True)
class EngineParams:
    """What one extraction runs: image types and feature classes in pyradiomics' order, ROI checks."""

    image_types: tuple[ImageTypeParams, ...]
    feature_classes: tuple[tuple[str, tuple[str, ...]], ...]
    label: int = 1
    pre_crop: bool = False
    pad_distance: int = 5
    minimum_roi_dimensions: int = 2
    minimum_roi_size: int | None = None
    geometry_tolerance: float | None = None
    correct_mask: bool = False

    @property
    def shape_features(self) -> tuple[str, ...]:
        """Enabled shape features (empty when the shape class is off)."""
        return dict(self.feature_classes).get("shape", ())

    @property
    def texture_classes(self) -> tuple[tuple[str, tuple[str, ...]], ...]:
        """The classes computed on every image (all but shape), in pyradiomics' order."""
        return tuple((c, names) for c, names in self.feature_classes if c != "shape")


def parse_params(params: Mapping[str, Any]) -> EngineParams:
    """Validate a pyradiomics parameter dict and return the engine's settings for it."""
    if not isinstance(params, Mapping):
        raise RadiomicsParamsError(
            f"expected a mapping of pyradiomics parameters, got {type(params).__name__}", fix=FIX)
    unknown = sorted(set(params) - _TOP_LEVEL)
    if unknown:
        raise RadiomicsParamsError(
            f"top-level key(s) {unknown} are not supported by the atrx engine "
            f"(expected {sorted(_TOP_LEVEL)})", fix=FIX)
    setting = _mapping(params.get("setting"), "setting")
    for key, value in setting.items():
        _check_setting(key, value, "setting")
    image_types = _image_types(params.get("imageType"), setting)
    get = setting.get
    return EngineParams(
        image_types=image_types,
        feature_classes=_feature_classes(params.get("featureClass")),
        label=get("label", 1),
        pre_crop=bool(get("preCrop", False)),
        pad_distance=get("padDistance", 5),
        minimum_roi_dimensions=get("minimumROIDimensions", 2),
        minimum_roi_size=get("minimumROISize"),
        geometry_tolerance=None if get("geometryTolerance") is None else float(get("geometryTolerance")),
        correct_mask=bool(get("correctMask", False)),
    )


def _mapping(value: Any, where: str) -> Mapping[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, Mapping):
        raise RadiomicsParamsError(f"{where} must be a mapping, got {type(value).__name__}", fix=FIX)
    return value


def _check_setting(key: str, value: Any, where: str) -> None:
    """Raise unless ``key: value`` is a setting the engine computes exactly as pyradiomics does."""
    if key == "engine":
        return  # chooses the engine; read by features.radiomics, not here
    if key in _VALUES:
        check, wanted = _VALUES[key]
        if not check(value):
            raise RadiomicsParamsError(f"{where}.{key} must be {wanted}, got {value!r}", fix=FIX)
        return
    if key in _DEFAULT_ONLY:
        accepted = _DEFAULT_ONLY[key]
        if not any(_same(value, a) for a in accepted):
            raise RadiomicsParamsError(
                f"{where}.{key}: the atrx engine supports only {accepted[0]!r}, got {value!r}", fix=FIX)
        return
    raise RadiomicsParamsError(f"{where}.{key} is not a setting the atrx engine supports", fix=FIX)


def _unsupported(section: str, name: str, supported: tuple[str, ...]) -> RadiomicsParamsError:
    return RadiomicsParamsError(f"{section} {name!r} is not supported by the atrx engine "
                                f"(supported: {list(supported)})", fix=FIX)


def _image_types(value: Any, setting: Mapping[str, Any]) -> tuple[ImageTypeParams, ...]:
    enabled = _mapping(value, "imageType") or {"Original": {}}
    out = []
    for kind, custom in enabled.items():
        if kind not in IMAGE_TYPES:
            raise _unsupported("imageType", kind, IMAGE_TYPES)
        if not isinstance(custom, Mapping):
            raise RadiomicsParamsError(
                f"imageType.{kind} must be a mapping of settings ({{}} for none), got {custom!r}",
                fix="write {} for an image type without settings of its own")
        where = f"imageType.{kind}"
        for key, v in custom.items():
            if key not in _PER_IMAGE_TYPE and key not in _DEFAULT_ONLY:
                raise RadiomicsParamsError(
                    f"{where}.{key}: the atrx engine supports only {sorted(_PER_IMAGE_TYPE)} "
                    "per image type; put other settings under setting", fix=FIX)
            if _FILTER_KEYS.get(key, kind) != kind:
                raise RadiomicsParamsError(
                    f"{where}.{key} belongs to imageType {_FILTER_KEYS[key]}, not {kind}",
                    fix=f"move {key} under imageType.{_FILTER_KEYS[key]}")
            _check_setting(key, v, where)
        merged = {**setting, **custom}
        if kind == "LoG" and not merged.get("sigma"):
            # pyradiomics then yields no LoG image at all (it only logs a warning)
            raise RadiomicsParamsError("imageType.LoG is enabled without sigma: it would give "
                                       "no features", fix="give imageType.LoG a sigma list, e.g. "
                                       "sigma: [1.0, 2.0, 3.0], or remove LoG")
        out.append(ImageTypeParams(
            kind=kind,
            bin_width=merged.get("binWidth", 25),
            bin_count=merged.get("binCount"),
            voxel_array_shift=merged.get("voxelArrayShift", 0),
            sigma=tuple(merged.get("sigma") or ()),
            wavelet=merged.get("wavelet", "coif1"),
            level=merged.get("level", 1),
            start_level=merged.get("start_level", 0),
        ))
    return tuple(out)


def _feature_classes(value: Any) -> tuple[tuple[str, tuple[str, ...]], ...]:
    enabled = _mapping(value, "featureClass")
    if not enabled:
        return tuple((c, FEATURES[c]) for c in CLASSES)
    out = []
    for cls, names in enabled.items():
        if cls not in FEATURES:
            raise _unsupported("featureClass", cls, CLASSES)
        if names is None or (isinstance(names, list | tuple) and len(names) == 0):
            out.append((cls, FEATURES[cls]))
            continue
        if not isinstance(names, list | tuple):
            raise RadiomicsParamsError(
                f"featureClass.{cls} must be a list of feature names or empty, got {names!r}", fix=FIX)
        for name in names:
            if name in DEPRECATED[cls]:
                raise RadiomicsParamsError(
                    f"featureClass.{cls}: {name!r} is deprecated in pyradiomics and not computed "
                    "by the atrx engine", fix=f"remove {name!r} from featureClass.{cls}, or {FIX}")
            if name not in FEATURES[cls]:
                raise RadiomicsParamsError(
                    f"featureClass.{cls}: unknown feature {name!r} (known: {list(FEATURES[cls])})",
                    fix=f"correct or remove {name!r}")
        out.append((cls, tuple(dict.fromkeys(names))))
    return tuple(out)
