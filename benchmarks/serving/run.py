"""Serving latency and throughput: ``POST /predict`` on a real BentoML server vs the same work in-process.

A synthetic workspace (three centers, ``--views`` imaging views with ``--features`` features each,
clinical variables and labels) goes through the real pipeline: offline store, Feast apply,
``training.run.run_train`` on a one-feature-type study, promotion, ``run_materialize``. Then:

* server: ``serving.server.serve`` on a free loopback port; ``--requests`` calls of ``/predict``
  at each concurrency (threads, one keep-alive ``httpx.Client`` each), after a warm-up, in
  ``--rounds`` rounds interleaved with the bare endpoint's (both servers up at once);
* baseline: ``serving.predictor.FusionPredictor.predict_ids`` in this process (the same Feast
  online lookup + model call + contributions the service runs), at the same concurrencies;
* bare BentoML: ``benchmarks/serving/bare_service.py``, a BentoML endpoint with the same worker
  and traffic settings serving the same fitted model from rows held in memory (no lookup), called
  by the same client: the real service should reach >= 0.8x its requests per second.

Client and server share the machine's cores, so the server numbers include the client's cost.
p50/p99 in milliseconds, throughput in requests per second; the ratio is server / in-process.

    .venv/bin/python benchmarks/serving/run.py [--patients 120] [--requests 400] [--no-write]
"""

from __future__ import annotations

import argparse
import datetime as dt
import os
import platform
import secrets
import shutil
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import pandas as pd

ROOT = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from _record import publish  # noqa: E402

from atrx.workspace import Workspace  # noqa: E402

CONCURRENCY = (1, 8, 32)
#: the service refuses to start without a key: one per run, sent by the client
BENCH_KEY = secrets.token_urlsafe(32)
CREATED = pd.Timestamp("2024-01-01", tz="UTC")
STUDY = """\
name: bench
imaging:
  feature_types: [radiomics]
  rois: [overall]
  compare_classifiers: [lr]
selection:
  lasso_cv: 3
  lasso_cs: 5
stability:
  min_icc: null  # generated columns have no images to perturb, hence no stability table
"""


