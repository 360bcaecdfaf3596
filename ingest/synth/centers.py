"""The three synthetic hospitals: how each one acquires, names and exports, and its center YAML.

Everything that differs between centers lives here, so the variety the ingest must absorb is in
one place and the center YAMLs are rendered from the same facts that produced the files.
"""

from __future__ import annotations

from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import yaml

CENTERS: tuple[str, ...] = ("A", "B", "C")

#: ``source`` of the configs kept in the repo (relative to ``centers/``); the env var points the
#: same files at a cohort generated elsewhere.
REPO_SOURCE = "${ATRX_COHORT:-../.atrx/cohort}/{center}"


def synthetic_key(center: str) -> str:
    """The literal pseudonymisation key of a synthetic center (>= 32 bytes; public, so synthetic only)."""
    return f"synthetic-{center}-pseudonymisation-key-not-secret"


@dataclass(frozen=True)
class SeriesSpec:
    """One acquired series: naming, grid and scanner behaviour."""

    description: str
    protocol: str
    series_number: int
    spacing: tuple[float, float, float]  # column, row, slice step (mm)
    thickness: float  # nominal slice thickness (mm); < slice step means a gap
    fov: tuple[float, float]  # left-right, anterior-posterior (mm)
    slab: float  # extent along the slice normal (mm)
    gain: float  # scanner units per truth unit (white matter = 1)
    noise: float  # Rician sigma, in truth units
    offset: float = 0.0  # scanner baseline added after the noise
    slope: float = 1.0  # DICOM RescaleSlope (stored * slope + intercept = value)
    intercept: float = 0.0
    pixel_representation: int | None = None  # 0 uint16, 1 int16, None: pick
    tilt_deg: tuple[float, float] = (0.0, 0.0)  # oblique tilt about left-right, drawn per patient
    tags: dict[str, Any] = field(default_factory=dict)
    role: str = "image"  # distractors: "localizer" (3 planes), "pre_contrast" or "dwi"


@dataclass(frozen=True)
class CenterSpec:
    code: str
    export: str  # "dicom_series_folders" | "dicom_mixed" | "brats_nifti"
    hospital: str
    address: str
    manufacturer: str
    model: str
    station: str
    referring: tuple[str, ...]
    surnames: tuple[str, ...]
    given_male: tuple[str, ...]
    given_female: tuple[str, ...]
    t1c: SeriesSpec
    t2f: SeriesSpec
    distractors: tuple[SeriesSpec, ...] = ()


_T1C_TAGS = {
    "ScanningSequence": ["GR", "IR"],
    "SequenceVariant": ["SP", "MP"],
    "MRAcquisitionType": "3D",
    "RepetitionTime": "2300",
    "EchoTime": "2.32",
    "InversionTime": "900",
    "FlipAngle": "8",
    "MagneticFieldStrength": "3",
    "ContrastBolusAgent": "Gadobutrol 0.1 mmol/kg",
}
_FLAIR_TAGS = {
    "ScanningSequence": ["SE", "IR"],
    "SequenceVariant": ["SK", "SP", "MP"],
    "MRAcquisitionType": "2D",
    "RepetitionTime": "9000",
    "EchoTime": "81",
    "InversionTime": "2500",
    "FlipAngle": "150",
    "MagneticFieldStrength": "3",
}

