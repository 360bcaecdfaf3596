"""What identifies a preprocessing: its version, its parameters, the fixed constants, its error.

``PREPROCESS_VERSION`` and :meth:`PreprocessParams.digest` are written with every study version;
changing either makes already-ingested data out of date, so both are fixed here and only here.
"""

from __future__ import annotations

import hashlib
import json
from typing import Final, Literal

from pydantic import BaseModel, Field, field_validator, model_validator

from atrx.errors import DataError

__all__ = [
    "MIN_T2F_BRAIN_COVERAGE",
    "PREPROCESS_VERSION",
    "REPLAYABLE_VERSIONS",
    "PreprocessError",
    "PreprocessParams",
    "Space",
    "check_orientation",
]

#: 1.1.0: the brain mask keeps the bright class (white matter; ``brain_exclude_bright``), opens
#: 3 mm, and no longer reads a freed image (which gave empty masks in Dask workers);
#: 1.2.0: the registration metric draws at most ``reg_max_samples`` points per level. The defaults
#: changed on 2026-12-04 (points inside the head, 25k per level, the separable N4 field) without a
#: new version: the code computes 1.2.0's results from 1.2.0's settings, and the parameter digest
#: tells the two settings apart
PREPROCESS_VERSION: Final[str] = "1.2.0"
#: versions whose step records this code replays to the very same arrays: 1.0.0 differs only in
#: the brain mask, and a brain_mask record without "exclude_bright" replays the 1.0.0 rule (a
#: 1.0.0 mask made from freed memory does not match its recorded voxel counts and is refused);
#: 1.1.0 differs only in how the registration was fitted, and its transform is recorded
REPLAYABLE_VERSIONS: Final[tuple[str, ...]] = ("1.0.0", "1.1.0", PREPROCESS_VERSION)

#: the image a mask was drawn on (and whose transform carries it to the output grid)
Space = Literal["t1c", "t2f"]

#: the z-scored T2f must see at least this share of the brain inside its field of view
MIN_T2F_BRAIN_COVERAGE: Final[float] = 0.5
# regular-step gradient descent (steps in mm through physical-shift scales)
REG_LEARNING_RATE_MM: Final[float] = 1.0
REG_MIN_STEP: Final[float] = 1e-4
REG_RELAXATION: Final[float] = 0.7
#: decimals kept of the recorded log bias field (1e-6 relative in intensity)
FIELD_DECIMALS: Final[int] = 6

_AXIS_PAIRS = ({"R", "L"}, {"A", "P"}, {"S", "I"})
_UNSET = object()
#: parameters added after 1.2.0, left out of digests at these values: with them 1.2.0's settings
#: compute what 1.2.0 computed and keep its digest (``ingest/preprocess/1.2.0.yaml``)
_LATER_KNOBS: Final[dict[str, object]] = {"reg_sampling_strategy": "random",
                                          "n4_field_interpolation": "itk",
                                          "reg_fixed_mask": "none",
                                          "reg_mask_dilation_mm": 6.0}


class PreprocessError(DataError):
    """Degenerate or inconsistent data; the message says what was expected and what was found."""


def check_orientation(code: str) -> str:
    """``code`` upper-cased if it is three letters, one of each of R/L, A/P, S/I."""
    letters = code.upper()
    if len(letters) != 3 or any(
        sum(ch in pair for ch in letters) != 1 for pair in _AXIS_PAIRS
    ):
        raise ValueError(
            f"orientation must be three letters, one of each of R/L, A/P, S/I (e.g. 'LPS'); got {code!r}"
        )
    return letters


