"""Training jobs end to end on a generated cohort written straight into a real Feast repository.

The cohort: three centers, ~100 patients, every imaging view with a dozen features of which two
carry the ATRX signal (strongest in the overall lesion), clinical variables with a weak signal.
It goes through ``write_offline`` + ``export_clinical_and_labels`` + ``apply`` like the features
stage's output, so the tests exercise the real point-in-time join, DuckDB catalog and BentoML
store in ``tmp_path``; nothing is mocked.
"""

from __future__ import annotations

import json
import logging
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from stable_table import write_all_stable

from atrx.catalog import Catalog
from atrx.config.base import ConfigError
from atrx.names import all_views, view_name
from atrx.workspace import Workspace

N_FEATURES = 12
CENTERS = {"A": 38, "B": 50, "C": 26}
SIGNAL = {"overall": 1.0, "tumor": 0.5, "edema": 0.35}
CREATED = pd.Timestamp("2024-01-01", tz="UTC")
# pseudonyms (CENTER-12 hex) that sort after the random ones of their center
NO_DL_TUMOR_T2F = "B-ffffffffff01"  # has no dl_tumor_t2f row at all
LATE_SCAN = "A-ffffffffff02"  # rad_overall_t1c scanned after the pathology date
FUTURE = "C-ffffffffff03"  # pathology date long after every as_of the tests use
FUTURE_DATE = pd.Timestamp("2030-06-01", tz="UTC")
# the paper's protocol with a cheaper LASSO search (5 folds x 8 penalties): same code paths
FAST_STUDY = """\
name: fast
selection:
  lasso_cv: 5
  lasso_cs: 8
fusion:
  clinical_selection: none  # the four-variable fusion these tests describe; loco has its own test
"""
SMALL_STUDY = FAST_STUDY + """\
imaging:
  feature_types: [hybrid]
  rois: [overall]
  compare_classifiers: [lr]
"""


def feature_names(view: str) -> list[str]:
    """Deep views: ``f0000``...; radiomics views: the first half original-image first-order
    features (what the first-order baseline reads), the rest texture of a filtered image."""
    if view.startswith("dl_"):
        return [f"{view}__f{j:04d}" for j in range(N_FEATURES)]
    half = N_FEATURES // 2
    return [f"{view}__original__firstorder__f{j:04d}" if j < half
            else f"{view}__wavelet_lll__glcm__f{j:04d}" for j in range(N_FEATURES)]


def make_cohort(seed: int = 0) -> dict[str, pd.DataFrame]:
    """Patients, their clinical rows, labels and one feature frame per imaging view."""
    rng = np.random.default_rng(seed)
    pids = [f"{c}-{rng.bytes(6).hex()}" for c, n in CENTERS.items() for _ in range(n)]
    pids += [NO_DL_TUMOR_T2F, LATE_SCAN, FUTURE]
    n = len(pids)
    y = rng.permutation(np.arange(n) % 2)
    pathology = pd.Timestamp("2019-01-01", tz="UTC") + pd.to_timedelta(
        rng.integers(0, 1200, n), unit="D"
    )
    pathology = pd.DatetimeIndex(
        [FUTURE_DATE if p == FUTURE else d for p, d in zip(pids, pathology, strict=True)]
    )
    scan = pathology - pd.to_timedelta(rng.integers(3, 30, n), unit="D")
    clinical = pd.DataFrame(
        {
            "patient_id": pids,
            "age": rng.normal(54 - 3 * y, 11),
            "sex": rng.choice(["male", "female"], n),
            "who_grade": np.where(rng.random(n) < 0.45 + 0.15 * y, 4, 3),
            "vasari_score": rng.normal(72.5 - 1.5 * y, 6),
            "event_timestamp": scan,
        }
    )
    labels = pd.DataFrame(
        {
            "patient_id": pids,
            "atrx_status": np.where(y == 1, "mutant", "wildtype"),
            "pathology_date": pathology,
        }
    )
    views = {}
    for kind, roi, seq in all_views():
        view = view_name(kind, roi, seq)
        values = rng.standard_normal((n, N_FEATURES))
        values[:, 0] += SIGNAL[roi] * (y - 0.5) * 2
        values[:, 1] -= 0.5 * SIGNAL[roi] * (y - 0.5) * 2
        values[:, 2] = 0.7 * values[:, 0] + 0.7 * values[:, 3]  # a correlated decoy
        stamp = pd.Series(scan)
        if view == "rad_overall_t1c":
            stamp[pids.index(LATE_SCAN)] = pathology[pids.index(LATE_SCAN)] + pd.Timedelta(days=5)
        frame = pd.DataFrame(values.astype(np.float32), columns=feature_names(view))
        meta = pd.DataFrame(
            {
                "patient_id": pids,
                "event_timestamp": stamp.to_numpy(),
                "created_timestamp": CREATED,
                "study_id": [f"S-{p}" for p in pids],
                "scan_version": 1,
            }
        )
        full = pd.concat([meta, frame], axis=1)
        if view == "dl_tumor_t2f":
            full = full[full["patient_id"] != NO_DL_TUMOR_T2F]
        views[view] = full.reset_index(drop=True)
    return {"clinical": clinical, "labels": labels, "views": views, "y": pd.Series(y, index=pids)}


