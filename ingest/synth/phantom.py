"""A 1 mm "truth" head with a glioma: tissue labels and T1c / T2f / T1 intensity truth.

The tumour's appearance carries the ATRX signal through a few latent properties (``LATENT``);
everything else (size, position, head shape, textures of normal tissue) is nuisance that does
not depend on ATRX, sex, age or grade. Intensities are in "truth units" (white matter = 1).
"""

from __future__ import annotations

from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

# Tissue labels of the truth map.
BACKGROUND, SKULL, CSF, GM, WM, VENTRICLE, EDEMA, RIM, NECROSIS = range(9)
LABEL_NAMES = {
    BACKGROUND: "background", SKULL: "skull", CSF: "csf", GM: "grey_matter", WM: "white_matter",
    VENTRICLE: "ventricle", EDEMA: "edema", RIM: "enhancing_rim", NECROSIS: "necrosis",
}
LESION_LABELS = (EDEMA, RIM, NECROSIS)
TUMOR_LABELS = (RIM, NECROSIS)


@dataclass(frozen=True)
class Latent:
    """One ATRX-linked property: value = mean + effect * (+0.5 mutant / -0.5 wildtype) + sd * z."""

    name: str
    mean: float
    effect: float  # mutant minus wildtype
    sd: float  # within-group standard deviation
    lo: float
    hi: float
    meaning: str

    @property
    def d(self) -> float:
        """Standardised mutant-minus-wildtype difference (Cohen's d)."""
        return self.effect / self.sd


LATENT: tuple[Latent, ...] = (
    Latent("necrosis_fraction", 0.25, -0.072, 0.08, 0.03, 0.60,
           "necrotic share of the tumour volume"),
    Latent("enhancement", 1.70, -0.135, 0.15, 1.15, 2.40,
           "T1c intensity of the enhancing rim relative to white matter"),
    Latent("texture_amplitude", 0.14, 0.032, 0.04, 0.02, 0.35,
           "SD of the multiplicative texture inside the tumour (rim and necrosis)"),
    Latent("texture_length_mm", 2.5, 0.36, 0.6, 1.0, 5.0,
           "correlation length (Gaussian sigma, mm) of that texture"),
    Latent("edema_log_ratio", float(np.log(2.0)), -0.315, 0.35, float(np.log(0.5)), float(np.log(8.0)),
           "natural log of the planned edema / tumour volume ratio"),
    Latent("edema_t2f", 1.90, 0.12, 0.15, 1.40, 2.60,
           "T2f intensity of the edema relative to white matter"),
    Latent("lobulation", 0.15, -0.045, 0.05, 0.02, 0.35,
           "relative amplitude of the tumour surface's radial undulation"),
)


@dataclass(frozen=True)
class HeadParams:
    """Everything that shapes one head; positions are LPS millimetres in scanner coordinates."""

    head_center: tuple[float, float, float]
    head_axes: tuple[float, float, float]  # semi-axes left-right, anterior-posterior, inferior-superior
    skull_mm: float
    csf_mm: float
    cortex_mm: float
    ventricle_scale: float
    gm_t1c: float
    gm_t2f: float
    tumor_center: tuple[float, float, float]
    tumor_radius_mm: float
    tumor_elongation: tuple[float, float, float]
    tumor_t2f: float
    necrosis_t1c: float
    necrosis_t2f: float
    necrosis_fraction: float
    enhancement: float
    texture_amplitude: float
    texture_length_mm: float
    edema_log_ratio: float
    edema_t2f: float
    lobulation: float

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def _depth(x: np.ndarray, y: np.ndarray, z: np.ndarray, axes: np.ndarray, wobble: Any = 1.0) -> np.ndarray:
    """Radial distance (mm) from points (relative to the centre) to the ellipsoid surface.

    ``wobble`` scales the ellipsoid locally (a field broadcastable to the points) so heads are
    not perfect ellipsoids; the coordinates may be broadcastable 1D arrays.
    """
    norm = np.sqrt(x * x + y * y + z * z)
    r = np.sqrt((x / axes[0]) ** 2 + (y / axes[1]) ** 2 + (z / axes[2]) ** 2)
    with np.errstate(divide="ignore", invalid="ignore"):
        radial = np.where(r > 0, norm / np.maximum(r, 1e-12), np.min(axes))
    return (wobble - r) * radial


