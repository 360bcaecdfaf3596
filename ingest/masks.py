"""Masks as hospitals export them: cropped to their extent, and 3D Slicer segmentations.

3D Slicer (the tool the paper segmented with) saves a ``.seg.nrrd`` cropped to its segments'
extent by default: the image's spacing and direction, a shifted origin, a smaller size. Such a
mask lies on a *sub-grid* of its sequence; padding it with zeros puts every voxel back at the
physical point it had, so it is accepted (with a note). Anything else that differs in physical
space stays refused: the check is the lattice, not a resampling.

A ``.seg.nrrd`` holds several segments, named in its header (``Segment<i>_Name``,
``Segment<i>_LabelValue``, ``Segment<i>_Layer``): one 3-D labelmap, or Slicer's 4-D layered
form (one layer per component, which SimpleITK reads as a vector image). ``masks.<name>.segment``
picks one by name or label value.

Pure functions on arrays and grids, plus :func:`load_mask`, the one that reads a file, so the
plan (``atrx center validate``) and the ingest decide with the same code. Nothing here imports
:mod:`ingest.discover` (it imports this module).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

import numpy as np
import SimpleITK as sitk

from atrx.errors import DataError
from atrx.geometry import Grid, as_grid, continuous_index

__all__ = ["GRID_TOL", "SUBGRID_TOL_VOXEL", "LoadedMask", "MaskError", "MaskFinding", "MaskSelection", "Segment",
           "check_mask", "choose_segment", "crop_fits", "grid_differences", "load_mask", "mask_from_image",
           "pad_to_grid", "selected_voxels", "slicer_segments", "subgrid_offset"]

#: tolerance (mm for spacing and origin, cosines for direction) of a mask's grid against its
#: sequence's; the plan's (:meth:`ingest.discover.Geometry.differences`), so both stages agree
GRID_TOL = 1e-2
#: how far (in voxels, per axis) a cropped mask's origin may lie from its sequence's lattice
SUBGRID_TOL_VOXEL = 1e-3

_SEGMENT_KEY = re.compile(r"^Segment(\d+)_(Name|LabelValue|Layer|ID)$")


class MaskError(DataError):
    """A mask cannot be used as configured; the message says why, ``fix`` what to change."""


@dataclass(frozen=True)
class Segment:
    """One segment of a 3D Slicer segmentation: its name, label value and layer (component)."""

    index: int
    name: str
    label_value: int
    layer: int
    id: str = ""

    def describe(self) -> str:
        """``'overall lesion' (label 1, layer 0)``: what an error shows for it."""
        return f"{self.name!r} (label {self.label_value}, layer {self.layer})"


@dataclass(frozen=True)
class MaskSelection:
    """Which voxels of a mask file make the ROI: a segment, else label values.

    ``labels_explicit`` says whether the labels were written in the center file (or a preset),
    so a multi-segment file with default labels is a question, not a silent choice of label 1.
    """

    labels: tuple[int, ...] = (1,)
    segment: str | int | None = None
    labels_explicit: bool = True

    @classmethod
    def of(cls, rule: Any) -> MaskSelection:
        """From a center file's mask rule (``labels``, ``segment``) or a plain list of labels."""
        if isinstance(rule, Sequence) and not isinstance(rule, str):
            return cls(tuple(int(v) for v in rule))
        explicit = "labels" in getattr(rule, "model_fields_set", {"labels"})
        return cls(tuple(rule.labels), getattr(rule, "segment", None), explicit)


@dataclass
class LoadedMask:
    """A mask read for one ROI: binary uint8 on its sequence's grid when it could be placed there.

    ``offset`` is the cropped mask's first voxel on the full grid (None: not padded); ``note`` what
    a plan reports for it; ``misfit`` why it is on neither that grid nor a crop of it (a
    :class:`MaskError`); ``present`` the label values found (labelmaps) for the labels check.
    """

    image: sitk.Image
    voxels: int
    present: list[int]
    segment: Segment | None = None
    offset: tuple[int, int, int] | None = None
    note: str | None = None
    misfit: MaskError | None = None


