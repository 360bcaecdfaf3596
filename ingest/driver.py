"""The ingest driver: plan a center, map :func:`ingest_patient` over Dask, record in the catalog.

Outcomes are recorded as they arrive, so a run killed half-way keeps what it finished; the next
run skips unchanged studies and finishes the rest.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from distributed import as_completed

from atrx.catalog import Catalog, RunStatus
from atrx.cluster import check_cluster_options, dask_client
from atrx.config.center import CenterConfig
from atrx.errors import InputError, debug_enabled
from atrx.locks import exclusive
from atrx.workspace import Workspace
from ingest.deid import key_fingerprint
from ingest.discover import CenterPlan, PatientPlan, plan_center
from ingest.patient import (
    KnownScan,
    StudyOutcome,
    StudyStatus,
    ingest_patient,
    ingest_versions,
    redacted_folder,
    redactor_of,
)
from ingest.preprocess import PREPROCESS_VERSION, PreprocessParams

#: ``progress(done, total, patient_id)`` after each patient
ProgressFn = Callable[[int, int, str], None]


@dataclass
class IngestSummary:
    """One center's ingest run: counts by study status, the quarantine, the time taken."""

    run_id: str
    center: str
    patients_planned: int
    studies: Counter[StudyStatus] = field(default_factory=Counter)
    patients_quarantined: int = 0
    clinical_changed: int = 0
    seconds: float = 0.0
    #: the run's quarantine rows as :meth:`atrx.catalog.Catalog.quarantined` returns them
    quarantined: list[dict[str, Any]] = field(default_factory=list)
    #: every study's outcome of this run (pseudonyms only), for the onboarding report
    outcomes: list[StudyOutcome] = field(default_factory=list, repr=False)
    #: the plan the run followed, for the onboarding report's "before" pictures. It holds raw ids
    #: and paths: in memory only, never printed, recorded or pickled to a worker
    plan: CenterPlan | None = field(default=None, repr=False, compare=False)

    @property
    def patients_per_minute(self) -> float:
        """Studies ingested or recovered per minute of the run."""
        done = self.studies["ingested"] + self.studies["recovered"]
        return 60.0 * done / self.seconds if self.seconds > 0 else 0.0

    def rows(self) -> list[tuple[str, str]]:
        """(label, value) rows of the printed summary."""
        return [
            ("center", self.center), ("run", self.run_id), ("patients found", str(self.patients_planned)),
            ("studies ingested", str(self.studies["ingested"])),
            ("studies unchanged (skipped)", str(self.studies["unchanged"])),
            ("studies recovered from an interrupted run", str(self.studies["recovered"])),
            ("studies quarantined", str(self.studies["quarantined"])),
            ("patients quarantined", str(self.patients_quarantined)),
            ("clinical rows added or changed", str(self.clinical_changed)),
            ("seconds", f"{self.seconds:.1f}"),
        ]


def _record_plan_problems(cat: Catalog, run_id: str, plan: CenterPlan) -> int:
    """Plan-time refusals go to the quarantine table as the redactors make them: pseudonyms for
    every raw id (another patient's too), keyed tokens for folder and file names, no absolute path."""
    cfg = plan.config
    center = plan.redactor
    assert center is not None, "plan_center sets the redactors"
    refused = 0
    for p in plan.problems:
        pid = center.ids.get(p.patient) if p.patient else None
        cat.quarantine(run_id, cfg.center, pid, None, p.stage, center.text(p.what), p.fix and center.text(p.fix),
                       p.file and center.path(p.file), p.blocking)
    for pp in plan.patients:
        if not pp.ok:
            refused += 1
        red = center.merged(redactor_of(pp, cfg))
        for p in pp.problems:
            cat.quarantine(run_id, cfg.center, pp.patient_id, None, p.stage, red.text(p.what), red.text(p.fix),
                           red.path(p.file) if p.file else redacted_folder(pp, cfg), p.blocking)
    return refused


def _clinical_rows(plans: list[PatientPlan]) -> list[dict[str, Any]]:
    rows = []
    for pp in plans:
        if pp.ok and pp.clinical is not None:
            c = pp.clinical
            rows.append({"patient_id": pp.patient_id, "age": c.age, "sex": c.sex, "who_grade": c.who_grade,
                         "vasari_score": c.vasari_score, "atrx_status": c.atrx_status,
                         "pathology_date": c.pathology_date, "row_hash": c.row_hash})
    return rows


def run_ingest(cfg: CenterConfig, ws: Workspace, scheduler: str | None = None, workers: int | None = None,
               params: PreprocessParams | None = None, progress: ProgressFn | None = None) -> IngestSummary:
    """Ingest one center into ``ws``; returns the summary (also recorded as a run in the catalog).

    Holds the lock ``ingest-<center>`` for the run (a second ingest of the same center exits 2
    naming this one); ingests of other centers and every reader of the catalog run alongside.
    """
    check_cluster_options(scheduler, workers)
    params = params or PreprocessParams()
    key = cfg.deid.resolve_key()
    ws.ensure()
    with exclusive(ws.home, f"ingest-{cfg.center}", f"an ingest of center {cfg.center}"):
        return _ingest(cfg, ws, key, params, scheduler, workers, progress)


