"""Acquire the truth like a scanner: own grid, slice profile, patient motion, bias, noise, gain.

Each sequence sees the head on its own grid; T2f additionally sees it after a small rigid
motion, so T1c and T2f must be registered, and each mask lives on its own sequence's grid.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import SimpleITK as sitk

from ingest.synth.centers import SeriesSpec


@dataclass(frozen=True)
class Grid:
    """An acquisition grid (sitk conventions: size x, y, z; direction row-major, columns = axes)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    @property
    def matrix(self) -> np.ndarray:
        return np.asarray(self.direction, dtype=np.float64).reshape(3, 3)

    def image(self, array: np.ndarray) -> sitk.Image:
        """Wrap a (z, y, x) array in this grid's geometry."""
        img = sitk.GetImageFromArray(array)
        img.SetSpacing(self.spacing)
        img.SetOrigin(self.origin)
        img.SetDirection(self.direction)
        return img


@dataclass(frozen=True)
class Motion:
    """Rigid head motion between T1c and T2f: T2f(p) = truth(R (p - c) + c + t)."""

    rotation_deg: tuple[float, float, float]  # rotation vector (axis * angle), degrees
    shift_mm: tuple[float, float, float]
    center: tuple[float, float, float]

    def transform(self) -> sitk.VersorRigid3DTransform:
        """The sitk transform Resample uses (maps T2f-space points to truth/T1c-space points)."""
        rv = np.deg2rad(np.asarray(self.rotation_deg))
        angle = float(np.linalg.norm(rv))
        axis = tuple(float(a) for a in (rv / angle if angle > 0 else np.array([0.0, 0.0, 1.0])))
        t = sitk.VersorRigid3DTransform()
        t.SetCenter(self.center)
        t.SetRotation(axis, angle)
        t.SetTranslation(self.shift_mm)
        return t


def draw_motion(rng: np.random.Generator, center: tuple[float, float, float]) -> Motion:
    """2-4 mm shift and 1-3 degree rotation in random directions."""

    def unit() -> np.ndarray:
        v = rng.standard_normal(3)
        return v / np.linalg.norm(v)

    rot = unit() * rng.uniform(1.0, 3.0)
    shift = unit() * rng.uniform(2.0, 4.0)
    return Motion(tuple(float(r) for r in rot), tuple(float(s) for s in shift), center)


def tilt_direction(tilt_deg: float) -> tuple[float, ...]:
    """Axial slices tilted about the left-right axis (an AC-PC angled stack); det = +1."""
    a = np.deg2rad(tilt_deg)
    m = np.array([[1.0, 0.0, 0.0], [0.0, np.cos(a), -np.sin(a)], [0.0, np.sin(a), np.cos(a)]])
    return tuple(float(v) for v in m.ravel())


def plan_grid(
    spec: SeriesSpec, center: np.ndarray | tuple[float, ...], direction: tuple[float, ...] | None = None
) -> Grid:
    """A grid covering ``spec.fov`` x ``spec.slab`` centred on ``center`` (LPS mm)."""
    sx, sy, sz = spec.spacing
    size = (
        int(round(spec.fov[0] / sx)),
        int(round(spec.fov[1] / sy)),
        max(1, int(round(spec.slab / sz))),
    )
    direction = direction or (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0)
    m = np.asarray(direction).reshape(3, 3)
    extent = (np.asarray(size) - 1) * np.asarray(spec.spacing)
    origin = np.asarray(center, dtype=np.float64) - m @ (extent / 2.0)
    return Grid(size, (sx, sy, sz), tuple(float(round(o, 4)) for o in origin), tuple(direction))


def sample(
    truth: sitk.Image,
    grid: Grid,
    *,
    thickness: float | None = None,
    transform: sitk.Transform | None = None,
    nearest: bool = False,
) -> np.ndarray:
    """Sample ``truth`` on ``grid``; intensities are averaged over the slice thickness (box profile).

    Labels (``nearest``) are taken at the slice centre only, as a mask drawn on the slice would be.
    """
    tx = transform or sitk.Transform(3, sitk.sitkIdentity)
    normal = grid.matrix[:, 2]
    n_sub = 1 if nearest or not thickness else max(2, int(np.ceil(thickness / 1.0)))
    offsets = [0.0] if n_sub == 1 else ((np.arange(n_sub) + 0.5) / n_sub - 0.5) * thickness
    interp = sitk.sitkNearestNeighbor if nearest else sitk.sitkLinear
    acc: np.ndarray | None = None
    for off in offsets:
        origin = tuple(float(o) for o in np.asarray(grid.origin) + off * normal)
        out = sitk.Resample(truth, grid.size, tx, interp, origin, grid.spacing, grid.direction, 0.0,
                            truth.GetPixelID())
        arr = sitk.GetArrayFromImage(out)
        if acc is None:
            acc = arr.astype(np.float32) if not nearest else arr
        else:
            acc += arr
    assert acc is not None
    return acc if nearest else acc / n_sub


def bias_field(grid: Grid, center: np.ndarray, rng: np.random.Generator, strength: float = 0.12) -> np.ndarray:
    """Smooth multiplicative field exp(linear + quadratic) over the head (about +-20 % at 0.12).

    ``strength`` only scales the coefficients, so every strength consumes the same draws.
    """
    m = grid.matrix
    idx = [np.arange(n, dtype=np.float64) * s for n, s in zip(grid.size, grid.spacing, strict=True)]
    k, j, i = idx[2][:, None, None], idx[1][None, :, None], idx[0][None, None, :]
    coords = [
        (grid.origin[c] - center[c] + i * m[c, 0] + j * m[c, 1] + k * m[c, 2]) / 70.0 for c in range(3)
    ]
    lin = rng.normal(0.0, strength, 3)
    quad = rng.normal(0.0, strength * 0.6, (3, 3))
    log_b = sum(lin[c] * coords[c] for c in range(3))
    log_b = log_b + sum(quad[a, b] * coords[a] * coords[b] for a in range(3) for b in range(a, 3))
    return np.exp(log_b).astype(np.float32)


def scanner(
    signal: np.ndarray,
    grid: Grid,
    spec: SeriesSpec,
    head_center: np.ndarray,
    gain_jitter: float,
    rng: np.random.Generator,
    *,
    gamma: float = 1.0,
    bias_strength: float = 0.12,
) -> tuple[np.ndarray, np.ndarray]:
    """Contrast power law, bias, gain, Rician noise, offset and quantisation: (stored, values).

    ``signal ** gamma`` (white matter stays 1) changes tissue contrast ratios the way another
    sequence or field strength does; ``gamma == 1`` leaves the signal untouched.
    ``values == stored * spec.slope + spec.intercept`` exactly, which is what the DICOM writer
    stores and what a reader gets back after the rescale.
    """
    if gamma != 1.0:
        signal = np.power(np.maximum(signal, 0.0), gamma, dtype=np.float32)
    gain = spec.gain * gain_jitter
    s = signal * bias_field(grid, head_center, rng, bias_strength) * gain
    sigma = spec.noise * gain
    real = s + rng.normal(0.0, sigma, s.shape).astype(np.float32)
    imag = rng.normal(0.0, sigma, s.shape).astype(np.float32)
    value = np.sqrt(real * real + imag * imag) + spec.offset
    stored = np.rint((value - spec.intercept) / spec.slope)
    hi = 65535 if spec.pixel_representation == 0 else 32767
    stored = np.clip(stored, 0, hi)
    values = stored.astype(np.float64) * spec.slope + spec.intercept
    return stored.astype(np.uint16 if spec.pixel_representation == 0 else np.int16), values
