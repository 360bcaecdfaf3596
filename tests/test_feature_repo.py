"""The Feast feature repository: a real registry, DuckDB offline store and SQLite online store in tmp.

The point-in-time pins use one patient each so a failure names the rule that broke. Imaging views
carry three features in most tests; one test builds and applies the full generated definitions.
"""

from __future__ import annotations

import os
import re
from datetime import timedelta
from pathlib import Path

import numpy as np
import pandas as pd
import pyarrow.parquet as pq
import pytest

from atrx.errors import DataError, ExitCode, InputError, NotFoundError
from atrx.workspace import Workspace
from feature_repo import offline as off
from feature_repo import store
from feature_repo.definitions import build_feature_views, patient_entity
from feature_repo.errors import FeatureViewError, NoPartsError
from feature_repo.layout import (
    ALL_VIEWS,
    CLINICAL,
    CLINICAL_FEATURES,
    IMAGING_VIEWS,
    LABEL_FEATURES,
    LABELS,
    available_versions,
    check_version,
    check_view,
    feature_names,
    imaging_spec,
    part_files,
)
from feature_repo.offline import (
    OfflineSchemaError,
    direct_point_in_time,
    export_clinical_and_labels,
    read_offline,
    write_offline,
)

REPO_ROOT = Path(__file__).resolve().parents[1]
LABEL_DAY = "2021-06-01"
CREATED = pd.Timestamp("2024-01-01", tz="UTC")
PIT_VIEW = "rad_tumor_t1c"
PIT_FEATURE = "rad_tumor_t1c__original__firstorder__mean"


def ts(day: str) -> pd.Timestamp:
    return pd.Timestamp(day, tz="UTC")


def extractor_feature_names(view: str) -> list[str]:
    """A view's full feature names, from the extractors' own name functions (the test may import
    torch and pyradiomics; the Feast layer reads the names from the Parquet schema instead)."""
    from features.deep import deep_feature_names
    from features.radiomics import radiomics_feature_names

    spec = imaging_spec(view)
    if spec is None:
        return list(CLINICAL_FEATURES if view == CLINICAL else LABEL_FEATURES)
    kind, roi, sequence = spec
    return radiomics_feature_names(roi, sequence) if kind == "rad" else deep_feature_names(roi, sequence)


def imaging_frame(view: str, rows: list[tuple], names: list[str]) -> pd.DataFrame:
    """rows: (patient_id, scan day, created timestamp, value) -> every feature of the row = value."""
    values = np.array([r[3] for r in rows], dtype="float32")
    return pd.DataFrame(
        {
            "patient_id": [r[0] for r in rows],
            "event_timestamp": [ts(r[1]) for r in rows],
            "created_timestamp": [r[2] for r in rows],
            "study_id": [f"S-{r[1]}" for r in rows],
            "scan_version": [1] * len(rows),
            **{name: values for name in names},
        }
    )


