"""FastDuckDBOfflineStore vs Feast's stock DuckDB store: same registry, same Parquet files, same frames.

Each comparison runs ``FeatureStore.get_historical_features`` twice, once per offline store type,
and asserts the frames equal after sorting the stock one by entity row (the stock store promises no
row order; ours keeps entity_df's). The files have several scans per patient, re-extractions of one
scan (ties in event time broken by created time, within one part and across parts), an entity row
before every scan, one exactly at a scan, duplicate entity rows and a patient without rows.
"""

from __future__ import annotations

from datetime import timedelta

import numpy as np
import pandas as pd
import pyarrow as pa
import pytest
from feast import FeatureStore, FeatureView, Field, FileSource
from feast.data_format import ParquetFormat
from feast.on_demand_feature_view import on_demand_feature_view
from feast.types import Float32, Float64, String
from test_feature_repo import CREATED, export_tabular, imaging_frame, ts

from atrx.workspace import Workspace
from feature_repo import store
from feature_repo.definitions import build_feature_view, patient_entity
from feature_repo.errors import OfflineSchemaError
from feature_repo.fast_offline import (
    OFFLINE_STORE_TYPE,
    DirectRetrievalJob,
    _order,
)
from feature_repo.layout import CLINICAL, LABELS, parts_glob
from feature_repo.offline import write_offline

NARROW = "rad_tumor_t1c"  # 3 features: the explicit column list
WIDE = "dl_edema_t2f"  # 70 features: read as f.* and cut in Arrow
NAMES = {NARROW: [f"{NARROW}__x{i}" for i in range(3)], WIDE: [f"{WIDE}__f{i:04d}" for i in range(70)]}
PATIENTS = ["P1", "P2", "P3", "P4"]
H = pd.Timedelta(hours=1)
# (patient, scan day, created, value); the value fills the row's features (feature i: value + i)
ROWS = {
    NARROW: [
        ("P1", "2020-01-01", CREATED, 1.0),
        ("P1", "2020-03-01", CREATED, 2.0),
        ("P1", "2020-03-01", CREATED + H, 3.0),  # re-extraction of the same scan, same part: wins
        ("P1", "2020-05-01", CREATED, 4.0),
        ("P2", "2020-02-01", CREATED + 2 * H, 5.0),
        ("P2", "2020-04-01", CREATED, 6.0),
        ("P3", "2019-06-01", CREATED, 7.0),
    ],
    WIDE: [
        ("P1", "2020-02-15", CREATED, 10.0),
        ("P2", "2020-02-01", CREATED, 11.0),
        ("P2", "2020-06-01", CREATED, 12.0),
        ("P4", "2020-01-10", CREATED, 13.0),
    ],
}
# later parts: a newer extraction of an earlier scan, and an older one that must lose
LATER = {
    NARROW: [("P2", "2020-02-01", CREATED + 3 * H, 8.0), ("P1", "2020-01-01", CREATED - H, 9.0)],
    WIDE: [("P2", "2020-02-01", CREATED + H, 14.0)],
}
ENTITY = pd.DataFrame(
    {
        "patient_id": ["P1", "P1", "P1", "P2", "P2", "P3", "P4", "P5", "P1", "P2", "P1"],
        "event_timestamp": [
            ts(d)
            for d in [
                "2019-12-31",  # before every scan of P1: no values
                "2020-03-01",  # exactly at a scan
                "2020-04-15",
                "2020-03-01",
                "2021-01-01",
                "2020-01-01",
                "2020-06-01",
                "2020-06-01",  # no rows at all
                "2020-04-15",  # a duplicate entity row
                "2020-02-01",
                "2020-02-01",
            ]
        ],
        "row": np.arange(11, dtype="int64")[::-1].copy(),  # not the frame's order
        "note": [f"n{i}" for i in range(11)],
    }
)


def frame(view: str, rows: list[tuple]) -> pd.DataFrame:
    out = imaging_frame(view, rows, NAMES[view])
    for i, name in enumerate(NAMES[view]):
        out[name] = (out[name] + i).astype("float32")
    return out