def draw_head_params(rng: np.random.Generator, mutant: bool) -> HeadParams:
    """Draw a head. Only the ``LATENT`` properties depend on ``mutant``; nothing depends on anything else."""
    sign = 0.5 if mutant else -0.5
    z = rng.standard_normal(len(LATENT))
    latent = {
        p.name: float(np.clip(p.mean + p.effect * sign + p.sd * zi, p.lo, p.hi))
        for p, zi in zip(LATENT, z, strict=True)
    }
    head_center = (float(rng.normal(0, 3)), float(rng.normal(15, 8)), float(rng.normal(20, 8)))
    axes = np.array([55.0, 65.0, 50.0]) * (1 + rng.normal(0, 0.03, 3))
    skull, csf = float(rng.uniform(3.5, 4.5)), float(rng.uniform(2.0, 3.0))
    radius = float(rng.uniform(11.0, 20.0))
    elong = rng.uniform(0.85, 1.15, 3)
    hemi = 1.0 if rng.random() < 0.5 else -1.0
    reach = radius * float(elong.max()) * (1 + 1.5 * latent["lobulation"])
    offset = np.zeros(3)
    for _ in range(10_000):
        offset = np.array([hemi * rng.uniform(0.5 * radius + 4, 34.0),
                           rng.uniform(-35.0, 30.0), rng.uniform(-12.0, 24.0)])
        if _depth(*offset, axes) >= skull + csf + 2.0 + reach:
            break
    else:  # pragma: no cover - the box always contains admissible points
        raise RuntimeError("could not place the tumour inside the brain")
    return HeadParams(
        head_center=head_center,
        head_axes=tuple(float(a) for a in axes),
        skull_mm=skull,
        csf_mm=csf,
        cortex_mm=float(rng.uniform(2.5, 3.5)),
        ventricle_scale=float(rng.uniform(0.8, 1.25)),
        gm_t1c=float(rng.normal(0.78, 0.02)),
        gm_t2f=float(rng.normal(1.25, 0.04)),
        tumor_center=tuple(float(c + o) for c, o in zip(head_center, offset, strict=True)),
        tumor_radius_mm=radius,
        tumor_elongation=tuple(float(e) for e in elong),
        tumor_t2f=float(rng.normal(1.55, 0.08)),
        necrosis_t1c=float(rng.normal(0.35, 0.04)),
        necrosis_t2f=float(rng.normal(1.15, 0.08)),
        **latent,
    )


