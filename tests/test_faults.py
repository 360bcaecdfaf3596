"""Faults as a suite (issue 14, item 6): one small DICOM export, one fault per patient, the whole flow.

Three centers (tests/faults_export.py) go through `atrx center validate`, `atrx ingest` (center A
with one Dask worker SIGKILLed while it ingests a patient; center B's driver SIGKILLed mid-run and
run again), the features job, `atrx retrain --promote-below-floor`, `atrx materialize` and the
server `atrx serve` starts, with an API key on a free port. Per fault the quarantine row must give
the expected stage, reason and blocking flag; every other patient has exactly one scan, one lineage
row per view, one row in each offline view and a 200 from /predict, while a refused patient gets 404.

The features job is called in-process (``features.job.run_features``, what `atrx features` runs)
with radiomics on the Original image only and without the CNN views: the full recipe costs
minutes on two cores and is covered by tests/test_features_job.py.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import signal
import subprocess
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path

import httpx
import pytest
from distributed import Client, Event, LocalCluster
from faults_export import CENTERS, FAULTS, PHI, build_export, healthy_raw, pid
from typer.testing import CliRunner

from atrx.catalog import Catalog
from atrx.cli import app
from atrx.names import all_views, view_name
from atrx.workspace import Workspace

pytestmark = [pytest.mark.timeout(600), pytest.mark.filterwarnings("ignore:Invalid value for VR DA")]

API_KEY = "faults-suite-api-key-0123456789-abcdefghij"
STUDY = """\
name: faults
split:
  stratify_by: [atrx_mutant]
imaging:
  feature_types: [radiomics]
  rois: [overall]
  compare_classifiers: [lr]
  cv_folds: 3
selection:
  lasso_cv: 3
  lasso_cs: 5
baseline:
  enabled: false
diagnostics:
  bootstrap: 0
stability:
  min_icc: null  # the Original-only parameter file below is not the shipped one `atrx stability` measures
"""
RAD_VIEWS = [view_name(k, r, s) for k, r, s in all_views() if k == "rad"]
runner = CliRunner()


@dataclass
class Flow:
    """What the module's one run of the flow left behind, for the tests to read."""

    ws: Workspace
    validate: dict[str, tuple[int, str]] = field(default_factory=dict)  # center -> (exit code, output)
    killed_worker: dict[str, int] = field(default_factory=dict)  # address -> pid
    scans_at_driver_kill: int = -1
    rad_version: str = ""
    retrain: tuple[int, str] = (-1, "")
    #: patients quarantined because their worker died twice (Dask reran the task once): allowed, counted
    lost_to_worker: set[str] = field(default_factory=set)

    def ingested(self) -> set[str]:
        """Pseudonyms of every patient that must be ingested (healthy, or a note only)."""
        raws = [(c, r) for c in CENTERS for r in healthy_raw(c)] + [(f.center, f.raw) for f in FAULTS if f.ingested]
        return {pid(c, r) for c, r in raws} - self.lost_to_worker

    def refused(self) -> set[str]:
        return {pid(f.center, f.raw) for f in FAULTS if f.blocking} | self.lost_to_worker

    def query(self, sql: str, params: list | None = None) -> list[tuple]:
        with Catalog(self.ws.catalog, read_only=True) as cat:
            return cat.query(sql, params)


#: what every command but `atrx center validate` (raw ids by design: it stays local) printed
OUTPUTS: list[str] = []


def _atrx(*args: str, ok: tuple[int, ...] = (0,)) -> tuple[int, str]:
    result = runner.invoke(app, list(args))
    assert result.exit_code in ok, (args, result.exit_code, result.output[-3000:], result.exception)
    if args[:2] != ("center", "validate"):
        OUTPUTS.append(result.output)
    return result.exit_code, result.output


