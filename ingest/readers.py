"""Read sequences and masks from an export into SimpleITK images, geometry kept.

DICOM series are read through SimpleITK/GDCM from exactly the files the plan chose, so a folder
that mixes series works; rescale slope/intercept are applied by GDCM. Header metadata is never
carried along, so no PHI can reach the store through an image.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import SimpleITK as sitk

from atrx.errors import DataError
from ingest.discover import SourceRef

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
        first = str(e).strip().splitlines()[-1][:200] if str(e).strip() else type(e).__name__
        raise ReadError(f"cannot read {ref.label!r}: {first}", fix=_REEXPORT) from e
    if image.GetDimension() != 3:
        raise ReadError(f"{ref.label!r} is {image.GetDimension()}D; a 3D volume is expected",
                        fix="re-export it as one 3-D volume")
    if image.GetNumberOfComponentsPerPixel() != 1:
        raise ReadError(f"{ref.label!r} has {image.GetNumberOfComponentsPerPixel()} components; one is expected",
                        fix="re-export it as one grey-scale volume")
    return sitk.Cast(image, sitk.sitkFloat32)


def read_mask(ref: SourceRef, labels: list[int]) -> sitk.Image:
    """A binary uint8 mask of the voxels whose value is one of ``labels`` (multi-label files work)."""
    try:
        image = sitk.ReadImage(ref.files[0])
    except RuntimeError as e:
        raise ReadError(f"cannot read mask {ref.label!r}: {str(e).strip().splitlines()[-1][:200]}",
                        fix="re-export the mask as NIfTI or NRRD") from e
    values = sitk.GetArrayViewFromImage(image)
    binary = sitk.GetImageFromArray(np.isin(values, labels).astype(np.uint8))
    binary.CopyInformation(image)
    return binary
