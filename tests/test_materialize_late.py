"""New patients reach the online store: a new center with OLDER scans, and a re-extracted scan.

Feast's incremental materialisation selects rows by event time (our scan date) after the previous
run's end, so both cases would never be served. Each case runs end to end on a real workspace
(``write_offline`` + ``apply`` as the features job writes them), a trained and promoted model, a
REAL ``bentoml serve`` on a free port and ``serving.materialize.run_materialize``, once with the
workspace's SQLite online store and once with **Redis** (``redis-server`` started here on a free
loopback port, the production store of ``infra/``; skipped when the binary is missing, unless
``ATRX_REQUIRE_REDIS=1`` as in CI). Redis skips writes whose event time is not newer than the
stored one: the re-extracted scan proves our runs replace it anyway.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import numpy as np
import pandas as pd
import pytest
from test_serving import API_KEY, START_TIMEOUT, TINY_STUDY, VIEWS, build_workspace, feature_names

from atrx.workspace import Workspace

pytestmark = pytest.mark.timeout(600)

NEW_CENTER = [f"D-{i:012x}" for i in range(1, 7)]  # pseudonyms of the newly onboarded center
OLD_SCAN = pd.Timestamp("2012-03-01", tz="UTC")  # years before every scan of A, B and C


@pytest.fixture(scope="module")
def redis_port(tmp_path_factory: pytest.TempPathFactory) -> Iterator[int]:
    from serving.server import free_port

    binary = shutil.which("redis-server")
    if binary is None:
        if os.environ.get("ATRX_REQUIRE_REDIS") == "1":
            pytest.fail("redis-server is not installed (apt-get install redis-server)")
        pytest.skip("redis-server is not installed (apt-get install redis-server)")
    port = free_port()
    workdir = tmp_path_factory.mktemp("redis")
    proc = subprocess.Popen([binary, "--port", str(port), "--bind", "127.0.0.1", "--save", "",
                             "--appendonly", "no", "--dir", str(workdir)],
                            stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        import redis

        client = redis.Redis(host="127.0.0.1", port=port)
        for _ in range(100):
            try:
                client.ping()
                break
            except redis.ConnectionError:
                time.sleep(0.1)
        else:
            pytest.fail(f"redis-server did not answer on port {port}")
        yield port
    finally:
        proc.terminate()
        proc.wait(timeout=30)


@pytest.fixture(params=["sqlite", "redis"])
def setup(request: pytest.FixtureRequest, tmp_path: Path,
          monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[Workspace, object]]:
    """A promoted model, its views materialized, and a server reading the chosen online store."""
    from atrx import registry
    from serving.materialize import run_materialize
    from serving.online import FEAST_CONFIG_ENV
    from serving.server import free_port, serve
    from training.run import run_train

    ws = build_workspace(tmp_path / "home")
    if request.param == "redis":
        port = request.getfixturevalue("redis_port")
        yaml = tmp_path / "feature_store.yaml"
        yaml.write_text(json.dumps({
            "project": "atrx", "provider": "local",
            "registry": {"registry_type": "file", "path": ws.feast_registry},
            "online_store": {"type": "redis", "connection_string": f"127.0.0.1:{port}"},
            "offline_store": {"type": "duckdb"},
            "entity_key_serialization_version": 3,
        }))
        monkeypatch.setenv(FEAST_CONFIG_ENV, str(yaml))
    study = tmp_path / "tiny.yaml"
    study.write_text(TINY_STUDY)
    trained = run_train(ws, as_of="2025-01-01", study_path=study)
    registry.promote(ws, trained.tag, reason="test")
    first = run_materialize(ws)
    assert set(first.reloaded.values()) == {"first run"}
    handle = serve(ws, free_port(), api_key=API_KEY, log_file=tmp_path / "server.log")
    try:
        handle.wait_ready(START_TIMEOUT)
        yield ws, handle
    finally:
        handle.stop()


def predict(server, pid: str) -> httpx.Response:
    return httpx.post(f"{server.url}/predict", json={"patient_id": pid},
                      headers={"X-API-Key": API_KEY}, timeout=30)


def offline_probability(ws: Workspace, pid: str) -> float:
    """The production model on the patient's newest offline row of every view it reads."""
    from atrx import registry
    from feature_repo.offline import read_offline
    from serving.model import feature_views_of

    model = registry.load_model(ws)
    row = {}
    for view, names in feature_views_of(model.required_features).items():
        frame = read_offline(ws, view, "v1" if view == "clinical" else "test-v1")
        frame = frame[frame["patient_id"] == pid].sort_values(["event_timestamp", "created_timestamp"])
        row.update(frame.iloc[-1][list(names)].to_dict())
    return float(model.predict_proba(pd.DataFrame([row])[model.required_features])[0, 1])