def export_tabular(
    ws: Workspace, patients: list[str], label_days: list[str], age: float = 50.0
) -> None:
    n = len(patients)
    clinical = pd.DataFrame(
        {
            "patient_id": patients,
            "age": [age + i for i in range(n)],
            "sex": ["male", "female"] * (n // 2) + ["male"] * (n % 2),
            "who_grade": [3, 4] * (n // 2) + [4] * (n % 2),
            "vasari_score": np.linspace(10, 90, n),
            # clinical is dated by the earliest scan; here one year before the label
            "event_timestamp": [ts(d) - pd.Timedelta(days=365) for d in label_days],
        }
    )
    labels = pd.DataFrame(
        {
            "patient_id": patients,
            "atrx_status": ["mutant", "wildtype"] * (n // 2) + ["mutant"] * (n % 2),
            "pathology_date": [pd.Timestamp(d).date() for d in label_days],
        }
    )
    export_clinical_and_labels(ws, clinical, labels, created_at=CREATED)


def label_entities(ws: Workspace) -> pd.DataFrame:
    return read_offline(ws, LABELS, "v1")[["patient_id", "event_timestamp"]]


# --------------------------------------------------------------------------- point-in-time pins

PIT_ROWS = [
    ("P-after", "2021-06-02", CREATED, 1.0),  # one day after the label
    ("P-at", LABEL_DAY, CREATED, 2.0),  # exactly at the label time
    # two scans before the label; the earlier scan was extracted later, the later scan still wins
    ("P-two", "2021-01-01", CREATED + pd.Timedelta(days=30), 3.0),
    ("P-two", "2021-03-01", CREATED, 4.0),
    ("P-extract", "2021-02-01", CREATED, 5.0),  # first extraction of one scan ...
    ("P-old", "2011-06-01", CREATED, 7.0),  # ten years before the label: no TTL cut-off
]
PIT_REEXTRACTION = [("P-extract", "2021-02-01", CREATED + pd.Timedelta(days=60), 6.0)]  # ... newer


@pytest.fixture(scope="module")
def pit(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    ws = Workspace.at(tmp_path_factory.mktemp("pit"))
    patients = sorted({r[0] for r in PIT_ROWS})
    export_tabular(ws, patients, [LABEL_DAY] * len(patients))
    write_offline(ws, PIT_VIEW, "w1", imaging_frame(PIT_VIEW, PIT_ROWS, [PIT_FEATURE]))
    write_offline(ws, PIT_VIEW, "w1", imaging_frame(PIT_VIEW, PIT_REEXTRACTION, [PIT_FEATURE]))
    store.apply(ws, {PIT_VIEW: "w1", CLINICAL: "v1", LABELS: "v1"}, {PIT_VIEW: [PIT_FEATURE]})
    entities = label_entities(ws)
    got = store.historical_features(ws, entities, views=[PIT_VIEW])
    return {"ws": ws, "entities": entities, "got": got.set_index("patient_id")[PIT_FEATURE]}


def test_pin_scan_one_day_after_label_never_reaches_it(pit: dict) -> None:
    assert np.isnan(pit["got"]["P-after"])


def test_pin_scan_exactly_at_label_time_is_visible(pit: dict) -> None:
    assert pit["got"]["P-at"] == 2.0


def test_pin_later_of_two_scans_before_label_wins(pit: dict) -> None:
    # event order decides even though the earlier scan has the newer created_timestamp
    assert pit["got"]["P-two"] == 4.0


def test_pin_newest_extraction_of_the_same_scan_wins(pit: dict) -> None:
    assert pit["got"]["P-extract"] == 6.0


def test_pin_no_ttl_cutoff_and_created_after_label_is_visible(pit: dict) -> None:
    # ttl=timedelta(0) is Feast 0.67's "no limit" (None is stored as 0 too); every extraction
    # here was created in 2024, after the 2021 label: Feast only hides those when asked to
    # (filter_by_created_timestamp=True), which would hide every retrospective extraction
    assert pit["got"]["P-old"] == 7.0
    registered = store.open_store(pit["ws"]).get_feature_view(PIT_VIEW)
    assert registered.ttl == timedelta(0)


def test_pins_agree_with_direct_duckdb(pit: dict) -> None:
    direct = direct_point_in_time(pit["ws"], pit["entities"], PIT_VIEW, "w1", [PIT_FEATURE])
    pd.testing.assert_series_equal(
        direct.set_index("patient_id")[PIT_FEATURE], pit["got"], check_names=False
    )


def test_only_applied_version_is_read_and_reapply_switches(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    view, names = "dl_tumor_t2f", ["dl_tumor_t2f__f0000", "dl_tumor_t2f__f0001"]
    patients = ["A-000000000001", "A-000000000002"]
    export_tabular(ws, patients, [LABEL_DAY] * 2)
    rows = [(p, "2021-01-01", CREATED, 0.0) for p in patients]
    write_offline(ws, view, "w1", imaging_frame(view, [r[:3] + (1.0,) for r in rows], names))
    write_offline(ws, view, "w2", imaging_frame(view, [r[:3] + (2.0,) for r in rows], names))
    entities = label_entities(ws)

    assert store.apply(ws, {view: "w1"}, {view: names}) == [view]
    assert store.historical_features(ws, entities, views=[view])[names].eq(1.0).all().all()
    store.materialize(ws, views=[view])
    number = store.open_store(ws).get_feature_view(view).current_version_number
    assert store.apply(ws, {view: "w1"}, {view: names}) == [view]  # idempotent: no new snapshot
    assert store.open_store(ws).get_feature_view(view).current_version_number == number

    store.apply(ws, {view: "w2"}, {view: names})
    assert store.registered_versions(ws) == {view: "w2"}
    assert store.historical_features(ws, entities, views=[view])[names].eq(2.0).all().all()
    # same scan dates as w1: an in-place re-apply would leave w1's rows online and an
    # incremental run would find nothing new; apply re-creates the view, so w2 is served
    store.materialize(ws, views=[view])
    assert store.online_features(ws, patients, names)[names].eq(2.0).all().all()


# --------------------------------------------------------------------------- definitions


def test_full_default_definitions_are_generated_and_apply(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    versions = {view: "w1" for view in IMAGING_VIEWS} | {CLINICAL: "v1", LABELS: "v1"}
    # no files yet: the imaging names come from the extractors; clinical and labels are fixed
    names = {view: extractor_feature_names(view) for view in IMAGING_VIEWS}
    views = build_feature_views(ws, versions, names)
    assert [fv.name for fv in views] == list(ALL_VIEWS)
    counts = {fv.name: len(fv.features) for fv in views}
    assert {counts[v] for v in IMAGING_VIEWS if v.startswith("rad_")} == {1130}
    assert {counts[v] for v in IMAGING_VIEWS if v.startswith("dl_")} == {1000}
    assert (counts[CLINICAL], counts[LABELS]) == (4, 2)
    for fv in views:
        assert [f.name for f in fv.features] == extractor_feature_names(fv.name)
        assert fv.tags["feature_version"] == versions[fv.name]
        assert str(ws.offline) in fv.batch_source.path
    tumor = next(fv for fv in views if fv.name == "rad_tumor_t2f")
    assert (tumor.tags["kind"], tumor.tags["roi"], tumor.tags["sequence"]) == (
        "rad",
        "tumor",
        "t2f",
    )
    assert not next(fv for fv in views if fv.name == LABELS).online

    # Feast 0.67 itself needs no data at apply time (the sources are not read) ...
    feast_store = store.open_store(ws)
    feast_store.apply([patient_entity(), views[0]])
    assert feast_store.get_feature_view(views[0].name).tags["feature_version"] == "w1"
    # ... but store.apply only registers views whose version folder has files
    assert store.apply(ws, versions) == []

    export_tabular(ws, ["A-000000000001"], [LABEL_DAY])
    for view in IMAGING_VIEWS:
        write_offline(
            ws,
            view,
            "w1",
            imaging_frame(view, [("A-000000000001", "2021-01-01", CREATED, 0.5)], names[view]),
        )
        # with files, the Feast layer reads the names from the Parquet schema
        assert feature_names(ws, view, "w1") == names[view]
    assert store.apply(ws, versions) == list(ALL_VIEWS)
    assert store.registered_versions(ws) == versions
    registered = {fv.name: len(fv.features) for fv in store.open_store(ws).list_feature_views()}
    assert registered == counts
    assert store.apply(ws, versions) == list(ALL_VIEWS)
    assert store.registered_versions(ws) == versions


def test_apply_refuses_a_folder_without_the_registered_features(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    write_offline(
        ws,
        PIT_VIEW,
        "w1",
        imaging_frame(PIT_VIEW, [("P", "2021-01-01", CREATED, 1.0)], [PIT_FEATURE]),
    )
    with pytest.raises(ValueError, match=r"rad_tumor_t1c.*feature_names"):
        store.apply(
            ws,
            {PIT_VIEW: "w1"},
            {PIT_VIEW: [PIT_FEATURE, f"{PIT_VIEW}__original__firstorder__median"]},
        )


def test_user_errors_are_atrx_errors_with_a_fix(tmp_path: Path) -> None:
    """Unknown views, bad versions and empty folders are the family's input / not-found errors,
    and still the builtins they used to be."""
    ws = Workspace.at(tmp_path)
    with pytest.raises(FeatureViewError, match="unknown feature view 'rad_tumour_t1c'") as view:
        check_view("rad_tumour_t1c")
    with pytest.raises(FeatureViewError, match="bad feature_version") as version:
        check_version("../w1")
    for info in (view, version):
        assert isinstance(info.value, InputError) and isinstance(info.value, ValueError)
        assert info.value.exit_code == ExitCode.BAD_INPUT and info.value.fix
    with pytest.raises(NoPartsError, match=PIT_VIEW) as empty:
        feature_names(ws, PIT_VIEW, "w1")
    assert isinstance(empty.value, NotFoundError) and isinstance(empty.value, FileNotFoundError)
    assert "atrx features" in empty.value.fix
    with pytest.raises(NoPartsError):
        read_offline(ws, PIT_VIEW, "w1")
    assert issubclass(OfflineSchemaError, DataError) and issubclass(OfflineSchemaError, ValueError)
    assert OfflineSchemaError("x").exit_code == ExitCode.BAD_INPUT


# --------------------------------------------------------------------------- all views

N_FEATURES = 3


def small_names(view: str) -> list[str]:
    if view in (CLINICAL, LABELS):
        return extractor_feature_names(view)
    return [f"{view}__x{i}" for i in range(N_FEATURES)]


@pytest.fixture(scope="module")
def everything(tmp_path_factory: pytest.TempPathFactory) -> dict[str, object]:
    ws = Workspace.at(tmp_path_factory.mktemp("all"))
    rng = np.random.default_rng(7)
    patients = [f"A-{i:012x}" for i in range(10)]
    label_days = [
        str((ts("2019-01-01") + pd.Timedelta(days=int(d))).date()) for d in rng.integers(0, 900, 10)
    ]
    export_tabular(ws, patients, label_days)
    versions = {CLINICAL: "v1", LABELS: "v1"}
    for view in IMAGING_VIEWS:
        rows = []
        for patient, day in zip(patients, label_days, strict=True):
            for offset in rng.choice(
                np.arange(-900, 120), size=int(rng.integers(1, 4)), replace=False
            ):
                scan = str((ts(day) + pd.Timedelta(days=int(offset))).date())
                for extraction in range(int(rng.integers(1, 3))):
                    rows.append((patient, scan, CREATED + pd.Timedelta(hours=extraction), 0.0))
        frame = imaging_frame(view, rows, small_names(view))
        frame[small_names(view)] = rng.standard_normal((len(rows), N_FEATURES)).astype("float32")
        write_offline(ws, view, "w1", frame)
        versions[view] = "w1"
    names = {view: small_names(view) for view in IMAGING_VIEWS}
    assert store.apply(ws, versions, names) == list(ALL_VIEWS)
    return {"ws": ws, "versions": versions, "patients": patients}


def test_historical_features_across_all_views_equal_direct_duckdb(everything: dict) -> None:
    ws, versions = everything["ws"], everything["versions"]
    entities = label_entities(ws).sample(frac=1.0, random_state=3)  # any row order is kept
    got = store.historical_features(ws, entities)
    expected_columns = ["patient_id", "event_timestamp"] + [
        n for v in ALL_VIEWS for n in small_names(v)
    ]
    assert list(got.columns) == expected_columns
    assert len(got) == len(entities)
    assert list(got["patient_id"]) == list(entities["patient_id"])
    assert got[IMAGING_VIEWS[0] + "__x0"].notna().any() and got["atrx_status"].notna().all()
    for view in ALL_VIEWS:
        direct = direct_point_in_time(ws, entities, view, versions[view])
        pd.testing.assert_frame_equal(got[list(direct.columns)], direct, obj=view)


def test_historical_features_selects_by_canonical_name_or_reference(everything: dict) -> None:
    ws = everything["ws"]
    entities = label_entities(everything["ws"])
    got = store.historical_features(ws, entities, features=["age", "dl_edema_t1c:dl_edema_t1c__x1"])
    assert list(got.columns) == ["patient_id", "event_timestamp", "age", "dl_edema_t1c__x1"]
    with pytest.raises(ValueError, match="not_a_feature"):
        store.historical_features(ws, entities, features=["not_a_feature"])


def test_materialize_then_online_features_gives_latest_values(everything: dict) -> None:
    ws = everything["ws"]
    two = everything["patients"][:2]
    view = "rad_overall_t2f"
    feature = f"{view}__x2"
    # scans reach back to 2016: more than Feast's 52-week first window for a TTL-less view
    store.materialize(ws)
    got = store.online_features(ws, two, [feature, "age"]).set_index("patient_id")
    rows = read_offline(ws, view, "w1")
    latest = (
        rows.sort_values(["event_timestamp", "created_timestamp"])
        .groupby("patient_id")[feature]
        .last()
    )
    for patient in two:
        assert got.loc[patient, feature] == pytest.approx(float(latest[patient]))
    ages = read_offline(ws, CLINICAL, "v1").set_index("patient_id")["age"]
    assert list(got["age"]) == [ages[p] for p in two]


# --------------------------------------------------------------------------- offline writes


def test_write_offline_rejects_missing_timestamp_naming_view_and_column(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    frame = imaging_frame(PIT_VIEW, [("P", "2021-01-01", CREATED, 1.0)], [PIT_FEATURE])
    with pytest.raises(OfflineSchemaError, match=r"rad_tumor_t1c.*event_timestamp"):
        write_offline(ws, PIT_VIEW, "w1", frame.drop(columns="event_timestamp"))
    with pytest.raises(
        OfflineSchemaError, match=r"rad_tumor_t1c.*'rad_tumor_t1c__original__firstorder__mean'"
    ):
        write_offline(ws, PIT_VIEW, "w1", frame.assign(**{PIT_FEATURE: "high"}))
    with pytest.raises(OfflineSchemaError, match=r"clinical.*'sex'"):
        write_offline(
            ws,
            CLINICAL,
            "v1",
            pd.DataFrame(
                {
                    "patient_id": ["P"],
                    "event_timestamp": [CREATED],
                    "created_timestamp": [CREATED],
                    "age": [50.0],
                    "sex": ["m"],
                    "who_grade": [4],
                    "vasari_score": [1.0],
                }
            ),
        )
    assert part_files(ws, PIT_VIEW, "w1") == []


def test_write_offline_refuses_to_mix_feature_sets_in_one_version(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    write_offline(
        ws,
        PIT_VIEW,
        "w1",
        imaging_frame(PIT_VIEW, [("P", "2021-01-01", CREATED, 1.0)], [PIT_FEATURE]),
    )
    other = imaging_frame(
        PIT_VIEW, [("Q", "2021-01-01", CREATED, 1.0)], [f"{PIT_VIEW}__original__shape__flatness"]
    )
    with pytest.raises(OfflineSchemaError, match="new version folder"):
        write_offline(ws, PIT_VIEW, "w1", other)
    write_offline(ws, PIT_VIEW, "w2", other)
    assert available_versions(ws) == {PIT_VIEW: ["w1", "w2"]}


def test_writes_are_atomic(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    ws = Workspace.at(tmp_path)
    frame = imaging_frame(PIT_VIEW, [("P", "2021-01-01", CREATED, 1.0)], [PIT_FEATURE])
    first = write_offline(ws, PIT_VIEW, "w1", frame)
    folder = first.parent

    def crash_half_way(table: object, where: object, **kwargs: object) -> None:
        Path(str(where)).write_bytes(b"PAR1 half a file")
        raise OSError("disk full")

    monkeypatch.setattr(off.pq, "write_table", crash_half_way)
    with pytest.raises(OSError, match="disk full"):
        write_offline(
            ws, PIT_VIEW, "w1", frame.assign(created_timestamp=CREATED + pd.Timedelta(days=1))
        )
    monkeypatch.undo()
    assert sorted(os.listdir(folder)) == [first.name]
    assert re.fullmatch(r"part-\d{8}T\d{12}Z-[0-9a-f]{32}\.parquet", first.name)
    assert len(read_offline(ws, PIT_VIEW, "w1")) == 1
    assert pq.read_schema(first).field("event_timestamp").type.tz == "UTC"


def test_export_replaces_the_previous_export(tmp_path: Path) -> None:
    ws = Workspace.at(tmp_path)
    export_tabular(ws, ["A", "B"], [LABEL_DAY] * 2, age=40.0)
    export_tabular(ws, ["A", "B"], [LABEL_DAY] * 2, age=60.0)
    for view in (CLINICAL, LABELS):
        assert len(part_files(ws, view, "v1")) == 1
    clinical = read_offline(ws, CLINICAL, "v1")
    assert sorted(clinical["patient_id"]) == ["A", "B"] and clinical["age"].min() == 60.0
    labels = read_offline(ws, LABELS, "v1").set_index("patient_id")
    assert labels.loc["A", "atrx_mutant"] == 1 and labels.loc["B", "atrx_status"] == "wildtype"
    assert labels.loc["A", "event_timestamp"] == ts(LABEL_DAY)


# --------------------------------------------------------------------------- CLI config


def test_feature_store_yaml_matches_the_sdk_config(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from feast.repo_config import load_repo_config

    monkeypatch.setenv("ATRX_HOME", str(tmp_path))
    repo = REPO_ROOT / "feature_repo"
    from_yaml = load_repo_config(repo, repo / "feature_store.yaml")
    from_sdk = store.repo_config(Workspace.at(tmp_path))
    for config in (from_yaml, from_sdk):
        assert config.project == "atrx" and config.provider == "local"
    assert from_yaml.registry.path == from_sdk.registry.path == str(tmp_path / "feast_registry.db")
    assert from_yaml.online_store.path == from_sdk.online_store.path == str(tmp_path / "online.db")
    assert from_yaml.offline_store.type == from_sdk.offline_store.type == (
        "feature_repo.fast_offline.FastDuckDBOfflineStore")
    from feature_repo.fast_offline import FastDuckDBOfflineStoreConfig

    assert isinstance(from_yaml.offline_store, FastDuckDBOfflineStoreConfig)
    assert isinstance(from_sdk.offline_store, FastDuckDBOfflineStoreConfig)
    assert from_yaml.registry.cache_ttl_seconds == from_sdk.registry.cache_ttl_seconds
    assert from_yaml.registry.serve_features_while_materializing
    assert from_sdk.registry.serve_features_while_materializing


def test_feast_cli_apply_is_stopped_before_it_deletes_views(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from feast.repo_operations import parse_repo

    monkeypatch.chdir(REPO_ROOT)
    with pytest.raises(RuntimeError, match="python -m feature_repo"):
        parse_repo(REPO_ROOT / "feature_repo")


def test_python_m_feature_repo_prints_error_and_fix(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    from feature_repo.__main__ import main

    monkeypatch.delenv("ATRX_DEBUG", raising=False)
    argv = ["--home", str(tmp_path), "apply", "--version", "rad_tumour_t1c=v1"]
    assert main(argv) == ExitCode.BAD_INPUT
    err = capsys.readouterr().err
    assert "error: unknown feature view 'rad_tumour_t1c'" in err and "fix: " in err
    monkeypatch.setenv("ATRX_DEBUG", "1")
    with pytest.raises(FeatureViewError):
        main(argv)
    assert main(["--home", str(tmp_path), "apply"]) == 0