SPECS: dict[str, CenterSpec] = {
    "A": CenterSpec(
        code="A",
        export="dicom_series_folders",
        hospital="Riverbend Medical University First Hospital",
        address="1 Jiangbin Road, Riverbend",
        manufacturer="GE MEDICAL SYSTEMS",
        model="DISCOVERY MR750",
        station="RBMR750",
        referring=("ZHOU^MING", "TANG^LIHUA", "XU^JIANGUO", "HE^YUN"),
        surnames=("WANG", "LI", "ZHANG", "LIU", "CHEN", "YANG", "HUANG", "ZHAO", "WU", "ZHOU",
                  "XU", "SUN", "MA", "ZHU", "HU", "GUO", "HE", "LIN", "LUO", "GAO"),
        given_male=("WEI", "QIANG", "JUN", "LEI", "GANG", "YONG", "JIE", "TAO", "MING", "HAO"),
        given_female=("FANG", "MIN", "JING", "YAN", "HUI", "XIA", "LI", "PING", "YING", "JUAN"),
        t1c=SeriesSpec(
            "T1 MPRAGE +C AX", "t1_mprage_tra_post", 5, (1.2, 1.2, 2.0), 2.0, (132.0, 156.0), 112.0,
            gain=800.0, noise=0.03, tags={**_T1C_TAGS, "SequenceName": "BRAVO"},
        ),
        t2f=SeriesSpec(
            "AX T2 FLAIR", "t2_flair_tra", 2, (1.0, 1.0, 5.0), 5.0, (132.0, 156.0), 115.0,
            gain=600.0, noise=0.04, slope=0.5, tags={**_FLAIR_TAGS, "SequenceName": "FLAIR"},
        ),
        distractors=(
            SeriesSpec("3-plane Localizer", "localizer_3plane", 1, (2.0, 2.0, 8.0), 8.0,
                       (256.0, 256.0), 8.0, gain=500.0, noise=0.05, role="localizer",
                       tags={"MRAcquisitionType": "2D", "SequenceName": "FGRE"}),
            SeriesSpec("T1 MPRAGE AX", "t1_mprage_tra", 3, (1.2, 1.2, 2.0), 2.0, (132.0, 156.0), 20.0,
                       gain=800.0, noise=0.03, role="pre_contrast",
                       tags={k: v for k, v in _T1C_TAGS.items() if k != "ContrastBolusAgent"}),
        ),
    ),
    "B": CenterSpec(
        code="B",
        export="dicom_mixed",
        hospital="Klinikum Nordheide",
        address="Heideweg 12, Nordheide",
        manufacturer="SIEMENS",
        model="Skyra",
        station="AWP45172",
        referring=("BRAUN^KLAUS", "VOGEL^SABINE", "KRAUSE^DIRK", "LANGE^PETRA"),
        surnames=("MUELLER", "SCHMIDT", "SCHNEIDER", "FISCHER", "WEBER", "MEYER", "WAGNER",
                  "BECKER", "SCHULZ", "HOFFMANN", "KOCH", "RICHTER", "KLEIN", "WOLF",
                  "SCHROEDER", "NEUMANN", "SCHWARZ", "ZIMMERMANN", "KRUEGER", "HARTMANN"),
        given_male=("THOMAS", "MICHAEL", "ANDREAS", "STEFAN", "JUERGEN", "KLAUS", "FRANK",
                    "UWE", "PETER", "WOLFGANG"),
        given_female=("SABINE", "PETRA", "MONIKA", "CLAUDIA", "ANDREA", "URSULA", "KARIN",
                      "BIRGIT", "GABRIELE", "SUSANNE"),
        t1c=SeriesSpec(
            "t1_se_tra_KM", "t1_se_tra_KM", 5, (1.1, 1.1, 2.0), 2.0, (132.0, 154.0), 112.0,
            gain=1400.0, noise=0.025, pixel_representation=0,
            tags={**{k: v for k, v in _T1C_TAGS.items() if k != "InversionTime"},
                  "ScanningSequence": ["SE"], "SequenceVariant": ["SP"],
                  "MRAcquisitionType": "2D", "RepetitionTime": "550", "EchoTime": "9.1",
                  "FlipAngle": "90", "SequenceName": "*se2d1", "ContrastBolusAgent": "Gadovist"},
        ),
        t2f=SeriesSpec(
            "t2_tirm_tra_dark-fluid", "t2_tirm_tra_dark-fluid", 2, (0.9, 0.9, 5.5), 5.0,
            (133.2, 154.8), 115.0, gain=2000.0, noise=0.035, pixel_representation=0,
            tilt_deg=(6.0, 14.0), tags={**_FLAIR_TAGS, "SequenceName": "*tir2d1_15"},
        ),
        distractors=(
            SeriesSpec("localizer", "localizer", 1, (2.0, 2.0, 7.0), 7.0, (256.0, 256.0), 7.0,
                       gain=900.0, noise=0.05, pixel_representation=0, role="localizer",
                       tags={"MRAcquisitionType": "2D", "SequenceName": "*fl2d1"}),
            SeriesSpec("ep2d_diff_3scan_trace", "ep2d_diff_3scan_trace", 3, (2.2, 2.2, 5.0), 5.0,
                       (220.0, 220.0), 25.0, gain=700.0, noise=0.06, pixel_representation=0, role="dwi",
                       tags={"MRAcquisitionType": "2D", "SequenceName": "*ep_b1000t",
                             "ImageType": ["ORIGINAL", "PRIMARY", "DIFFUSION", "TRACEW", "ND"]}),
        ),
    ),
    "C": CenterSpec(
        code="C",
        export="brats_nifti",
        hospital="Lakeside Imaging Centre",
        address="40 Shore Lane, Lakeside",
        manufacturer="Philips",
        model="Ingenia",
        station="LIC-MR1",
        referring=("MORGAN^ALEX", "PATEL^RAVI", "DUBOIS^CLAIRE"),
        surnames=("SMITH", "JONES", "TAYLOR", "BROWN", "WILLIAMS", "WILSON", "JOHNSON",
                  "DAVIES", "ROBINSON", "WRIGHT", "THOMPSON", "EVANS", "WALKER", "WHITE",
                  "ROBERTS", "GREEN", "HALL", "WOOD", "JACKSON", "CLARKE"),
        given_male=("JAMES", "JOHN", "DAVID", "PAUL", "MARK", "ROBERT", "IAN", "GARY",
                    "SIMON", "ANDREW"),
        given_female=("SUSAN", "SARAH", "KAREN", "HELEN", "JULIE", "LISA", "EMMA", "CLAIRE",
                      "RACHEL", "JANE"),
        t1c=SeriesSpec("T1W_3D_TFE+C", "T1W_3D_TFE+C", 5, (1.2, 1.2, 2.0), 2.0, (132.0, 156.0),
                       112.0, gain=1200.0, noise=0.035),
        t2f=SeriesSpec("FLAIR_longTR", "FLAIR_longTR", 3, (1.0, 1.0, 4.0), 4.0, (132.0, 156.0),
                       116.0, gain=900.0, noise=0.045, offset=15.0),
    ),
}


