"""The features driver: plan what is missing, map the tasks over Dask, store and record the results.

One run:

1. loads the CNN weights once here (a missing ImageNet file fails before any cluster starts) and
   derives the feature versions (:mod:`features.versioning`);
2. takes the latest version of every study from the catalog's ``scans`` and keeps the
   (study version, view) pairs that have no lineage row with status ``ok`` or ``failed`` for the
   view's current feature version. ``failed`` means the ROI itself cannot give features (empty edema,
   too few voxels): computing it again with the same data and recipe fails again, so it is recorded
   once and not retried; a new study version or feature version gets a fresh try. ``error`` (the
   store or a worker broke) is recorded too but retried by the next run;
3. submits one radiomics task per study version x ROI x sequence and deep batches of
   ``batch_size`` crops (on GPU workers with ``gpus``), gathers results as they complete, keyed by
   (patient, study, scan version, view) so a task the scheduler re-runs after a worker died can never
   give a second row;
4. every ``checkpoint_seconds`` (5 minutes) and at the end, writes one Parquet part per view with
   the results finished since the last store, then their lineage rows (Parquet first: a crash
   between the two recomputes rows next time, the other order would lose them); a killed driver
   therefore loses at most the last few minutes of work. At the end it exports clinical values and
   labels and registers every view with Feast (redone by the next run if this one did not finish).

Only this process writes the catalog and the offline store; workers return plain data.
"""

from __future__ import annotations

import datetime as dt
import json
import logging
import time
from collections import Counter
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, NamedTuple

import numpy as np
import pandas as pd

from atrx.catalog import Catalog
from atrx.cluster import dask_client
from atrx.names import KINDS, all_views, view_name
from atrx.workspace import Workspace
from features.deep import WeightsSpec, deep_feature_names, load_resnet34
from features.radiomics import check_params, load_params, params_hash, radiomics_feature_names
from features.tasks import DeepItem, deep_batch_task, radiomics_task
from features.versioning import (
    deep_params_hash,
    deep_version,
    radiomics_version,
)

log = logging.getLogger(__name__)

ProgressFn = Callable[[int, int, str], None]
# how often finished results are stored while a run goes on (a checkpoint costs ~1 s per view)
CHECKPOINT_SECONDS = 300.0
#: statuses that mean "this (study version, view, feature version) is settled"
SETTLED = ("ok", "failed")
#: libraries whose version changes the numbers; the workers must run the driver's
LIBRARIES = ("pyradiomics", "torch", "torchvision", "SimpleITK", "numpy")
META_COLUMNS = ("patient_id", "event_timestamp", "created_timestamp", "feature_version", "study_id",
                "scan_version")


class FeaturesJobError(RuntimeError):
    """The driver could not store or register results (the message names the view or step)."""


@dataclass(frozen=True)
class Target:
    """One (study version, feature view) to compute."""

    patient_id: str
    study_id: str
    scan_version: int
    zarr_path: str
    scan_date: dt.date
    kind: str
    roi: str
    sequence: str

    @property
    def view(self) -> str:
        return view_name(self.kind, self.roi, self.sequence)

    @property
    def key(self) -> tuple[str, str, int, str]:
        return (self.patient_id, self.study_id, self.scan_version, self.view)


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


