"""The pictures of the onboarding report: slice thumbnails with mask outlines, intensity histograms.

:func:`source_pictures` draws a study as read from the export (the plan's files), and
:func:`stored_pictures` its preprocessed version from the image store; either turns a failure into
a placeholder :class:`Cell` with the reason (:func:`attempt`), never an exception. Thumbnails are
drawn with numpy and written as palette PNGs by Pillow, without a figure, so a center of hundreds
of patients stays fast and its page small; the histograms are a matplotlib ``Figure`` on its own
Agg canvas (never pyplot or the global backend: safe in threads and headless drivers). Everything
returns PNG bytes, which :mod:`ingest.onboarding` embeds as data URIs. No text is drawn into a
thumbnail, so no id can hide in its pixels.
"""

from __future__ import annotations

import io
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import numpy as np
import SimpleITK as sitk
from scipy import ndimage

from atrx.config.center import CenterConfig
from atrx.errors import AtrxError, DataError, debug_enabled
from atrx.imagestore import read_version
from atrx.names import SEQUENCES, SOURCE_MASKS
from ingest.discover import StudyPlan
from ingest.readers import read_image, read_mask

__all__ = ["OUTLINE_COLOURS", "THUMB_PX", "Cell", "Pictures", "attempt", "histogram_png", "largest_slice",
           "sample_values", "source_pictures", "stored_pictures", "thumbnail_png"]

T = TypeVar("T")

#: the longer side of a thumbnail, in pixels
THUMB_PX = 160
#: outline colours (RGB) by mask, drawn in this order: the tumour over the lesion
OUTLINE_COLOURS: dict[str, tuple[int, int, int]] = {"lesion": (255, 215, 0), "tumor": (255, 40, 40)}
#: grey levels of a thumbnail (a palette PNG, the outline colours after them)
GREY_LEVELS = 64
#: voxels kept per patient and sequence for the histograms (a fixed-seed random subset)
SAMPLE_VOXELS = 20_000
_DPI = 100


def largest_slice(mask: np.ndarray) -> int | None:
    """The axial index (axis 0 of a z, y, x array) where ``mask`` has most voxels; None if empty."""
    if mask.ndim != 3 or mask.size == 0:
        return None
    counts = mask.reshape(mask.shape[0], -1).sum(axis=1)
    return int(np.argmax(counts)) if counts.max() > 0 else None


def _window(image: np.ndarray) -> np.ndarray:
    """Grey values in [0, 1], windowed to the slice's 1st-99th percentiles (robust to hot voxels)."""
    data = np.nan_to_num(image.astype(np.float32), nan=0.0, posinf=0.0, neginf=0.0)
    lo, hi = np.percentile(data, [1, 99]) if data.size else (0.0, 1.0)
    if hi <= lo:
        hi = lo + 1.0
    return np.clip((data - lo) / (hi - lo), 0.0, 1.0)


def _out_shape(shape: tuple[int, int], spacing_yx: tuple[float, float]) -> tuple[int, int]:
    """Thumbnail size keeping the slice's physical aspect, the longer side THUMB_PX."""
    h_mm, w_mm = shape[0] * spacing_yx[0], shape[1] * spacing_yx[1]
    scale = THUMB_PX / max(h_mm, w_mm, 1e-6)
    return max(1, round(h_mm * scale)), max(1, round(w_mm * scale))


def thumbnail_png(image: np.ndarray, spacing_yx: tuple[float, float],
                  outlines: Mapping[str, np.ndarray] | None = None) -> bytes:
    """One axial slice as a small PNG: grey, physical aspect kept, each mask's outline in its colour.

    ``image`` and every mask are 2-D (y, x) on the same grid; ``spacing_yx`` in mm. Rows run
    anterior to posterior and columns right to left for LPS arrays: the radiological view.
    """
    if image.ndim != 2 or min(image.shape) == 0:
        raise DataError(f"a thumbnail needs a non-empty 2-D slice, got shape {image.shape}",
                        fix="check the image's size in its header; it has no axial slice to show")
    out_h, out_w = _out_shape(image.shape, spacing_yx)
    rows = (np.arange(out_h) + 0.5) * image.shape[0] / out_h - 0.5
    cols = (np.arange(out_w) + 0.5) * image.shape[1] / out_w - 0.5
    grid = np.meshgrid(rows, cols, indexing="ij")
    grey = ndimage.map_coordinates(_window(image), grid, order=1, mode="nearest")
    index = np.rint(np.clip(grey, 0, 1) * (GREY_LEVELS - 1)).astype(np.uint8)
    nearest_r = np.clip(np.rint(rows), 0, image.shape[0] - 1).astype(int)
    nearest_c = np.clip(np.rint(cols), 0, image.shape[1] - 1).astype(int)
    for k, name in enumerate(OUTLINE_COLOURS):
        mask = (outlines or {}).get(name)
        if mask is None:
            continue
        if mask.shape != image.shape:
            raise DataError(f"{name} outline has shape {mask.shape}, the slice {image.shape}",
                            fix="resample the mask onto the image's grid before drawing")
        small = np.asarray(mask, dtype=bool)[np.ix_(nearest_r, nearest_c)]
        index[small & ~ndimage.binary_erosion(small, border_value=0)] = GREY_LEVELS + k
    return _png(index)


