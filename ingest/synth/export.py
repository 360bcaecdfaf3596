"""Render patients and write them the way each center exports; ``generate_cohort`` drives it all."""

from __future__ import annotations

import csv
import datetime as dt
import io
import json
import multiprocessing
import re
import shutil
import time
import zipfile
from collections.abc import Callable, Iterable
from concurrent.futures import ProcessPoolExecutor, as_completed
from dataclasses import dataclass, field, replace
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd
import SimpleITK as sitk
from pydicom.uid import generate_uid

from ingest.synth.acquire import Grid, plan_grid, sample, scanner, tilt_direction
from ingest.synth.centers import CENTERS, SPECS, CenterSpec, SeriesSpec, sized, write_center_configs
from ingest.synth.cohort import PatientPlan, center_plan, cohort_plan, rng_for, truth_row
from ingest.synth.dicom import safe_name, write_dicom_series
from ingest.synth.effects import annotate, center_spec, effects_for
from ingest.synth.phantom import (
    EDEMA,
    LESION_LABELS,
    NECROSIS,
    RIM,
    TUMOR_LABELS,
    label_volumes_ml,
    synth_head,
)

SEG_LABELS = {"necrosis": 1, "edema": 2, "enhancing": 3}  # BraTS 2023 convention (center C)


@dataclass
class Acquired:
    """One acquired series: values on its grid (``stored * slope + intercept``) and the grid."""

    spec: SeriesSpec
    grid: Grid
    values: np.ndarray

    def image(self) -> sitk.Image:
        return self.grid.image(self.values)


@dataclass
class RenderedPatient:
    t1c: Acquired
    t2f: Acquired
    distractors: list[list[Acquired]]  # per distractor series, one or more (localizer) parts
    labels_t1c: np.ndarray  # truth labels sampled (nearest) on the T1c grid
    labels_t2f: np.ndarray  # ... on the T2f grid, through the motion
    volumes_ml: dict[str, float]


def _acquire(truth: sitk.Image, spec: SeriesSpec, grid: Grid, plan: PatientPlan, gain: float,
             rng: np.random.Generator, transform: sitk.Transform | None = None, gamma: float = 1.0) -> Acquired:
    signal = sample(truth, grid, thickness=spec.thickness, transform=transform)
    _, values = scanner(signal, grid, spec, np.asarray(plan.head.head_center), gain, rng, gamma=gamma,
                        bias_strength=plan.effects.bias_strength)
    return Acquired(spec, grid, values)


def _localizer_grids(spec: SeriesSpec, center: np.ndarray) -> list[Grid]:
    """Axial, sagittal and coronal single slices through ``center`` (a 3-plane localizer)."""
    directions = [
        (1.0, 0.0, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0, 1.0),
        (0.0, 0.0, -1.0, 1.0, 0.0, 0.0, 0.0, -1.0, 0.0),  # rows go posterior, columns inferior
        (1.0, 0.0, 0.0, 0.0, 0.0, 1.0, 0.0, -1.0, 0.0),  # rows go left, columns inferior
    ]
    one = replace(spec, slab=spec.spacing[2])
    return [plan_grid(one, center, d) for d in directions]


def acquired_spec(plan: PatientPlan) -> CenterSpec:
    """The patient's center as it acquired this patient: its effects and the cohort's scan size."""
    return sized(center_spec(plan.center, plan.effects), plan.size)


