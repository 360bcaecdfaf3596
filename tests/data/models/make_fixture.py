"""Save a FusionModel with the code of d50e141 (before the house moves) into a BentoML store."""
import json
import sys
from pathlib import Path

import numpy as np
import pandas as pd

import training.fusion
from atrx.workspace import Workspace
from training import registry  # the OLD path: fails on the new tree
from training.fusion import FusionModel
from training.models import make_imaging_pipeline

assert "/tmp/old" in training.fusion.__file__, training.fusion.__file__

rng = np.random.default_rng(0)
n = 60
y = rng.permutation(np.arange(n) % 2)
cols = {f"rad_overall_t1c__original__firstorder__f{j}": rng.standard_normal(n) for j in range(6)}
cols["rad_overall_t1c__original__firstorder__f0"] += 1.5 * (y - 0.5)
frame = pd.DataFrame({"age": rng.normal(54 - 3 * y, 11), "sex": rng.integers(0, 2, n).astype(float),
                      "who_grade": np.where(rng.random(n) < 0.5, 4.0, 3.0),
                      "vasari_score": rng.normal(72, 6), **cols})
feats = [c for c in frame.columns if c.startswith("rad_")]
model = FusionModel(make_imaging_pipeline(lasso_cv=3, lasso_Cs=4, random_state=0),
                    imaging_features=feats, cv=3, random_state=0).fit(frame, y)
out = Path(sys.argv[1])
ws = Workspace.at(str(out / "home"))
tag = registry.save_candidate(ws, model, {"run_id": "fixture-d50e141", **model.describe()})
frame.head(8).to_csv(out / "rows.csv", index=False)
expected = {"tag": tag, "proba": model.predict_proba(frame.head(8))[:, 1].tolist(),
            "contributions": model.contributions(frame.head(2)).to_dict(orient="list")}
(out / "expected.json").write_text(json.dumps(expected, indent=1))
print(tag)