def _kill_a_busy_worker(client: Client, killed: dict[str, int], stop: threading.Event) -> None:
    """SIGKILL the first worker seen running an ingest task (Dask's nanny then restarts it)."""
    while not stop.is_set():
        for addr, keys in client.processing().items():
            if any(str(k).startswith("ingest-") for k in keys):
                killed[addr] = client.run(os.getpid, workers=[addr])[addr]
                os.kill(killed[addr], signal.SIGKILL)
                return
        time.sleep(0.01)


def _ingest_with_a_worker_killed(flow: Flow, cfg: Path, client: Client) -> None:
    stop = threading.Event()
    killer = threading.Thread(target=_kill_a_busy_worker, args=(client, flow.killed_worker, stop), daemon=True)
    killer.start()
    try:
        _atrx("ingest", str(cfg), "--home", flow.ws.home, "--scheduler", client.scheduler.address)
    finally:
        stop.set()
        killer.join(timeout=10)
    flow.lost_to_worker = {r[0] for r in flow.query("select patient_id from quarantine where stage = 'worker'")}


def _hold(event: str) -> None:
    """A task that keeps its worker's one thread until ``event`` is set (or four minutes pass)."""
    Event(event).wait(timeout=240)


def _ingest_with_the_driver_killed(flow: Flow, cfg: Path, client: Client, center: str) -> None:
    """`atrx ingest` as its own process, SIGKILLed mid-run, then run again.

    Killing it "once its first patient is in the catalog" raced a fast ingest on a loaded machine:
    the run could finish between two polls. So both workers are held (a task of higher priority that
    waits on a Dask event) as soon as the run's first patients start: at most the two or four
    already sent to the workers finish, the driver waits for the rest, and is killed while it waits.
    """
    env = {**os.environ, "ATRX_HOME": flow.ws.home}
    client.wait_for_workers(2, timeout=120)  # center A's killed worker is back
    event = f"hold-{center}-{time.monotonic_ns()}"
    proc = subprocess.Popen([sys.executable, "-m", "atrx.cli", "ingest", str(cfg), "--scheduler",
                             client.scheduler.address], env=env, stdout=subprocess.DEVNULL,
                            stderr=subprocess.DEVNULL, start_new_session=True)
    deadline = time.monotonic() + 240
    holds = []
    try:
        while time.monotonic() < deadline and proc.poll() is None and not holds:
            if any(str(k).startswith("ingest-") for keys in client.processing().values() for k in keys):
                holds = [client.submit(_hold, event, key=f"{event}-{addr}", workers=[addr],
                                       allow_other_workers=False, priority=1000, pure=False)
                         for addr in client.scheduler_info()["workers"]]
            time.sleep(0.01)
        while time.monotonic() < deadline and proc.poll() is None:
            n = flow.query("select count(*) from scans where center = ?", [center])[0][0]
            if n:
                flow.scans_at_driver_kill = n
                break
            time.sleep(0.05)
        assert proc.poll() is None, f"the driver exited ({proc.returncode}) before it could be killed mid-run"
    finally:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait()
        Event(event, client=client).set()
        client.gather(holds, errors="skip")
    # what the dead driver had submitted may still run; the rerun starts once the cluster is idle
    while time.monotonic() < deadline and any(client.processing().values()):
        time.sleep(0.05)
    _atrx("ingest", str(cfg), "--home", flow.ws.home, "--scheduler", client.scheduler.address)


@pytest.fixture(scope="module")
def cluster():
    env = {"OMP_NUM_THREADS": "1", "MKL_NUM_THREADS": "1", "ITK_GLOBAL_DEFAULT_NUMBER_OF_THREADS": "1"}
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      silence_logs=logging.ERROR, env=env) as lc, Client(lc) as client:
        yield client


