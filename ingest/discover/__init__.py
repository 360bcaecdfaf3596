"""Plan a center's ingest from its config: patients, studies, chosen series, masks, clinical rows.

Only headers are read here (DICOM without pixels, NIfTI/NRRD image information), plus the mask
files, so the same plan serves the dry run (``atrx center validate``) and the ingest. Every
refusal is a :class:`Problem` that names the patient, the file and the fix; blocking problems
quarantine the patient, the others are notes.

- :mod:`~ingest.discover.plan`: the plan's data (problems, sources, studies, patients, center)
- :mod:`~ingest.discover.dicom`: DICOM files grouped into series, series chosen per study
- :mod:`~ingest.discover.files`: globs (``{patient}``, ``{folder}``, ``{source}/``, kept inside
  ``source``) and image headers, NIfTI/NRRD studies, the mask checks
- :mod:`~ingest.discover.center`: :func:`plan_center`, the whole center and its clinical sheet
- :mod:`~ingest.discover.redact`: the plan's redactors (what the ingest records paths and
  messages with: pseudonyms and keyed tokens, never a raw name)
"""

from __future__ import annotations

from ingest.discover.center import plan_center
from ingest.discover.dicom import HEADER_TAGS, NON_DICOM_SUFFIXES, SeriesInfo, scan_dicom_folder
from ingest.discover.files import check_masks, expand_glob, file_geometry, inside_source
from ingest.discover.plan import (
    CenterPlan,
    Geometry,
    PatientPlan,
    PlanCounts,
    Problem,
    ProblemStage,
    SourceKind,
    SourceRef,
    StudyPlan,
    source_label,
)

__all__ = [
    "HEADER_TAGS",
    "NON_DICOM_SUFFIXES",
    "CenterPlan",
    "Geometry",
    "PatientPlan",
    "PlanCounts",
    "Problem",
    "ProblemStage",
    "SeriesInfo",
    "SourceKind",
    "SourceRef",
    "StudyPlan",
    "check_masks",
    "expand_glob",
    "file_geometry",
    "inside_source",
    "plan_center",
    "scan_dicom_folder",
    "source_label",
]
