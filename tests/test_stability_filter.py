"""The training side of the feature-stability filter: which columns the protocol sees."""

from __future__ import annotations

import numpy as np
import pandas as pd

from training.stability_filter import filter_frame, is_radiomics_column, stability_line


def _frame() -> pd.DataFrame:
    cols = ["patient_id", "center", "age", "rad_overall_t1c__original__firstorder__mean",
            "rad_overall_t1c__original__glcm__contrast", "rad_tumor_t2f__log_sigma_1_0_mm_3d__gldm__x",
            "dl_overall_t1c__f0001"]
    return pd.DataFrame(np.zeros((3, len(cols))), columns=cols)


def test_only_radiomics_columns_are_filtered() -> None:
    frame = _frame()
    icc = {"rad_overall_t1c__original__firstorder__mean": 0.95,
           "rad_overall_t1c__original__glcm__contrast": 0.60,
           "rad_tumor_t2f__log_sigma_1_0_mm_3d__gldm__x": float("nan")}
    out, info = filter_frame(frame, icc, 0.75)
    assert list(out.columns) == ["patient_id", "center", "age",
                                 "rad_overall_t1c__original__firstorder__mean",
                                 "dl_overall_t1c__f0001"]
    assert info.kept == 1 and info.unscored == 1 and len(info.dropped) == 2
    assert info.to_json() == {"min_icc": 0.75, "radiomics_kept": 1, "radiomics_dropped": 2,
                              "radiomics_unscored": 1, "tables": {}}
    assert "1 kept, 2 dropped (1 without an ICC)" in stability_line(info.to_json())
    assert stability_line(None) == "off"
    assert not is_radiomics_column("dl_overall_t1c__f0001") and not is_radiomics_column("age")


def test_threshold_zero_keeps_every_scored_feature() -> None:
    frame = _frame()
    icc = {c: 0.1 for c in frame.columns if c.startswith("rad_")}
    out, info = filter_frame(frame, icc, 0.0)
    assert list(out.columns) == list(frame.columns) and info.kept == 3


# --- end to end: a training run reads the table of its radiomics version -----------------------

def test_training_reads_the_table_and_records_the_filter(tmp_path) -> None:
    import json
    from pathlib import Path

    import pytest
    from test_training_job import build_workspace, feature_names

    from atrx.errors import InputError
    from atrx.stability import StabilityNotFoundError, stability_path, write_stability
    from training.run import is_bad_input, run_train

    ws = build_workspace(tmp_path / "home")
    Path(stability_path(ws, "test-v1")).unlink()  # the builder's all-stable table
    study = tmp_path / "stable.yaml"
    study.write_text("name: stable\nimaging:\n  feature_types: [radiomics]\n  rois: [overall]\n"
                     "  compare_classifiers: [lr]\nselection:\n  lasso_cv: 3\n  lasso_cs: 5\n"
                     "baseline:\n  enabled: false\ndiagnostics:\n  bootstrap: 0\n"
                     "stability:\n  min_icc: 0.8\n  patients: 12\n")
    with pytest.raises(StabilityNotFoundError, match="no feature-stability table.*test-v1") as info:
        run_train(ws, as_of="2025-01-01", study_path=study)
    assert is_bad_input(info.value)
    assert "atrx stability --centers A,B --patients 12 --seed 0" in info.value.fix

    rows = []
    for view in ("rad_overall_t1c", "rad_overall_t2f"):
        for j, name in enumerate(feature_names(view)):
            rows.append({"view": view, "feature": name, "base_feature": name.split("__", 1)[1],
                         "icc": 0.9 if j % 2 == 0 else 0.5, "n_patients": 10, "n_conditions": 4})
    # a table that sampled the test center, or does not say which centers it sampled, is refused
    for meta, why in (({"seed": 0, "centers": ["A", "B", "C"]}, "sampled patients of C"),
                      ({"seed": 0}, "does not record which centers")):
        write_stability(ws, "test-v1", pd.DataFrame(rows), meta)
        with pytest.raises(InputError, match=why) as info:
            run_train(ws, as_of="2025-01-01", study_path=study)
        assert is_bad_input(info.value) and "--centers A,B" in info.value.fix

    # given a runner (the CLI's runs `atrx stability`), training measures the table first
    calls = []

    def runner(version: str, centers: list[str], patients: int, seed: int) -> None:
        calls.append((version, centers, patients, seed))
        write_stability(ws, version, pd.DataFrame(rows), {"seed": seed, "centers": centers,
                                                          "patients": [f"p{i}" for i in range(patients)]})

    summary = run_train(ws, as_of="2025-01-01", study_path=study, stability_runner=runner)
    assert calls == [("test-v1", ["A", "B"], 12, 0)]
    metrics = json.loads(Path(summary.metrics_path).read_text())
    n = len(rows)
    assert metrics["stability"] == {
        "min_icc": 0.8, "radiomics_kept": n // 2, "radiomics_dropped": n - n // 2,
        "radiomics_unscored": 0,
        "tables": {"test-v1": {"centers": ["A", "B"], "patients": 12, "seed": 0,
                               "measured_by_this_run": True}}}
    kept = {r["feature"] for r in rows if r["icc"] >= 0.8}
    for model in metrics["imaging_models"]:
        assert set(model.get("selected_features", [])) <= kept
    assert "ICC(2,1) &gt;= 0.8" in Path(summary.report_path).read_text()
    # the table is there now: the next run reads it and measures nothing
    again = run_train(ws, as_of="2025-01-01", study_path=study, stability_runner=runner)
    assert len(calls) == 1
    assert not json.loads(Path(again.metrics_path).read_text())["stability"]["tables"]["test-v1"][
        "measured_by_this_run"]


def test_shipped_study_filters_by_stability() -> None:
    from training.study import load_study

    cfg = load_study(None).stability
    assert (cfg.min_icc, cfg.patients, cfg.seed) == (0.75, 10, 0)
