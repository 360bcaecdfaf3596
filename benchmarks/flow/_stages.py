"""Helpers of ``benchmarks/flow/run.py``: run one stage as a subprocess and measure its process
tree; start and stop ``atrx serve``; time the ingest preprocessing steps in-process."""

from __future__ import annotations

import os
import resource
import signal
import subprocess
import sys
import tempfile
import threading
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import psutil

ROOT = Path(__file__).resolve().parents[2]
POLL_S = 0.2


@dataclass
class Stage:
    """One stage's measurements. ``patients`` None: a fixed cost (no per-patient figure)."""

    name: str
    command: str
    wall_s: float
    cpu_s: float
    peak_gib: float
    patients: int | None
    rc: int = 0
    note: str = ""

    @property
    def per_patient(self) -> float | None:
        return self.cpu_s / self.patients if self.patients else None


class TreeMonitor(threading.Thread):
    """Polls a process and all its descendants every ``POLL_S`` seconds: per pid the last seen
    user+system CPU (dead processes keep their last value) and the largest summed RSS of one poll."""

    def __init__(self, pid: int) -> None:
        super().__init__(daemon=True)
        self.root = psutil.Process(pid)
        self.procs: dict[tuple[int, float], psutil.Process] = {}
        self.cpu_by_pid: dict[tuple[int, float], float] = {}
        self.peak_rss = 0
        self._halt = threading.Event()
        self._lock = threading.Lock()

    def poll(self) -> None:
        try:
            procs = [self.root, *self.root.children(recursive=True)]
        except psutil.Error:
            procs = [self.root]
        rss = 0
        with self._lock:
            for p in procs:
                try:
                    with p.oneshot():
                        t, m = p.cpu_times(), p.memory_info().rss
                    key = (p.pid, p.create_time())
                except psutil.Error:
                    continue
                self.procs[key] = p
                self.cpu_by_pid[key] = t.user + t.system
                rss += m
            self.peak_rss = max(self.peak_rss, rss)

    def run(self) -> None:
        while not self._halt.is_set():
            self.poll()
            self._halt.wait(POLL_S)

    def cpu(self) -> float:
        with self._lock:
            return sum(self.cpu_by_pid.values())

    def stop(self) -> None:
        self._halt.set()
        self.join(timeout=5)

    def kill_leftovers(self) -> int:
        """SIGKILL descendants seen by this monitor that still run (only processes this run started)."""
        n = 0
        for p in list(self.procs.values()):
            if p.pid != os.getpid() and p.is_running():
                try:
                    p.kill()
                    n += 1
                except psutil.Error:
                    pass
        return n


def _children_cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_CHILDREN)
    return r.ru_utime + r.ru_stime


def run_stage(name: str, argv: list[str], env: dict[str, str], log_dir: Path, patients: int | None,
              shown: str | None = None) -> Stage:
    """Run ``argv`` to its end; CPU from getrusage(RUSAGE_CHILDREN) around it (the stage and every
    descendant reaped under it), or the tree poll when that saw more (a descendant not reaped)."""
    log = log_dir / f"{name}.log"
    cpu0, t0 = _children_cpu(), time.perf_counter()
    with log.open("wb") as fh:
        proc = subprocess.Popen(argv, cwd=ROOT, env=env, stdin=subprocess.DEVNULL, stdout=fh,
                                stderr=subprocess.STDOUT)
        mon = TreeMonitor(proc.pid)
        mon.start()
        rc = proc.wait()
        wall = time.perf_counter() - t0
    mon.stop()
    cpu_rusage, cpu_poll = _children_cpu() - cpu0, mon.cpu()
    note = "CPU from the tree poll (some descendant was not reaped)" if cpu_poll > 1.05 * cpu_rusage else ""
    stage = Stage(name, shown or " ".join(argv), wall, max(cpu_rusage, cpu_poll), mon.peak_rss / 2**30,
                  patients, rc, note)
    if rc != 0:
        stage.note = f"exit code {rc}; log {log}"
    return stage


def log_tail(log_dir: Path, name: str, chars: int = 3000) -> str:
    path = log_dir / f"{name}.log"
    return path.read_text(errors="replace")[-chars:] if path.is_file() else ""


def wait_ready(url: str, key: str, proc: subprocess.Popen[bytes], timeout: float) -> None:
    deadline = time.monotonic() + timeout
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"atrx serve exited with code {proc.returncode} while starting")
        try:
            req = urllib.request.Request(f"{url}/readyz", headers={"X-API-Key": key})
            with urllib.request.urlopen(req, timeout=2) as r:
                if r.status == 200:
                    return
                last = f"HTTP {r.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.1)
    raise RuntimeError(f"{url}/readyz not ready after {timeout:.0f} s ({last})")


