"""Deployment files: every YAML parses and the fields that matter are what the code expects.

No cluster is needed: the manifests are read as data; ``infra/cron/retrain.sh`` is run against a
stand-in ``atrx`` for each exit code of ``atrx retrain``.
"""

from __future__ import annotations

import ast
import os
import re
import stat
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

ROOT = Path(__file__).resolve().parents[1]
INFRA = ROOT / "infra"
YAML_FILES = sorted([*INFRA.rglob("*.yaml"), *INFRA.rglob("*.yml")])


def docs(path: Path) -> list[dict[str, Any]]:
    return [d for d in yaml.safe_load_all(path.read_text()) if d is not None]


def only(path: Path, kind: str) -> dict[str, Any]:
    found = [d for d in docs(path) if d.get("kind") == kind]
    assert len(found) == 1, f"{path.name}: expected one {kind}, found {len(found)}"
    return found[0]


def env_of(container: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in container.get("env", [])}


def pod_specs(doc: dict[str, Any]) -> list[dict[str, Any]]:
    """Every pod spec inside a workload manifest."""
    kind = doc.get("kind")
    if kind == "DaskCluster":
        return [doc["spec"]["scheduler"]["spec"], doc["spec"]["worker"]["spec"]]
    if kind == "DaskWorkerGroup":
        return [doc["spec"]["worker"]["spec"]]
    if kind == "Deployment":
        return [doc["spec"]["template"]["spec"]]
    if kind == "CronJob":
        return [doc["spec"]["jobTemplate"]["spec"]["template"]["spec"]]
    return []


def containers(spec: dict[str, Any]) -> list[dict[str, Any]]:
    return [*spec.get("initContainers", []), *spec.get("containers", [])]


_CRON_FIELD = re.compile(r"^(\*|\d+(-\d+)?)(/\d+)?(,(\*|\d+(-\d+)?)(/\d+)?)*$")
_CRON_RANGES = [(0, 59), (0, 23), (1, 31), (1, 12), (0, 7)]


def valid_cron(expr: str) -> bool:
    """Five standard cron fields, numbers within range (no names or macros)."""
    fields = expr.split()
    if len(fields) != 5:
        return False
    for field, (lo, hi) in zip(fields, _CRON_RANGES, strict=True):
        if not _CRON_FIELD.match(field):
            return False
        for number in re.findall(r"\d+", re.sub(r"/\d+", "", field)):
            if not lo <= int(number) <= hi:
                return False
    return True


def test_cron_validator() -> None:
    assert valid_cron("30 2 * * 1") and valid_cron("*/15 0-6 1,15 * 0")
    assert not valid_cron("30 2 * *") and not valid_cron("61 2 * * 1")
    assert not valid_cron("30 24 * * 1") and not valid_cron("@weekly")


@pytest.mark.parametrize("path", YAML_FILES, ids=lambda p: str(p.relative_to(INFRA)))
def test_every_yaml_parses(path: Path) -> None:
    parsed = docs(path)
    assert parsed, f"{path} holds no YAML document"
    for doc in parsed:
        assert isinstance(doc, dict)
        if "apiVersion" in doc:
            assert doc.get("kind") and doc.get("metadata", {}).get("name")


def test_every_workload_has_images_and_the_workspace_env() -> None:
    workloads = [d for p in YAML_FILES for d in docs(p) if pod_specs(d)]
    assert {d["kind"] for d in workloads} == {"DaskCluster", "DaskWorkerGroup", "Deployment",
                                              "CronJob"}
    for doc in workloads:
        for spec in pod_specs(doc):
            for c in containers(spec):
                assert re.match(r"^[\w.\-/]+:[\w.\-]+$", c["image"]), c["image"]
                assert c["image"].split(":")[-1] != "latest"
                mounts = {m["mountPath"] for m in c.get("volumeMounts", [])}
                if "/data/atrx" in mounts:  # whoever mounts the workspace must be told where
                    env = env_of(c)
                    assert env["ATRX_HOME"] == "/data/atrx", (doc["kind"], c["name"])
                    assert env["BENTOML_HOME"] == "/data/atrx/bentoml", (doc["kind"], c["name"])
            claims = [v["persistentVolumeClaim"]["claimName"] for v in spec.get("volumes", [])
                      if "persistentVolumeClaim" in v]
            assert set(claims) <= {"atrx-home"}
    pvc = only(INFRA / "k8s" / "storage.yaml", "PersistentVolumeClaim")
    assert pvc["metadata"]["name"] == "atrx-home"
    assert pvc["spec"]["accessModes"] == ["ReadWriteMany"]


