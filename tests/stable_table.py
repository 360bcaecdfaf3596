"""A feature-stability table for the hand-built Feast workspaces of the training and serving tests.

The shipped study filters radiomics features by the table ``atrx stability`` writes; those
workspaces hold synthetic feature columns and no scans, so they get a table in which every
radiomics feature is perfectly stable (ICC 1): the filter then keeps every column and the tests
see the protocol they were written for. The filter itself is tested in test_stability_filter.py.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import pandas as pd

from atrx.stability import write_stability
from atrx.workspace import Workspace


def write_all_stable(ws: Workspace, names: Mapping[str, Sequence[str]], version: str = "test-v1",
                     centers: Sequence[str] = ("A", "B")) -> str:
    """Write ICC 1 for every feature of the radiomics views in ``names`` (view -> feature names)."""
    rows = [{"view": view, "feature": f, "base_feature": f.split("__", 1)[1], "icc": 1.0,
             "n_patients": 10, "n_conditions": 4}
            for view, features in names.items() if view.startswith("rad_") for f in features]
    return write_stability(ws, version, pd.DataFrame(rows),
                           {"seed": 0, "centers": sorted(centers), "patients": []})
