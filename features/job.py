"""The features driver: plan what is missing, compute it on Dask, store and register the results.

One run:

1. settles the recipe (:func:`features.context.load_recipe`): loads the CNN weights once (a missing
   ImageNet file fails before any cluster starts) and derives the feature versions;
2. plans the (latest study version, view) pairs without a settled lineage row
   (:mod:`features.plan`);
3. runs the tasks on Dask (:mod:`features.compute`);
4. every ``checkpoint_seconds`` (5 minutes) and at the end, stores the results finished since the
   last store: Parquet parts, then lineage rows (:mod:`features.collect`); a killed driver
   therefore loses at most the last few minutes of work;
5. exports clinical values and labels and registers every view with Feast
   (:mod:`features.register`; redone by the next run if this one did not finish).

Only this process writes the catalog and the offline store; workers return plain data.
"""

from __future__ import annotations

import time
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, NamedTuple

import numpy as np

from atrx.catalog import Catalog
from atrx.cluster import check_cluster_options
from atrx.errors import InputError
from atrx.locks import exclusive
from atrx.names import KINDS, all_views, view_name
from atrx.workspace import Workspace
from features.collect import Stored, store
from features.compute import Outcome, batch_targets, compute
from features.context import CHECKPOINT_SECONDS, FeaturesRun, ProgressFn, load_recipe
from features.errors import FeaturesJobError
from features.plan import Target, TargetKey, latest_studies, pending_targets
from features.register import export_clinical, register_views, versions_to_register

__all__ = ["CHECKPOINT_SECONDS", "FeaturesJobError", "FeaturesSummary", "ViewCount", "run_features"]


class ViewCount(NamedTuple):
    """Rows of one view: written by this run, and in the view's current feature version in total."""

    written: int
    total: int


@dataclass
class FeaturesSummary:
    """What a features run did; ``rows()`` feeds the CLI's summary table."""

    run_id: str
    weights: str | None
    weights_id: str | None
    versions: dict[str, str]  # kind -> feature version
    scans: int = 0
    tasks: int = 0
    results: Counter[str] = field(default_factory=Counter)  # ok / failed / error
    per_view: dict[str, ViewCount] = field(default_factory=dict)
    failures: list[dict[str, Any]] = field(default_factory=list)
    roi_seconds: dict[str, list[float]] = field(default_factory=lambda: {"rad": [], "dl": []})
    offline_parts: list[str] = field(default_factory=list)
    clinical_exported: bool = False
    applied: list[str] = field(default_factory=list)
    applied_versions: dict[str, str] = field(default_factory=dict)  # view -> version Feast knows
    seconds: float = 0.0
    compute_seconds: float = 0.0

    def add(self, stored: Stored) -> int:
        """Count what one store wrote; returns its rows written."""
        self.offline_parts += stored.parts
        for view, n in stored.written.items():
            self.per_view[view] = ViewCount(self._count(view).written + n, 0)
        for t, res in stored.outcomes:
            self.results[res.status] += 1
            self.roi_seconds[t.kind].append(float(res.seconds or 0.0))
            if res.status != "ok":
                self.failures.append({"patient_id": t.patient_id, "study_id": t.study_id,
                                      "scan_version": t.scan_version, "view": t.view,
                                      "status": res.status, "reason": res.reason})
        for view, total in stored.totals.items():
            self.per_view[view] = ViewCount(self._count(view).written, total)
        return sum(stored.written.values())

    def totals(self) -> dict[str, int]:
        """view -> rows in its current feature version."""
        return {v: c.total for v, c in self.per_view.items()}

    def counts(self, view_versions: Mapping[str, str]) -> dict[str, Any]:
        """The ``counts`` of the run's catalog row (the next run reads ``applied_versions``)."""
        return {**self.results, "scans": self.scans, "tasks": self.tasks,
                "rows": {v: c.written for v, c in self.per_view.items()},
                "views": dict(view_versions), "applied": self.applied,
                "applied_versions": self.applied_versions,
                "clinical_exported": self.clinical_exported}

    def rows(self) -> list[tuple[str, str]]:
        out = [("run", self.run_id)]
        out += [(f"{k} feature version", v) for k, v in sorted(self.versions.items())]
        if self.weights is not None:
            out.append(("CNN weights", f"{self.weights} (sha256 {self.weights_id[:12] if self.weights_id else '?'})"))
        out += [
            ("study versions (latest)", str(self.scans)),
            ("tasks submitted", str(self.tasks)),
            ("ROIs computed ok", str(self.results["ok"])),
            ("ROIs failed (recorded, not retried)", str(self.results["failed"])),
            ("ROIs with errors (retried next run)", str(self.results["error"])),
            ("rows written", str(sum(c.written for c in self.per_view.values()))),
        ]
        for kind in ("rad", "dl"):
            secs = self.roi_seconds.get(kind) or []
            if secs:
                out.append((f"{kind} seconds per ROI (median, in task)", f"{float(np.median(secs)):.2f}"))
        out += [
            ("clinical and labels exported", "yes" if self.clinical_exported else "no (unchanged)"),
            ("feature views registered with Feast", str(len(self.applied))),
            ("seconds", f"{self.seconds:.1f}"),
        ]
        return out

    def view_rows(self) -> list[tuple[str, int, int]]:
        """(view, rows written this run, rows in its current version) in canonical view order."""
        order = [view_name(*v) for v in all_views()]
        return [(v, c.written, c.total) for v, c in sorted(self.per_view.items(),
                                                            key=lambda kv: order.index(kv[0]))]

    def failure_rows(self) -> list[tuple[str, str, str, str]]:
        """(patient pseudonym, view, status, reason) of every ROI that gave no features this run."""
        return [(f["patient_id"], f["view"], f["status"], f["reason"] or "") for f in self.failures]

    def _count(self, view: str) -> ViewCount:
        return self.per_view.get(view, ViewCount(0, 0))