def _ingest(cfg: CenterConfig, ws: Workspace, key: str, params: PreprocessParams, scheduler: str | None,
            workers: int | None, progress: ProgressFn | None) -> IngestSummary:
    t0 = time.perf_counter()
    fingerprint = check_key(ws, cfg.center, key)  # before the export is read
    plan = plan_center(cfg, key, spacing_mm=params.spacing_mm)
    ready = [pp for pp in plan.patients if pp.ok]
    with Catalog(ws.catalog) as cat:
        with cat.batch():  # the run's opening records, in one visit to the file
            run_id = cat.start_run("ingest", cfg.center, cfg.digest(), params.digest(), ingest_versions())
            _verify_key(cat, cfg.center, fingerprint, record_as=run_id)
            summary = IngestSummary(run_id, cfg.center, len(plan.patients), plan=plan)
            summary.patients_quarantined = _record_plan_problems(cat, run_id, plan)
            summary.clinical_changed = cat.upsert_clinical(cfg.center, run_id, _clinical_rows(plan.patients))
            known = {sid: KnownScan(v, h) for sid, (v, h) in cat.latest_scans(cfg.center).items()}
        status: RunStatus = "ok"
        try:
            if ready:
                run = _Run(cat, run_id, cfg, params, summary)
                _run_tasks(run, ws.images, ready, known, scheduler, workers, progress)
        except BaseException:
            status = "interrupted"
            raise
        finally:
            summary.seconds = time.perf_counter() - t0
            summary.quarantined = cat.quarantined(run_id)
            counts = {**summary.studies, "patients": summary.patients_planned,
                      "patients_quarantined": summary.patients_quarantined}
            cat.finish_run(run_id, status, counts)
    return summary


def check_key(ws: Workspace, center: str, key: str) -> str:
    """``key``'s fingerprint, once checked against the one ``ws``'s catalog records for ``center``.

    Raises :class:`InputError` (exit code 2) when the center's patients were pseudonymised with
    another key: ingesting would give the same patients second pseudonyms. Writes nothing.
    """
    fingerprint = key_fingerprint(key)
    if Path(ws.catalog).exists():
        with Catalog(ws.catalog) as cat:
            _verify_key(cat, center, fingerprint)
    return fingerprint


def _verify_key(cat: Catalog, center: str, fingerprint: str, record_as: str | None = None) -> None:
    """Refuse a key other than the recorded one while the center has patients; with ``record_as``
    (a run id) record this key's fingerprint when none (or a stale one, of no patients) is."""
    recorded = cat.key_fingerprint(center)
    if recorded == fingerprint:
        return
    n = cat.center_patients(center) if recorded is not None else 0
    if n:
        raise InputError(
            f"center {center}: the pseudonymisation key differs from the one its existing {n} patient(s) in "
            f"{cat.path} were pseudonymised with; ingesting would give the same patients new pseudonyms",
            fix="restore the original key (the variable named by deid.key_env, or deid.key, in the center file); "
                "to start over with the new key, ingest under a new center id, or delete this center's data "
                "from the workspace first")
    if record_as is not None:
        cat.record_key_fingerprint(center, fingerprint, record_as)


@dataclass(frozen=True)
class _Run:
    """What recording one patient's outcomes needs: the catalog, the run and its summary."""

    cat: Catalog
    run_id: str
    cfg: CenterConfig
    params: PreprocessParams
    summary: IngestSummary


def _run_tasks(run: _Run, images_root: str, ready: list[PatientPlan], known: dict[str, KnownScan],
               scheduler: str | None, workers: int | None, progress: ProgressFn | None) -> None:
    """One Dask task per patient; each patient's outcomes are recorded as soon as they arrive."""
    with dask_client(scheduler, workers) as client:
        futures = {}
        for pp in ready:
            subset = {s.study_id: known[s.study_id] for s in pp.studies if s.study_id in known}
            fut = client.submit(ingest_patient, pp, run.cfg, images_root, run.params, subset,
                                key=f"ingest-{pp.patient_id}-{run.run_id}", pure=False, retries=1)
            futures[fut] = pp
        done = 0
        for fut in as_completed(futures):
            pp = futures[fut]
            try:
                outcomes: list[StudyOutcome] = fut.result()
            except Exception as e:  # a worker died twice on this patient (memory, segfault in a library)
                if debug_enabled():  # ATRX_DEBUG=1: the raw error, with its traceback
                    raise
                why = redactor_of(pp, run.cfg).text(f"the worker failed: {type(e).__name__}: {e}")[:300]
                outcomes = [StudyOutcome(pp.patient_id, s.study_id, "quarantined", stage="worker", reason=why,
                                         fix="re-run the ingest; if it repeats, check the worker logs")
                            for s in pp.studies]
            _record_outcomes(run, outcomes)
            done += 1
            if progress:
                progress(done, len(futures), pp.patient_id)


def _record_outcomes(run: _Run, outcomes: list[StudyOutcome]) -> None:
    """Count one patient's outcomes, quarantine the failed studies and record the written ones."""
    patient_bad = False
    run.summary.outcomes.extend(outcomes)
    for o in outcomes:
        run.summary.studies[o.status] += 1
        if o.status == "quarantined":
            patient_bad = True
            run.cat.quarantine(run.run_id, run.cfg.center, o.patient_id, o.study_id, o.stage or "ingest",
                               o.reason or "", o.fix, o.file)
        elif o.status in ("ingested", "recovered"):
            run.cat.record_scan(run.cfg.center, run.run_id, o.as_dict(), run.params.digest(),
                                PREPROCESS_VERSION)
    run.summary.patients_quarantined += int(patient_bad)