def serve_and_predict(atrx: list[str], env: dict[str, str], log_dir: Path, port: int, patient: str,
                      ready_timeout: float = 300.0) -> list[Stage]:
    """``atrx serve`` until /readyz answers, then one ``atrx predict``, then SIGTERM.

    serve: wall and CPU (tree poll) from the start to /readyz. first predict: the client's wall;
    CPU = the client process (getrusage) + what the server's tree spent meanwhile (tree poll)."""
    url = f"http://127.0.0.1:{port}"
    key = env["ATRX_API_KEY"]
    log = (log_dir / "serve.log").open("wb")
    t0 = time.perf_counter()
    proc = subprocess.Popen([*atrx, "serve", "--port", str(port)], cwd=ROOT, env=env,
                            stdin=subprocess.DEVNULL, stdout=log, stderr=subprocess.STDOUT)
    mon = TreeMonitor(proc.pid)
    mon.start()
    stages: list[Stage] = []
    try:
        wait_ready(url, key, proc, ready_timeout)
        mon.poll()
        stages.append(Stage("serve", f"atrx serve --port {port}  (start to /readyz)",
                            time.perf_counter() - t0, mon.cpu(), mon.peak_rss / 2**30, None))
        server_cpu0 = mon.cpu()
        predict = run_stage("predict", [*atrx, "predict", patient, "--url", url], env, log_dir, 1,
                            shown="atrx predict <pseudonym> --url ...  (first request)")
        mon.poll()
        predict.cpu_s += mon.cpu() - server_cpu0
        predict.note = (predict.note + "; " if predict.note else "") + (
            f"server side {mon.cpu() - server_cpu0:.2f} CPU-s included")
        stages.append(predict)
    finally:
        if proc.poll() is None:
            proc.send_signal(signal.SIGTERM)
            try:
                proc.wait(timeout=60)
            except subprocess.TimeoutExpired:
                print("atrx serve did not stop within 60 s of SIGTERM; killing it", file=sys.stderr)
        mon.stop()
        left = mon.kill_leftovers()
        if left:
            print(f"killed {left} server process(es) left after SIGTERM", file=sys.stderr)
        log.close()
    return stages


def free_port() -> int:
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


#: pipeline step names -> the names the issue uses, in the order the pipeline runs them
STEP_LABELS = {
    "read": "read (DICOM/NIfTI/NRRD)", "inputs": "inputs (fingerprints)", "reorient": "reorient",
    "check_geometry": "check geometry", "n4_bias_correct": "N4 bias correction",
    "register_rigid": "registration (rigid)", "output_grid": "output grid",
    "resample": "resampling", "brain_mask": "brain mask", "zscore": "z-score",
    "derive_rois": "derive ROIs", "zarr_write": "Zarr write (+ content hash)",
}


def step_shares(cohort: Path, per_center: int) -> tuple[dict[str, float], list[tuple[str, str, float]]]:
    """benchmarks/ingest/steps.py's ``profile`` on ``cohort`` (one thread, in this process), with
    each result also written to a scratch Zarr store by ``atrx.imagestore.write_version`` (timed
    as ``zarr_write``), as the worker does after preprocessing."""
    import importlib.util

    spec = importlib.util.spec_from_file_location("_bench_ingest_steps", ROOT / "benchmarks/ingest/steps.py")
    assert spec is not None and spec.loader is not None
    steps = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(steps)
    from atrx.imagestore import write_version
    from ingest.preprocess import pipeline

    original = pipeline.preprocess_study
    extra: dict[str, float] = {"zarr_write": 0.0}
    with tempfile.TemporaryDirectory(prefix="atrx-flow-zarr-") as scratch:
        def with_write(*args: Any, **kwargs: Any) -> Any:
            out = original(*args, **kwargs)
            t = time.process_time()
            write_version(scratch, f"s{sum(1 for _ in Path(scratch).iterdir())}", out.arrays,
                          {"steps": out.steps, "geometry": out.geometry,
                           "shape": list(out.arrays["t1c"].shape)})
            extra["zarr_write"] += time.process_time() - t
            return out

        pipeline.preprocess_study = with_write  # type: ignore[assignment]
        try:
            times, rows = steps.profile(cohort, per_center)
        finally:
            pipeline.preprocess_study = original  # type: ignore[assignment]
    return {**times, **extra}, rows
