"""The stability driver: sample patients, compute radiomics under every perturbation on Dask, ICC.

One run:

1. reads the latest study versions from the catalog (read-only, one short connection, so it runs
   beside ``atrx features``), keeps those of ``centers`` (the study's development centers, so the
   test center's images never choose the features) and draws a seeded sample of ``patients``
   patients, one study each (their earliest); the draw is a prefix of one seeded permutation, so
   a larger sample with the same seed contains the smaller one;
2. submits one task per patient x ROI x sequence (:func:`stability_task`), which computes the
   radiomics features of every condition of :func:`features.stability.perturbed` with the shipped
   parameter file; a ROI that cannot give features is skipped and counted, never fatal;
3. computes ICC(2,1) per (view, feature) over patients x conditions and writes the table
   (:func:`atrx.stability.write_stability`) with how it was made.

Nothing here writes the catalog or the offline store.
"""

from __future__ import annotations

import datetime as dt
import time
import uuid
from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pandas as pd

from atrx.catalog import Catalog, StudyVersion
from atrx.cluster import check_cluster_options, dask_client
from atrx.errors import DataError, InputError, debug_enabled
from atrx.names import ROIS, SEQUENCES, view_name
from atrx.stability import write_stability
from atrx.versions import library_versions
from atrx.workspace import Workspace
from features.compute import check_worker_libraries
from features.context import ProgressFn
from features.errors import FeatureError
from features.radiomics import extract_radiomics, load_params, radiomics_feature_names
from features.stability import CONDITIONS, MIN_VOXELS, PERTURBATIONS, icc_table, perturbed
from features.tasks import load_scan, to_sitk
from features.versioning import (
    engine_label,
    features_library_versions,
    radiomics_params_hash,
    radiomics_version,
)

__all__ = ["ConditionsResult", "StabilitySummary", "run_stability", "sample_studies", "stability_task"]

#: the ICC the table holds (features.stability.icc)
ICC_KIND = "ICC(2,1): two-way random effects, absolute agreement, single measure (Koo & Li 2016)"


@dataclass(frozen=True)
class ConditionsResult:
    """What one ROI x sequence gave: features per condition (float64, in the view's name order).

    ``status`` is ``ok``, ``failed`` (the ROI cannot give features) or ``error`` (something around
    it broke); ``left_out``: condition -> why it gave no features (too few voxels after erosion).
    """

    status: str
    values: dict[str, np.ndarray] | None
    left_out: dict[str, str]
    reason: str | None
    seconds: float


@dataclass
class StabilitySummary:
    """What a stability run did; ``rows()`` feeds the CLI's summary table."""

    radiomics_version: str
    patients_requested: int
    patients: list[str] = field(default_factory=list)
    scanned_patients: int = 0
    centers: list[str] = field(default_factory=list)  # the centers sampled from
    results: Counter[str] = field(default_factory=Counter)  # ok / failed / error
    skipped: list[tuple[str, str, str]] = field(default_factory=list)  # patient, view, reason
    conditions_left_out: int = 0
    features: int = 0
    iccs: np.ndarray = field(default_factory=lambda: np.empty(0))
    seconds: float = 0.0
    path: str = ""

    def rows(self) -> list[tuple[str, str]]:
        finite = self.iccs[np.isfinite(self.iccs)]
        share = (lambda t: f"{np.mean(finite >= t):.1%}") if finite.size else (lambda t: "n/a")
        return [
            ("radiomics feature version", self.radiomics_version),
            ("centers sampled", ", ".join(self.centers) or "-"),
            ("patients (sampled / scanned there)", f"{len(self.patients)} / {self.scanned_patients}"),
            ("ROIs computed", str(self.results["ok"])),
            ("ROIs skipped", str(self.results["failed"] + self.results["error"])),
            ("conditions left out (too few voxels)", str(self.conditions_left_out)),
            ("features (view x feature rows)", str(self.features)),
            ("features with a finite ICC", str(finite.size)),
            ("median ICC(2,1)", f"{float(np.median(finite)):.3f}" if finite.size else "n/a"),
            ("share with ICC >= 0.75", share(0.75)),
            ("share with ICC >= 0.9", share(0.9)),
            ("seconds", f"{self.seconds:.1f}"),
            ("table", self.path),
        ]