def slicer_segments(meta: Mapping[str, str], n_components: int = 1) -> list[Segment]:
    """The segments a Slicer header describes, in index order; none for a plain mask.

    Old Slicer files have no ``LabelValue``/``Layer``: one segment per component (layered,
    value 1) when there are as many components as segments, else label ``index + 1`` on layer 0.
    """
    fields: dict[int, dict[str, str]] = {}
    for key, value in meta.items():
        m = _SEGMENT_KEY.match(key)
        if m:
            fields.setdefault(int(m[1]), {})[m[2]] = value.strip()
    layered = n_components > 1 and n_components == len(fields)
    out = []
    for i in sorted(fields):
        f = fields[i]
        try:
            label = int(f["LabelValue"]) if "LabelValue" in f else (1 if layered else i + 1)
            layer = int(f["Layer"]) if "Layer" in f else (i if layered else 0)
        except ValueError as e:
            raise MaskError(f"segment {i} of the Slicer header has a non-integer label value or layer ({e})",
                            fix="re-save the segmentation from 3D Slicer") from e
        out.append(Segment(i, f.get("Name", f.get("ID", f"Segment_{i}")), label, layer, f.get("ID", "")))
    return out


def _names(segments: Sequence[Segment]) -> str:
    return ", ".join(s.describe() for s in segments)


def choose_segment(segments: Sequence[Segment], selection: MaskSelection, what: str) -> Segment | None:
    """The segment ``selection`` asks for; None means "use the labels" (a plain labelmap).

    No segment asked for: the only one, or (a 3-D labelmap with labels set explicitly) none, so
    ``labels`` keep working; several and no choice is an error that lists them and the fix.
    """
    wanted = selection.segment
    if not segments:
        if isinstance(wanted, str) and not wanted.strip().isdigit():
            raise MaskError(f"{what}: segment {wanted!r} is asked for, but the file names no segments "
                            "(not a 3D Slicer .seg.nrrd)",
                            fix=f"remove 'segment' and use 'labels' for {what}, or point its glob at the .seg.nrrd")
        return None
    if wanted is None:
        layered = len({s.layer for s in segments}) > 1
        if len(segments) == 1:
            return segments[0]
        if selection.labels_explicit and not layered:
            return None
        raise MaskError(f"{what}: the segmentation has {len(segments)} segments ({_names(segments)}); "
                        "which one is it?",
                        fix=f'set {what}.segment in the center file, e.g. segment: "{segments[0].name}"')
    if isinstance(wanted, str):
        for match in (lambda s: s.name == wanted, lambda s: s.name.casefold() == wanted.strip().casefold(),
                      lambda s: s.id == wanted):
            found = [s for s in segments if match(s)]
            if len(found) == 1:
                return found[0]
        if wanted.strip().isdigit():
            wanted = int(wanted)
        else:
            raise MaskError(f"{what}: no segment named {wanted!r}; the file has {_names(segments)}",
                            fix=f'set {what}.segment to one of those names, e.g. segment: "{segments[0].name}"')
    found = [s for s in segments if s.label_value == wanted]
    if len(found) == 1:
        return found[0]
    if not found:
        raise MaskError(f"{what}: no segment has label value {wanted}; the file has {_names(segments)}",
                        fix=f'set {what}.segment to a name or label value listed, e.g. segment: "{segments[0].name}"')
    raise MaskError(f"{what}: label value {wanted} is used by {len(found)} segments on different layers "
                    f"({_names(found)})", fix=f'set {what}.segment by name, e.g. segment: "{found[0].name}"')


