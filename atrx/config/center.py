"""``CenterConfig``: one hospital's export described in one YAML file (``centers/<id>.yaml``).

Every level forbids unknown keys, so a misspelt key is an error that names itself. Presets
(``brats2023``, ``bids``) fill in the layout of common NIfTI conventions; anything written in
the file overrides them.

File globs (sequences, masks) are relative to the patient folder, may name the patient
(``{patient}``: the raw id, ``{folder}``: the patient folder's name) and may start at the export
root (``{source}/masks/{patient}_lesion.nii.gz``), so masks kept beside the images need no links.
They never leave ``source``: ``..`` and absolute paths are refused here, links out of it when
the export is planned.
"""

from __future__ import annotations

import os
import re
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import Field, StringConstraints, ValidationInfo, field_validator, model_validator

from atrx.config.base import (
    PLACEHOLDER_RE,
    SOURCE_PREFIX,
    ConfigError,
    StrictModel,
    check_glob,
    expand_env,
    load_yaml_model,
    split_source,
)
from atrx.config.deid import Deid

SequenceName = Literal["t1c", "t2f"]
MaskName = Literal["lesion", "tumor"]

#: DICOM keywords a sequence rule may match on (any other attribute is also allowed if it is a
#: valid keyword, but these are the ones exports vary on).
COMMON_DICOM_KEYS = ("SeriesDescription", "ProtocolName", "SequenceName", "ImageType", "ContrastBolusAgent")


def _check_regex(value: str, where: str) -> str:
    try:
        re.compile(value)
    except re.error as e:
        raise ValueError(f"{where}: {value!r} is not a valid regular expression ({e})") from e
    return value


def _check_globs(value: str | list[str]) -> str | list[str]:
    patterns = [value] if isinstance(value, str) else value
    if not patterns:
        raise ValueError("give at least one glob")
    for pattern in patterns:
        check_glob(pattern)
    return value


class PatientsRule(StrictModel):
    """How patients are found under ``source``: one folder (or file group) per patient."""

    glob: str = Field("*", description="glob, relative to source, matching one entry per patient")
    id_regex: str = Field(
        r"^(?P<patient>.+)$",
        description="regex on the matched entry's name; the group 'patient' is the raw patient id",
    )
    scan_date_regex: str | None = Field(
        None,
        description="regex with a group 'date' (YYYYMMDD) on a file's path relative to the patient, "
        "for NIfTI exports whose scan date is only in the folder names (e.g. BIDS ses-20200131)",
    )

    @field_validator("glob")
    @classmethod
    def _inside_source(cls, v: str) -> str:
        return check_glob(v, allowed=())

    @field_validator("id_regex")
    @classmethod
    def _patient_group(cls, v: str) -> str:
        _check_regex(v, "patients.id_regex")
        if "(?P<patient>" not in v:
            raise ValueError("patients.id_regex must have a named group (?P<patient>...)")
        return v

    @field_validator("scan_date_regex")
    @classmethod
    def _date_group(cls, v: str | None) -> str | None:
        if v is not None:
            _check_regex(v, "patients.scan_date_regex")
            if "(?P<date>" not in v:
                raise ValueError("patients.scan_date_regex must have a named group (?P<date>...)")
        return v


class SequenceRule(StrictModel):
    """How one sequence is chosen: DICOM tag regexes (all must match) or a file glob."""

    dicom: dict[str, str] | None = Field(
        None, description="DICOM keyword -> regex searched in that tag's value; all must match"
    )
    exclude: dict[str, str] | None = Field(
        None, description="DICOM keyword -> regex; a series matching any of these is rejected"
    )
    glob: str | list[str] | None = Field(
        None, description="file glob relative to the patient folder (NIfTI/NRRD); {patient}, {folder} and a "
        "leading {source}/ expand; a list matches the union of its globs")
    on_multiple: Literal["error", "most_slices", "latest"] = Field(
        "error", description="what to do when several series match: refuse, or pick one"
    )

    @model_validator(mode="after")
    def _one_way(self) -> SequenceRule:
        if (self.dicom is None) == (self.glob is None):
            raise ValueError("give exactly one of 'dicom' (tag regexes) or 'glob' (file pattern)")
        for key, rx in {**(self.dicom or {}), **(self.exclude or {})}.items():
            if not re.fullmatch(r"[A-Z][A-Za-z0-9]+", key):
                raise ValueError(f"{key!r} is not a DICOM keyword (e.g. {', '.join(COMMON_DICOM_KEYS)})")
            _check_regex(rx, key)
        return self

    @field_validator("glob")
    @classmethod
    def _glob_inside(cls, v: str | list[str] | None) -> str | list[str] | None:
        return None if v is None else _check_globs(v)