def _png(index: np.ndarray) -> bytes:
    """A palette PNG (GREY_LEVELS greys, then the outline colours): about half an RGB one's size."""
    from PIL import Image  # Pillow comes with matplotlib

    greys = [round(255 * i / (GREY_LEVELS - 1)) for i in range(GREY_LEVELS)]
    palette = [v for g in greys for v in (g, g, g)] + [v for c in OUTLINE_COLOURS.values() for v in c]
    img = Image.fromarray(index, mode="P")
    img.putpalette(palette)
    buf = io.BytesIO()
    img.save(buf, format="png")
    return buf.getvalue()


def sample_values(values: np.ndarray, seed: int = 0) -> np.ndarray:
    """At most SAMPLE_VOXELS finite values (a fixed-seed subset): what a histogram needs, small."""
    flat = np.asarray(values, dtype=np.float32).ravel()
    flat = flat[np.isfinite(flat)]
    if flat.size > SAMPLE_VOXELS:
        flat = np.random.default_rng(seed).choice(flat, SAMPLE_VOXELS, replace=False)
    return flat


def _figure(width: float, height: float) -> Any:
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    fig = Figure(figsize=(width, height), dpi=_DPI)
    FigureCanvasAgg(fig)
    return fig


def histogram_png(samples: Mapping[str, Sequence[tuple[str, np.ndarray]]], xlabel: str,
                  max_legend: int = 12) -> bytes:
    """One panel per sequence, one density curve per (label, values); the legend only if it fits.

    Bins span the pooled 0.5-99.5th percentiles of the panel, so one outlier does not flatten
    every curve.
    """
    names = [s for s in samples if any(v.size for _, v in samples[s])]
    if not names:
        raise DataError("no intensities to plot: no image of the center could be read",
                        fix="see the placeholders of the thumbnails for why")
    fig = _figure(4.2 * len(names), 3.2)
    for i, name in enumerate(names, start=1):
        ax = fig.add_subplot(1, len(names), i)
        pooled = np.concatenate([v for _, v in samples[name] if v.size])
        lo, hi = np.percentile(pooled, [0.5, 99.5])
        bins = np.linspace(lo, hi if hi > lo else lo + 1.0, 60)
        shown = [(label, v) for label, v in samples[name] if v.size]
        for label, values in shown:
            ax.hist(values, bins=bins, density=True, histtype="step", lw=1.0, label=label)
        ax.set(title=name.upper(), xlabel=xlabel, ylabel="density")
        if len(shown) <= max_legend:
            ax.legend(fontsize=6, loc="upper right")
    fig.tight_layout()
    buf = io.BytesIO()
    fig.savefig(buf, format="png")
    return buf.getvalue()


# pictures of one study ----------------------------------------------------------------------
@dataclass
class Cell:
    """One thumbnail, or (``png`` None) the reason there is none; ``note`` also flags oddities."""

    title: str
    png: bytes | None = None
    note: str | None = None


def attempt(what: str, fn: Callable[[], T], why: dict[str, str], scrub: Callable[[str], str]) -> T | None:
    """``fn()``, or None with the reason in ``why[what]``: a picture never fails the report."""
    try:
        return fn()
    except Exception as e:  # any failure to draw becomes a placeholder; ATRX_DEBUG=1 shows it raw
        if debug_enabled():
            raise
        message = e.message if isinstance(e, AtrxError) else f"{type(e).__name__}: {e}"
        why[what] = scrub(message.strip().splitlines()[-1][:300] if message.strip() else type(e).__name__)
        return None