@pytest.fixture(scope="module")
def repo(tmp_path_factory: pytest.TempPathFactory) -> Workspace:
    ws = Workspace.at(tmp_path_factory.mktemp("fast"))
    for view in (NARROW, WIDE):
        write_offline(ws, view, "w1", frame(view, ROWS[view]))
        write_offline(ws, view, "w1", frame(view, LATER[view]))
    export_tabular(ws, PATIENTS, ["2020-03-01", "2020-05-01", "2020-02-01", "2020-08-01"])
    store.apply(ws, {NARROW: "w1", WIDE: "w1", CLINICAL: "v1", LABELS: "v1"}, NAMES)
    return ws


def feast_store(ws: Workspace, offline_type: str) -> FeatureStore:
    """The workspace's FeatureStore (registry, online store) with the given offline store type."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(store, "OFFLINE_STORE_TYPE", offline_type)
        return store.open_store(ws)


def both(
    ws: Workspace, features: list[str], entity: pd.DataFrame = ENTITY, **kwargs: object
) -> tuple[object, object, pd.DataFrame, pd.DataFrame]:
    """(our job, stock job, our frame, stock frame sorted to entity order)."""
    jobs = [
        feast_store(ws, t).get_historical_features(entity_df=entity.copy(), features=features, **kwargs)
        for t in (OFFLINE_STORE_TYPE, "duckdb")
    ]
    ours, stock = (j.to_df() for j in jobs)
    stock = stock.set_index("row").loc[entity["row"]].reset_index()[list(stock.columns)]
    return jobs[0], jobs[1], ours, stock


ALL = (
    [f"{NARROW}:{n}" for n in NAMES[NARROW]]
    + [f"{WIDE}:{n}" for n in NAMES[WIDE]]
    + [f"{CLINICAL}:age", f"{CLINICAL}:sex", f"{LABELS}:atrx_status", f"{LABELS}:atrx_mutant"]
)


@pytest.mark.parametrize("full_feature_names", [False, True])
def test_direct_join_equals_stock_store(repo: Workspace, full_feature_names: bool) -> None:
    ours_job, stock_job, ours, stock = both(repo, ALL, full_feature_names=full_feature_names)
    assert isinstance(ours_job, DirectRetrievalJob) and not isinstance(stock_job, DirectRetrievalJob)
    pd.testing.assert_frame_equal(ours, stock)
    assert list(ours["row"]) == list(ENTITY["row"])  # entity_df's order, without sorting
    assert ours_job.full_feature_names is full_feature_names
    # to_arrow too, types included (an int64 column with nulls stays int64 there)
    assert ours_job.to_arrow().equals(stock_job.to_arrow().sort_by([("row", "descending")]))
    # the comparison is not vacuous: the point-in-time rule picked these
    x0 = f"{NARROW}__{NAMES[NARROW][0]}" if full_feature_names else NAMES[NARROW][0]
    wide1 = f"{WIDE}__{NAMES[WIDE][1]}" if full_feature_names else NAMES[WIDE][1]
    assert np.isnan(ours[x0][0]) and np.isnan(ours[x0][7])  # before every scan; no rows
    assert ours[x0][1] == 3.0  # at the scan, its newest extraction
    assert ours[x0][2] == ours[x0][8] == 3.0 and ours[x0][9] == 8.0  # newest extraction, later part
    assert ours[x0][10] == 1.0  # an older extraction in a later part loses
    assert ours[wide1][9] == 15.0 and ours[wide1][4] == 13.0  # 11.0's newest re-extraction; latest


def test_a_subset_in_mixed_order_equals_stock(repo: Workspace) -> None:
    features = [f"{WIDE}:{NAMES[WIDE][5]}", f"{NARROW}:{NAMES[NARROW][2]}", f"{CLINICAL}:sex",
                f"{WIDE}:{NAMES[WIDE][1]}", f"{NARROW}:{NAMES[NARROW][0]}"]
    ours_job, _, ours, stock = both(repo, features)
    assert isinstance(ours_job, DirectRetrievalJob)
    pd.testing.assert_frame_equal(ours, stock)


def test_a_positive_ttl_hides_old_scans_as_the_stock_store_does(repo: Workspace) -> None:
    base = build_feature_view(repo, NARROW, "w1", NAMES[NARROW])
    source = FileSource(
        name="ttl_source", path=parts_glob(repo, NARROW, "w1"), file_format=ParquetFormat(),
        timestamp_field="event_timestamp", created_timestamp_column="created_timestamp",
    )
    ttl_view = FeatureView(
        name="ttl_view", entities=[patient_entity()], ttl=timedelta(days=31),
        schema=[Field(name="patient_id", dtype=String), *base.features], source=source,
    )
    feast_store(repo, "duckdb").apply([patient_entity(), ttl_view])
    features = [f"ttl_view:{n}" for n in NAMES[NARROW]]
    ours_job, _, ours, stock = both(repo, features)
    assert isinstance(ours_job, DirectRetrievalJob)
    pd.testing.assert_frame_equal(ours, stock)
    x0 = NAMES[NARROW][0]
    assert ours[x0][3] == 8.0 and ours[x0][10] == 1.0  # 29 days; 31 days, on the boundary
    assert np.isnan(ours[x0][2]) and np.isnan(ours[x0][4])  # 45 days; 275 days


def test_what_it_does_not_handle_goes_to_the_stock_store(repo: Workspace) -> None:
    # filter_by_created_timestamp: a cut-off per entity row, which one ASOF join cannot express
    # (entity times between the extractions, so that it hides some and not others)
    between = ENTITY.assign(event_timestamp=CREATED + 1.5 * H)
    ours_job, stock_job, ours, stock = both(repo, ALL[:3], between, filter_by_created_timestamp=True)
    assert type(ours_job) is type(stock_job) and not isinstance(ours_job, DirectRetrievalJob)
    pd.testing.assert_frame_equal(ours, stock)
    assert ours[NAMES[NARROW][0]].notna().any() and ours[NAMES[NARROW][0]].isna().any()

    # an on-demand view
    source = feast_store(repo, "duckdb").get_feature_view(NARROW)

    @on_demand_feature_view(sources=[source], schema=[Field(name="x0_doubled", dtype=Float64)],
                            mode="pandas")
    def doubled(inputs: pd.DataFrame) -> pd.DataFrame:
        # Feast runs the function's source text alone (no module globals) on full feature names
        x0 = inputs["rad_tumor_t1c__rad_tumor_t1c__x0"]
        return pd.DataFrame({"x0_doubled": x0.astype("float64") * 2})

    feast_store(repo, "duckdb").apply([doubled])
    ours_job, stock_job, ours, stock = both(repo, ["doubled:x0_doubled", ALL[0]])
    assert type(ours_job) is type(stock_job)
    pd.testing.assert_frame_equal(ours, stock)
    assert ours["x0_doubled"][1] == 6.0


def test_a_registered_feature_missing_from_the_files_is_an_atrx_error(repo: Workspace) -> None:
    base = build_feature_view(repo, NARROW, "w1", NAMES[NARROW])
    ghost = FeatureView(
        name="ghost_view", entities=[patient_entity()], ttl=timedelta(0), source=base.batch_source,
        schema=[Field(name="patient_id", dtype=String), Field(name="not_there", dtype=Float32)],
    )
    fs = feast_store(repo, OFFLINE_STORE_TYPE)
    fs.apply([patient_entity(), ghost])
    job = fs.get_historical_features(entity_df=ENTITY.copy(), features=["ghost_view:not_there"])
    with pytest.raises(OfflineSchemaError, match="ghost_view.*not_there"):
        job.to_df()


def test_rows_out_of_order_are_put_in_entity_order() -> None:
    assert _order(pa.chunked_array([[0, 1], [2]])) is None
    assert _order(pa.chunked_array([[2, 0, 1]])).to_pylist() == [1, 2, 0]