class PreprocessParams(BaseModel, extra="forbid", frozen=True):
    """Every knob of :func:`preprocess_study`; :meth:`digest` identifies a parameter set."""

    orientation: str = "LPS"
    spacing_mm: float = Field(1.0, gt=0)

    n4_enabled: bool = True
    n4_shrink: int = Field(4, ge=1)
    #: iterations per fitting level; the number of entries is the number of levels
    n4_iterations: tuple[int, ...] = (30, 20)
    n4_control_points: int = Field(4, ge=4)  # must exceed the spline order (3)
    n4_convergence: float = Field(1e-3, gt=0)
    #: spacing of the grid the fitted log bias field is recorded (and applied) on
    n4_field_spacing_mm: float = Field(8.0, gt=0)
    #: how the recorded field is put on the image grid: "itk" (``sitk.Resample``, cubic B-spline)
    #: or "separable" (the same spline one axis at a time, ``ingest.preprocess.field``: about 39x
    #: cheaper, N4 2.6x; the image within one float32 ulp of "itk")
    n4_field_interpolation: Literal["itk", "separable"] = "separable"

    registration: Literal["rigid", "none"] = "rigid"
    reg_iterations: int = Field(100, ge=1)
    reg_sampling: float = Field(0.2, gt=0, le=1)
    #: at most this many metric samples per level (None: ``reg_sampling`` of every voxel, 1.1.0;
    #: 100k in 1.2.0's defaults); with the head mask below, samples inside the mask
    reg_max_samples: int | None = Field(25_000, ge=1000)
    #: where the metric draws its points: "head" (inside the fixed T1c's Otsu foreground dilated
    #: by ``reg_mask_dilation_mm``; the drawing share is raised by the mask's inverse volume
    #: fraction so the same number of points fall inside) or "none" (the whole field of view,
    #: 1.2.0). At clinical sizes head with 25k points costs 0.34x the CPU of 1.2.0's 100k over
    #: the whole field of view, at no loss of accuracy against the true motion (docs/benchmarks.md):
    #: points in the air around the head carry no signal
    reg_fixed_mask: Literal["head", "none"] = "head"
    reg_mask_dilation_mm: float = Field(6.0, ge=0)
    #: how the metric's points are drawn per level: "random" (ITK's RANDOM, voxels drawn with
    #: replacement) or "lattice" (ITK's REGULAR, every k-th voxel of the level in memory order,
    #: jittered, k coprime to the row and column lengths so the points cover every column instead
    #: of a few planes; ``ingest.preprocess.fitting.sampling_per_level``). At clinical sizes
    #: lattice with ``reg_max_samples`` 25k costs 0.3x the CPU of random 100k, for 0.2 mm more
    #: median and 2 mm more largest error (docs/benchmarks.md), hence not the default
    reg_sampling_strategy: Literal["random", "lattice"] = "random"
    reg_seed: int = Field(42, ge=0, lt=2**32)
    reg_bins: int = Field(32, ge=8)
    reg_shrink_factors: tuple[int, ...] = (4, 2, 1)
    reg_smoothing_mm: tuple[float, ...] = (2.0, 1.0, 0.0)

    image_interpolator: Literal["linear", "bspline"] = "linear"
    #: radius of the opening that cuts skull-brain bridges in the brain mask (1.0.0: 2 mm, which
    #: let thick-slice partial volume at the head's poles bridge skull and brain)
    brain_opening_mm: float = Field(3.0, ge=0)
    #: True is the 1.0.0 rule (tissue = middle class of a 3-class Otsu), which drops white matter
    #: on T1c; False: tissue = above the head/background Otsu cut, skull cut off by the opening
    brain_exclude_bright: bool = False
    #: absolute tolerance (mm, direction cosines) when a mask's grid is compared to its image's
    geometry_tol: float = Field(1e-3, gt=0)

    @field_validator("orientation")
    @classmethod
    def _orientation(cls, v: str) -> str:
        return check_orientation(v)

    @field_validator("n4_iterations", "reg_shrink_factors")
    @classmethod
    def _positive_ints(cls, v: tuple[int, ...]) -> tuple[int, ...]:
        if not v or any(i < 1 for i in v):
            raise ValueError(f"expected a non-empty list of integers >= 1, got {list(v)}")
        return v

    @model_validator(mode="after")
    def _levels_match(self) -> PreprocessParams:
        if len(self.reg_shrink_factors) != len(self.reg_smoothing_mm):
            raise ValueError(
                f"reg_shrink_factors ({len(self.reg_shrink_factors)} levels) and reg_smoothing_mm "
                f"({len(self.reg_smoothing_mm)} levels) must have the same length"
            )
        if any(s < 0 for s in self.reg_smoothing_mm):
            raise ValueError(f"reg_smoothing_mm must be >= 0, got {list(self.reg_smoothing_mm)}")
        return self

    def digest(self) -> str:
        """sha256 (hex) of the canonical JSON of the parameters plus ``PREPROCESS_VERSION``.

        A knob added after 1.2.0 counts only when set away from the value that computes what
        1.2.0 computed (:data:`_LATER_KNOBS`), so adding one leaves ingested data current.
        """
        params = {k: v for k, v in self.model_dump(mode="json").items()
                  if _LATER_KNOBS.get(k, _UNSET) != v}
        payload = {"version": PREPROCESS_VERSION, "params": params}
        text = json.dumps(payload, sort_keys=True, separators=(",", ":"))
        return hashlib.sha256(text.encode()).hexdigest()