def build_workspace(home: Path, seed: int = 0) -> Workspace:
    """Write the cohort to the offline store and register every view with Feast."""
    from feature_repo.offline import export_clinical_and_labels, write_offline
    from feature_repo.store import apply

    ws = Workspace.at(home)
    ws.ensure()
    cohort = make_cohort(seed)
    versions, names = {}, {}
    for view, frame in cohort["views"].items():
        write_offline(ws, view, "test-v1", frame, feature_names=feature_names(view))
        versions[view], names[view] = "test-v1", feature_names(view)
    labels = cohort["labels"].assign(pathology_date=cohort["labels"]["pathology_date"].dt.date)
    export_clinical_and_labels(ws, cohort["clinical"], labels, CREATED)
    apply(ws, {**versions, "clinical": "v1", "labels": "v1"}, feature_names=names)
    write_all_stable(ws, names)
    return ws


@pytest.fixture(scope="module")
def ws(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    return build_workspace(tmp_path_factory.mktemp("atrx_train"))


@pytest.fixture(scope="module")
def small_study(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("study") / "small.yaml"
    path.write_text(SMALL_STUDY)
    return path


@pytest.fixture(scope="module")
def small_protocol(ws: Workspace, small_study: Path):
    """(study, frame, split, protocol result) of the small study, fitted once for the module."""
    from training.dataset import split, training_frame
    from training.protocol import run_protocol
    from training.study import load_study

    study = load_study(small_study)
    frame = training_frame(ws, "2025-01-01", study).frame
    sp = split(frame, study)
    return study, frame, sp, run_protocol(frame, sp, study)


@pytest.fixture(scope="module")
def trained(ws: Workspace, tmp_path_factory: pytest.TempPathFactory):
    from training.run import run_train

    path = tmp_path_factory.mktemp("study") / "fast.yaml"
    path.write_text(FAST_STUDY)
    steps: list[str] = []
    summary = run_train(ws, as_of="2025-01-01", study_path=path, progress=steps.append)
    summary.steps = steps  # what the CLI prints while the run goes on
    return summary


# --- configuration ---------------------------------------------------------------------------------
def test_shipped_study_file_is_the_paper_protocol() -> None:
    from training.study import StudyConfig, load_study

    study = load_study()
    assert study == StudyConfig()
    models = study.imaging_models()
    assert len(models) == 9
    assert [m.label for m in models[:3]] == ["Edema DL", "Edema radiomics", "Edema hybrid"]
    hybrid = next(m for m in models if m.name == "overall_hybrid")
    assert hybrid.views == ("rad_overall_t1c", "rad_overall_t2f", "dl_overall_t1c",
                            "dl_overall_t2f")
    assert study.split.development_centers == ["A", "B"] and study.split.test_centers == ["C"]
    assert study.selection.max_features == 19 and study.imaging.cv_folds == 5


@pytest.mark.parametrize(
    ("text", "key"),
    [
        ("selection:\n  alpah: 0.05\n", "selection.alpah"),
        ("imaging:\n  rois: [overall, necrosis]\n", "imaging.rois.1"),
        ("cutoff:\n  policy: fixed\n", "cutoff"),
        ("split:\n  test_centers: [A]\n", "split"),
        ("promotion:\n  margn: 0.1\n", "promotion.margn"),
        ("imaging:\n  lr_c: 0\n", "imaging.lr_c"),
    ],
)
def test_bad_study_file_names_file_and_key(tmp_path: Path, text: str, key: str) -> None:
    from training.study import load_study

    path = tmp_path / "study.yaml"
    path.write_text(text)
    with pytest.raises(ConfigError) as err:
        load_study(path)
    assert str(path) in str(err.value)
    assert any(p.startswith(key) for p in err.value.problems), err.value.problems


# --- data ------------------------------------------------------------------------------------------
def test_entity_frame_keeps_labels_known_at_as_of(ws: Workspace) -> None:
    from training.dataset import entity_frame

    entities = entity_frame(ws, "2025-01-01")
    assert FUTURE not in set(entities["patient_id"])
    assert len(entities) == sum(CENTERS.values()) + 2
    assert (entities["event_timestamp"] <= pd.Timestamp("2025-01-01", tz="UTC")).all()
    assert FUTURE in set(entity_frame(ws, FUTURE_DATE)["patient_id"])  # on the day: known
    assert FUTURE not in set(entity_frame(ws, FUTURE_DATE - pd.Timedelta(days=1))["patient_id"])
    early = entity_frame(ws, "2020-01-01")
    assert 0 < len(early) < len(entities)


def test_labels_come_only_from_the_feast_labels_view(tmp_path: Path) -> None:
    """No registered ``labels`` view: bad input naming the fix, even with labels in the catalog."""
    from atrx.errors import DataError, ExitCode
    from training.dataset import TrainingDataError, entity_frame

    ws = Workspace.at(tmp_path / "no_views")
    ws.ensure()
    with Catalog(ws.catalog) as cat:  # a catalog holding labels is not a second source
        cat.upsert_clinical("A", "run-x", [{
            "patient_id": "A-3f2a9c1b0d4e", "age": 50.0, "sex": "female", "who_grade": 4,
            "vasari_score": 70.0, "row_hash": "h", "atrx_status": "mutant",
            "pathology_date": pd.Timestamp("2020-01-01").date(),
        }])
    with pytest.raises(TrainingDataError, match="'labels' view is not registered") as err:
        entity_frame(ws, "2025-01-01")
    assert isinstance(err.value, DataError) and err.value.exit_code == ExitCode.BAD_INPUT
    assert "atrx features" in err.value.fix


def test_center_comes_from_the_pseudonym() -> None:
    from atrx.errors import InputError
    from training.dataset import center_of

    assert center_of("A-3f2a9c1b0d4e") == "A" and center_of("C_2-000000000000") == "C_2"
    for bad in ("A-latescan", "A3f2a9c1b0d4e", "-3f2a9c1b0d4e"):
        with pytest.raises(InputError):
            center_of(bad)


def test_training_frame_counts_dropped_rows(ws: Workspace) -> None:
    from training.dataset import training_frame
    from training.study import StudyConfig

    data = training_frame(ws, "2025-01-01", StudyConfig())
    frame = data.frame
    assert data.n_after_as_of == 1 and FUTURE not in set(frame["patient_id"])
    dropped = dict(zip(data.dropped["patient_id"], data.dropped["reason"], strict=True))
    assert dropped == {
        NO_DL_TUMOR_T2F: "no dl_tumor_t2f features at the pathology date",
        LATE_SCAN: "no rad_overall_t1c features at the pathology date",
    }
    assert data.summary()["patients_dropped"] == 2
    assert len(frame) == sum(CENTERS.values())
    assert set(frame["center"]) == set(CENTERS)
    assert set(frame["sex"]) == {0.0, 1.0}
    assert not frame.drop(columns=["patient_id", "center", "event_timestamp"]).isna().any().any()
    assert sum(c.startswith("dl_overall_t1c__") for c in frame.columns) == N_FEATURES
    # the label is the point-in-time one of the labels view
    truth = make_cohort()["y"]
    assert (frame["atrx_mutant"].to_numpy() == truth[frame["patient_id"]].to_numpy()).all()


def test_split_is_stratified_seeded_and_center_based(ws: Workspace) -> None:
    from training.dataset import split, training_frame
    from training.study import StudyConfig

    study = StudyConfig()
    frame = training_frame(ws, "2025-01-01", study).frame
    a, b = split(frame, study), split(frame.sample(frac=1.0, random_state=3), study)
    centers = frame["center"].to_numpy()
    assert set(centers[a.test]) == {"C"} and set(centers[a.train]) == {"A", "B"}
    assert set(centers[a.validation]) <= {"A", "B"}
    n_dev = a.train.size + a.validation.size
    assert a.validation.size == pytest.approx(0.2 * n_dev, abs=1)
    assert a.data_hash == b.data_hash  # row order does not change the hash
    again = split(frame, study)
    assert (again.train == a.train).all() and again.train_hash == a.train_hash
    other = split(frame, study.model_copy(update={"seeds": study.seeds.model_copy(update={"split": 7})}))
    assert set(other.train) != set(a.train)


# --- protocol --------------------------------------------------------------------------------------
def test_train_end_to_end_through_feast(ws: Workspace, trained) -> None:
    from atrx import registry
    from training.protocol import BASELINE, CLINICAL, FUSION

    s = trained
    assert s.exit_code == 0
    assert s.steps[0].startswith("reading point-in-time features")
    assert sum(m.startswith("imaging model ") for m in s.steps) == 9
    assert "imaging model 9/9 Overall hybrid: mean CV AUC" in " ".join(s.steps)
    assert s.steps[-1].startswith("protocol done")
    assert any(m.startswith("First-order baseline: 18 features") for m in s.steps)
    tables = s.tables()
    assert [len(t.rows) for t in tables] == [12, 12]
    assert [r[0] for r in tables[1].rows][-3:] == [BASELINE, CLINICAL, FUSION]
    assert tables[0].columns[1:5] == ["Train Sensitivity", "Train Specificity", "Train Accuracy",
                                      "Train AUC (95% CI)"]
    assert all("(" in row[4] for row in tables[0].rows)  # AUC with CI
    assert s.split["train"]["n"] + s.split["validation"]["n"] == CENTERS["A"] + CENTERS["B"]
    assert s.split["test"]["n"] == CENTERS["C"]
    # the overall lesion carries the strongest signal in the generated cohort
    assert s.best_imaging_model.startswith("Overall")
    assert s.metrics[FUSION]["test"]["auc"] > 0.8
    assert s.metrics[FUSION]["test"]["auc"] > s.metrics[CLINICAL]["test"]["auc"]

    run_dir = Path(s.run_dir)
    metrics = json.loads((run_dir / "metrics.json").read_text())
    assert metrics["candidate_tag"] == s.tag
    assert len(metrics["imaging_models"]) == 9
    assert {c["classifier"] for c in metrics["classifier_comparison"]} == {"lr", "rf", "svm"}
    assert metrics["data"]["dropped_by_reason"] and metrics["split"]["data_hash"]
    assert {"nomogram", "delong", "calibration", "decision_curve", "clinical_impact"} <= set(metrics)
    assert {r["model_a"] for r in metrics["delong"]} >= {FUSION}
    # LOCO over the two development centers ranked the imaging models; both CVs are reported
    assert metrics["ranking"]["strategy"] == "loco" and metrics["ranking"]["centers"] == ["A", "B"]
    assert all(m["loco_auc_mean"] is not None for m in metrics["imaging_models"])
    assert metrics["baseline"]["fitted"] and metrics["baseline"]["n_features"] == 18
    assert BASELINE in metrics["models"] and "\n| First-order baseline |" in \
        (run_dir / "tables.md").read_text()
    md = (run_dir / "tables.md").read_text()
    assert md.count("**Table ") == 2 and md.count("\n| Fusion |") == 2
    assert f"| {s.metrics[FUSION]['test']['auc']:.3f} (" in md
    html = Path(s.report_path).read_text()
    assert html.count("data:image/png;base64,") >= 8 and "<img" in html
    assert 'src="http' not in html and "Table 3" in html
    assert {p.name for p in run_dir.glob("*.png")} >= {"roc_test.png", "nomogram.png",
                                                       "calibration_test.png"}
    with Catalog(ws.catalog, read_only=True) as cat:
        rows = cat.query("SELECT stage, status, counts FROM runs WHERE run_id = ?", [s.run_id])
    assert rows[0][0] == "train" and rows[0][1] == "ok"
    assert json.loads(rows[0][2])["candidate"] == s.tag

    record = registry.show(ws, s.tag)
    assert record.stage == "candidate" and record.labels["stage"] == "candidate"
    meta = record.metadata
    assert meta["feature_versions"]["dl_overall_t1c"] == "test-v1"
    assert meta["data_hash"] == s.split["data_hash"] and meta["study_hash"] == s.study_hash
    assert meta["required_features"][-4:] == ["age", "sex", "who_grade", "vasari_score"]
    assert "scikit-learn" in meta["library_versions"]


def test_one_run_record_reads_the_same_everywhere(ws: Workspace, trained) -> None:
    """metrics.json, the registry entry, the catalog row and the summary state the same facts."""
    from atrx import registry
    from training.protocol import SETS

    metrics = json.loads(Path(trained.metrics_path).read_text())
    meta = registry.show(ws, trained.tag).metadata
    with Catalog(ws.catalog, read_only=True) as cat:
        (counts,) = cat.query("SELECT counts FROM runs WHERE run_id = ?", [trained.run_id])[0]
    counts = json.loads(counts)
    for s in SETS:
        n = {"n": trained.split[s]["n"], "n_pos": trained.split[s]["n_pos"]}
        assert {k: metrics["split"][s][k] for k in n} == n
        assert {k: meta["sets"][s][k] for k in n} == n and counts["sets"][s] == n
    assert metrics["run_id"] == meta["run_id"] == trained.run_id
    assert metrics["study_hash"] == meta["study_hash"] == trained.study_hash
    assert metrics["split"]["data_hash"] == meta["data_hash"] == counts["data_hash"]
    assert meta["report"] == counts["report"] == trained.report_path
    assert metrics["best_imaging_model"]["label"] == meta["best_imaging_model"] == \
        counts["best_imaging_model"] == trained.best_imaging_model
    assert metrics["library_versions"] == meta["library_versions"]
    assert metrics["library_versions"]["python"] and "scikit-learn" in metrics["library_versions"]
    # metrics.json is written before the report: its timings stop at the registration
    assert list(metrics["timings"]) == ["features", "protocol", "figures", "register"]
    assert list(trained.timings) == [*metrics["timings"], "report"]


def test_served_model_needs_only_its_required_features(ws: Workspace, trained) -> None:
    from atrx import registry
    from training.dataset import split, training_frame
    from training.study import StudyConfig

    model = registry.load_model(ws, trained.tag)
    data = training_frame(ws, "2025-01-01", StudyConfig())
    test = data.frame.iloc[split(data.frame, StudyConfig()).test]
    need = model.required_features
    assert 1 <= len(need) - 4 <= 19 and all("__" in f for f in need[:-4])
    slim = test[need].assign(sex=np.where(test["sex"] == 1, "male", "female"))  # raw strings
    prob = model.predict_proba(slim)[:, 1]
    full = model.imaging_pipeline_.decision_function(test[list(model.imaging_features)])
    assert np.allclose(model.imaging_score(slim), full)
    assert np.allclose(prob, model.predict_proba(test)[:, 1])
    contrib = model.contributions(slim)
    assert np.allclose(contrib["probability"], prob)
    fast_prob, fast_score, fast_points = model.explain(slim)  # what serving calls: bit for bit
    assert np.array_equal(fast_prob, prob) and np.array_equal(fast_score, model.imaging_score(slim))
    pd.testing.assert_frame_equal(fast_points, contrib, check_exact=True)
    # what serving calls: the same from one array per column (sex as the view's strings)
    arrays = {c: slim[c].to_numpy() for c in need}
    col_prob, col_score, col_points = model.explain_columns(arrays)
    assert np.array_equal(col_prob, prob) and np.array_equal(col_score, fast_score)
    assert list(col_points) == list(contrib.columns)
    assert all(np.array_equal(col_points[c], contrib[c].to_numpy()) for c in contrib.columns)
    with pytest.raises(ValueError, match="lacks selected imaging feature"):
        model.explain_columns({c: v for c, v in arrays.items() if c != need[0]})
    with pytest.raises(TypeError, match="mapping of columns"):
        model.imaging_score(slim.to_numpy())
    # the per-request numpy arithmetic is the fitted sklearn fusion pipeline's, to rounding
    design = model._design(slim, model.imaging_score(slim))
    assert np.allclose(model.decision_function(slim), model.fusion_pipeline_.decision_function(design),
                       rtol=1e-12, atol=1e-12)
    assert list(contrib.columns[:5]) == ["imaging_score", "age", "sex", "who_grade", "vasari_score"]
    groups = model.risk_group(prob)
    assert set(groups) <= {"high", "low"}
    assert ((prob >= model.cutoff_) == (groups == "high")).all()


def test_no_leakage_from_validation_and_test_rows(small_protocol) -> None:
    from training.dataset import LABEL
    from training.protocol import run_protocol

    study, frame, sp, base = small_protocol
    fusion = base.fusion

    train = frame.iloc[sp.train]
    scaler = fusion.imaging_pipeline_.named_steps["scale"]
    X = train[list(fusion.imaging_features)].to_numpy(np.float64)
    assert np.allclose(scaler.mean_, X.mean(axis=0)) and np.allclose(scaler.scale_, X.std(axis=0))
    clinical_scaler = base.clinical.named_steps["columns"].named_transformers_["scale"]
    assert np.allclose(clinical_scaler.mean_, train[["age", "sex", "who_grade", "vasari_score"]].mean())

    # permuting the labels of every validation and test row changes no fitted parameter
    shuffled = frame.copy()
    held_out = np.concatenate([sp.validation, sp.test])
    rng = np.random.default_rng(5)
    shuffled.loc[held_out, LABEL] = rng.permutation(shuffled.loc[held_out, LABEL].to_numpy())
    assert (shuffled[LABEL] != frame[LABEL]).any()
    again = run_protocol(shuffled, sp, study)
    f2 = again.fusion
    assert f2.selected_imaging_features_ == fusion.selected_imaging_features_
    assert np.allclose(f2.imaging_coef_, fusion.imaging_coef_)
    assert f2.cutoff_ == fusion.cutoff_
    for a, b in ((f2.fusion_pipeline_, fusion.fusion_pipeline_), (again.clinical, base.clinical)):
        assert np.allclose(a[-1].coef_, b[-1].coef_) and np.allclose(a[-1].intercept_, b[-1].intercept_)
    assert again.best.cross.fold_aucs == base.best.cross.fold_aucs
    assert again.best.loco.center_aucs == base.best.loco.center_aucs
    assert again.metrics["Fusion"]["train"] == base.metrics["Fusion"]["train"]
    assert again.metrics["Fusion"]["test"] != base.metrics["Fusion"]["test"]
    # the first-order baseline, too, learnt from the training rows only
    assert np.allclose(again.baseline.final[-1].coef_, base.baseline.final[-1].coef_)
    b_scaler = base.baseline.final.named_steps["scale"]
    assert np.allclose(b_scaler.mean_, train[base.baseline.columns].mean())


def test_baseline_views_come_from_feast_when_no_imaging_model_uses_them(small_protocol) -> None:
    """The small study's only imaging model is overall hybrid; the baseline also needs
    rad_tumor_t1c, read through the same point-in-time join, first-order columns only."""
    study, frame, _, result = small_protocol
    assert "rad_tumor_t1c" not in study.imaging_views()
    tumor = [c for c in frame.columns if c.startswith("rad_tumor_t1c__")]
    assert tumor == [f for f in feature_names("rad_tumor_t1c") if "__original__firstorder__" in f]
    assert result.baseline.columns[-len(tumor):] == tumor
    assert not any(c.startswith(("rad_edema", "dl_tumor")) for c in frame.columns)


def test_fusion_fit_equals_protocol_cross_fit(small_protocol) -> None:
    """FusionModel.fit alone reproduces the protocol's fusion model (one implementation)."""
    from sklearn.base import clone

    from training.dataset import LABEL

    study, frame, sp, result = small_protocol
    protocol_model = result.fusion
    assert protocol_model.imaging_pipeline_["clf"].C == study.imaging.lr_c
    # the scores the fusion weight was learnt on and those it is applied to share one scale
    assert 0.5 <= result.imaging_score_scale["ratio"] <= 2.0
    train = frame.iloc[sp.train]
    alone = clone(protocol_model).fit(train, train[LABEL])
    assert alone.selected_imaging_features_ == protocol_model.selected_imaging_features_
    assert np.allclose(alone.fusion_pipeline_[-1].coef_, protocol_model.fusion_pipeline_[-1].coef_)
    # the fusion LR learnt from out-of-fold scores: its imaging weight is sane, not a separator
    assert abs(alone.fusion_pipeline_[-1].coef_[0, 0]) < 10


def test_fusion_clinical_selection_by_loco_reaches_the_model_metrics_and_report(small_protocol) -> None:
    """``fusion.clinical_selection: loco``: the fused LR takes the kept variables, the clinical
    model all of them, and the run's metrics say which were dropped and why."""
    from training.protocol import run_protocol
    from training.study import FusionConfig

    study, frame, sp, plain = small_protocol
    assert plain.clinical_selection.method == "none"
    assert list(plain.fusion.clinical_columns) == list(study.clinical_variables)
    loco = study.model_copy(update={"fusion": FusionConfig(clinical_selection="loco")})
    result = run_protocol(frame, sp, loco)
    chosen = result.clinical_selection
    assert chosen.method == "loco" and chosen.requested == list(study.clinical_variables)
    assert list(result.fusion.clinical_columns) == chosen.kept
    assert result.fusion.required_features == [*result.fusion.selected_imaging_features_, *chosen.kept]
    assert list(result.clinical[0].transformers[0][2]) == list(study.clinical_variables)
    assert result.to_json()["fusion_clinical_selection"]["kept"] == chosen.kept
    assert chosen.steps[0]["variables"] == list(study.clinical_variables)
    # the selection learns from the training rows only: permuted held-out labels change nothing
    from training.dataset import LABEL

    shuffled = frame.copy()
    held_out = np.concatenate([sp.validation, sp.test])
    shuffled.loc[held_out, LABEL] = np.random.default_rng(7).permutation(shuffled.loc[held_out, LABEL].to_numpy())
    again = run_protocol(shuffled, sp, loco)
    assert again.clinical_selection.to_json() == chosen.to_json()
    assert np.allclose(again.fusion.fusion_pipeline_[-1].coef_, result.fusion.fusion_pipeline_[-1].coef_)


def test_unstable_imaging_score_scale_is_reported(caplog: pytest.LogCaptureFixture) -> None:
    from training.protocol import _score_scale

    rng = np.random.default_rng(0)
    final = rng.normal(size=100)
    with caplog.at_level("WARNING", logger="training.protocol"):
        assert _score_scale(1.2 * final, final)["ratio"] == pytest.approx(1.2)
        assert not caplog.records
        wide = _score_scale(8 * final, final)
    assert wide["ratio"] == pytest.approx(8.0)
    assert "imaging.lr_c" in caplog.text and "8.0x" in caplog.text


# --- retraining ------------------------------------------------------------------------------------
def _promote_bad_model(ws: Workspace, study_path: Path) -> str:
    """Register and promote a model trained on permuted labels: a production model to beat."""
    from atrx import registry
    from training.dataset import LABEL, split, training_frame
    from training.fusion import FusionModel
    from training.models import make_imaging_pipeline
    from training.study import load_study

    study = load_study(study_path)
    frame = training_frame(ws, "2025-01-01", study).frame
    train = frame.iloc[split(frame, study).train]
    cols = [c for c in frame.columns if c.startswith(("rad_overall", "dl_overall"))]
    y = np.random.default_rng(11).permutation(train[LABEL].to_numpy())
    bad = FusionModel(make_imaging_pipeline(), imaging_features=cols).fit(train, y)
    tag = registry.save_candidate(ws, bad, {"run_id": "permuted-labels"})
    registry.promote(ws, tag)
    return tag


def test_retrain_promotes_better_and_keeps_production_otherwise(
    tmp_path: Path, small_study: Path, caplog: pytest.LogCaptureFixture
) -> None:
    from atrx import registry
    from training.promotion import run_retrain

    ws = build_workspace(tmp_path / "home")
    # the first model: no production to compare with, so its AUC CI must clear the floor (0.5)
    first = run_retrain(ws, as_of="2025-01-01", study_path=small_study)
    assert first.exit_code == 0 and first.decision == "promoted" and not first.override
    assert first.floor == 0.5 and first.candidate_auc_ci[0] > 0.5, first.rows()
    assert "CI lower bound above the floor 0.500" in first.reason
    assert registry.production(ws).tag == first.candidate_tag
    bad = _promote_bad_model(ws, small_study)

    caplog.clear()
    with caplog.at_level(logging.INFO, logger="atrx.retrain"):
        better = run_retrain(ws, as_of="2025-01-01", study_path=small_study)
    assert better.exit_code == 0 and better.decision == "promoted", better.rows()
    assert better.production_tag == bad
    assert better.candidate_auc > better.production_auc
    lines = [r for r in caplog.records if r.name == "atrx.retrain"]
    assert len(lines) == 1 and better.candidate_tag in lines[0].getMessage()
    assert bad in lines[0].getMessage() and "margin 0.020" in lines[0].getMessage()
    assert registry.production(ws).tag == better.candidate_tag
    assert registry.show(ws, bad).stage == "archived"

    strict = tmp_path / "strict.yaml"
    strict.write_text(small_study.read_text() + "promotion:\n  margin: -0.5\n")
    caplog.clear()
    with caplog.at_level(logging.INFO, logger="atrx.retrain"):
        worse = run_retrain(ws, as_of="2025-01-01", study_path=strict)
    assert worse.exit_code == 10 and worse.decision == "kept"
    assert registry.production(ws).tag == better.candidate_tag
    assert registry.show(ws, worse.candidate_tag).stage == "candidate"
    lines = [r for r in caplog.records if r.name == "atrx.retrain"]
    assert len(lines) == 1 and "kept production" in lines[0].getMessage()
    assert "-0.500" in lines[0].getMessage()
    stages = [m.stage for m in registry.list_models(ws).models]
    assert stages.count("production") == 1 and len(stages) == 4
    assert better.floor is None and worse.floor is None  # the floor is for a first model only
    with Catalog(ws.catalog, read_only=True) as cat:
        decisions = cat.query(
            "SELECT json_extract_string(counts, '$.decision') FROM runs WHERE stage = 'retrain' "
            "ORDER BY started_at")
    assert [d[0] for d in decisions] == ["promoted", "promoted", "kept"]


def test_first_model_below_the_floor_stays_a_candidate_unless_overridden(
    tmp_path: Path, small_study: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No production model and an AUC CI lower bound <= promotion.first_model_auc_floor: exit
    10, the candidate stays in the store; ``--promote-below-floor`` promotes it, on record."""
    from typer.testing import CliRunner

    from atrx import registry
    from atrx.cli import app
    from training.promotion import OVERRIDE_REASON, run_retrain

    ws = build_workspace(tmp_path / "home")
    high = tmp_path / "high_floor.yaml"
    high.write_text(small_study.read_text() + "promotion:\n  first_model_auc_floor: 0.99\n")
    with caplog.at_level(logging.INFO, logger="atrx.retrain"):
        kept = run_retrain(ws, as_of="2025-01-01", study_path=high)
    assert kept.exit_code == 10 and kept.decision == "kept", kept.rows()
    lo, hi = kept.candidate_auc_ci
    assert lo <= 0.99 and not kept.override
    assert registry.production(ws) is None
    assert registry.show(ws, kept.candidate_tag).stage == "candidate"
    for text in (f"candidate AUC {kept.candidate_auc:.3f}", f"DeLong 95% CI {lo:.3f}-{hi:.3f}",
                 "validation + test rows", "first_model_auc_floor 0.990", "stays a candidate"):
        assert text in kept.reason
    assert "more data" in kept.fix and "--promote-below-floor" in kept.fix
    lines = [r.getMessage() for r in caplog.records if r.name == "atrx.retrain"]
    assert len(lines) == 1 and "kept" in lines[0] and "0.990" in lines[0]

    result = CliRunner().invoke(app, ["retrain", "--home", str(ws.home), "--as-of", "2025-01-01",
                                      "--study", str(high), "--promote-below-floor"])
    assert result.exit_code == 0, result.output
    assert "override:" in result.stdout and OVERRIDE_REASON in result.stdout
    promoted = registry.production(ws)
    assert promoted is not None and promoted.tag != kept.candidate_tag
    assert registry.show(ws, kept.candidate_tag).stage == "candidate"
    history = json.loads(registry.stages_path(ws).read_text())["history"]
    entry = [h for h in history if h["tag"] == promoted.tag and h["to"] == "production"]
    assert len(entry) == 1 and entry[0]["reason"].startswith(OVERRIDE_REASON)
    assert "floor 0.990" in entry[0]["reason"]


def test_retrain_bad_input_exit_codes(tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    from training.promotion import run_retrain

    ws = Workspace.at(tmp_path / "empty")
    bad_key = tmp_path / "bad.yaml"
    bad_key.write_text("imaging:\n  cv_fold: 5\n")
    with caplog.at_level(logging.INFO, logger="atrx.retrain"):
        summary = run_retrain(ws, study_path=bad_key)
    assert summary.exit_code == 2 and "cv_fold" in summary.error
    no_data = run_retrain(ws)
    assert no_data.exit_code == 2 and no_data.decision == "bad_input"
    assert len([r for r in caplog.records if r.name == "atrx.retrain"]) == 2


def test_split_drops_a_stratification_column_that_cannot_be_split() -> None:
    from training.dataset import split
    from training.study import StudyConfig

    rng = np.random.default_rng(0)
    n = 60
    frame = pd.DataFrame(
        {
            "patient_id": [f"{'ABC'[i % 3]}-{i:04d}" for i in range(n)],
            "atrx_mutant": np.arange(n) % 2,
            "sex": rng.integers(0, 2, n).astype(float),
            "who_grade": np.r_[3.0, np.full(n - 1, 4.0)],  # a one-patient stratum
        }
    )
    frame["center"] = frame["patient_id"].str[0]
    sp = split(frame, StudyConfig())
    assert sp.stratified_by == ["sex"]
    dev = np.r_[sp.train, sp.validation]
    share = frame["sex"].iloc[sp.validation].mean() - frame["sex"].iloc[dev].mean()
    assert abs(share) < 0.1