class MaskRule(StrictModel):
    """Where a mask is, in which sequence's space it was drawn, and which labels make the ROI."""

    glob: str | list[str] = Field(
        description="file glob relative to the patient folder (NIfTI or NRRD); {patient}, {folder} and a "
        "leading {source}/ expand (e.g. '{source}/masks/{patient}_lesion.nii.gz'); a list matches the "
        "union of its globs")
    space: SequenceName = Field(description="the sequence the mask was drawn on: t1c or t2f")
    labels: list[int] = Field(default_factory=lambda: [1], min_length=1)
    segment: str | int | None = Field(
        None, description="3D Slicer .seg.nrrd: the segment that is this mask, by name ('overall lesion') "
        "or label value; needed when the file holds several segments (labels then do not apply)")

    @field_validator("labels")
    @classmethod
    def _positive(cls, v: list[int]) -> list[int]:
        if any(x <= 0 for x in v):
            raise ValueError("labels must be positive integers (0 is background)")
        return sorted(set(v))

    @field_validator("glob")
    @classmethod
    def _glob_inside(cls, v: str | list[str]) -> str | list[str]:
        return _check_globs(v)


class Sequences(StrictModel):
    t1c: SequenceRule
    t2f: SequenceRule

    @model_validator(mode="after")
    def _same_kind(self) -> Sequences:
        if (self.t1c.dicom is None) != (self.t2f.dicom is None):
            raise ValueError("t1c and t2f must both be chosen by 'dicom' tag rules or both by 'glob'")
        return self

    @property
    def is_dicom(self) -> bool:
        return self.t1c.dicom is not None


class Masks(StrictModel):
    lesion: MaskRule = Field(description="the overall lesion (tumor + edema)")
    tumor: MaskRule = Field(description="the enhancing tumor")


ClinicalField = Literal[
    "patient_id", "age", "sex", "who_grade", "vasari_score", "atrx_status", "pathology_date", "scan_date"
]
REQUIRED_CLINICAL: tuple[str, ...] = (
    "patient_id", "age", "sex", "who_grade", "vasari_score", "atrx_status", "pathology_date"
)


def code_key(code: object) -> str:
    """A value-map code as matched: case and surrounding whitespace ignored ('Loss ' is 'loss')."""
    return str(code).strip().casefold()