def selected_voxels(values: np.ndarray, segment: Segment | None, labels: Sequence[int]) -> np.ndarray:
    """Boolean (z, y, x) array of the ROI: the segment's value on its layer, else any of ``labels``.

    ``values`` is (z, y, x) for a labelmap, (z, y, x, layers) for Slicer's layered form.
    """
    if values.ndim == 4:
        if segment is None:
            raise MaskError(f"the mask has {values.shape[3]} components and no segment is chosen",
                            fix="re-export it as one labelmap, or choose a segment (masks.<name>.segment)")
        if not 0 <= segment.layer < values.shape[3]:
            raise MaskError(f"segment {segment.describe()} is on layer {segment.layer}, the file has "
                            f"{values.shape[3]}", fix="re-save the segmentation from 3D Slicer")
        return values[..., segment.layer] == segment.label_value
    if segment is not None:
        return values == segment.label_value
    return np.isin(values, list(labels))


def grid_differences(found: Grid, expected: Grid, tol: float = GRID_TOL) -> list[str]:
    """What differs beyond ``tol``, worded as the plan words it (``size (a) vs (b)``, ...)."""
    out = []
    if list(found["size"]) != list(expected["size"]):
        out.append(f"size {tuple(found['size'])} vs {tuple(expected['size'])}")
    for name in ("spacing", "origin", "direction"):
        a, b = np.asarray(found[name], dtype=float), np.asarray(expected[name], dtype=float)
        if a.shape != b.shape or np.max(np.abs(a - b)) > tol:
            out.append(f"{name} {tuple(float(v) for v in np.round(a, 3))} vs {tuple(float(v) for v in np.round(b, 3))}")
    return out


def _is_default_header(grid: Grid) -> bool:
    return (np.allclose(grid["origin"], 0.0, atol=1e-9) and np.allclose(grid["spacing"], 1.0, atol=1e-9)
            and np.allclose(grid["direction"], np.eye(len(grid["spacing"])).ravel(), atol=1e-9))


def subgrid_offset(mask: Grid, reference: Grid, tol: float = GRID_TOL,
                   tol_voxel: float = SUBGRID_TOL_VOXEL) -> tuple[int, int, int]:
    """The (x, y, z) voxel of ``reference`` where ``mask``'s first voxel lies, if ``mask`` is a sub-grid.

    A sub-grid has the same spacing and direction (within ``tol``), an origin on the reference's
    lattice (within ``tol_voxel`` voxels per axis) and an extent inside it. A mask with a default
    header (origin 0, spacing 1, identity direction) on a real image is not one, even when those
    numbers happen to fit: its header says nothing about where it was drawn. Raises
    :class:`MaskError` saying which condition fails.
    """
    m, r = as_grid(mask), as_grid(reference)
    fix = "re-export the mask on the grid of the image it was drawn on (3D Slicer: uncheck cropping, or " \
          "export the segmentation with the image as reference geometry)"
    if _is_default_header(m) and grid_differences(m, {**r, "size": m["size"]}, tol):
        raise MaskError("it has a default header (origin 0, spacing 1, identity direction), so where it "
                        "lies is unknown", fix=fix)
    for name in ("spacing", "direction"):
        if np.max(np.abs(np.asarray(m[name]) - np.asarray(r[name]))) > tol:
            raise MaskError(f"its {name} differs, so it is not a crop of the image's grid", fix=fix)
    index = continuous_index(r, m["origin"])
    nearest = np.rint(index)
    off = np.abs(index - nearest)
    if np.max(off) > tol_voxel:
        axis = "xyz"[int(np.argmax(off))]
        raise MaskError(f"its origin is {float(np.max(off)):.3g} voxel off the image's lattice along {axis} "
                        f"(at most {tol_voxel:g} for a crop)", fix=fix)
    lo = nearest.astype(int)
    hi = lo + np.asarray(m["size"], dtype=int)
    if np.any(lo < 0) or np.any(hi > np.asarray(r["size"], dtype=int)):
        raise MaskError(f"its extent (voxels {tuple(int(v) for v in lo)} to {tuple(int(v) - 1 for v in hi)}) "
                        f"lies outside the image's grid (size {tuple(r['size'])})", fix=fix)
    return int(lo[0]), int(lo[1]), int(lo[2])