#: ``atrx synth --size``: ``compact`` (the default: fields of view just around the synthetic head,
#: 1 mm grids of about 112x156x132) or ``clinical`` (what hospitals send: 220-240 mm fields of view
#: and 144-154 mm of coverage at the same in-plane spacings of 0.9-1.2 mm, 1 mm grids of about
#: 230x230x144; about three times the voxels, so this is what benchmarks of cost should use).
SIZES: tuple[str, ...] = ("compact", "clinical")

#: per center: (T1c field of view left-right x anterior-posterior, T1c coverage, T2f field of
#: view, T2f coverage), mm, for ``size="clinical"``.
CLINICAL_FOV: dict[str, tuple[tuple[float, float], float, tuple[float, float], float]] = {
    "A": ((230.0, 230.0), 144.0, (230.0, 230.0), 150.0),
    "B": ((220.0, 220.0), 148.0, (219.6, 219.6), 154.0),  # 244 columns of 0.9 mm
    "C": ((240.0, 240.0), 150.0, (240.0, 240.0), 152.0),
}


def sized(spec: CenterSpec, size: str) -> CenterSpec:
    """``spec`` with the T1c and T2f fields of view of ``size`` (see :data:`SIZES`); distractors keep theirs."""
    if size not in SIZES:
        raise ValueError(f"unknown synthetic scan size {size!r}; choose one of {', '.join(SIZES)}")
    if size == "compact":
        return spec
    fov1, slab1, fov2, slab2 = CLINICAL_FOV[spec.code]
    return replace(spec, t1c=replace(spec.t1c, fov=fov1, slab=slab1),
                   t2f=replace(spec.t2f, fov=fov2, slab=slab2))