def _slice(lesion: np.ndarray | None, depth: int) -> tuple[int, str | None]:
    z = largest_slice(lesion) if lesion is not None else None
    if z is None:
        why = "no lesion on this grid" if lesion is not None else "no lesion mask"
        return depth // 2, f"{why}: middle slice"
    return z, None


def _ml(mask: sitk.Image) -> float:
    return float(sitk.GetArrayViewFromImage(mask).sum()) * float(np.prod(mask.GetSpacing())) / 1000.0


@dataclass
class Pictures:
    """A study's thumbnails, ROI volumes (mL) by column name, histogram samples by sequence."""

    cells: list[Cell]
    volumes: dict[str, float | None]
    samples: dict[str, np.ndarray]


def _draw_source(image: sitk.Image, masks: dict[str, sitk.Image]) -> tuple[bytes, str | None, np.ndarray]:
    """The source image reoriented to LPS (rows anterior to posterior), masks resampled onto it
    in physical space (no registration yet), its slice with most lesion, and its head voxels."""
    lps = sitk.DICOMOrient(image, "LPS")
    arr = sitk.GetArrayViewFromImage(lps)
    on = {m: sitk.GetArrayFromImage(sitk.Resample(k, lps, sitk.Transform(), sitk.sitkNearestNeighbor, 0,
                                                  sitk.sitkUInt8)) > 0 for m, k in masks.items()}
    z, note = _slice(on.get("lesion"), arr.shape[0])
    sx, sy, _ = lps.GetSpacing()
    png = thumbnail_png(np.asarray(arr[z]), (sy, sx), {m: v[z] for m, v in on.items()})
    otsu = sitk.OtsuThresholdImageFilter()
    otsu.Execute(lps)
    head = arr > otsu.GetThreshold()
    if "lesion" in on:
        head &= ~on["lesion"]
    return png, note, sample_values(arr[head])


def source_pictures(study: StudyPlan, cfg: CenterConfig, scrub: Callable[[str], str]) -> Pictures:
    """T1c and T2f as read from the export, masks outlined; a file that fails is a placeholder."""
    why: dict[str, str] = {}
    images = {s: attempt(s, lambda s=s: read_image(getattr(study, s)), why, scrub) for s in SEQUENCES}
    masks: dict[str, sitk.Image] = {}
    for m in SOURCE_MASKS:
        rule = getattr(cfg.masks, m)
        mask = attempt(m, lambda m=m, rule=rule: read_mask(getattr(study, m), rule, images[rule.space], m),
                        why, scrub)
        if mask is not None:
            masks[m] = mask
    missing = "; ".join(f"{m} not outlined: {why[m]}" for m in SOURCE_MASKS if m in why)
    out = Pictures([], {f"{m} before": _ml(masks[m]) if m in masks else None for m in SOURCE_MASKS}, {})
    for s in SEQUENCES:
        title = f"{s.upper()} before"
        drawn = None if images[s] is None else attempt(s, lambda s=s: _draw_source(images[s], masks), why, scrub)
        if drawn is None:
            out.cells.append(Cell(title, note=f"not drawn: {why.get(s, 'unreadable')}"))
            continue
        png, note, values = drawn
        out.cells.append(Cell(title, png, "; ".join(x for x in (note, missing) if x) or None))
        out.samples[s] = values
    return out


def stored_pictures(images_root: str, zarr_path: str) -> Pictures:
    """T1c and T2f of the stored (preprocessed) version, masks outlined; brain voxels; volumes."""
    arrays, attrs = read_version(images_root, zarr_path, [*SEQUENCES, "brain", *SOURCE_MASKS])
    sx, sy, sz = (float(v) for v in attrs["geometry"]["spacing"])
    z, note = _slice(arrays["lesion"] > 0, arrays["t1c"].shape[0])
    brain = arrays["brain"] > 0
    cells = [Cell(f"{s.upper()} after", thumbnail_png(arrays[s][z], (sy, sx),
                                                     {m: arrays[m][z] > 0 for m in SOURCE_MASKS}), note)
             for s in SEQUENCES]
    ml = sx * sy * sz / 1000.0
    voxels = attrs.get("roi_voxels", {})
    volumes: dict[str, float | None] = {f"{r} after": (voxels[r] * ml if r in voxels else None)
                                        for r in ("lesion", "tumor", "edema")}
    return Pictures(cells, volumes, {s: sample_values(arrays[s][brain]) for s in SEQUENCES})
