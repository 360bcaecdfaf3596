"""feature_repo.fast_online: our SQLite online store's shortcuts answer as Feast's stock code does."""

from __future__ import annotations

from feast import Entity, FeatureView, Field, FileSource
from feast.infra.online_stores.online_store import OnlineStore
from feast.types import Float32, Float64, Int64, String

from feature_repo.fast_online import FastSqliteOnlineStore


def _view(name: str, n: int) -> FeatureView:
    kinds = [Float32, Float64, Int64, String]
    return FeatureView(
        name=name, entities=[Entity(name="patient", join_keys=["patient_id"])],
        schema=[Field(name=f"{name}__f{i:04d}", dtype=kinds[i % 4]) for i in range(n)],
        source=FileSource(path=f"/nonexistent/{name}.parquet", timestamp_field="event_timestamp"),
    )


def test_feature_types_equal_the_stock_mapping() -> None:
    a, b = _view("rad_overall_t1c", 1130), _view("clinical", 4)
    grouped = [(a, [f"rad_overall_t1c__f{i:04d}" for i in (0, 7, 513, 1129)] + ["missing"]),
               (b, ["clinical__f0001", "clinical__f0003"])]
    ours = FastSqliteOnlineStore._build_feature_types(grouped)
    stock = OnlineStore._build_feature_types(grouped)
    assert ours == stock
    assert len(ours) == 12  # bare and prefixed name of each of the 6 requested fields that exist
    assert FastSqliteOnlineStore._build_feature_types([]) == {}


def test_feature_types_are_remembered_per_view_object_and_request() -> None:
    a = _view("rad_overall_t2f", 50)
    first = FastSqliteOnlineStore._build_feature_types([(a, ["rad_overall_t2f__f0001"])])
    other = FastSqliteOnlineStore._build_feature_types([(a, ["rad_overall_t2f__f0002"])])
    assert first == OnlineStore._build_feature_types([(a, ["rad_overall_t2f__f0001"])])
    assert other == OnlineStore._build_feature_types([(a, ["rad_overall_t2f__f0002"])])
    # a new object of the same name (what a registry refresh gives) is typed from its own fields
    b = _view("rad_overall_t2f", 3)
    b.features[1] = Field(name="rad_overall_t2f__f0001", dtype=String)
    assert FastSqliteOnlineStore._build_feature_types([(b, ["rad_overall_t2f__f0001"])]) == \
        OnlineStore._build_feature_types([(b, ["rad_overall_t2f__f0001"])]) != first
