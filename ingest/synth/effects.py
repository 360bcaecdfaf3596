"""Per-center acquisition and annotation effects: what makes one hospital's images unlike another's.

The ATRX signal (``phantom.LATENT``) and everything drawn per patient are the same whichever
center a patient is in; the centers differ only in how they acquire and annotate. Today's
``SPECS`` already differ in grid, slice thickness, orientation, gain and noise. ``CenterEffects``
adds what moves radiomics most between real scanners (bias-field strength, field strength and
intensity scale, SNR, a tissue-contrast power law, T1c slice thickness, the annotators' margin),
all in one place. ``NO_EFFECTS`` reproduces the cohort written before these existed, byte for byte.
See docs/synthetic_cohort.md, "Center effects".
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, replace
from typing import Any

import numpy as np
from scipy import ndimage

from ingest.synth.centers import SPECS, CenterSpec, SeriesSpec
from ingest.synth.phantom import EDEMA, LESION_LABELS, NECROSIS, RIM, TUMOR_LABELS


@dataclass(frozen=True)
class CenterEffects:
    """One center's acquisition and annotation habits (all deterministic: no random draw added).

    Every random draw of the generator is the same with and without effects, so a patient with
    effects on is the same patient as with them off, seen through another center's scanner.
    """

    bias_strength: float = 0.12  # SD of the log bias field's linear coefficients (quadratic: 0.6 x)
    intensity_scale: float = 1.0  # global multiplier of both sequences' scanner gain
    noise_factor: float = 1.0  # multiplier of the Rician sigma (SNR: 1.5 T has about half of 3 T's)
    gamma_t1c: float = 1.0  # T1c (and T1 pre-contrast) tissue signal ** gamma, before the gain
    gamma_t2f: float = 1.0  # T2f tissue signal ** gamma
    t1c_slice_mm: float | None = None  # T1c slice thickness = step (None: the spec's)
    field_strength_t: float | None = None  # DICOM MagneticFieldStrength (None: the spec's tags)
    model: str | None = None  # DICOM ManufacturerModelName (None: the spec's)
    mask_margin_vox: int = 0  # delivered masks dilated (+k) or eroded (-k) by k in-plane voxels

    @property
    def neutral(self) -> bool:
        """True when these effects change nothing (the cohort as written before they existed)."""
        return self == NO_EFFECTS

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


#: The identity: today's acquisition (bias strength 0.12 for everyone, masks as drawn).
NO_EFFECTS = CenterEffects()

#: The default per-center effects (docs/synthetic_cohort.md explains each value).
EFFECTS: dict[str, CenterEffects] = {
    # 3 T GE with a 3D MPRAGE-like T1c (enhancement less conspicuous than on spin echo) and a good
    # coil with intensity normalisation; its annotators draw generously.
    "A": CenterEffects(bias_strength=0.06, intensity_scale=1.0, noise_factor=1.0, gamma_t1c=0.85,
                       gamma_t2f=1.0, field_strength_t=3.0, mask_margin_vox=1),
    # 1.5 T Siemens: half the SNR, another receiver scale, a 2D spin-echo T1c with thicker slices
    # (enhancement more conspicuous), lower FLAIR lesion contrast.
    "B": CenterEffects(bias_strength=0.15, intensity_scale=0.6, noise_factor=1.6, gamma_t1c=1.2,
                       gamma_t2f=0.85, t1c_slice_mm=3.0, field_strength_t=1.5, model="Aera",
                       mask_margin_vox=0),
    # 3 T Philips with a many-channel head coil and no intensity-normalisation filter (strong
    # bias), high-contrast long-TR FLAIR; its annotators draw tight.
    "C": CenterEffects(bias_strength=0.25, intensity_scale=1.35, noise_factor=0.9, gamma_t1c=1.05,
                       gamma_t2f=1.2, field_strength_t=3.0, mask_margin_vox=-1),
}


def effects_for(center: str, enabled: bool = True) -> CenterEffects:
    """The effects of ``center``; ``NO_EFFECTS`` when ``enabled`` is false."""
    return EFFECTS[center] if enabled else NO_EFFECTS


def _series(s: SeriesSpec, fx: CenterEffects, slice_mm: float | None = None) -> SeriesSpec:
    tags = dict(s.tags)
    if fx.field_strength_t is not None and "MagneticFieldStrength" in tags:
        tags["MagneticFieldStrength"] = f"{fx.field_strength_t:g}"
    changes: dict[str, Any] = {"gain": s.gain * fx.intensity_scale, "noise": s.noise * fx.noise_factor,
                               "tags": tags}
    if slice_mm is not None:
        changes.update(spacing=(s.spacing[0], s.spacing[1], slice_mm), thickness=slice_mm)
    return replace(s, **changes)


def center_spec(center: str, fx: CenterEffects) -> CenterSpec:
    """``SPECS[center]`` as acquired under ``fx`` (itself, unchanged, when ``fx`` is neutral)."""
    spec = SPECS[center]
    if fx.neutral:
        return spec
    return replace(
        spec,
        model=fx.model or spec.model,
        t1c=_series(spec.t1c, fx, fx.t1c_slice_mm),
        t2f=_series(spec.t2f, fx),
        distractors=tuple(_series(d, fx) for d in spec.distractors),
    )


#: 4-connected in-plane cross: one step moves a mask boundary by one voxel within the slice.
_IN_PLANE = np.zeros((3, 3, 3), dtype=bool)
_IN_PLANE[1] = ndimage.generate_binary_structure(2, 1)


def shift_margin(mask: np.ndarray, margin_vox: int) -> np.ndarray:
    """``mask`` (z, y, x) dilated (``margin_vox`` > 0) or eroded (< 0) by that many in-plane voxels.

    In-plane only, because annotators outline slice by slice: a one-voxel wider outline adds a
    1 mm ring per slice, not a 5 mm cap on a thick-slice FLAIR stack.
    """
    mask = np.asarray(mask, dtype=bool)
    if margin_vox == 0:
        return mask
    op = ndimage.binary_dilation if margin_vox > 0 else ndimage.binary_erosion
    return op(mask, structure=_IN_PLANE, iterations=abs(margin_vox))


def annotate(labels: np.ndarray, margin_vox: int) -> np.ndarray:
    """The tumour labels an annotator with this margin would deliver, from the truth ``labels``.

    The lesion and tumour outlines both move by ``margin_vox``; necrosis stays the truth's (cut to
    the new tumour); tumour stays inside the lesion. Other tissues are dropped (masks only use
    these labels). ``margin_vox == 0`` returns ``labels`` itself, so files are unchanged.
    """
    if margin_vox == 0:
        return labels
    lesion = shift_margin(np.isin(labels, LESION_LABELS), margin_vox)
    tumor = shift_margin(np.isin(labels, TUMOR_LABELS), margin_vox) & lesion
    out = np.zeros(labels.shape, dtype=labels.dtype)
    out[lesion] = EDEMA
    out[tumor] = RIM
    out[tumor & (labels == NECROSIS)] = NECROSIS
    return out