def test_dask_cluster_gpu_workers() -> None:
    path = INFRA / "dask" / "daskcluster.yaml"
    cluster = only(path, "DaskCluster")
    assert cluster["apiVersion"] == "kubernetes.dask.org/v1"
    (scheduler,) = cluster["spec"]["scheduler"]["spec"]["containers"]
    (worker,) = cluster["spec"]["worker"]["spec"]["containers"]
    assert scheduler["args"][0] == "dask-scheduler"
    ports = {p["port"] for p in cluster["spec"]["scheduler"]["service"]["ports"]}
    assert 8786 in ports
    args = worker["args"]
    assert args[0] == "dask-cuda-worker"
    # one GPU unit per task thread: each GPU task asks for one (features.compute), the threads
    # match the CPUs the pod requests, so tasks share the GPU and nothing oversubscribes the cores
    threads = int(args[args.index("--nthreads") + 1])
    assert args[args.index("--resources") + 1] == f"GPU={threads}"
    assert threads == int(worker["resources"]["requests"]["cpu"]) > 1
    assert "$(DASK_WORKER_NAME)" in args
    for section in ("limits", "requests"):
        assert int(worker["resources"][section]["nvidia.com/gpu"]) == 1
    tolerations = cluster["spec"]["worker"]["spec"]["tolerations"]
    assert any(t["key"] == "nvidia.com/gpu" for t in tolerations)
    assert scheduler["image"] == worker["image"]  # dask refuses mismatched versions

    group = only(path, "DaskWorkerGroup")
    assert group["spec"]["cluster"] == cluster["metadata"]["name"]
    (cpu,) = group["spec"]["worker"]["spec"]["containers"]
    assert cpu["args"][0] == "dask-worker" and cpu["image"] == worker["image"]
    assert "--resources" not in cpu["args"]
    assert "nvidia.com/gpu" not in cpu["resources"].get("limits", {})


def test_production_feature_store_yaml() -> None:
    prod = docs(INFRA / "feast" / "feature_store.yaml")[0]
    local = docs(ROOT / "feature_repo" / "feature_store.yaml")[0]
    for key in ("project", "provider", "entity_key_serialization_version"):
        assert prod[key] == local[key], key
    assert prod["online_store"]["type"] == "redis"
    assert prod["online_store"]["redis_type"] in ("redis", "redis_cluster", "redis_sentinel")
    assert "${REDIS_HOST}" in prod["online_store"]["connection_string"]
    assert prod["registry"]["path"].startswith("s3://")
    assert prod["offline_store"]["type"] == "duckdb"
    assert prod["offline_store"]["staging_location"].startswith("s3://")
    text = (INFRA / "feast" / "feature_store.yaml").read_text()
    assert "s3://atrx-feature-store/offline/" in text  # where the Parquet parts live


def test_production_feature_store_yaml_keys_are_feasts(tmp_path: Path) -> None:
    """Everything but the Redis block validates against Feast's own config model."""
    from feast import RepoConfig

    prod = docs(INFRA / "feast" / "feature_store.yaml")[0]
    prod["online_store"] = {"type": "sqlite", "path": str(tmp_path / "online.db")}
    config = RepoConfig(**prod, repo_path=tmp_path)
    assert config.registry.path.startswith("s3://")
    assert config.offline_store.staging_location.startswith("s3://")


def test_production_feature_store_yaml_validates_with_feast(monkeypatch) -> None:
    pytest.importorskip("redis", reason="feast[redis] is not installed here; the Bento installs it")
    from feast.repo_config import load_repo_config

    monkeypatch.setenv("REDIS_HOST", "redis.example.org")
    monkeypatch.setenv("REDIS_PASSWORD", "x")
    path = INFRA / "feast" / "feature_store.yaml"
    config = load_repo_config(path.parent, path)
    assert config.online_store.type == "redis"