class ClinicalSheet(StrictModel):
    """The clinical sheet: a CSV (delimiter, decimal mark) or an XLSX sheet, mapped to our fields.

    Value-map codes match ignoring case and surrounding whitespace (sheets write 'Loss', 'loss ',
    'LOSS' for one code); two codes that differ only so must therefore map to the same value.
    """

    path: str = Field(description="relative to source (or absolute); may start with {source}/")
    format: Literal["csv", "xlsx", "auto"] = "auto"
    delimiter: Annotated[str, StringConstraints(strip_whitespace=False)] = Field(
        ",", description="one character; a tab is written \"\\t\" (kept, not stripped as whitespace)")
    decimal: str = "."
    encoding: str = "utf-8"
    sheet: str | int | None = Field(None, description="XLSX sheet name or index (default: the first)")
    columns: dict[ClinicalField, str] = Field(description="our field -> the sheet's column name")
    values: dict[Literal["sex", "who_grade", "atrx_status"], dict[str, str | int]] = Field(
        default_factory=dict,
        description="per field, the sheet's code -> our value (sex: male/female, who_grade: 3/4, "
        "atrx_status: mutant/wildtype)",
    )
    date_formats: list[str] = Field(default_factory=lambda: ["%Y-%m-%d"], min_length=1)

    @field_validator("columns")
    @classmethod
    def _required(cls, v: dict[str, str]) -> dict[str, str]:
        missing = [f for f in REQUIRED_CLINICAL if f not in v]
        if missing:
            raise ValueError(f"the column map lacks {missing}; map each to the sheet's column name")
        return v

    @field_validator("delimiter", "decimal")
    @classmethod
    def _one_char(cls, v: str) -> str:
        if len(v) != 1:
            raise ValueError(f"must be one character, got {v!r}")
        return v

    @model_validator(mode="after")
    def _values_known(self) -> ClinicalSheet:
        allowed = {"sex": {"male", "female"}, "who_grade": {3, 4, "3", "4"}, "atrx_status": {"mutant", "wildtype"}}
        for fld, mapping in self.values.items():
            bad = [str(t) for t in mapping.values() if t not in allowed[fld]]
            if bad:
                raise ValueError(
                    f"values.{fld} maps to {bad}; allowed targets are {sorted(map(str, allowed[fld]))}"
                )
            seen: dict[str, tuple[str, str | int]] = {}
            for code, target in mapping.items():
                first = seen.setdefault(code_key(code), (code, target))
                if str(first[1]).lower() != str(target).lower():
                    raise ValueError(
                        f"values.{fld}: codes {first[0]!r} -> {first[1]!r} and {code!r} -> {target!r} differ only "
                        "in case or surrounding whitespace, and codes are matched ignoring both; keep one of them")
        return self

    @field_validator("path")
    @classmethod
    def _path_placeholders(cls, v: str) -> str:
        unknown = [n for n in PLACEHOLDER_RE.findall(v) if n != "source"]
        if unknown:
            raise ValueError(f"unknown placeholder {{{unknown[0]}}} in {v!r}; the clinical sheet is one file per "
                             "center, so only a leading {source}/ is allowed here")
        if SOURCE_PREFIX in v and not v.startswith(SOURCE_PREFIX + "/"):
            raise ValueError(f"{{source}} may only start the path, followed by '/', got {v!r}")
        return v


def _bids_masks(roi: str) -> list[str]:
    name = f"*_desc-{roi}_mask.nii*"
    return [f"**/{name}", f"{{source}}/derivatives/*/{{folder}}/**/{name}",
            f"{{source}}/segmentations/{{folder}}/**/{name}"]


PRESETS: dict[str, dict[str, Any]] = {
    # BraTS 2023 naming: <id>/<id>-t1c.nii.gz, -t2f.nii.gz and one multi-label -seg.nii.gz in T1c
    # space (1 necrosis, 2 edema, 3 enhancing): lesion = {1,2,3}, tumor = {1,3}.
    "brats2023": {
        "format": "nifti",
        "patients": {"glob": "*", "id_regex": r"^(?P<patient>.+)$"},
        "sequences": {"t1c": {"glob": "*-t1c.nii.gz"}, "t2f": {"glob": "*-t2f.nii.gz"}},
        "masks": {
            "lesion": {"glob": "*-seg.nii.gz", "space": "t1c", "labels": [1, 2, 3]},
            "tumor": {"glob": "*-seg.nii.gz", "space": "t1c", "labels": [1, 3]},
        },
    },
    # A BIDS-like layout: sub-<id>/[ses-<YYYYMMDD>/]anat/...; masks in the subject folder, in a
    # derivatives pipeline (derivatives/<pipeline>/sub-<id>/...) or in segmentations/sub-<id>/...
    # at the root of source. A mask found in two of these places is refused as ambiguous.
    "bids": {
        "format": "nifti",
        "patients": {
            "glob": "sub-*",
            "id_regex": r"^sub-(?P<patient>[A-Za-z0-9]+)$",
            "scan_date_regex": r"ses-(?P<date>\d{8})",
        },
        "sequences": {"t1c": {"glob": "**/anat/*_ce-*_T1w.nii*"}, "t2f": {"glob": "**/anat/*_FLAIR.nii*"}},
        "masks": {
            "lesion": {"glob": _bids_masks("lesion"), "space": "t2f"},
            "tumor": {"glob": _bids_masks("tumor"), "space": "t1c"},
        },
    },
}