def build_workspace(home: Path, patients: int, features: int, seed: int = 0) -> Workspace:
    """Offline store + Feast registry of a synthetic cohort; imaging views rad_overall_{t1c,t2f}."""
    from feature_repo.offline import export_clinical_and_labels, write_offline
    from feature_repo.store import apply

    rng = np.random.default_rng(seed)
    per_center = {"A": 0.4, "B": 0.35, "C": 0.25}
    pids = [f"{c}-{rng.bytes(6).hex()}" for c, f in per_center.items() for _ in range(int(patients * f))]
    n = len(pids)
    y = rng.permutation(np.arange(n) % 2)
    pathology = pd.Timestamp("2019-01-01", tz="UTC") + pd.to_timedelta(rng.integers(0, 1200, n), unit="D")
    scan = pathology - pd.to_timedelta(rng.integers(3, 30, n), unit="D")
    ws = Workspace.at(home)
    ws.ensure()
    views = ("rad_overall_t1c", "rad_overall_t2f")
    names = {v: [f"{v}__f{j:04d}" for j in range(features)] for v in views}
    for view in views:
        values = rng.standard_normal((n, features))
        strong = max(2, features // 8)  # several informative features: the selection keeps more
        values[:, :strong] += 0.9 * (y[:, None] - 0.5)
        meta = pd.DataFrame({"patient_id": pids, "event_timestamp": scan, "created_timestamp": CREATED,
                             "study_id": [f"S-{p}" for p in pids], "scan_version": 1})
        frame = pd.concat([meta, pd.DataFrame(values.astype(np.float32), columns=names[view])], axis=1)
        write_offline(ws, view, "bench-v1", frame, feature_names=names[view])
    clinical = pd.DataFrame({
        "patient_id": pids, "age": rng.normal(54 - 3 * y, 11), "sex": rng.choice(["male", "female"], n),
        "who_grade": np.where(rng.random(n) < 0.45 + 0.15 * y, 4, 3),
        "vasari_score": rng.normal(72.5 - 1.5 * y, 6), "event_timestamp": scan,
    })
    labels = pd.DataFrame({"patient_id": pids, "atrx_status": np.where(y == 1, "mutant", "wildtype"),
                           "pathology_date": pathology.date})
    export_clinical_and_labels(ws, clinical, labels, CREATED)
    apply(ws, {**dict.fromkeys(views, "bench-v1"), "clinical": "v1", "labels": "v1"}, feature_names=names)
    return ws


def prepare(ws: Workspace, study_path: Path) -> tuple[str, list[str]]:
    """Train, promote and materialize; returns the tag and the servable patient ids."""
    from atrx import registry
    from feature_repo.offline import read_offline
    from serving.materialize import run_materialize
    from training.run import run_train

    study_path.write_text(STUDY)
    trained = run_train(ws, as_of="2025-01-01", study_path=study_path)
    registry.promote(ws, trained.tag, reason="benchmark")
    run_materialize(ws)
    return trained.tag, read_offline(ws, "clinical", "v1")["patient_id"].tolist()


def measure(call: Callable[[str], None], ids: Sequence[str], concurrency: int) -> dict[str, float]:
    """Latency percentiles (ms) and throughput (req/s) of ``call`` over ``ids`` with N threads."""
    latencies = np.empty(len(ids))

    def one(i: int) -> None:
        t = time.perf_counter()
        call(ids[i])
        latencies[i] = time.perf_counter() - t

    t0 = time.perf_counter()
    with ThreadPoolExecutor(concurrency) as pool:
        list(pool.map(one, range(len(ids))))
    wall = time.perf_counter() - t0
    return {"p50": 1000 * float(np.percentile(latencies, 50)),
            "p99": 1000 * float(np.percentile(latencies, 99)),
            "rps": len(ids) / wall, "n": len(ids)}


def http_caller(url: str, api_key: str) -> Callable[[str], None]:
    """POST /predict (with ``X-API-Key``) with one keep-alive client per thread; raises on any
    non-200."""
    import httpx

    local = threading.local()
    clients: list[httpx.Client] = []

    def call(pid: str) -> None:
        client = getattr(local, "client", None)
        if client is None:
            client = local.client = httpx.Client(timeout=60, headers={"X-API-Key": api_key})
            clients.append(client)
        r = client.post(f"{url}/predict", json={"patient_id": pid})
        if r.status_code != 200:
            raise RuntimeError(f"HTTP {r.status_code}: {r.text[:200]}")

    call.clients = clients  # type: ignore[attr-defined]
    return call


def over_servers(servers: dict[str, Any], ids: Sequence[str], warm: Sequence[str], timeout: float,
                 rounds: int) -> dict[str, dict[int, list[dict[str, float]]]]:
    """``/predict`` of started servers, interleaved: each round measures every server at every
    concurrency in turn (the order alternating between rounds), so a slow spell of the shared
    machine hits both sides alike; always stops
    them. Returns server -> concurrency -> one measure per round."""
    callers: dict[str, Callable[[str], None]] = {}
    try:
        for name, server in servers.items():
            server.wait_ready(timeout)
            callers[name] = http_caller(server.url, BENCH_KEY)
            for pid in warm:
                callers[name](pid)
        out: dict[str, dict[int, list[dict[str, float]]]] = {
            name: {c: [] for c in CONCURRENCY} for name in servers}
        for r in range(rounds):
            order = list(callers.items())
            if r % 2:  # alternate which server goes first: the first measured after a pause ran slower
                order.reverse()
            for name, call in order:
                for c in CONCURRENCY:
                    out[name][c].append(measure(call, ids, c))
        return out
    finally:
        for call in callers.values():
            for client in call.clients:  # type: ignore[attr-defined]
                client.close()
        for server in servers.values():
            server.stop()


def median_round(measures: list[dict[str, float]]) -> dict[str, float]:
    """The round with the median throughput (its latencies with it)."""
    return sorted(measures, key=lambda m: m["rps"])[len(measures) // 2]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--patients", type=int, default=120)
    ap.add_argument("--features", type=int, default=24, help="features per imaging view")
    ap.add_argument("--requests", type=int, default=400, help="requests per concurrency level")
    ap.add_argument("--warmup", type=int, default=30)
    ap.add_argument("--start-timeout", type=float, default=180.0)
    ap.add_argument("--rounds", type=int, default=3,
                    help="interleaved rounds of ours and the bare endpoint (medians reported)")
    ap.add_argument("--no-write", action="store_true", help="print only; do not append to docs/benchmarks.md")
    args = ap.parse_args()
    os.environ.setdefault("BENTOML_DO_NOT_TRACK", "True")

    from serving.predictor import FusionPredictor
    from serving.server import free_port, serve

    command = (f".venv/bin/python benchmarks/serving/run.py --patients {args.patients} --features "
               f"{args.features} --requests {args.requests} --rounds {args.rounds}")
    load = ", ".join(f"{v:.1f}" for v in os.getloadavg())
    tmp = Path(tempfile.mkdtemp(prefix="atrx-bench-serving-"))
    rows: list[str] = []
    bare_rows: list[str] = []
    try:
        ws = build_workspace(tmp / "home", args.patients, args.features)
        tag, pids = prepare(ws, tmp / "study.yaml")
        predictor = FusionPredictor.load(ws)
        n_features = len(predictor.served.required_features)
        rng = np.random.default_rng(1)
        ids = [pids[i] for i in rng.integers(0, len(pids), args.requests)]
        warm = ids[: args.warmup]

        def local(pid: str) -> None:
            predictor.predict_ids([pid])

        for pid in warm:
            local(pid)
        inproc = {c: measure(local, ids, c) for c in CONCURRENCY}

        # the service requires a key (the bare one ignores it; both get the same header)
        servers = {"ours": serve(ws, free_port(), api_key=BENCH_KEY, log_file=tmp / "server.log")}
        servers["bare"] = serve(ws, free_port(), api_key=BENCH_KEY, log_file=tmp / "bare.log",
                                check=False, service="benchmarks.serving.bare_service:BareLR")
        rounds = over_servers(servers, ids, warm, args.start_timeout, args.rounds)
        over_http = {c: median_round(rounds["ours"][c]) for c in CONCURRENCY}
        over_bare = {c: median_round(rounds["bare"][c]) for c in CONCURRENCY}
        ratios = {c: sorted(o["rps"] / b["rps"] for o, b in zip(rounds["ours"][c], rounds["bare"][c],
                                                                 strict=True))
                  for c in CONCURRENCY}

        for c in CONCURRENCY:
            s, b = over_http[c], inproc[c]
            print(f"concurrency {c:>2}: server p50 {s['p50']:.2f} ms p99 {s['p99']:.2f} ms "
                  f"{s['rps']:.0f} req/s | in-process p50 {b['p50']:.2f} ms p99 {b['p99']:.2f} ms "
                  f"{b['rps']:.0f} req/s")
            rows += [
                f"| /predict p50 ms, concurrency {c} | {s['p50']:.2f} | {b['p50']:.2f} | "
                f"{s['p50'] / b['p50']:.2f} |",
                f"| /predict p99 ms, concurrency {c} | {s['p99']:.2f} | {b['p99']:.2f} | "
                f"{s['p99'] / b['p99']:.2f} |",
                f"| /predict throughput req/s (higher is better), concurrency {c} | {s['rps']:.0f} | "
                f"{b['rps']:.0f} | {s['rps'] / b['rps']:.2f} |",
            ]
            per_round = ", ".join(f"{r:.2f}" for r in ratios[c])
            bare_rows.append(f"| {c} | {s['rps']:.0f} | {over_bare[c]['rps']:.0f} | "
                             f"{ratios[c][len(ratios[c]) // 2]:.2f} | {per_round} |")
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    lines = [
        f"\n### Serving, {dt.date.today()} ({platform.processor() or platform.machine()}, "
        f"{os.cpu_count()} cores, load average at start {load})\n",
        f"Command: `{command}`\n",
        f"Model {tag.split(':')[0]} with {n_features} online features from "
        f"{len(predictor.served.views)} views (SQLite online store), {args.requests} requests per "
        "level after a warm-up, loopback, 1 BentoML worker; the client threads share the cores "
        "with the server. Baseline: the same Feast lookup + model call + nomogram points "
        "in-process (`FusionPredictor.predict_ids`). Latencies in ms (lower is better).\n",
        "| measure | server (HTTP) | in-process | ratio (server / in-process) |",
        "|---|---|---|---|",
        *rows,
        "",
        "Against a bare BentoML endpoint serving the same fitted model from rows in memory (no "
        "lookup; `benchmarks/serving/bare_service.py`), same client, same run, both servers up "
        f"and measured in turn (the first one alternating) over {args.rounds} interleaved rounds (median round; the ratio is the "
        "median of the rounds' ratios); target >= 0.8:",
        "",
        "| concurrency | /predict req/s (ours) | bare BentoML req/s | ratio | ratio per round |",
        "|---|---|---|---|---|",
        *bare_rows,
    ]
    publish("\n".join(lines) + "\n", write=not args.no_write)


if __name__ == "__main__":
    main()