def pad_to_grid(array: np.ndarray, offset: Sequence[int], size: Sequence[int]) -> np.ndarray:
    """``array`` (z, y, x) placed at voxel ``offset`` (x, y, z) of a zero array of ``size`` (x, y, z).

    Lossless: every value keeps its voxel, so its physical point, when the grids are a crop pair.
    """
    ox, oy, oz = (int(v) for v in offset)
    nx, ny, nz = (int(v) for v in size)
    dz, dy, dx = array.shape
    if min(ox, oy, oz) < 0 or ox + dx > nx or oy + dy > ny or oz + dz > nz:
        raise MaskError(f"a (z, y, x) {array.shape} array at offset (x, y, z) {(ox, oy, oz)} does not fit "
                        f"a grid of size {(nx, ny, nz)}", fix="this is a bug: report it with this message")
    out = np.zeros((nz, ny, nx), dtype=array.dtype)
    out[oz:oz + dz, oy:oy + dy, ox:ox + dx] = array
    return out


def crop_fits(path: str, reference: Grid | Mapping[str, Any] | Any) -> bool:
    """Whether a mask file's header makes it a crop (sub-grid) of ``reference``, header only.

    How a cropped mask is paired with its study when a patient has several.
    """
    if reference is None:
        return False
    reader = sitk.ImageFileReader()
    reader.SetFileName(str(path))
    try:
        reader.ReadImageInformation()
    except RuntimeError:
        return False
    if reader.GetDimension() != 3:
        return False
    grid: Grid = {"size": list(reader.GetSize()), "spacing": list(reader.GetSpacing()),
                  "origin": list(reader.GetOrigin()), "direction": list(reader.GetDirection())}
    try:
        subgrid_offset(grid, as_grid(reference))
    except MaskError:
        return False
    return True


def _read(path: str) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        text = str(e).strip()
        first = text.splitlines()[0][:160] if text else type(e).__name__
        raise MaskError(f"unreadable mask ({first})", fix="re-export the mask as NIfTI or NRRD") from e


def load_mask(path: str, selection: MaskSelection, reference: Grid | Mapping[str, Any] | sitk.Image | Any = None,
              *, name: str = "mask", space: str = "its sequence", patient: str | None = None,
              tol: float = GRID_TOL) -> LoadedMask:
    """Read a mask file into the binary ROI ``selection`` asks for, on ``reference``'s grid if it can be.

    A mask on ``reference``'s grid (within ``tol``) keeps its own header, so later checks see it as
    drawn; a sub-grid of it is padded onto it and gets its grid (a note says so); any other grid is
    returned as it is: :func:`subgrid_offset` says why it does not fit. ``name`` is the mask's
    role (``lesion``), ``space`` its sequence, ``patient`` who it belongs to, for the messages.
    """
    return mask_from_image(_read(path), selection, reference, name=name, space=space, patient=patient, tol=tol)