def center_config(center: str, source: str) -> dict[str, Any]:
    """The center YAML as a mapping; ``source`` is the only part that depends on where it lives."""
    if center == "A":
        return {
            "center": "A",
            "description": "Synthetic center A: DICOM, one folder per series; NIfTI masks; comma CSV",
            "source": source,
            "format": "dicom",
            "patients": {"glob": "CQ*", "id_regex": r"^(?P<patient>CQ\d{7})$"},
            "sequences": {
                "t1c": {"dicom": {"SeriesDescription": r"MPRAGE.*\+C", "ProtocolName": r"_post$"}},
                "t2f": {"dicom": {"SeriesDescription": r"T2 FLAIR"}},
            },
            "masks": {
                "lesion": {"glob": "masks/lesion_t2f.nii.gz", "space": "t2f", "labels": [1]},
                "tumor": {"glob": "masks/tumor_t1c.nii.gz", "space": "t1c", "labels": [1]},
            },
            "clinical": {
                "path": "clinical_A.csv",
                "format": "csv",
                "delimiter": ",",
                "decimal": ".",
                "columns": {
                    "patient_id": "Patient ID",
                    "sex": "Sex",
                    "age": "Age",
                    "who_grade": "WHO grade",
                    "vasari_score": "VASARI",
                    "atrx_status": "ATRX",
                    "pathology_date": "Pathology date",
                },
                "values": {
                    "sex": {"M": "male", "F": "female"},
                    "who_grade": {"III": 3, "IV": 4},
                    "atrx_status": {"loss": "mutant", "retained": "wildtype"},
                },
                "date_formats": ["%Y-%m-%d"],
            },
            "synthetic": True,
            "deid": {"key": synthetic_key("A")},
        }
    if center == "B":
        return {
            "center": "B",
            "description": "Synthetic center B: DICOM, all series of a patient in one folder; "
            "NRRD masks; semicolon CSV with decimal comma",
            "source": source,
            "format": "dicom",
            "patients": {"glob": "????-????", "id_regex": r"^(?P<patient>\d{4}-\d{4})$"},
            "sequences": {
                "t1c": {"dicom": {"SeriesDescription": r"^t1_se_tra_KM$"}},
                "t2f": {"dicom": {"SeriesDescription": r"t2_tirm_tra_dark-fluid"}},
            },
            "masks": {
                "lesion": {"glob": "seg/*_lesion.nrrd", "space": "t2f", "labels": [1]},
                "tumor": {"glob": "seg/*_tumor.nrrd", "space": "t1c", "labels": [1]},
            },
            "clinical": {
                "path": "clinical_B.csv",
                "format": "csv",
                "delimiter": ";",
                "decimal": ",",
                "columns": {
                    "patient_id": "Pat-Nr",
                    "sex": "Geschlecht",
                    "age": "Alter",
                    "who_grade": "WHO",
                    "vasari_score": "VASARI-Score",
                    "atrx_status": "ATRX-Status",
                    "pathology_date": "Datum Pathologie",
                },
                "values": {
                    "sex": {"1": "male", "2": "female"},
                    "who_grade": {"3": 3, "4": 4},
                    "atrx_status": {"mutiert": "mutant", "wildtyp": "wildtype"},
                },
                "date_formats": ["%d.%m.%Y"],
            },
            "synthetic": True,
            "deid": {"key": synthetic_key("B")},
        }
    if center == "C":
        return {
            "center": "C",
            "description": "Synthetic center C: NIfTI, BraTS 2023 naming, one multi-label seg; XLSX",
            "source": source,
            "preset": "brats2023",
            "patients": {"glob": "C-*", "id_regex": r"^(?P<patient>C-\d{4})$"},
            "clinical": {
                "path": "clinical_C.xlsx",
                "format": "xlsx",
                "sheet": "patients",
                "columns": {
                    "patient_id": "ID",
                    "sex": "Gender",
                    "age": "Age at diagnosis",
                    "who_grade": "Grade",
                    "vasari_score": "VASARI total",
                    "atrx_status": "ATRX IHC",
                    "pathology_date": "Date of surgery",
                    "scan_date": "MRI date",
                },
                "values": {
                    "sex": {"m": "male", "f": "female"},
                    "who_grade": {"G3": 3, "G4": 4},
                    "atrx_status": {"lost": "mutant", "retained": "wildtype"},
                },
                "date_formats": ["%d/%m/%Y"],
            },
            "synthetic": True,
            "deid": {"key": synthetic_key("C")},
        }
    raise ValueError(f"unknown synthetic center {center!r}; expected one of {CENTERS}")


def center_yaml(center: str, source: str) -> str:
    """The center YAML text (with comments) for ``source``; repo and cohort copies both come from here."""
    body = yaml.safe_dump(center_config(center, source), sort_keys=False, allow_unicode=True, width=100)
    body = body.replace(
        "\nsynthetic: true\n",
        "\n# A literal deid.key is allowed only in a file that says `synthetic: true`; real centers use\n"
        "# `deid: {key_env: ATRX_DEID_KEY}` (a key of >= 32 bytes) so the key never sits in a file.\n"
        "synthetic: true\n",
    )
    header = (
        f"# Center {center}: synthetic export written by `ingest.synth` (docs/synthetic_cohort.md).\n"
        "# Generated by ingest.synth.centers.center_yaml; edit that function, not this file.\n"
        "# `source` is relative to this file's folder.\n"
    )
    return header + body


def write_center_configs(folder: Path, source_template: str) -> list[Path]:
    """Write ``{folder}/{A,B,C}.yaml``; ``source_template`` contains ``{center}``."""
    folder.mkdir(parents=True, exist_ok=True)
    paths = []
    for c in CENTERS:
        path = folder / f"{c}.yaml"
        path.write_text(center_yaml(c, source_template.replace("{center}", c)), encoding="utf-8")
        paths.append(path)
    return paths