def sample_studies(studies: Sequence[StudyVersion], patients: int, seed: int) -> list[StudyVersion]:
    """A seeded sample of ``patients`` patients, each with its earliest study (latest version).

    The sample is a prefix of one seeded permutation of the sorted pseudonyms: the same seed with
    more patients keeps the ones drawn before. Returned in pseudonym order.
    """
    first: dict[str, StudyVersion] = {}
    for s in sorted(studies, key=lambda s: (s.patient_id, s.scan_date or dt.date.max, s.study_id)):
        first.setdefault(s.patient_id, s)
    ids = sorted(first)
    order = np.random.default_rng(seed).permutation(len(ids))[:patients]
    return [first[ids[i]] for i in sorted(order)]


def stability_task(images_root: str, zarr_path: str, roi: str, sequence: str,
                   params: Mapping[str, Any]) -> ConditionsResult:
    """Radiomics of one ROI x sequence under every perturbation; never raises for bad data."""
    t0 = time.perf_counter()
    what = f"{view_name('rad', roi, sequence)} of {zarr_path}"
    values: dict[str, np.ndarray] = {}
    left_out: dict[str, str] = {}
    try:
        arrays, attrs = load_scan(images_root, zarr_path, [sequence, roi])
        image, mask = to_sitk(arrays[sequence], attrs["geometry"]), to_sitk(arrays[roi], attrs["geometry"])
        conditions = perturbed(image, mask)
        left_out = {c: f"fewer than {MIN_VOXELS} voxels" for c in CONDITIONS if c not in conditions}
        for name, (img, msk) in conditions.items():
            try:
                row = extract_radiomics(img, msk, roi, sequence, params)
            except FeatureError as e:
                if name == "original":
                    raise
                left_out[name] = str(e)
                continue
            values[name] = np.fromiter(row.values(), dtype=np.float64, count=len(row))
    except FeatureError as e:
        return ConditionsResult("failed", None, left_out, f"{what}: {e}", time.perf_counter() - t0)
    except Exception as e:  # noqa: BLE001 - the task boundary: report, the driver counts it
        if debug_enabled():  # ATRX_DEBUG=1: the raw error, with its traceback
            raise
        return ConditionsResult("error", None, left_out, f"{what}: {type(e).__name__}: {e}",
                                time.perf_counter() - t0)
    return ConditionsResult("ok", values, left_out, None, time.perf_counter() - t0)