def render_patient(plan: PatientPlan) -> RenderedPatient:
    """Synthesize the truth head and acquire every series of the patient's center (with its effects)."""
    spec, fx = acquired_spec(plan), plan.effects
    rng = rng_for(plan.seed, "render", CENTERS.index(plan.center), plan.index)
    truth = synth_head(plan.head, rng)
    volumes = label_volumes_ml(truth["labels"])
    head_center, shift = np.asarray(plan.head.head_center), np.asarray(plan.fov_shift_mm)
    center = head_center + shift
    g1 = plan_grid(spec.t1c, center)
    g2 = plan_grid(spec.t2f, head_center - shift,
                   tilt_direction(plan.t2f_tilt_deg) if plan.t2f_tilt_deg else None)
    motion = plan.motion.transform()
    t1c = _acquire(truth["t1c"], spec.t1c, g1, plan, plan.gain_jitter[0], rng, gamma=fx.gamma_t1c)
    t2f = _acquire(truth["t2f"], spec.t2f, g2, plan, plan.gain_jitter[1], rng, motion, gamma=fx.gamma_t2f)
    labels_t1c = sample(truth["labels"], g1, nearest=True)
    labels_t2f = sample(truth["labels"], g2, transform=motion, nearest=True)
    distractors: list[list[Acquired]] = []
    for d in spec.distractors:
        if d.role == "localizer":
            parts = [_acquire(truth["t1"], d, g, plan, 1.0, rng, gamma=fx.gamma_t1c)
                     for g in _localizer_grids(d, center)]
        elif d.role == "dwi":
            dwi = sitk.Cast(truth["t2f"] * 0.6 + truth["t1"] * 0.2, sitk.sitkFloat32)
            parts = [_acquire(dwi, d, plan_grid(d, np.asarray(plan.head.tumor_center)), plan, 1.0, rng)]
        else:  # pre_contrast: a short stack through the tumour
            parts = [_acquire(truth["t1"], d, plan_grid(d, np.asarray(plan.head.tumor_center)), plan,
                              plan.gain_jitter[0], rng, gamma=fx.gamma_t1c)]
        distractors.append(parts)
    return RenderedPatient(t1c, t2f, distractors, labels_t1c, labels_t2f, volumes)


def _mask(grid: Grid, labels: np.ndarray, keep: Iterable[int]) -> sitk.Image:
    return grid.image(np.isin(labels, list(keep)).astype(np.uint8))


def _seg(grid: Grid, labels: np.ndarray) -> sitk.Image:
    seg = np.zeros(labels.shape, np.uint8)
    seg[labels == NECROSIS] = SEG_LABELS["necrosis"]
    seg[labels == EDEMA] = SEG_LABELS["edema"]
    seg[labels == RIM] = SEG_LABELS["enhancing"]
    return grid.image(seg)


