"""What a center's plan is made of: problems, geometries, sources, studies, patients, the center.

Plain data built from headers by :func:`ingest.discover.plan_center`; the ingest workers receive
a :class:`PatientPlan` and nothing else of the export.
"""

from __future__ import annotations

import datetime as dt
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, TypedDict

import numpy as np

from atrx.config.center import CenterConfig
from ingest.clinical import ClinicalRecord, ClinicalSheetResult
from ingest.deid import Redactor

__all__ = [
    "CenterPlan",
    "Geometry",
    "PatientPlan",
    "PlanCounts",
    "Problem",
    "ProblemStage",
    "SourceKind",
    "SourceRef",
    "StudyPlan",
    "output_size",
    "relative",
    "source_label",
]

#: where a plan-time problem was found: the export's folders and headers, or the clinical sheet
ProblemStage = Literal["discover", "clinical"]
#: a DICOM series (many files) or one image file (NIfTI, NRRD, ...)
SourceKind = Literal["dicom", "file"]


@dataclass(frozen=True)
class Problem:
    """One refusal or note. ``patient`` is the raw id: plans are shown only to the local engineer."""

    patient: str | None
    what: str
    fix: str
    file: str | None = None
    blocking: bool = True
    stage: ProblemStage = "discover"


@dataclass
class Geometry:
    """A volume's grid from headers alone (x, y, z order, as SimpleITK reports it)."""

    size: tuple[int, int, int]
    spacing: tuple[float, float, float]
    origin: tuple[float, float, float]
    direction: tuple[float, ...]

    def differences(self, other: Geometry, tol: float = 1e-2) -> list[str]:
        """What differs beyond ``tol`` (mm for spacing and origin, cosines for direction)."""
        out = []
        if self.size != other.size:
            out.append(f"size {self.size} vs {other.size}")
        for name in ("spacing", "origin", "direction"):
            a, b = np.asarray(getattr(self, name)), np.asarray(getattr(other, name))
            if a.shape != b.shape or np.max(np.abs(a - b)) > tol:
                out.append(f"{name} {_rounded(a)} vs {_rounded(b)}")
        return out

    def problem(self) -> str | None:
        """Why this grid cannot be resampled (non-finite numbers, spacing <= 0, a singular or
        non-orthonormal direction), or None."""
        numbers = np.asarray([*self.spacing, *self.origin, *self.direction], dtype=float)
        if not np.all(np.isfinite(numbers)):
            return f"its header's geometry has non-finite numbers (spacing {self.spacing}, origin {self.origin})"
        if min(self.spacing) <= 0:
            return f"its voxel spacing {_rounded(np.asarray(self.spacing))} is not positive"
        d = np.asarray(self.direction, dtype=float)
        if d.size != 9 or not np.allclose(d.reshape(3, 3).T @ d.reshape(3, 3), np.eye(3), atol=1e-2):
            return f"its direction {_rounded(d)} is singular or not orthonormal (a broken orientation header)"
        return None


def output_size(geo: Geometry, spacing_mm: float = 1.0) -> tuple[int, int, int]:
    """The size of the isotropic ``spacing_mm`` grid the preprocessing resamples over this grid
    (what :func:`ingest.preprocess.ops.isotropic_reference` builds over the T1c)."""
    n = [max(1, int(round(k * s / spacing_mm))) for k, s in zip(geo.size, geo.spacing, strict=True)]
    return n[0], n[1], n[2]


def _rounded(values: np.ndarray) -> tuple[float, ...]:
    # plain floats, so a message reads (1.0, 2.5) and not (np.float64(1.0), ...)
    return tuple(float(v) for v in np.round(values, 3))


@dataclass(frozen=True)
class SourceRef:
    """The files of one sequence or mask; ``label`` is what the engineer recognises (description, name)."""

    kind: SourceKind
    files: tuple[str, ...]
    label: str
    series_uid: str | None = None