@pytest.fixture(scope="module")
def flow(tmp_path_factory: pytest.TempPathFactory, cluster: Client) -> Flow:
    from features.job import run_features
    from features.radiomics import load_params

    root = tmp_path_factory.mktemp("faults")
    cfgs = build_export(root)
    flow = Flow(Workspace.at(root / "home"))
    for center, cfg in cfgs.items():
        flow.validate[center] = _atrx("center", "validate", str(cfg), ok=(1,))
    _ingest_with_a_worker_killed(flow, cfgs["A"], cluster)
    _ingest_with_the_driver_killed(flow, cfgs["B"], cluster, "B")
    _atrx("ingest", str(cfgs["C"]), "--home", flow.ws.home, "--scheduler", cluster.scheduler.address)
    cluster.wait_for_workers(2, timeout=120)  # the killed worker is back
    summary = run_features(flow.ws, scheduler=cluster.scheduler.address, weights="random:0", kinds=("rad",),
                           radiomics_params={**load_params(), "imageType": {"Original": {}}})
    flow.rad_version = summary.versions["rad"]
    (root / "study.yaml").write_text(STUDY)
    flow.retrain = _atrx("retrain", "--home", flow.ws.home, "--study", str(root / "study.yaml"),
                         "--promote-below-floor")
    _atrx("materialize", "--home", flow.ws.home)
    return flow


@pytest.fixture(scope="module")
def server(flow: Flow, tmp_path_factory: pytest.TempPathFactory):
    """What `atrx serve` starts (``bentoml serve`` with the key, after its pre-flight check), run from
    here: a subprocess `atrx serve` costs its own imports again (tests/test_serving.py runs one)."""
    from serving.server import free_port, serve

    log = tmp_path_factory.mktemp("faults-serve") / "serve.log"
    with serve(flow.ws, free_port(), api_key=API_KEY, log_file=log) as handle:
        handle.wait_ready(180)
        yield handle.url, log


def _last_ingest(flow: Flow, center: str) -> str:
    return flow.query("select run_id from runs where stage = 'ingest' and center = ? and status = 'ok' "
                      "order by started_at desc limit 1", [center])[0][0]


# --- validate and the quarantine ---------------------------------------------------------------------


@pytest.mark.parametrize("center, ready, total", [("A", 9, 12), ("B", 6, 11), ("C", 6, 9)])
def test_validate_says_who_would_be_quarantined(flow: Flow, center: str, ready: int, total: int) -> None:
    code, out = flow.validate[center]
    assert code == 1 and "would be quarantined" in out
    assert f"{ready} of {total} patients ready" in out
    assert "Traceback" not in out


@pytest.mark.parametrize("fault", [f for f in FAULTS if f.stage], ids=lambda f: f"{f.raw}-{f.name}")
def test_each_fault_has_its_quarantine_row(flow: Flow, fault) -> None:
    rows = flow.query("select stage, reason, fix, file, blocking from quarantine where patient_id = ? "
                      "and run_id = ?", [pid(fault.center, fault.raw), _last_ingest(flow, fault.center)])
    mine = [r for r in rows if all(s in r[1] for s in fault.reasons)]
    assert mine, (fault, rows)
    stage, reason, fix, file, blocking = mine[0]
    assert (stage, blocking) == (fault.stage, fault.blocking), mine[0]
    assert fix and "Traceback" not in reason
    assert fault.raw not in reason + fix + (file or "")  # pseudonyms only in the catalog
    if fault.ingested:  # a note: no blocking row for this patient
        assert not [r for r in rows if r[4]], rows


def test_no_other_quarantine_rows(flow: Flow) -> None:
    """Healthy patients have no quarantine row; a faulty one has only the fault's (and its consequences)."""
    rows = flow.query("select patient_id, stage, reason from quarantine")
    faulty = {pid(f.center, f.raw) for f in FAULTS} | flow.lost_to_worker
    assert not [r for r in rows if r[0] not in faulty], "healthy patients were quarantined"
    for patient in flow.lost_to_worker:  # Dask did not rerun it: the reason says why
        assert any(r[1] == "worker" and "the worker failed" in r[2] for r in rows if r[0] == patient)