def mask_from_image(image: sitk.Image, selection: MaskSelection,
                    reference: Grid | Mapping[str, Any] | sitk.Image | Any = None, *, name: str = "mask",
                    space: str = "its sequence", patient: str | None = None, tol: float = GRID_TOL) -> LoadedMask:
    """:func:`load_mask` on an image already read (its header's metadata kept)."""
    what = f"masks.{name}"
    if image.GetDimension() != 3:
        raise MaskError(f"unreadable mask (expected a 3D image, found {image.GetDimension()}D)",
                        fix="re-export the mask as one 3-D volume (NIfTI or NRRD)")
    meta = {k: image.GetMetaData(k) for k in image.GetMetaDataKeys()}
    segments = slicer_segments(meta, image.GetNumberOfComponentsPerPixel())
    segment = choose_segment(segments, selection, what)
    values = sitk.GetArrayViewFromImage(image)
    if selection.segment is not None and segment is None:  # a label value on a plain labelmap
        selection = MaskSelection((int(selection.segment),), None, True)
    inside = selected_voxels(values, segment, selection.labels)
    present = sorted(int(v) for v in np.unique(values) if v != 0) if values.ndim == 3 else []
    own = as_grid(image)
    out = LoadedMask(_on(inside.astype(np.uint8), image), int(inside.sum()), present, segment)
    if reference is None or not grid_differences(own, ref := as_grid(reference), tol):
        return out
    try:
        out.offset = subgrid_offset(own, ref, tol)
    except MaskError as e:
        out.misfit = e  # returned as drawn: the plan refuses it, the preprocessing's check too
        return out
    padded = sitk.GetImageFromArray(pad_to_grid(sitk.GetArrayViewFromImage(out.image), out.offset, ref["size"]))
    padded.SetSpacing(ref["spacing"])
    padded.SetOrigin(ref["origin"])
    padded.SetDirection(ref["direction"])
    out.image = padded
    whose = f" of patient {patient}" if patient else ""
    out.note = (f"mask {name}{whose}: cropped to {int(np.prod(own['size']))} of {int(np.prod(ref['size']))} "
                f"voxels (Slicer-style), padded onto the {space} grid at voxel {out.offset}")
    return out


def _on(array: np.ndarray, like: sitk.Image) -> sitk.Image:
    image = sitk.GetImageFromArray(array)
    image.SetSpacing(like.GetSpacing())
    image.SetOrigin(like.GetOrigin())
    image.SetDirection(like.GetDirection())
    return image


@dataclass(frozen=True)
class MaskFinding:
    """One thing the plan says about a mask file: a refusal (``blocking``) or a note."""

    what: str
    fix: str
    blocking: bool = True


def check_mask(path: str, rule: Any, expected: Grid | Mapping[str, Any] | Any, name: str,
               patient: str | None = None, tol: float = GRID_TOL) -> list[MaskFinding]:
    """What a plan reports for one mask file: readable, on (or cropped from) its sequence's grid
    (``expected``; None skips that check), its ROI not empty. The ingest reads it with the same
    :func:`load_mask`, so what the dry run accepts is what is ingested.
    """
    space = rule.space
    try:
        loaded = load_mask(path, MaskSelection.of(rule), expected, name=name, space=space, patient=patient, tol=tol)
    except MaskError as e:
        return [MaskFinding(e.message, e.fix or "re-export the mask as NIfTI or NRRD")]
    if loaded.misfit is not None:
        diffs = grid_differences(as_grid(loaded.image), as_grid(expected), tol)
        return [MaskFinding(
            f"mask {name} does not match the geometry of {space} ({'; '.join(diffs)}); not a crop of it "
            f"either: {loaded.misfit.message}",
            f"check masks.{name}.space (drawn on t1c or t2f?) or re-export the mask on the {space} series "
            f"({loaded.misfit.fix})")]
    out = []
    if loaded.note:
        out.append(MaskFinding(loaded.note, "none needed: the crop is placed voxel for voxel (lossless)",
                               blocking=False))
    if loaded.voxels == 0:
        if loaded.segment is not None:
            out.append(MaskFinding(f"empty mask ({name}): segment {loaded.segment.describe()} has no voxels",
                                   f"re-draw the {name} segment or set masks.{name}.segment"))
        else:
            segment = getattr(rule, "segment", None)
            labels = list(rule.labels) if segment is None else [int(segment)]
            what = "empty mask" if not loaded.present else f"mask has labels {loaded.present}, none of {labels}"
            out.append(MaskFinding(f"{what} ({name})", f"re-draw the {name} mask or set masks.{name}.labels"))
    return out