@dataclass
class StudyPlan:
    """One study to ingest: its pseudonymous id, date, the four sources and their geometry."""

    study_id: str
    scan_date: dt.date | None
    t1c: SourceRef
    t2f: SourceRef
    lesion: SourceRef
    tumor: SourceRef
    geometry: dict[str, Geometry | None] = field(default_factory=dict)


@dataclass
class PatientPlan:
    """One patient: raw id (never leaves the worker), pseudonym, studies, clinical row, problems."""

    raw_id: str
    patient_id: str
    folder: str
    studies: list[StudyPlan] = field(default_factory=list)
    clinical: ClinicalRecord | None = None
    problems: list[Problem] = field(default_factory=list)
    n_series: int = 0
    #: header texts (series descriptions) its messages may quote: recorded as keyed tokens
    header_texts: list[str] = field(default_factory=list)
    #: what its recorded paths and messages are made safe with (set by the plan; carries no raw
    #: name of another patient)
    redactor: Redactor | None = field(default=None, repr=False)

    @property
    def ok(self) -> bool:
        """No blocking problem: the patient is ingested."""
        return not any(p.blocking for p in self.problems)

    def refuse(self, what: str, fix: str, file: str | None = None, blocking: bool = True) -> None:
        """Record a problem of this patient (blocking by default: the patient is quarantined)."""
        self.problems.append(Problem(self.raw_id, what, fix, file, blocking))


class PlanCounts(TypedDict):
    """The dry run's numbers, in the order ``atrx center validate`` prints them."""

    patients: int
    patients_ready: int
    patients_refused: int
    studies: int
    series_seen: int
    series_matched: int
    masks: int
    clinical_rows: int
    clinical_rows_usable: int


@dataclass
class CenterPlan:
    """Every patient of one center, the center-wide problems and the parsed clinical sheet."""

    config: CenterConfig
    patients: list[PatientPlan]
    problems: list[Problem]
    clinical: ClinicalSheetResult | None
    #: the center's redactor: every raw id and patient folder (merge a patient's in for its problems)
    redactor: Redactor | None = field(default=None, repr=False)

    @property
    def blocking(self) -> list[Problem]:
        """Every blocking problem, center-wide and per patient."""
        return [p for p in self.all_problems() if p.blocking]

    def all_problems(self) -> list[Problem]:
        """Center-wide problems first, then each patient's."""
        return self.problems + [p for pp in self.patients for p in pp.problems]

    def counts(self) -> PlanCounts:
        """How many patients, studies, series and clinical rows the plan found and would use."""
        ok = [p for p in self.patients if p.ok]
        return {
            "patients": len(self.patients),
            "patients_ready": len(ok),
            "patients_refused": len(self.patients) - len(ok),
            "studies": sum(len(p.studies) for p in ok),
            "series_seen": sum(p.n_series for p in self.patients),
            "series_matched": sum(2 * len(p.studies) for p in self.patients),
            "masks": sum(2 * len(p.studies) for p in self.patients),
            "clinical_rows": self.clinical.n_rows if self.clinical else 0,
            "clinical_rows_usable": len(self.clinical.records) if self.clinical else 0,
        }


def relative(path: str | Path, root: Path) -> str:
    """``path`` relative to ``root`` when inside it (what problems show), else as given."""
    try:
        return str(Path(path).relative_to(root))
    except ValueError:
        return str(path)


def source_label(path: str | Path, folder: Path, root: Path) -> str:
    """How a source file is labelled (and recorded, redacted): relative to the patient folder, or,
    for a file beside it (``{source}/masks/...``), ``{source}/`` and its path in the export.

    Never the absolute path: where the hospital keeps its exports is not recorded.
    """
    try:
        return str(Path(path).relative_to(folder))
    except ValueError:
        pass
    try:
        return "{source}/" + str(Path(path).relative_to(root))
    except ValueError:
        return Path(path).name
