"""Model registry on a real BentoML model store under ``tmp_path`` (no mocks)."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest

from atrx.workspace import Workspace

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def data() -> tuple[pd.DataFrame, np.ndarray]:
    rng = np.random.default_rng(0)
    n = 90
    y = rng.permutation(np.arange(n) % 2)
    cols = {f"rad_overall_t1c__f{j:04d}": rng.standard_normal(n) for j in range(10)}
    cols["rad_overall_t1c__f0000"] += 1.5 * (y - 0.5)
    cols["rad_overall_t1c__f0001"] -= 1.0 * (y - 0.5)
    frame = pd.DataFrame(
        {
            "age": rng.normal(54 - 3 * y, 11),
            "sex": rng.integers(0, 2, n).astype(float),
            "who_grade": np.where(rng.random(n) < 0.4 + 0.2 * y, 4.0, 3.0),
            "vasari_score": rng.normal(72 - 2 * y, 6),
            **cols,
        }
    )
    return frame, y


def _fit(frame: pd.DataFrame, y: np.ndarray, seed: int = 0):
    from training.fusion import FusionModel
    from training.models import make_imaging_pipeline

    cols = [c for c in frame.columns if c.startswith("rad_")]
    pipe = make_imaging_pipeline(lasso_cv=4, lasso_Cs=6, random_state=seed)
    return FusionModel(pipe, imaging_features=cols, cv=3, random_state=seed).fit(frame, y)


@pytest.fixture(scope="module")
def model(data):
    return _fit(*data)


def _meta(model, run_id: str) -> dict:
    return {"run_id": run_id, "as_of": "2025-01-01", **model.describe(),
            "metrics": {"Fusion": {"validation": {"auc": 0.9}, "test": {"auc": 0.85}}}}


def test_save_list_promote_production(tmp_path: Path, model, data) -> None:
    from atrx import registry

    ws = Workspace.at(tmp_path / "home")
    assert registry.production(ws) is None
    assert registry.list_models(ws).models == []

    first = registry.save_candidate(ws, model, _meta(model, "run-1"), labels={"run_id": "run-1"})
    assert first.startswith("atrx_fusion:")
    assert (Path(ws.bentoml_home) / "models" / "atrx_fusion").is_dir()
    listed = registry.list_models(ws)
    assert [(m.tag, m.stage) for m in listed.models] == [(first, "candidate")]
    assert listed.rows()[0][:2] == [first, "candidate"] and listed.rows()[0][-2:] == ["0.900", "0.850"]
    record = registry.show(ws, first)
    assert record.labels == {"stage": "candidate", "run_id": "run-1"}
    assert record.metadata["required_features"] == model.required_features
    assert record.metadata["imaging_score"]["features"] == model.selected_imaging_features_

    promoted = registry.promote(ws, first)
    assert promoted.tag == first and promoted.previous is None
    assert registry.production(ws).tag == first

    second = registry.save_candidate(ws, model, _meta(model, "run-2"))
    assert registry.production(ws).tag == first  # saving never changes production
    promoted = registry.promote(ws, second.split(":", 1)[1])  # a bare version works too
    assert promoted.previous == first
    stages = {m.tag: m.stage for m in registry.list_models(ws).models}
    assert stages == {first: "archived", second: "production"}
    assert registry.show(ws, "production").tag == second
    assert registry.promote(ws, second).previous is None  # idempotent

    history = json.loads(registry.stages_path(ws).read_text())["history"]
    assert [(h["tag"], h["to"]) for h in history] == [
        (first, "candidate"), (first, "production"), (second, "candidate"),
        (first, "archived"), (second, "production"),
    ]
    loaded = registry.load_model(ws)
    frame, _ = data
    assert np.allclose(loaded.predict_proba(frame), model.predict_proba(frame))
    assert loaded.required_features == model.required_features


def test_labels_are_fixed_at_save_so_stages_live_next_to_the_store(tmp_path: Path, model) -> None:
    """BentoML 1.4 labels are immutable: promotion is recorded in the stage file instead."""
    import attr
    import bentoml

    from atrx import registry

    ws = Workspace.at(tmp_path / "home")
    tag = registry.save_candidate(ws, model, _meta(model, "run-1"))
    registry.promote(ws, tag)
    bento_model = bentoml.models.get(tag, _model_store=registry._store(ws))
    with pytest.raises(attr.exceptions.FrozenInstanceError):
        bento_model.info.labels = {"stage": "production"}  # type: ignore[misc]
    assert bento_model.info.labels["stage"] == "candidate"  # as saved
    assert registry.show(ws, tag).stage == "production"  # as recorded
    assert registry.stages_path(ws).parent == Path(ws.bentoml_home)


def test_workspaces_have_separate_stores(tmp_path: Path, model) -> None:
    from atrx import registry

    a, b = Workspace.at(tmp_path / "a"), Workspace.at(tmp_path / "b")
    tag = registry.save_candidate(a, model, _meta(model, "run-a"))
    assert [m.tag for m in registry.list_models(a).models] == [tag]
    assert registry.list_models(b).models == []
    with pytest.raises(registry.RegistryError, match="no model"):
        registry.show(b, tag)
    with pytest.raises(registry.RegistryError, match="no production"):
        registry.show(b, "production")


def test_fresh_process_loads_the_model_with_bentoml_home(tmp_path: Path, model, data) -> None:
    """What a serving process does: BENTOML_HOME set before bentoml is imported, then load."""
    from atrx import registry

    ws = Workspace.at(tmp_path / "home")
    tag = registry.save_candidate(ws, model, _meta(model, "run-1"))
    registry.promote(ws, tag)
    frame, _ = data
    frame.iloc[:5].to_parquet(tmp_path / "rows.parquet")
    code = (
        "import sys, bentoml, pandas as pd\n"
        "m = bentoml.sklearn.load_model(bentoml.models.get(sys.argv[1]))\n"
        "rows = pd.read_parquet(sys.argv[2])[m.required_features]\n"
        "print(','.join(f'{p:.12f}' for p in m.predict_proba(rows)[:, 1]))\n"
    )
    env = {**os.environ, "BENTOML_HOME": ws.bentoml_home, "BENTOML_DO_NOT_TRACK": "True",
           "PYTHONPATH": str(ROOT)}
    out = subprocess.run([sys.executable, "-c", code, tag, str(tmp_path / "rows.parquet")],
                         env=env, capture_output=True, text=True, timeout=300, check=True)
    got = np.array([float(v) for v in out.stdout.strip().splitlines()[-1].split(",")])
    assert np.allclose(got, model.predict_proba(frame.iloc[:5])[:, 1])


def test_metadata_with_missing_values_is_saved(tmp_path: Path, model) -> None:
    """A small cohort leaves some metrics undefined (None); BentoML would refuse them."""
    from atrx import registry

    ws = Workspace.at(tmp_path / "home")
    meta = {**_meta(model, "run-n"), "metrics": {"fusion": {"test": {"auc": 0.8, "auc_lo": None}}},
            "thresholds": [0.1, None]}
    tag = registry.save_candidate(ws, model, meta)
    saved = registry.show(ws, tag).metadata
    assert saved["metrics"]["fusion"]["test"] == {"auc": 0.8}
    assert saved["thresholds"][0] == 0.1 and np.isnan(saved["thresholds"][1])