# --- no row lost or duplicated ------------------------------------------------------------------------


def test_every_ingested_patient_has_one_scan_and_no_refused_one_has_any(flow: Flow) -> None:
    rows = flow.query("select patient_id, study_id, count(*) from scans group by patient_id, study_id")
    assert sorted(r[0] for r in rows) == sorted(flow.ingested())  # one study each, one row per study
    assert all(r[2] == 1 for r in rows)
    # a patient refused at plan time has no clinical row or label; one lost to a worker keeps them
    assert {r[0] for r in flow.query("select patient_id from labels")} == flow.ingested() | flow.lost_to_worker
    assert {r[0] for r in flow.query("select patient_id from clinical")} == flow.ingested() | flow.lost_to_worker


def test_lineage_has_one_row_per_study_version_and_view(flow: Flow) -> None:
    rows = flow.query("select patient_id, study_id, scan_version, feature_view, status, count(*) from lineage "
                      "group by all")
    assert all(r[5] == 1 for r in rows), [r for r in rows if r[5] != 1]
    assert {(r[0], r[3]) for r in rows} == {(p, v) for p in flow.ingested() for v in RAD_VIEWS}
    assert {r[4] for r in rows} == {"ok"}


def test_each_offline_view_has_one_row_per_patient(flow: Flow) -> None:
    from feature_repo.offline import TABULAR_VERSION, read_offline

    for view, version in [*((v, flow.rad_version) for v in RAD_VIEWS), ("clinical", TABULAR_VERSION),
                          ("labels", TABULAR_VERSION)]:
        frame = read_offline(flow.ws, view, version)
        expected = flow.ingested() | (flow.lost_to_worker if view == "labels" else set())
        assert sorted(frame["patient_id"]) == sorted(expected), view


# --- the two kills ------------------------------------------------------------------------------------


def test_a_worker_killed_while_ingesting_loses_and_duplicates_nothing(flow: Flow) -> None:
    assert flow.killed_worker, "the killer never saw an ingest task running"
    (status, counts), = flow.query("select status, counts from runs where stage = 'ingest' and center = 'A'")
    counts = json.loads(counts)
    assert status == "ok" and counts.get("ingested", 0) + len(flow.lost_to_worker) == 9, counts
    assert counts.get("quarantined", 0) == len(flow.lost_to_worker) and counts["patients_quarantined"] == 3 + len(
        flow.lost_to_worker)


def test_a_killed_driver_is_a_run_not_ok_and_the_rerun_does_the_rest(flow: Flow) -> None:
    runs = flow.query("select status, counts from runs where stage = 'ingest' and center = 'B' "
                      "order by started_at")
    assert [r[0] for r in runs] == ["running", "ok"]  # the killed run never finished
    assert 1 <= flow.scans_at_driver_kill < 6
    rerun = json.loads(runs[1][1])
    assert rerun.get("unchanged", 0) >= flow.scans_at_driver_kill
    assert rerun.get("ingested", 0) + rerun.get("recovered", 0) + rerun.get("unchanged", 0) == 6, rerun
    assert flow.query("select count(*), count(distinct patient_id) from scans where center = 'B'")[0] == (6, 6)


# --- train, serve, predict ----------------------------------------------------------------------------


def test_the_model_is_trained_on_the_ingested_patients_and_promoted(flow: Flow) -> None:
    from atrx import registry

    code, out = flow.retrain
    assert code == 0 and "promoted" in out, out[-3000:]
    assert registry.production(flow.ws) is not None