def smooth_noise(shape: tuple[int, ...], sigma: float, rng: np.random.Generator) -> np.ndarray:
    """Gaussian-filtered white noise with unit SD; large sigmas are filtered on a coarser grid."""
    step = max(1, int(sigma // 2.5))
    coarse = tuple(-(-s // step) + 1 for s in shape)
    field = ndimage.gaussian_filter(rng.standard_normal(coarse, dtype=np.float32), sigma / step, mode="wrap")
    if step > 1:
        field = ndimage.zoom(field, step, order=1, grid_mode=False)
    field = field[tuple(slice(0, s) for s in shape)]
    sd = float(field.std())
    return (field - float(field.mean())) / (sd if sd > 0 else 1.0)


def synth_head(params: HeadParams, rng: np.random.Generator) -> dict[str, sitk.Image]:
    """Render the 1 mm truth: ``labels`` (uint8, see ``LABEL_NAMES``), ``t1c``, ``t2f``, ``t1`` (float32).

    ``rng`` supplies the textures (normal tissue, tumour, lobulation, edema fingers), so the same
    params with a different rng give the same anatomy with different fine detail.
    """
    axes = np.asarray(params.head_axes)
    half = np.ceil(axes + 6.0).astype(int)
    nx, ny, nz = (2 * half + 1).tolist()
    origin = np.asarray(params.head_center) - half
    zz, yy, xx = (np.arange(n, dtype=np.float32) - h for n, h in zip((nz, ny, nx), half[::-1], strict=True))
    x, y, z = xx[None, None, :], yy[None, :, None], zz[:, None, None]

    wobble = 1.0 + 0.015 * smooth_noise((nz, ny, nx), 12.0, rng)
    depth = _depth(x, y, z, axes, wobble)
    inner = params.skull_mm + params.csf_mm
    labels = np.zeros((nz, ny, nx), np.uint8)
    labels[depth > 0] = SKULL
    labels[depth > params.skull_mm] = CSF
    brain = depth > inner
    gyri = 1.2 * smooth_noise((nz, ny, nx), 3.0, rng)
    labels[brain] = WM
    labels[brain & (depth < inner + params.cortex_mm + gyri)] = GM
    vs = params.ventricle_scale
    for side in (-1.0, 1.0):
        (cx, cy, cz), (ax, ay, az) = (side * 6.5 * vs, -2.0, 10.0), (4.5 * vs, 18.0 * vs, 7.0 * vs)
        v = ((x - cx) / ax) ** 2 + ((y - cy) / ay) ** 2 + ((z - cz) / az) ** 2
        labels[(v < 1.0) & brain] = VENTRICLE
    parenchyma = (labels == GM) | (labels == WM)

    # Tumour and edema, on a box around the tumour.
    ratio = float(np.exp(params.edema_log_ratio))
    r_edema = params.tumor_radius_mm * (1.0 + ratio) ** (1.0 / 3.0)
    tc = np.asarray(params.tumor_center) - origin  # voxel index (x, y, z) of the tumour centre
    reach = int(np.ceil(r_edema * 1.6 + 6))
    lo = np.maximum(np.floor(tc - reach).astype(int), 0)
    hi = np.minimum(np.ceil(tc + reach).astype(int) + 1, [nx, ny, nz])
    box = (slice(lo[2], hi[2]), slice(lo[1], hi[1]), slice(lo[0], hi[0]))
    bshape = tuple(int(h - lw) for h, lw in zip(hi[::-1], lo[::-1], strict=True))
    el = params.tumor_elongation
    qx = (np.arange(lo[0], hi[0]) - tc[0]) / el[0]
    qy = (np.arange(lo[1], hi[1]) - tc[1]) / el[1]
    qz = (np.arange(lo[2], hi[2]) - tc[2]) / el[2]
    rho = np.sqrt(qx[None, None, :] ** 2 + qy[None, :, None] ** 2 + qz[:, None, None] ** 2).astype(np.float32)
    surface = params.tumor_radius_mm * (1.0 + params.lobulation * smooth_noise(bshape, 5.0, rng))
    fingers = smooth_noise(bshape, 3.5, rng)
    texture = smooth_noise(bshape, params.texture_length_mm, rng)
    inside_brain = brain[box]
    tumour = (rho < surface) & inside_brain
    necrosis = tumour & (rho < surface * params.necrosis_fraction ** (1.0 / 3.0))
    edema = (rho < r_edema * (1.0 + 0.3 * fingers)) & ~tumour & parenchyma[box]
    lab_box = labels[box]
    lab_box[edema] = EDEMA
    lab_box[tumour] = RIM
    lab_box[necrosis] = NECROSIS

    t1c_values = {SKULL: 1.25, CSF: 0.25, GM: params.gm_t1c, WM: 1.0, VENTRICLE: 0.22, EDEMA: 0.80,
                  RIM: params.enhancement, NECROSIS: params.necrosis_t1c}
    t1_values = {**t1c_values, RIM: 0.72}
    t2f_values = {SKULL: 0.85, CSF: 0.12, GM: params.gm_t2f, WM: 1.0, VENTRICLE: 0.10,
                  EDEMA: params.edema_t2f, RIM: params.tumor_t2f, NECROSIS: params.necrosis_t2f}
    brain_texture = 1.0 + 0.035 * smooth_noise((nz, ny, nx), 2.0, rng)
    tumour_texture = 1.0 + params.texture_amplitude * texture * tumour

    def render(values: dict[int, float], tumour_gain: float) -> np.ndarray:
        lut = np.zeros(9, np.float32)
        for k, v in values.items():
            lut[k] = v
        out = lut[labels]
        tissue = labels >= GM
        out[tissue] *= brain_texture[tissue]
        out[box] *= 1.0 + tumour_gain * (tumour_texture - 1.0)
        return np.maximum(out, 0.0)

    def image(arr: np.ndarray) -> sitk.Image:
        img = sitk.GetImageFromArray(arr)
        img.SetOrigin(tuple(float(o) for o in origin))
        return img

    return {
        "labels": image(labels),
        "t1c": image(render(t1c_values, 1.0)),
        "t2f": image(render(t2f_values, 0.8)),
        "t1": image(render(t1_values, 1.0)),
    }


def label_volumes_ml(labels: sitk.Image) -> dict[str, float]:
    """Realised volumes (ml) of the tumour compartments in a 1 mm truth map."""
    arr = sitk.GetArrayViewFromImage(labels)
    voxel_ml = float(np.prod(labels.GetSpacing())) / 1000.0
    counts = np.bincount(arr.ravel(), minlength=9)
    return {
        "necrosis_ml": counts[NECROSIS] * voxel_ml,
        "rim_ml": counts[RIM] * voxel_ml,
        "edema_ml": counts[EDEMA] * voxel_ml,
    }