def _merge(base: dict[str, Any], over: dict[str, Any]) -> dict[str, Any]:
    out = dict(base)
    for k, v in over.items():
        out[k] = _merge(out[k], v) if isinstance(v, dict) and isinstance(out.get(k), dict) else v
    return out


class CenterConfig(StrictModel):
    """One center's export. Paths are relative to the YAML file's folder; ``${VAR:-default}`` expands."""

    center: str = Field(description="short center id, used in the store path and pseudonyms")
    description: str = ""
    source: str = Field(description="root folder of the export")
    format: Literal["dicom", "nifti", "auto"] = "auto"
    preset: Literal["brats2023", "bids"] | None = None
    patients: PatientsRule = PatientsRule()
    sequences: Sequences
    masks: Masks
    clinical: ClinicalSheet
    synthetic: bool = Field(False, description="the export is generated test data; only then may deid.key be a "
                            "literal key in this file")
    deid: Deid = Deid()
    max_voxels: int = Field(64_000_000, gt=0, description="voxel budget of a study's output grid (1 mm over the "
                            "T1c); a bigger one is refused at plan time, before any worker allocates it")
    base_dir: str = Field("", exclude=True, description="set by the loader: the YAML file's folder")

    @model_validator(mode="before")
    @classmethod
    def _apply_preset(cls, data: Any, info: ValidationInfo) -> Any:
        if isinstance(data, dict):
            if data.get("preset") is not None and data["preset"] not in PRESETS:
                return data  # the Literal check reports it
            if data.get("preset"):
                data = _merge(PRESETS[data["preset"]], data)
            if info.context and "config_path" in info.context and "base_dir" not in data:
                data = {**data, "base_dir": str(Path(info.context["config_path"]).resolve().parent)}
        return data

    @model_validator(mode="after")
    def _format_matches_rules(self) -> CenterConfig:
        if self.format == "dicom" and not self.sequences.is_dicom:
            raise ValueError("format is 'dicom' but sequences are chosen by 'glob'; use 'dicom' tag rules")
        if self.format == "nifti" and self.sequences.is_dicom:
            raise ValueError("format is 'nifti' but sequences use 'dicom' tag rules; use 'glob' rules")
        return self

    @field_validator("deid")
    @classmethod
    def _literal_key_synthetic_only(cls, v: Deid, info: ValidationInfo) -> Deid:
        if v.key and info.data.get("synthetic") is False:
            raise ValueError(
                "deid.key: a literal key is refused in a center file unless it says `synthetic: true`; remove "
                "deid.key and give the key in an environment variable named by deid.key_env (e.g. "
                "`deid: {key_env: ATRX_DEID_KEY}`), or add `synthetic: true` if the data are synthetic")
        return v

    @field_validator("center")
    @classmethod
    def _center_id(cls, v: str) -> str:
        if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_]{0,31}", v):
            raise ValueError("use letters, digits and underscores only (it becomes part of paths and ids)")
        return v

    @field_validator("source")
    @classmethod
    def _expand(cls, v: str) -> str:
        try:
            return expand_env(v)
        except KeyError as e:
            raise ValueError(f"environment variable {e.args[0]} is not set and has no default") from e

    @property
    def source_path(self) -> Path:
        p = Path(self.source).expanduser()
        return p if p.is_absolute() else (Path(self.base_dir) / p).resolve()

    @property
    def clinical_path(self) -> Path:
        anchored, rest = split_source(self.clinical.path)
        if anchored:
            return self.source_path / rest
        p = Path(rest).expanduser()
        return p if p.is_absolute() else self.source_path / p

    def digest(self) -> str:
        """Hash of the effective configuration (recorded with every run)."""
        import hashlib

        return hashlib.sha256(self.model_dump_json(exclude={"deid", "synthetic"}).encode()).hexdigest()


def load_center(path: str | os.PathLike[str]) -> CenterConfig:
    """Load and validate ``centers/<id>.yaml``; raises :class:`ConfigError` naming file and keys."""
    cfg = load_yaml_model(CenterConfig, path)
    if not cfg.source_path.is_dir():
        raise ConfigError(
            path, [f"source: folder {cfg.source_path} does not exist; point 'source' at the export's root"]
        )
    return cfg