def _write(image: sitk.Image, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    sitk.WriteImage(image, str(path), True)
    return path


def _series_time(plan: PatientPlan, minutes_after: int) -> str:
    t = dt.datetime.combine(plan.scan_date, dt.time(int(plan.study_time[:2]), int(plan.study_time[2:4])))
    return (t + dt.timedelta(minutes=minutes_after)).strftime("%H%M%S")


def _write_dicom_study(plan: PatientPlan, rendered: RenderedPatient, folder_for: Callable[[SeriesSpec], Path],
                       filename_pattern: str) -> list[Path]:
    spec = acquired_spec(plan)
    study_uid = generate_uid(entropy_srcs=[str(plan.seed), plan.center, plan.patient_id, "study"])
    frame_uid = generate_uid(entropy_srcs=[study_uid, "frame"])
    patient = plan.phi()
    common: dict[str, Any] = {"Manufacturer": spec.manufacturer, "ManufacturerModelName": spec.model,
                              "StudyTime": plan.study_time}
    date = plan.scan_date.strftime("%Y%m%d")
    files: list[Path] = []
    series = [[rendered.t1c], [rendered.t2f], *rendered.distractors]
    for parts in series:
        s = parts[0].spec
        series_uid = generate_uid(entropy_srcs=[study_uid, "series", str(s.series_number)])
        for k, part in enumerate(parts):
            files += write_dicom_series(
                part.image(),
                folder_for(s),
                series_description=s.description,
                protocol_name=s.protocol,
                study_uid=study_uid,
                series_uid=series_uid,
                patient=patient,
                study_date=date,
                series_number=s.series_number,
                rescale_slope=s.slope,
                rescale_intercept=s.intercept,
                filename_pattern=filename_pattern,
                extra={**common, **s.tags},
                slice_thickness=s.thickness,
                first_instance=1 + k,  # localizer parts are single slices
                frame_of_reference_uid=frame_uid,
                series_time=_series_time(plan, 4 * s.series_number),
                pixel_representation=s.pixel_representation,
            )
    return files


def write_rendered(plan: PatientPlan, rendered: RenderedPatient, out: Path) -> list[Path]:
    """Write one rendered patient under ``out/<center>/`` in that center's layout.

    The masks are the annotators' (``plan.effects.mask_margin_vox`` in-plane voxels wider or
    tighter than the truth); the rendered truth labels themselves are left as they are.
    """
    spec = SPECS[plan.center]
    root = Path(out) / plan.center / plan.patient_id
    t1c, t2f = rendered.t1c, rendered.t2f
    margin = plan.effects.mask_margin_vox
    rendered = replace(rendered, labels_t1c=annotate(rendered.labels_t1c, margin),
                       labels_t2f=annotate(rendered.labels_t2f, margin))
    if spec.export == "dicom_series_folders":
        files = _write_dicom_study(plan, rendered, lambda s: root / f"{s.series_number}_{safe_name(s.description)}",
                                   "IM{index:04d}.dcm")
        files.append(_write(_mask(t2f.grid, rendered.labels_t2f, LESION_LABELS), root / "masks" / "lesion_t2f.nii.gz"))
        files.append(_write(_mask(t1c.grid, rendered.labels_t1c, TUMOR_LABELS), root / "masks" / "tumor_t1c.nii.gz"))
        return files
    if spec.export == "dicom_mixed":
        files = _write_dicom_study(plan, rendered, lambda s: root / "dicom", "{sop_uid}.dcm")
        seg = root / "seg"
        files.append(_write(_mask(t2f.grid, rendered.labels_t2f, LESION_LABELS), seg / f"{plan.patient_id}_lesion.nrrd"))
        files.append(_write(_mask(t1c.grid, rendered.labels_t1c, TUMOR_LABELS), seg / f"{plan.patient_id}_tumor.nrrd"))
        return files
    # BraTS-style NIfTI; the header's descrip carries PHI, as some converters leave it.
    note = f"{plan.name} {plan.birth_date:%Y%m%d} {spec.hospital}"[:79]
    files = []
    for tag, acq in (("t1c", t1c), ("t2f", t2f)):
        img = sitk.Cast(acq.image(), sitk.sitkInt16)
        img.SetMetaData("ITK_FileNotes", note)
        files.append(_write(img, root / f"{plan.patient_id}-{tag}.nii.gz"))
    files.append(_write(_seg(t1c.grid, rendered.labels_t1c), root / f"{plan.patient_id}-seg.nii.gz"))
    return files


@dataclass
class PatientResult:
    center: str
    index: int
    patient_id: str
    atrx: str
    files: list[Path]
    truth: dict[str, Any]


def _render_and_write(plan: PatientPlan, out: Path) -> PatientResult:
    rendered = render_patient(plan)
    files = write_rendered(plan, rendered, out)
    return PatientResult(plan.center, plan.index, plan.patient_id, plan.atrx, files,
                         {**truth_row(plan), **rendered.volumes_ml})


def write_patient(center: str, out: Path, patient_index: int, seed: int = 0, scale: float = 1.0,
                  center_effects: bool = True) -> PatientResult:
    """Write one patient of ``center`` (as drawn for ``scale``/``seed``) under ``out/<center>/<id>/``.

    No clinical sheet or config is written; use ``generate_cohort(..., per_center=k)`` for a small
    complete cohort.
    """
    plans = center_plan(center, scale, seed, center_effects)
    if not 0 <= patient_index < len(plans):
        raise IndexError(f"center {center} has {len(plans)} patients at scale {scale}; got index {patient_index}")
    return _render_and_write(plans[patient_index], Path(out))


# -- clinical sheets -------------------------------------------------------------------------

def _clinical_rows(center: str, plans: list[PatientPlan]) -> tuple[list[str], list[list[Any]]]:
    rows = []
    for p in sorted(plans, key=lambda p: p.patient_id):
        if center == "A":
            rows.append([p.patient_id, "M" if p.sex == "male" else "F", p.age, "III" if p.who_grade == 3 else "IV",
                         f"{p.vasari:.1f}", "loss" if p.mutant else "retained", p.pathology_date.isoformat()])
        elif center == "B":
            rows.append([p.patient_id, 1 if p.sex == "male" else 2, p.age, p.who_grade,
                         f"{p.vasari:.1f}".replace(".", ","), "mutiert" if p.mutant else "wildtyp",
                         p.pathology_date.strftime("%d.%m.%Y")])
        else:
            rows.append([p.patient_id, "m" if p.sex == "male" else "f", p.age, f"G{p.who_grade}", p.vasari,
                         "lost" if p.mutant else "retained", p.pathology_date.strftime("%d/%m/%Y"),
                         p.scan_date.strftime("%d/%m/%Y")])
    header = {
        "A": ["Patient ID", "Sex", "Age", "WHO grade", "VASARI", "ATRX", "Pathology date"],
        "B": ["Pat-Nr", "Geschlecht", "Alter", "WHO", "VASARI-Score", "ATRX-Status", "Datum Pathologie"],
        "C": ["ID", "Gender", "Age at diagnosis", "Grade", "VASARI total", "ATRX IHC", "Date of surgery",
              "MRI date"],
    }[center]
    return header, rows


def _fixed_zip_times(path: Path) -> None:
    """Rewrite an xlsx with constant timestamps so its bytes depend only on its content."""
    with zipfile.ZipFile(path) as src:
        members = [(info, src.read(info.filename)) for info in src.infolist()]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as dst:
        for info, raw in members:
            data = raw
            if info.filename == "docProps/core.xml":  # openpyxl stamps the save time here
                data = re.sub(rb"(<dcterms:modified[^>]*>)[^<]*", rb"\g<1>2022-07-01T00:00:00Z", raw)
            fixed = zipfile.ZipInfo(info.filename, date_time=(2022, 7, 1, 0, 0, 0))
            fixed.compress_type = zipfile.ZIP_DEFLATED
            fixed.external_attr = 0o644 << 16
            dst.writestr(fixed, data)
    path.write_bytes(buf.getvalue())


def write_clinical(center: str, plans: list[PatientPlan], out: Path) -> Path:
    """Write ``out/<center>/clinical_<center>.{csv,xlsx}`` for ``plans`` in the center's own format."""
    header, rows = _clinical_rows(center, plans)
    folder = Path(out) / center
    folder.mkdir(parents=True, exist_ok=True)
    if center in ("A", "B"):
        path = folder / f"clinical_{center}.csv"
        with path.open("w", encoding="utf-8", newline="") as fh:
            writer = csv.writer(fh, delimiter="," if center == "A" else ";", lineterminator="\n")
            writer.writerow(header)
            writer.writerows(rows)
        return path
    from openpyxl import Workbook

    path = folder / f"clinical_{center}.xlsx"
    wb = Workbook()
    ws = wb.active
    ws.title = "patients"
    ws.append(header)
    for row in rows:
        ws.append(row)
    stamp = dt.datetime(2022, 7, 1)
    wb.properties.created = wb.properties.modified = stamp
    wb.properties.creator = "ingest.synth"
    wb.save(path)
    _fixed_zip_times(path)
    return path


# -- the cohort ------------------------------------------------------------------------------

@dataclass
class CenterCounts:
    patients: int = 0
    mutant: int = 0
    wildtype: int = 0
    files: int = 0


@dataclass
class CohortSummary:
    """What ``generate_cohort`` wrote."""

    out: Path
    seed: int
    scale: float
    seconds: float
    centers: dict[str, CenterCounts] = field(default_factory=dict)
    center_effects: bool = True
    size: str = "compact"

    @property
    def patients(self) -> int:
        return sum(c.patients for c in self.centers.values())

    @property
    def files(self) -> int:
        return sum(c.files for c in self.centers.values())

    def table(self) -> list[dict[str, str | int]]:
        """One row per center plus a total: center, patients, atrx_mutant, atrx_wildtype, files."""
        rows: list[dict[str, str | int]] = [
            {"center": c, "patients": v.patients, "atrx_mutant": v.mutant, "atrx_wildtype": v.wildtype,
             "files": v.files}
            for c, v in self.centers.items()
        ]
        rows.append({"center": "total", "patients": self.patients,
                     "atrx_mutant": sum(v.mutant for v in self.centers.values()),
                     "atrx_wildtype": sum(v.wildtype for v in self.centers.values()), "files": self.files})
        return rows


def _balanced_subset(plans: list[PatientPlan], k: int) -> list[PatientPlan]:
    """The first ``k`` patients of a center taking mutants and wildtypes in turn."""
    groups = {g: [p for p in plans if p.atrx == g] for g in ("mutant", "wildtype")}
    chosen: list[PatientPlan] = []
    while len(chosen) < k and any(groups.values()):
        for g in ("mutant", "wildtype"):
            if groups[g] and len(chosen) < k:
                chosen.append(groups[g].pop(0))
    return sorted(chosen, key=lambda p: p.index)


def _init_worker() -> None:
    sitk.ProcessObject.SetGlobalDefaultNumberOfThreads(1)


_OWNED = ("A", "B", "C", "centers", "truth.csv", "synth.json")


def write_manifest(out: Path, *, scale: float, seed: int, centers: tuple[str, ...], per_center: int | None,
                   center_effects: bool, size: str = "compact") -> Path:
    """``out/synth.json``: how the cohort was drawn, so a reader knows which center effects it has."""
    manifest = {
        "generator": "ingest.synth",
        "scale": scale,
        "seed": seed,
        "centers": [c for c in CENTERS if c in centers],
        "per_center": per_center,
        "center_effects": center_effects,
        "size": size,
        "effects": {c: effects_for(c, center_effects).to_dict() for c in CENTERS if c in centers},
        "docs": "docs/synthetic_cohort.md",
    }
    path = Path(out) / "synth.json"
    path.write_text(json.dumps(manifest, indent=2) + "\n", encoding="utf-8")
    return path


def generate_cohort(
    out: Path,
    scale: float = 1.0,
    seed: int = 0,
    workers: int = 1,
    progress: Callable[[int, int], None] | None = None,
    *,
    centers: tuple[str, ...] = CENTERS,
    per_center: int | None = None,
    overwrite: bool = False,
    center_effects: bool = True,
    size: str = "compact",
) -> CohortSummary:
    """Write a synthetic three-center export (images, masks, clinical sheets, configs, truth.csv).

    ``per_center`` keeps only that many patients of each center (alternating ATRX groups) for
    quick tests; the patients are the same as in the full cohort of that ``scale``/``seed``.
    ``center_effects`` (default) gives each center its own acquisition and annotation habits
    (``ingest.synth.effects``); off, the files are byte-identical to the cohort written before
    those existed. ``size`` chooses the fields of view (``centers.SIZES``: ``clinical`` for
    hospital-sized scans, about three times the voxels). ``synth.json`` records both. Refuses
    a non-empty ``out`` unless
    ``overwrite`` (which removes only what this writes).
    """
    t0 = time.perf_counter()
    sized(SPECS[CENTERS[0]], size)  # an unknown size fails before anything is removed
    out = Path(out)
    if out.exists() and any(out.iterdir()):
        if not overwrite:
            raise FileExistsError(f"{out} is not empty; pass overwrite=True or choose an empty folder")
        for name in _OWNED:
            target = out / name
            if target.is_dir():
                shutil.rmtree(target)
            elif target.exists():
                target.unlink()
    out.mkdir(parents=True, exist_ok=True)

    plans = cohort_plan(scale, seed, centers, center_effects, size)
    if per_center is not None:
        plans = [p for c in centers for p in _balanced_subset([q for q in plans if q.center == c], per_center)]
    summary = CohortSummary(out=out, seed=seed, scale=scale, seconds=0.0,
                            centers={c: CenterCounts() for c in CENTERS if c in centers},
                            center_effects=center_effects, size=size)
    for c in summary.centers:
        members = [p for p in plans if p.center == c]
        write_clinical(c, members, out)
        counts = summary.centers[c]
        counts.patients = len(members)
        counts.mutant = sum(p.mutant for p in members)
        counts.wildtype = counts.patients - counts.mutant
        counts.files = 1
    write_center_configs(out / "centers", "../{center}")
    write_manifest(out, scale=scale, seed=seed, centers=centers, per_center=per_center,
                   center_effects=center_effects, size=size)
    for p in (out / "centers").glob("*.yaml"):
        if p.stem not in summary.centers:
            p.unlink()

    results: list[PatientResult] = []
    total = len(plans)
    if workers <= 1:
        for plan in plans:
            results.append(_render_and_write(plan, out))
            if progress:
                progress(len(results), total)
    else:
        # fork needs no ``if __name__ == "__main__"`` guard in the caller; spawn is the fallback.
        methods = multiprocessing.get_all_start_methods()
        ctx = multiprocessing.get_context("fork" if "fork" in methods else "spawn")
        with ProcessPoolExecutor(max_workers=workers, mp_context=ctx, initializer=_init_worker) as pool:
            futures = [pool.submit(_render_and_write, plan, out) for plan in plans]
            for fut in as_completed(futures):
                results.append(fut.result())
                if progress:
                    progress(len(results), total)

    results.sort(key=lambda r: (CENTERS.index(r.center), r.index))
    for r in results:
        summary.centers[r.center].files += len(r.files)
    pd.DataFrame([r.truth for r in results]).to_csv(out / "truth.csv", index=False, float_format="%.6g")
    summary.seconds = time.perf_counter() - t0
    return summary