def run_stability(ws: Workspace, patients: int = 30, seed: int = 0, workers: int | None = None,
                  scheduler: str | None = None, progress: ProgressFn | None = None,
                  params: Mapping[str, Any] | None = None,
                  centers: Sequence[str] | None = None) -> StabilitySummary:
    """Measure the ICC(2,1) of every radiomics feature under the perturbations; write the table.

    ``centers``: sample only these centers' patients (None: every center; the table records which,
    and training refuses one that sampled a test center). ``params`` replaces the shipped
    parameter file (tests; its table gets its own version).
    """
    t0 = time.perf_counter()
    check_cluster_options(scheduler, workers)
    if patients < 2:
        raise InputError(f"--patients must be at least 2 (an ICC needs two patients), got {patients}")
    params = load_params() if params is None else params
    version = radiomics_version(params)
    with Catalog(ws.catalog, read_only=True) as cat:
        studies = cat.latest_study_versions()
    studies = _of_centers(studies, centers, ws)
    sampled_from = sorted({s.center for s in studies})
    chosen = sample_studies(studies, patients, seed)
    summary = StabilitySummary(version, patients, [s.patient_id for s in chosen],
                               len({s.patient_id for s in studies}), sampled_from)
    if len(chosen) < 2:
        raise DataError(f"the catalog at {ws.catalog} has {len(chosen)} scanned patient(s); "
                        "an ICC needs at least 2", fix="ingest more patients with `atrx ingest`")
    names = {view_name("rad", r, s): radiomics_feature_names(r, s, params) for r in ROIS for s in SEQUENCES}
    rows = _compute(ws, chosen, params, summary, workers=workers, scheduler=scheduler, progress=progress)
    frame = pd.concat([icc_table(view, names[view], rows.get(view, {})) for view in names],
                      ignore_index=True)
    summary.features = len(frame)
    summary.iccs = frame["icc"].to_numpy()
    summary.seconds = time.perf_counter() - t0
    meta = {
        "seed": seed, "patients_requested": patients, "patients": summary.patients,
        "centers": sampled_from, "centers_requested": None if centers is None else sorted(centers),
        "studies": [f"{s.patient_id}/{s.study_id}/v{s.version}" for s in chosen],
        "conditions": list(CONDITIONS), "perturbations": PERTURBATIONS, "min_voxels": MIN_VOXELS,
        "icc": ICC_KIND, "engine": engine_label(params), "radiomics_version": version,
        "radiomics_params_hash": radiomics_params_hash(params),
        "libraries": {**features_library_versions(), **library_versions((), python=True, atrx=True)},
        "rois": dict(summary.results), "skipped": [list(s) for s in summary.skipped],
        "seconds": round(summary.seconds, 3),
        "created_at": dt.datetime.now(dt.UTC).isoformat(timespec="seconds"),
    }
    summary.path = write_stability(ws, version, frame, meta)
    return summary


def _of_centers(studies: Sequence[StudyVersion], centers: Sequence[str] | None,
                ws: Workspace) -> list[StudyVersion]:
    """The studies of ``centers`` (all when None); a center with no scans is bad input."""
    if centers is None:
        return list(studies)
    known = sorted({s.center for s in studies})
    unknown = sorted(set(centers) - set(known))
    if unknown:
        raise InputError(f"--centers names {', '.join(unknown)}, which the catalog at {ws.catalog} "
                         f"has no scans of (centers with scans: {', '.join(known) or 'none'})",
                         fix="name the study's development centers, e.g. --centers A,B")
    return [s for s in studies if s.center in set(centers)]


def _compute(ws: Workspace, chosen: Sequence[StudyVersion], params: Mapping[str, Any],
             summary: StabilitySummary, *, workers: int | None, scheduler: str | None,
             progress: ProgressFn | None) -> dict[str, dict[str, dict[str, np.ndarray]]]:
    """Run the tasks; view -> patient -> condition -> values. Bad ROIs are counted in ``summary``."""
    token = uuid.uuid4().hex[:8]
    rows: dict[str, dict[str, dict[str, np.ndarray]]] = {}
    with dask_client(scheduler, workers) as client:
        from distributed import as_completed

        check_worker_libraries(client, features_library_versions())
        futures = {}
        for s in chosen:
            for roi in ROIS:
                for seq in SEQUENCES:
                    fut = client.submit(stability_task, ws.images, s.zarr_path, roi, seq, params,
                                        pure=False, key=f"stab-{s.patient_id}-{roi}-{seq}-{token}")
                    futures[fut] = (s.patient_id, view_name("rad", roi, seq))
        for done, fut in enumerate(as_completed(futures), start=1):
            patient, view = futures[fut]
            try:
                res: ConditionsResult = fut.result()
            except Exception as e:  # the cluster gave up on the task (a worker died on it)
                if debug_enabled():
                    raise
                res = ConditionsResult("error", None, {}, f"{view} of {patient}: the task failed on "
                                       f"the cluster: {type(e).__name__}: {e}"[:500], 0.0)
            fut.release()
            summary.results[res.status] += 1
            summary.conditions_left_out += len(res.left_out)
            if res.status == "ok" and res.values:
                rows.setdefault(view, {})[patient] = res.values
            else:
                summary.skipped.append((patient, view, res.reason or res.status))
            if progress:
                progress(done, len(futures), f"{patient} {view}")
    return rows