def run_features(
    ws: Workspace,
    scheduler: str | None = None,
    workers: int | None = None,
    gpus: bool = False,
    threads_per_gpu: int | None = None,
    weights: str = "imagenet",
    batch_size: int = 32,
    progress: ProgressFn | None = None,
    radiomics_params: Mapping[str, Any] | None = None,
    kinds: Iterable[str] = KINDS,
    checkpoint_seconds: float = CHECKPOINT_SECONDS,
) -> FeaturesSummary:
    """Compute the missing features of every study into the offline store; record the run.

    ``radiomics_params`` replaces the repository's parameter file (tests, benchmarks; it gets its own
    feature version); ``kinds`` limits the run to ``rad`` or ``dl`` views. Finished results are
    stored (Parquet part + lineage) at least every ``checkpoint_seconds`` while the run goes on,
    so a driver killed after an hour loses minutes of work, not the hour; the next run computes
    only what has no lineage row.
    """
    t0 = time.perf_counter()
    kinds = tuple(kinds)
    if not kinds or any(k not in KINDS for k in kinds):
        raise InputError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
    check_cluster_options(scheduler, workers, gpus, threads_per_gpu)
    if batch_size < 1:
        raise InputError(f"batch_size must be >= 1, got {batch_size}")
    if not checkpoint_seconds >= 0:
        raise InputError(f"checkpoint_seconds must be >= 0, got {checkpoint_seconds}")
    # weights and parameters first: a missing ImageNet file or a bad parameter dict is reported
    # before the catalog is touched or a cluster starts
    recipe = load_recipe(kinds, weights, radiomics_params)

    ws.ensure()
    with exclusive(Path(ws.catalog).parent, "features", "a features job on this workspace"), \
            Catalog(ws.catalog) as cat:
        studies = latest_studies(cat)
        targets = pending_targets(studies, cat.settled_lineage(), recipe.view_versions)
        run_id = cat.start_run("features", None, None, recipe.run_params_hash, recipe.run_versions)
        run = FeaturesRun(ws, run_id, recipe, scheduler=scheduler, workers=workers, gpus=gpus,
                          threads_per_gpu=threads_per_gpu, batch_size=batch_size,
                          checkpoint_seconds=checkpoint_seconds,
                          progress=progress)
        summary = FeaturesSummary(run_id, recipe.weights, recipe.weights_id, recipe.versions,
                                  scans=len(studies))
        status = "ok"
        try:
            _run(cat, run, targets, summary)
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            summary.seconds = time.perf_counter() - t0
            cat.finish_run(run_id, status, summary.counts(recipe.view_versions))
    return summary


def _run(cat: Catalog, run: FeaturesRun, targets: list[Target], summary: FeaturesSummary) -> None:
    """Compute ``targets`` with checkpoints, store the rest, export and register."""
    results: dict[TargetKey, Outcome] = {}
    stored: set[TargetKey] = set()
    written = 0

    def store_finished(final: bool = False) -> None:
        nonlocal written
        fresh = [t for t in targets if t.key in results and t.key not in stored]
        if fresh or final:  # the final call also counts every view's rows
            written += summary.add(store(cat, run, fresh, results))
            stored.update(t.key for t in fresh)

    def submitted(n: int) -> None:
        summary.tasks = n

    interrupted = False
    if targets:
        tc = time.perf_counter()
        try:
            compute(run, batch_targets(targets, run.batch_size), results,
                    submitted=submitted, checkpoint=store_finished)
        except KeyboardInterrupt:  # keep what finished; the next run does the rest
            interrupted = True
        summary.compute_seconds = time.perf_counter() - tc
    store_finished(final=True)
    if interrupted:
        raise KeyboardInterrupt
    summary.clinical_exported = export_clinical(cat, run.ws, force=bool(written))
    versions = versions_to_register(cat, run.recipe.view_versions, summary.totals())
    summary.applied_versions = versions  # kept in the run's counts for the next run's comparison
    summary.applied = register_views(cat, run, versions,
                                     changed=bool(written) or summary.clinical_exported)