@pytest.mark.slow  # the server start is the longest step of the module
def test_ingested_patients_predict_200_and_refused_ones_404(flow: Flow, server: tuple[str, Path]) -> None:
    """Also issue 14, item 1 for serving: no HTTP body and no line of the server's log holds a
    planted string, a raw id or the export's path."""
    url, log = server
    bodies = []
    with httpx.Client(base_url=url, headers={"X-API-Key": API_KEY}, timeout=30) as client:
        for patient in sorted(flow.ingested()):
            r = client.post("/predict", json={"patient_id": patient})
            assert r.status_code == 200, (patient, r.text)
            assert r.json()["patient_id"] == patient and 0.0 <= r.json()["probability"] <= 1.0
            bodies.append(r.text)
        for patient in sorted(flow.refused()):
            r = client.post("/predict", json={"patient_id": patient})
            assert r.status_code == 404, (patient, r.status_code, r.text)
            assert "unknown patient id" in r.text and patient not in r.text
            bodies.append(r.text)
        bodies += [client.post("/model", json={}).text,
                   client.post("/predict_batch", json={"patient_ids": sorted(flow.ingested())}).text]
    secrets = _secrets(flow)
    found = {f"body {i}": h for i, text in enumerate(bodies) if (h := _hits(text, secrets))}
    if h := _hits(log.read_text(errors="replace"), secrets):
        found["server log"] = h
    assert not found, found


def _secrets(flow: Flow) -> list[str]:
    """The planted strings, every raw id, and the export's path (as given and resolved)."""
    export = Path(flow.ws.home).parent / "export"
    raws = [r for c in CENTERS for r in healthy_raw(c)] + [f.raw for f in FAULTS]
    return [*PHI, *raws, str(export), str(export.resolve())]


def _hits(text: str, secrets: list[str]) -> list[str]:
    """The secrets in ``text``; a raw id (P + three digits) only as a whole word."""
    import re

    def there(s: str) -> bool:
        if s.startswith("P") and s[1:].isdigit():
            return re.search(rf"(?<!\w){s}(?!\w)", text) is not None
        return s in text

    return [s for s in secrets if there(s)]


def test_no_planted_name_raw_id_or_export_path_anywhere_the_flow_writes(flow: Flow) -> None:
    """Issue 14, item 1 on the whole flow: every catalog table, every file under home (zarr.json,
    the Feast registry, Parquet files read as tables, report.html, logs, the model store) and what
    the commands printed hold no planted string, no raw id and not the export's path (the server's
    bodies and log: test_ingested_patients_predict_200_and_refused_ones_404)."""
    import re

    import pyarrow.parquet as pq

    secrets = _secrets(flow)
    export = Path(flow.ws.home).parent / "export"
    assert any("ZYGMUNTOWICZ" in str(p) for p in export.rglob("*"))  # they really are in the export
    found: dict[str, list[str]] = {}
    tables = [r[0] for r in flow.query("select table_name from information_schema.tables")]
    for table in tables:
        cols = [r[0] for r in flow.query("select column_name from information_schema.columns "
                                         "where table_name = ?", [table])]
        casts = ", ".join(f'CAST("{c}" AS VARCHAR)' for c in cols)
        text = " ".join(str(v) for row in flow.query(f'SELECT {casts} FROM "{table}"') for v in row)
        found.update({f"catalog.{table}": h for h in [_hits(text, secrets)] if h})
    files = [p for p in Path(flow.ws.home).rglob("*") if p.is_file() and p.name != "catalog.duckdb"]
    assert any(p.name == "zarr.json" for p in files) and any(p.suffix == ".parquet" for p in files)
    assert any(p.name == "report.html" for p in files)
    for path in files:
        if path.suffix == ".parquet":
            text = pq.read_table(path).to_pandas().astype(str).to_csv()
        else:
            text = path.read_bytes().decode("latin-1")
        if path.suffix in (".html", ".svg"):  # embedded plots: base64 holds any 4 characters by chance
            text = re.sub(r"base64,[A-Za-z0-9+/=]+", "base64,", text)
        found.update({str(path.relative_to(flow.ws.home)): h for h in [_hits(text, secrets)] if h})
    for i, text in enumerate(OUTPUTS):
        found.update({f"output {i}": h for h in [_hits(text, secrets)] if h})
    assert not found, found
