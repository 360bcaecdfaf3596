"""A model saved by the code before the house moves (commit d50e141) still loads and predicts."""

from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pandas as pd

from atrx import registry
from atrx.workspace import Workspace

FIXTURE = Path(__file__).parent / "data" / "models" / "d50e141"


def test_model_saved_before_the_move_loads_and_predicts_the_same(tmp_path: Path) -> None:
    shutil.copytree(FIXTURE / "home", tmp_path / "home")
    expected = json.loads((FIXTURE / "expected.json").read_text())
    ws = Workspace.at(str(tmp_path / "home"))
    record = registry.show(ws, expected["tag"])
    assert record.stage == "candidate"
    model = registry.load_model(ws, expected["tag"])
    assert type(model).__module__ == "training.fusion"
    rows = pd.read_csv(FIXTURE / "rows.csv")
    np.testing.assert_allclose(model.predict_proba(rows)[:, 1], expected["proba"], rtol=1e-12)
    got = model.contributions(rows.head(2)).to_dict(orient="list")
    assert got.keys() == expected["contributions"].keys()
    for name, values in expected["contributions"].items():
        np.testing.assert_allclose(got[name], values, rtol=1e-12)
    assert [m.tag for m in registry.list_models(ws).models] == [expected["tag"]]