def onboard_old_center(ws: Workspace, seed: int = 5) -> None:
    """Write center D's rows as the features job and the clinical export would, scans from 2012."""
    from feature_repo.offline import export_clinical_and_labels, read_offline, write_offline

    rng = np.random.default_rng(seed)
    now = pd.Timestamp.now(tz="UTC")
    n = len(NEW_CENTER)
    for view in VIEWS:
        meta = pd.DataFrame({"patient_id": NEW_CENTER, "event_timestamp": OLD_SCAN,
                             "created_timestamp": now, "study_id": [f"S-{p}" for p in NEW_CENTER],
                             "scan_version": 1})
        values = pd.DataFrame(rng.standard_normal((n, len(feature_names(view)))).astype(np.float32),
                              columns=feature_names(view))
        write_offline(ws, view, "test-v1", pd.concat([meta, values], axis=1),
                      feature_names=feature_names(view))
    clinical = read_offline(ws, "clinical", "v1")
    labels = read_offline(ws, "labels", "v1")
    new_clinical = pd.DataFrame({"patient_id": NEW_CENTER, "age": rng.normal(50, 10, n),
                                 "sex": rng.choice(["male", "female"], n), "who_grade": 4,
                                 "vasari_score": rng.normal(70, 5, n), "event_timestamp": OLD_SCAN})
    new_labels = pd.DataFrame({"patient_id": NEW_CENTER, "atrx_status": "mutant",
                               "pathology_date": (OLD_SCAN + pd.Timedelta(days=10)).date()})
    old_labels = pd.DataFrame({"patient_id": labels["patient_id"], "atrx_status": labels["atrx_status"],
                               "pathology_date": labels["event_timestamp"].dt.date})
    export_clinical_and_labels(
        ws, pd.concat([clinical[new_clinical.columns], new_clinical], ignore_index=True),
        pd.concat([old_labels, new_labels], ignore_index=True), now)


def reextract(ws: Workspace, pid: str) -> None:
    """A new scan version of an old study: same scan date, new values, written now."""
    from feature_repo.offline import read_offline, write_offline

    for view in VIEWS:
        old = read_offline(ws, view, "test-v1")
        row = old[old["patient_id"] == pid].iloc[[-1]].reset_index(drop=True)
        row["created_timestamp"] = pd.Timestamp.now(tz="UTC")
        row["scan_version"] = 2
        names = feature_names(view)
        row[names] = (row[names].to_numpy() + 2.5).astype(np.float32)
        write_offline(ws, view, "test-v1", row[["patient_id", "event_timestamp", "created_timestamp",
                                                "study_id", "scan_version", *names]],
                      feature_names=names)


def test_new_center_with_older_scans_and_a_reextracted_scan_are_served(setup) -> None:
    from serving.materialize import run_materialize

    ws, server = setup
    known = next(p for p in _pids(ws) if p.startswith("A-"))
    first = predict(server, known)
    assert first.status_code == 200, first.text
    unknown = predict(server, NEW_CENTER[0])
    assert unknown.status_code == 404, unknown.text  # not onboarded yet

    onboard_old_center(ws)
    summary = run_materialize(ws)
    assert summary.reloaded and all("older scan dates" in why for why in summary.reloaded.values())
    assert any(k.startswith("reloaded ") for k, _ in summary.rows())
    for pid in NEW_CENTER[:3]:
        answer = predict(server, pid)
        assert answer.status_code == 200, answer.text
        assert answer.json()["probability"] == pytest.approx(offline_probability(ws, pid), rel=1e-9)

    unchanged = run_materialize(ws)  # nothing new since: incremental only
    assert unchanged.reloaded == {}

    before = predict(server, known).json()["probability"]
    reextract(ws, known)
    again = run_materialize(ws)
    assert again.reloaded
    after = predict(server, known).json()["probability"]
    assert after != before
    assert after == pytest.approx(offline_probability(ws, known), rel=1e-9)


def _pids(ws: Workspace) -> list[str]:
    from feature_repo.offline import read_offline

    return sorted(read_offline(ws, "rad_overall_t1c", "test-v1")["patient_id"])