def test_serving_deployment() -> None:
    path = INFRA / "k8s" / "serving.yaml"
    deployment = only(path, "Deployment")
    service = only(path, "Service")
    spec = deployment["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    assert container["args"][0] == "serve"
    env = env_of(container)
    assert env["ATRX_API_KEY"]["secretKeyRef"]["name"] == "atrx-serving"
    feast_cfg = Path(env["ATRX_FEAST_CONFIG"])
    mounts = {m["name"]: m["mountPath"] for m in container["volumeMounts"]}
    assert str(feast_cfg.parent) == mounts["feast-config"]
    volumes = {v["name"]: v for v in spec["volumes"]}
    assert volumes["feast-config"]["configMap"]["name"] == "atrx-feast"
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/livez"
    port = container["ports"][0]
    assert port["containerPort"] == 3000 and container["args"][-1] == "3000"
    assert service["spec"]["selector"] == deployment["spec"]["selector"]["matchLabels"]
    assert service["spec"]["ports"][0]["targetPort"] == port["name"]
    from serving.service import OPEN_PATHS

    assert {"/readyz", "/livez"} <= OPEN_PATHS  # probes need no API key
    assert OPEN_PATHS == {"/livez", "/readyz", "/metrics"} and "ATRX_NO_AUTH" not in env


def test_retrain_cronjob() -> None:
    path = INFRA / "k8s" / "retrain-cronjob.yaml"
    cron = only(path, "CronJob")
    spec = cron["spec"]
    assert valid_cron(spec["schedule"])
    assert spec["concurrencyPolicy"] == "Forbid"
    job = spec["jobTemplate"]["spec"]
    pod = job["template"]["spec"]
    assert pod["restartPolicy"] == "Never"  # required by podFailurePolicy
    (retrain,) = pod["initContainers"]
    assert retrain["command"][-1] == "/opt/atrx-cron/retrain.sh"
    env = env_of(retrain)
    assert env["ATRX_DECISION_FILE"].startswith("/shared/")
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert volumes["retrain-script"]["configMap"]["name"] == "atrx-retrain-script"
    (rule,) = job["podFailurePolicy"]["rules"]
    assert rule["action"] == "FailJob" and rule["onExitCodes"]["values"] == [2]
    assert rule["onExitCodes"]["containerName"] == "retrain"
    (rollout,) = pod["containers"]
    script = rollout["command"][-1]
    deployment = only(INFRA / "k8s" / "serving.yaml", "Deployment")["metadata"]["name"]
    assert f"rollout restart deployment/{deployment}" in script and "promoted" in script
    role = only(path, "Role")
    assert role["rules"][0]["resourceNames"] == [deployment]
    binding = only(path, "RoleBinding")
    assert binding["subjects"][0]["name"] == pod["serviceAccountName"]


def test_crontab_example() -> None:
    lines = [
        line for line in (INFRA / "cron" / "crontab.example").read_text().splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    assert lines
    cron_schedule = only(INFRA / "k8s" / "retrain-cronjob.yaml", "CronJob")["spec"]["schedule"]
    for line in lines:
        fields = line.split(None, 5)
        assert valid_cron(" ".join(fields[:5])), line
        assert " ".join(fields[:5]) == cron_schedule
        assert "flock -n" in fields[5] and "infra/cron/retrain.sh" in fields[5]
        assert "ATRX_HOME=" in fields[5]


@pytest.fixture
def fake_atrx(tmp_path: Path) -> Path:
    """An ``atrx`` that logs its arguments and exits with $FAKE_RETRAIN_RC / $FAKE_MATERIALIZE_RC."""
    script = tmp_path / "atrx"
    script.write_text(
        "#!/bin/sh\n"
        'echo "$*" >> "$FAKE_LOG"\n'
        'case "$1" in\n'
        '  retrain) exit "${FAKE_RETRAIN_RC:-0}" ;;\n'
        '  materialize) exit "${FAKE_MATERIALIZE_RC:-0}" ;;\n'
        "esac\n"
        "exit 99\n"
    )
    script.chmod(script.stat().st_mode | stat.S_IXUSR)
    return script


@pytest.mark.parametrize(
    ("retrain_rc", "materialize_rc", "exit_code", "decision", "materialized", "hooked"),
    [
        (0, 0, 0, "promoted", True, True),
        (0, 1, 1, "failed", True, False),
        (10, 0, 0, "kept", False, False),
        (2, 0, 2, "bad_input", False, False),
        (1, 0, 1, "failed", False, False),
        (137, 0, 1, "failed", False, False),
    ],
)
def test_retrain_script_acts_on_exit_codes(
    tmp_path: Path, fake_atrx: Path, retrain_rc: int, materialize_rc: int, exit_code: int,
    decision: str, materialized: bool, hooked: bool,
) -> None:
    log, hook, decision_file = tmp_path / "calls", tmp_path / "hooked", tmp_path / "decision"
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "ATRX_HOME": str(tmp_path / "home"),
        "ATRX_BIN": str(fake_atrx),
        "ATRX_DECISION_FILE": str(decision_file),
        "ATRX_ON_PROMOTE": f"touch {hook}",
        "FAKE_LOG": str(log),
        "FAKE_RETRAIN_RC": str(retrain_rc),
        "FAKE_MATERIALIZE_RC": str(materialize_rc),
    }
    done = subprocess.run(
        ["sh", str(INFRA / "cron" / "retrain.sh"), "--as-of", "2025-01-01"],
        env=env, capture_output=True, text=True, timeout=60, check=False,
    )
    assert done.returncode == exit_code, done.stdout + done.stderr
    assert decision_file.read_text().strip() == decision
    calls = log.read_text().splitlines()
    assert calls[0] == f"retrain --home {tmp_path / 'home'} --as-of 2025-01-01"
    assert (f"materialize --home {tmp_path / 'home'}" in calls) == materialized
    assert hook.exists() == hooked


def test_bentofile_builds_the_service() -> None:
    bentofile = docs(ROOT / "bentofile.yaml")[0]
    assert bentofile["service"] == "serving.service:ATRXService"
    for pattern in bentofile["include"]:
        assert list(ROOT.glob(pattern)), f"include pattern {pattern!r} matches no file"
    packages = {re.split(r"[\[=<>]", p)[0] for p in bentofile["python"]["packages"]}
    assert {"bentoml", "feast", "scikit-learn", "pandas", "statsmodels"} <= packages
    assert "redis" in next(p for p in bentofile["python"]["packages"] if p.startswith("feast"))
    assert bentofile["python"]["lock_packages"] is False  # builds offline
    # every module the served model unpickles and the service imports is shipped
    included = {str(p.relative_to(ROOT)) for pat in bentofile["include"] for p in ROOT.glob(pat)}
    needed = our_imports(["serving.service", *PICKLED_MODEL_MODULES])
    for module in ("serving/service.py", "serving/predictor.py", "training/fusion.py",
                   "atrx/registry.py", "feature_repo/store.py", "atrx/workspace.py"):
        assert module in included and module in needed
    assert not needed - included, f"add to bentofile.yaml's include: {sorted(needed - included)}"
    module, name = bentofile["service"].split(":")
    service = getattr(__import__(module, fromlist=[name]), name)
    assert {"predict", "predict_batch", "predict_features"} <= set(service.apis)


#: modules the registry's pickled model references by import path (its class and what that imports)
PICKLED_MODEL_MODULES = ("training.fusion", "training.harmonised", "training.reference_norm")
OUR_PACKAGES = ("atrx", "feature_repo", "serving", "training", "ingest", "features")


def _module_file(name: str) -> Path | None:
    path = ROOT.joinpath(*name.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def our_imports(start: list[str]) -> set[str]:
    """Files of every module of ours that ``start`` imports, transitively, read from the source:
    imports inside functions count (they run when a request does), and so do the packages'
    ``__init__.py``."""
    seen: set[Path] = set()
    todo = list(start)
    while todo:
        name = todo.pop()
        file = _module_file(name) if name.split(".")[0] in OUR_PACKAGES else None
        if file is None or file in seen:
            continue
        seen.add(file)
        parts = name.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]
        for node in ast.walk(ast.parse(file.read_text(encoding="utf-8"))):
            if isinstance(node, ast.Import):
                todo += [a.name for a in node.names]
            elif isinstance(node, ast.ImportFrom) and node.module and not node.level:
                todo += [node.module, *(f"{node.module}.{a.name}" for a in node.names)]
    return {str(p.relative_to(ROOT)) for p in seen}


def test_import_walk_follows_function_level_imports() -> None:
    needed = our_imports(["serving.server"])  # preflight() imports serving.model and .online
    assert {"serving/__init__.py", "serving/model.py", "serving/online.py", "atrx/registry.py",
            "atrx/errors.py", "feature_repo/store.py"} <= needed  # open_feature_store: in a function
    assert "training/fusion.py" not in needed  # serving imports no stage: the model is unpickled


def test_readme_describes_every_file() -> None:
    readme = (INFRA / "README.md").read_text()
    assert readme.startswith("# Deploying")
    for path in INFRA.rglob("*"):
        if path.is_file() and path.name != "README.md":
            assert str(path.relative_to(INFRA)) in readme, path
    assert "bentoml containerize" in readme
