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

Pure functions on arrays (the grid side is :mod:`ingest.mask_grid`), plus :func:`load_mask`, the
one that reads a file, so the plan (``atrx center validate``) and the ingest decide with the same
code. Nothing here imports
:mod:`ingest.discover` (it imports this module).
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import SimpleITK as sitk

from atrx.geometry import Grid, as_grid
from ingest.mask_grid import GRID_TOL, MaskError, grid_differences, pad_to_grid, subgrid_offset

__all__ = ["LoadedMask", "MaskError", "MaskFinding", "MaskSelection", "Segment", "check_mask", "choose_segment",
           "crop_fits", "itk_reason", "load_mask", "mask_from_image", "selected_voxels", "slicer_segments",
           "whole_labels"]

_SEGMENT_KEY = re.compile(r"^Segment(\d+)_(Name|LabelValue|Layer|ID)$")


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


def itk_reason(e: BaseException, limit: int = 160, paths: Sequence[str | Path] = ()) -> str:
    """The line of a SimpleITK error that says why (``ITK ERROR: ...``), not where it was thrown.

    The files read (``paths``) become ``<file>`` before the line is cut to ``limit``: a name cut
    in half could not be redacted when the message is recorded (the row names the file anyway).
    """
    text = str(e)
    folders = {str(Path(p).parent) for p in paths if Path(p).is_absolute()}
    for p in sorted({str(p) for p in paths} | folders, key=len, reverse=True):
        text = text.replace(p, "<file>")
    lines = [ln.strip() for ln in text.strip().splitlines() if ln.strip()]
    why = [ln for ln in lines if "ERROR" in ln]
    return ((why or lines)[-1] if lines else type(e).__name__)[:limit]


def _read(path: str) -> sitk.Image:
    try:
        return sitk.ReadImage(str(path))
    except RuntimeError as e:
        raise MaskError(f"unreadable mask ({itk_reason(e, paths=[path])})",
                        fix="re-export the mask as NIfTI or NRRD") from e


def whole_labels(values: np.ndarray, name: str = "mask", tol: float = 1e-3, shown: int = 4) -> np.ndarray:
    """``values`` with a float mask's rounded to whole labels; a :class:`MaskError` naming a few values
    if any is not whole (beyond ``tol``): a label map resampled with interpolation has blends at its edges."""
    if values.dtype.kind != "f":
        return values
    rounded = np.round(values)
    bad = values[~(np.abs(values - rounded) <= tol)]  # NaN counts as bad
    if bad.size:
        distinct = np.unique(bad)
        listed = ", ".join(f"{float(v):.3g}" for v in distinct[:shown]) + (", ..." if len(distinct) > shown else "")
        raise MaskError(f"mask {name} has non-integer values ({listed} in {bad.size} voxels): a label map resampled "
                        "with interpolation, whose edges are blends of labels, not labels",
                        fix=f"export the {name} label map without interpolation (nearest-neighbour resampling, e.g. "
                            "ITK/ANTs NearestNeighbor or GenericLabel; 3D Slicer: export the segmentation as a "
                            "labelmap), as integers")
    return rounded


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
    values = whole_labels(sitk.GetArrayViewFromImage(image), name)  # float noise (1.0000001) rounded away
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
