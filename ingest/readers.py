"""Read sequences and masks from an export into SimpleITK images, geometry kept.

DICOM series are read through SimpleITK/GDCM from exactly the files the plan chose, so a folder
that mixes series works; rescale slope/intercept are applied by GDCM, and so is decompression
(RLE, JPEG, JPEG-LS, JPEG 2000; a file that does not decode names its transfer syntax). Header
metadata is never carried along, so no PHI can reach the store through an image. Masks are read by
:mod:`ingest.masks`, the same code the plan checks them with (cropped masks, Slicer segments).
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import pydicom
import SimpleITK as sitk

from atrx.config.center import MaskRule
from atrx.errors import DataError
from ingest.discover import SourceRef
from ingest.discover.dicom_input import UNCOMPRESSED_FIX, syntax_name, transfer_syntax
from ingest.masks import MaskError, MaskSelection, itk_reason, mask_from_image

_REEXPORT = "re-export the file; it could not be read"


class ReadError(DataError, RuntimeError):
    """An input could not be read; the message says which and why.

    A verdict on the data (the study is quarantined, the run goes on); still a ``RuntimeError``
    for callers that caught it as one.
    """


def read_image(ref: SourceRef) -> sitk.Image:
    """A sequence as float32 with its physical geometry."""
    try:
        if ref.kind == "dicom":
            folder = str(Path(ref.files[0]).parent)
            ordered = sitk.ImageSeriesReader.GetGDCMSeriesFileNames(folder, ref.series_uid or "")
            wanted = set(ref.files)
            ordered = [f for f in ordered if f in wanted]
            if len(ordered) != len(wanted):
                raise ReadError(
                    f"GDCM ordered {len(ordered)} of the {len(wanted)} files of series {ref.label!r}; "
                    "some files are unreadable",
                    fix="re-export the series; some of its files could not be read",
                )
            reader = sitk.ImageSeriesReader()
            reader.SetFileNames(ordered)
            reader.MetaDataDictionaryArrayUpdateOff()
            reader.LoadPrivateTagsOff()
            image = reader.Execute()
        else:
            image = sitk.ReadImage(ref.files[0])
    except RuntimeError as e:
        if isinstance(e, ReadError):
            raise
        first = itk_reason(e, 200, paths=ref.files)
        uid = _compressed(ref.files[0]) if ref.kind == "dicom" else None
        if uid:
            raise ReadError(f"cannot decode {ref.label!r}, compressed as {syntax_name(uid)}: {first}",
                            fix=UNCOMPRESSED_FIX) from e
        raise ReadError(f"cannot read {ref.label!r}: {first}", fix=_REEXPORT) from e
    if image.GetDimension() != 3:
        raise ReadError(f"{ref.label!r} is {image.GetDimension()}D; a 3D volume is expected",
                        fix="re-export it as one 3-D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ReadError(f"{ref.label!r} has {image.GetNumberOfComponentsPerPixel()} components; one is expected",
                        fix="re-export it as one grey-scale volume")
    return sitk.Cast(image, sitk.sitkFloat32)


def _compressed(path: str) -> str | None:
    """The transfer syntax of a DICOM file whose pixel data is compressed, else None."""
    try:
        uid = transfer_syntax(pydicom.dcmread(path, stop_before_pixels=True, specific_tags=["SOPInstanceUID"]))
    except Exception:  # noqa: BLE001 - only a better message is at stake
        return None
    return str(uid) if uid is not None and uid.is_transfer_syntax and uid.is_compressed else None


def read_mask(ref: SourceRef, rule: MaskRule | Sequence[int], reference: sitk.Image | None = None,
              name: str = "mask") -> sitk.Image:
    """A binary uint8 mask of the voxels the rule selects (labels, or a Slicer segment).

    With ``reference`` (the sequence it was drawn on), a mask cropped to a sub-grid of it (3D
    Slicer's default) is padded onto its grid, exactly as the plan accepted it; a mask on any
    other grid is returned on its own, for the preprocessing's geometry check to refuse.
    """
    try:
        image = sitk.ReadImage(ref.files[0])
    except RuntimeError as e:
        raise ReadError(f"cannot read mask {ref.label!r}: {itk_reason(e, 200, paths=ref.files)}",
                        fix="re-export the mask as NIfTI or NRRD") from e
    try:
        loaded = mask_from_image(image, MaskSelection.of(rule), reference, name=name,
                                 space=getattr(rule, "space", "its sequence"))
    except MaskError as e:
        raise ReadError(f"mask {ref.label!r}: {e.message}", fix=e.fix) from e
    return loaded.image