def run_features(
    ws: Workspace,
    scheduler: str | None = None,
    workers: int | None = None,
    gpus: bool = False,
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
        raise ValueError(f"kinds must be a non-empty subset of {KINDS}, got {kinds}")
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if not checkpoint_seconds >= 0:
        raise ValueError(f"checkpoint_seconds must be >= 0, got {checkpoint_seconds}")

    # Weights and parameters first: a missing ImageNet file or a bad parameter dict is reported
    # before the catalog is touched or a cluster starts.
    spec: str | None = None
    weights_id: str | None = None
    if "dl" in kinds:
        spec = str(WeightsSpec.parse(weights))
        model, weights_id = load_resnet34(spec, "cpu")
        del model
    if radiomics_params is None:
        params = load_params()
    else:
        params = json.loads(json.dumps(dict(radiomics_params)))  # a private, JSON-clean copy
        check_params(params, source="radiomics_params")
    versions: dict[str, str] = {}
    if "rad" in kinds:
        versions["rad"] = radiomics_version(params)
    if weights_id is not None:
        versions["dl"] = deep_version(weights_id)
    view_versions = {view_name(k, r, s): versions[k] for k, r, s in all_views() if k in kinds}
    schemas = _schemas(params, kinds)
    libs = library_versions()
    lineage_versions = _lineage_versions(libs, versions, spec, weights_id)

    ws.ensure()
    with Catalog(ws.catalog) as cat:
        scans = _latest_scans(cat)
        targets = _pending(cat, scans, view_versions)
        run_versions = {**{f"feature_version_{k}": v for k, v in versions.items()}, **libs,
                        **({"weights": spec, "weights_id": weights_id} if spec else {})}
        run_id = cat.start_run("features", None, None,
                               params_hash(params) if "rad" in kinds else None, run_versions)
        summary = FeaturesSummary(run_id, spec, weights_id, versions, scans=len(scans))
        status = "ok"
        try:
            results: dict[tuple[str, str, int, str], dict[str, Any]] = {}
            stored: set[tuple[str, str, int, str]] = set()
            written = 0

            def store_finished(final: bool = False) -> None:
                nonlocal written
                fresh = [t for t in targets if t.key in results and t.key not in stored]
                if fresh or final:  # the final call also counts every view's rows
                    written += _store(cat, ws, run_id, fresh, results, view_versions, schemas,
                                      params, lineage_versions, summary)
                    stored.update(t.key for t in fresh)

            interrupted = False
            if targets:
                tc = time.perf_counter()
                try:
                    _compute(ws, targets, params, spec, weights_id, schemas, libs, scheduler, workers,
                             gpus, batch_size, progress, run_id, summary, results,
                             checkpoint=(checkpoint_seconds, store_finished))
                except KeyboardInterrupt:  # keep what finished; the next run does the rest
                    interrupted = True
                summary.compute_seconds = time.perf_counter() - tc
            store_finished(final=True)
            if interrupted:
                raise KeyboardInterrupt
            summary.clinical_exported = _export_clinical(cat, ws, force=bool(written))
            _apply(cat, ws, view_versions, schemas, summary,
                   changed=bool(written) or summary.clinical_exported)
        except KeyboardInterrupt:
            status = "interrupted"
            raise
        except BaseException:
            status = "failed"
            raise
        finally:
            summary.seconds = time.perf_counter() - t0
            counts = {**summary.results, "scans": summary.scans, "tasks": summary.tasks,
                      "rows": {v: c.written for v, c in summary.per_view.items()},
                      "views": view_versions, "applied": summary.applied,
                      "applied_versions": summary.applied_versions,
                      "clinical_exported": summary.clinical_exported}
            cat.finish_run(run_id, status, counts)
    return summary


# versions -------------------------------------------------------------------------------------
def library_versions() -> dict[str, str]:
    """Versions of the libraries that make the numbers (also run on each worker to compare)."""
    import SimpleITK as sitk
    import torch
    import torchvision

    from features.versioning import pyradiomics_version

    return {"pyradiomics": pyradiomics_version(), "torch": torch.__version__,
            "torchvision": torchvision.__version__, "SimpleITK": sitk.Version_VersionString(),
            "numpy": np.__version__}


def _lineage_versions(libs: dict[str, str], versions: dict[str, str], spec: str | None,
                      weights_id: str | None) -> dict[str, str]:
    """kind -> versions JSON of its lineage rows: libraries, and for ``dl`` the weights."""
    out = {}
    for kind, version in versions.items():
        extra = {"weights": spec, "weights_id": weights_id} if kind == "dl" else {}
        out[kind] = json.dumps({"feature_version": version, **libs, **extra}, sort_keys=True)
    return out


def _schemas(params: Mapping[str, Any], kinds: tuple[str, ...]) -> dict[str, list[str]]:
    """view -> its feature columns, in order (the offline store's and Feast's schema)."""
    out = {}
    for kind, roi, seq in all_views():
        if kind in kinds:
            out[view_name(kind, roi, seq)] = (radiomics_feature_names(roi, seq, params) if kind == "rad"
                                              else deep_feature_names(roi, seq))
    return out


# planning -------------------------------------------------------------------------------------
def _latest_scans(cat: Catalog) -> list[tuple[Any, ...]]:
    """(patient, center, study, version, scan_date, zarr_path) of the latest version of every study.

    The catalog records a version only after its group was written and marked complete.
    """
    rows = cat.query(
        "SELECT patient_id, center, study_id, version, scan_date, zarr_path FROM scans "
        "QUALIFY row_number() OVER (PARTITION BY patient_id, study_id ORDER BY version DESC) = 1 "
        "ORDER BY patient_id, study_id")
    undated = [r for r in rows if r[4] is None]
    if undated:
        log.warning("%d study versions have no scan date and get no features (e.g. %s/%s)",
                    len(undated), undated[0][0], undated[0][2])
    return [r for r in rows if r[4] is not None]


def _pending(cat: Catalog, scans: list[tuple[Any, ...]], view_versions: dict[str, str]) -> list[Target]:
    """Every (latest study version, view) without a settled lineage row for the view's version."""
    settled = {
        (r[0], r[1], int(r[2]), r[3])
        for r in cat.query(
            "SELECT DISTINCT patient_id, study_id, scan_version, feature_view, feature_version "
            f"FROM lineage WHERE status IN {SETTLED}")
        if view_versions.get(r[3]) == r[4]
    }
    targets = []
    for pid, _center, sid, version, scan_date, zarr_path in scans:
        for kind, roi, seq in all_views():
            view = view_name(kind, roi, seq)
            if view in view_versions and (pid, sid, int(version), view) not in settled:
                targets.append(Target(pid, sid, int(version), zarr_path, scan_date, kind, roi, seq))
    return targets


# computing ------------------------------------------------------------------------------------
def _compute(ws: Workspace, targets: list[Target], params: dict[str, Any], spec: str | None,
             weights_id: str | None, schemas: dict[str, list[str]], libs: dict[str, str],
             scheduler: str | None, workers: int | None, gpus: bool, batch_size: int,
             progress: ProgressFn | None, run_id: str, summary: FeaturesSummary,
             results: dict[tuple[str, str, int, str], dict[str, Any]],
             checkpoint: tuple[float, Callable[[], None]] | None = None) -> None:
    """Run the tasks; fills ``results`` (key -> result, ``values`` a float64 row in schema order)
    as they complete, so an interrupted run still stores what finished. ``checkpoint`` is
    ``(seconds, store)``: ``store()`` is called whenever that long has passed since the last call."""
    rad = [t for t in targets if t.kind == "rad"]
    # ROIs of one study version side by side: a batch reads each version once
    dl = sorted((t for t in targets if t.kind == "dl"), key=lambda t: (t.zarr_path, t.view))
    device = "cuda" if gpus else "cpu"
    with dask_client(scheduler, workers, gpus) as client:
        from distributed import as_completed

        _check_worker_libraries(client, libs)
        futures: dict[Any, list[Target]] = {}
        for t in rad:
            fut = client.submit(radiomics_task, ws.images, t.zarr_path, t.roi, t.sequence, params,
                                key=f"rad-{t.patient_id}-{t.study_id}-v{t.scan_version}-{t.view}-{run_id}",
                                pure=False)
            futures[fut] = [t]
        resources = _gpu_resources(client) if gpus else None
        for i in range(0, len(dl), batch_size):
            batch = dl[i:i + batch_size]
            items: list[DeepItem] = [(ws.images, t.zarr_path, t.roi, t.sequence) for t in batch]
            fut = client.submit(deep_batch_task, items, spec, device, weights_id,
                                key=f"dl-batch-{i // batch_size:05d}-{run_id}", pure=False,
                                resources=resources)
            futures[fut] = batch
        summary.tasks = len(futures)
        done = 0
        last_checkpoint = time.monotonic()
        for fut in as_completed(futures):
            batch = futures[fut]
            try:
                out = fut.result()
                out = [out] if batch[0].kind == "rad" else out  # radiomics tasks return one result
            except Exception as e:  # the scheduler gave up (a worker died on it repeatedly)
                reason = f"the task failed on the cluster: {type(e).__name__}: {e}"[:500]
                out = [{"status": "error", "values": None, "reason": f"{t.view} of {t.zarr_path}: {reason}",
                        "seconds": 0.0} for t in batch]
            fut.release()
            for t, raw in zip(batch, out, strict=True):
                res = _checked(t, raw, schemas[t.view])
                old = results.get(t.key)
                if old is None or (old["status"] != "ok" and res["status"] == "ok"):
                    results[t.key] = res
            done += 1
            if checkpoint is not None and time.monotonic() - last_checkpoint >= checkpoint[0]:
                checkpoint[1]()
                last_checkpoint = time.monotonic()
            if progress:
                first = batch[0]
                label = (f"{first.patient_id} {first.view}" if first.kind == "rad"
                         else f"{len(batch)} crops ({first.patient_id} {first.view} ...)")
                progress(done, len(futures), label)


def _checked(t: Target, res: dict[str, Any], names: list[str]) -> dict[str, Any]:
    """Turn ``values`` into a float64 row in schema order; a wrong schema becomes an error."""
    out = dict(res)
    if res["status"] == "ok":
        values = res["values"] or {}
        if list(values) != names:
            out.update(status="error", values=None,
                       reason=f"{t.view} of {t.zarr_path}: the task returned {len(values)} features "
                              f"that differ from the view's {len(names)} (worker code out of date?)")
        else:
            out["values"] = np.fromiter(values.values(), dtype=np.float64, count=len(names))
    return out


def _check_worker_libraries(client: Any, libs: dict[str, str]) -> None:
    """Refuse workers whose libraries differ from the driver's: the feature version would lie."""
    seen = client.run(library_versions)
    bad = {w: {k: v for k, v in got.items() if libs.get(k) != v} for w, got in seen.items()}
    bad = {w: diff for w, diff in bad.items() if diff}
    if bad:
        worker, diff = next(iter(bad.items()))
        raise RuntimeError(
            f"{len(bad)} worker(s) run other library versions than this driver, e.g. {worker}: "
            f"{diff} vs {({k: libs[k] for k in diff})}; install the same versions everywhere"
        )


def _gpu_resources(client: Any) -> dict[str, int] | None:
    """``{"GPU": 1}`` when the workers advertise a GPU resource, else None (with a warning).

    dask_cuda's LocalCUDACluster pins one GPU per worker but declares no resource; restricting
    to a resource nobody has would leave the tasks waiting forever.
    """
    workers = client.scheduler_info(n_workers=-1)["workers"].values()
    if any((w.get("resources") or {}).get("GPU") for w in workers):
        return {"GPU": 1}
    log.warning("no worker declares a 'GPU' resource; deep batches go to any worker "
                "(start workers with --resources GPU=1 to keep them on GPU workers)")
    return None


# storing --------------------------------------------------------------------------------------
def _store(cat: Catalog, ws: Workspace, run_id: str, targets: list[Target],
           results: dict[tuple[str, str, int, str], dict[str, Any]], view_versions: dict[str, str],
           schemas: dict[str, list[str]], params: dict[str, Any], lineage_versions: dict[str, str],
           summary: FeaturesSummary) -> int:
    """One Parquet part per view, then the lineage rows; fills ``summary``; returns rows written."""
    from feature_repo.offline import write_offline

    extracted = pd.Timestamp.now(tz="UTC")
    by_view: dict[str, list[Target]] = {}
    for t in targets:
        if t.key in results:
            by_view.setdefault(t.view, []).append(t)
    written = 0
    for view, ts in by_view.items():
        ok = [t for t in ts if results[t.key]["status"] == "ok"]
        if not ok:
            continue
        meta = pd.DataFrame({
            "patient_id": [t.patient_id for t in ok],
            "event_timestamp": pd.to_datetime([t.scan_date for t in ok]).tz_localize("UTC"),
            "created_timestamp": [extracted] * len(ok),
            "feature_version": view_versions[view],
            "study_id": [t.study_id for t in ok],
            "scan_version": np.array([t.scan_version for t in ok], dtype=np.int64),
        })
        # float32: the offline store's imaging dtype (Feast Float32); tasks compute in float64
        values = pd.DataFrame(np.vstack([results[t.key]["values"] for t in ok]).astype(np.float32),
                              columns=schemas[view])
        frame = pd.concat([meta, values], axis=1)
        try:
            part = write_offline(ws, view, view_versions[view], frame)
        except Exception as e:
            raise FeaturesJobError(
                f"cannot write {len(ok)} rows of {view} (feature version {view_versions[view]}, "
                f"patients {sorted({t.patient_id for t in ok})[:3]}...) to the offline store: {e}"
            ) from e
        summary.offline_parts.append(str(part))
        before = summary.per_view.get(view, ViewCount(0, 0)).written
        summary.per_view[view] = ViewCount(before + len(ok), 0)
        written += len(ok)

    hashes = {"rad": params_hash(params) if "rad" in lineage_versions else None,
              "dl": deep_params_hash(summary.weights_id) if summary.weights_id else None}
    created = extracted.tz_convert(None).to_pydatetime()
    rows = []
    for t in targets:
        res = results.get(t.key)
        if res is None:
            continue
        summary.results[res["status"]] += 1
        summary.roi_seconds[t.kind].append(float(res.get("seconds") or 0.0))
        if res["status"] != "ok":
            summary.failures.append({"patient_id": t.patient_id, "study_id": t.study_id,
                                     "scan_version": t.scan_version, "view": t.view,
                                     "status": res["status"], "reason": res["reason"]})
        rows.append([t.patient_id, t.study_id, t.scan_version, t.view, view_versions[t.view],
                     hashes[t.kind], lineage_versions[t.kind], res["status"], res["reason"], run_id,
                     created])
    if rows:
        cat.con.execute("BEGIN TRANSACTION")
        try:
            cat.con.executemany("INSERT INTO lineage VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)", rows)
            cat.con.execute("COMMIT")
        except BaseException:
            cat.con.execute("ROLLBACK")
            raise
    for view, version in view_versions.items():
        (total,) = cat.query(
            "SELECT count(*) FROM (SELECT DISTINCT patient_id, study_id, scan_version FROM lineage "
            "WHERE feature_view = ? AND feature_version = ? AND status = 'ok')", [view, version])[0]
        summary.per_view[view] = ViewCount(summary.per_view.get(view, ViewCount(0, 0)).written, int(total))
    return written


def _export_clinical(cat: Catalog, ws: Workspace, force: bool) -> bool:
    """Export clinical values and labels when features were written or they changed since the last run.

    A clinical row's event timestamp is the patient's earliest scan date (the values describe the
    patient at diagnosis); patients without a scan have no features to join and are left out.
    """
    if not force and not _clinical_changed(cat):
        return False
    from feature_repo.offline import export_clinical_and_labels

    clinical = cat.con.execute(
        "SELECT c.*, s.first_scan AS event_timestamp FROM clinical c "
        "JOIN (SELECT patient_id, min(scan_date) AS first_scan FROM scans GROUP BY patient_id) s "
        "USING (patient_id) ORDER BY patient_id").df()
    clinical["event_timestamp"] = pd.to_datetime(clinical["event_timestamp"]).dt.tz_localize("UTC")
    labels = cat.con.execute("SELECT * FROM labels ORDER BY patient_id").df()
    if clinical.empty and labels.empty:
        return False
    try:
        export_clinical_and_labels(ws, clinical, labels, pd.Timestamp.now(tz="UTC"))
    except Exception as e:
        raise FeaturesJobError(
            f"cannot export {len(clinical)} clinical and {len(labels)} label rows: {e}") from e
    return True


def _clinical_changed(cat: Catalog) -> bool:
    """True when clinical or label rows changed after the last successful export."""
    last = cat.query(
        "SELECT max(started_at) FROM runs WHERE stage = 'features' AND status = 'ok' "
        "AND json_extract(counts, '$.clinical_exported')::BOOLEAN")[0][0]
    changed = cat.query("SELECT max(u) FROM (SELECT max(updated_at) u FROM clinical "
                        "UNION ALL SELECT max(updated_at) FROM labels)")[0][0]
    return changed is not None and (last is None or changed > last)


def _apply(cat: Catalog, ws: Workspace, view_versions: dict[str, str], schemas: dict[str, list[str]],
           summary: FeaturesSummary, changed: bool) -> None:
    """Register every view that has rows with Feast, at its current (or latest known) version.

    Skipped when nothing changed and the previous features run registered the same versions and
    finished ok; after a failed or interrupted run the registration is redone. ``apply`` itself
    skips views without files (clinical and labels before their first export).
    """
    # views outside this run keep the version they have; views of this run are registered at the
    # current version once it has rows (never at an older one: that would mix recipes)
    versions = {v: ver for v, ver in _known_versions(cat).items() if v not in view_versions}
    versions.update({v: ver for v, ver in view_versions.items()
                     if summary.per_view.get(v, ViewCount(0, 0)).total})
    if versions:
        from feature_repo.offline import TABULAR_VERSION

        versions.update({"clinical": TABULAR_VERSION, "labels": TABULAR_VERSION})
    if not versions:
        return
    # the previous features run: only if it finished ok did Feast get what it recorded
    last = cat.query("SELECT status, counts FROM runs WHERE stage = 'features' AND run_id <> ? "
                     "ORDER BY started_at DESC LIMIT 1", [summary.run_id])
    previous = (json.loads(last[0][1]).get("applied_versions")
                if last and last[0][0] == "ok" and last[0][1] else None)
    summary.applied_versions = versions  # kept in the run's counts for the next run's comparison
    if not changed and previous == versions:
        summary.applied = sorted(versions)
        return
    from feature_repo.store import apply

    # this run's views with this run's columns (a reduced parameter set has fewer than the
    # default); views outside the run keep the default names of their extractor
    names = {v: schemas[v] for v in versions if v in view_versions}
    try:
        summary.applied = list(apply(ws, versions, feature_names=names or None))
    except Exception as e:
        raise FeaturesJobError(
            f"the features are stored, but registering views {sorted(versions)} with Feast failed: "
            f"{type(e).__name__}: {e}; the next `atrx features` retries the registration") from e


def _known_versions(cat: Catalog) -> dict[str, str]:
    """view -> the feature version of its most recent ok lineage row (views outside this run)."""
    rows = cat.query(
        "SELECT feature_view, feature_version FROM lineage WHERE status = 'ok' "
        "QUALIFY row_number() OVER (PARTITION BY feature_view ORDER BY created_at DESC) = 1")
    return {r[0]: r[1] for r in rows}
