"""Every Feast object of the repository, generated from :mod:`feature_repo.layout`.

Nothing is declared at module level: ``feast apply`` from the CLI would otherwise pick objects up
and, since it deletes what it does not see, fight the SDK registration. Call the builders.

Each view's source is exactly one version folder (``offline/{view}/{feature_version}/``), recorded
in the view's ``feature_version`` tag, so features of different recipes can never meet in one join.
The TTL is ``timedelta(0)``: in Feast 0.67 a zero (or ``None``) TTL adds no look-back cut-off, so a
scan of any age before the label date is visible.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from datetime import timedelta
from typing import Final

from feast import Entity, FeatureView, Field, FileSource, ValueType
from feast.data_format import ParquetFormat
from feast.types import Float32, Float64, Int64, PrimitiveFeastType, String

from atrx.workspace import Workspace
from feature_repo.errors import FeatureViewError
from feature_repo.layout import (
    ALL_VIEWS,
    CLINICAL,
    CLINICAL_FEATURES,
    CREATED_TIMESTAMP,
    ENTITY,
    EVENT_TIMESTAMP,
    JOIN_KEY,
    LABEL_FEATURES,
    LABELS,
    check_version,
    check_view,
    imaging_spec,
    parts_glob,
)
from feature_repo.layout import (
    feature_names as folder_feature_names,
)

#: no look-back limit (pinned by tests: Feast 0.67 treats 0 as "lives forever")
NO_TTL: Final[timedelta] = timedelta(0)
IMAGING_FEAST_TYPE: Final[PrimitiveFeastType] = Float32
_FEAST_TYPES: Final[dict[str, PrimitiveFeastType]] = {
    "float32": Float32,
    "float64": Float64,
    "int64": Int64,
    "string": String,
}


def patient_entity() -> Entity:
    """The one entity: a patient, joined on the pseudonymous ``patient_id``."""
    return Entity(
        name=ENTITY,
        join_keys=[JOIN_KEY],
        value_type=ValueType.STRING,
        description="a patient, by center-independent pseudonym such as 'A-3f2a9c1b0d4e'",
    )


def _source(ws: Workspace, view: str, version: str) -> FileSource:
    return FileSource(
        name=view,
        path=parts_glob(ws, view, version),
        file_format=ParquetFormat(),
        timestamp_field=EVENT_TIMESTAMP,
        created_timestamp_column=CREATED_TIMESTAMP,
        description=f"offline/{view}/{version}",
    )


def _fields(view: str, names: Sequence[str]) -> list[Field]:
    spec = imaging_spec(view)
    if spec is None:
        dtypes = CLINICAL_FEATURES if view == CLINICAL else LABEL_FEATURES
        unknown = [n for n in names if n not in dtypes]
        if unknown:
            raise FeatureViewError(f"view {view!r} has no features {unknown}; it has {list(dtypes)}")
        return [Field(name=n, dtype=_FEAST_TYPES[dtypes[n]]) for n in names]
    foreign = [n for n in names if not n.startswith(f"{view}__")]
    if foreign:
        raise FeatureViewError(
            f"view {view!r}: feature names must start with '{view}__' (canonical names), "
            f"got {foreign[:5]}",
            fix="name imaging features as atrx.names makes them (the extractors' name functions)",
        )
    return [Field(name=n, dtype=IMAGING_FEAST_TYPE) for n in names]


def build_feature_view(
    ws: Workspace, view: str, feature_version: str, feature_names: Sequence[str] | None = None
) -> FeatureView:
    """One view reading ``offline/{view}/{feature_version}/``, with its canonical fields."""
    check_view(view)
    check_version(feature_version)
    names = (list(feature_names) if feature_names is not None
             else folder_feature_names(ws, view, feature_version))
    if not names:
        raise FeatureViewError(f"view {view!r}: no feature names given")
    if len(set(names)) != len(names):
        raise FeatureViewError(f"view {view!r}: duplicate feature names")
    spec = imaging_spec(view)
    tags = {"feature_version": feature_version, "n_features": str(len(names))}
    if spec is None:
        tags["kind"] = view
        description = (
            "clinical covariates; event_timestamp = earliest scan date"
            if view == CLINICAL
            else "ATRX label; event_timestamp = pathology date (never served online)"
        )
    else:
        kind, roi, sequence = spec
        tags.update(kind=kind, roi=roi, sequence=sequence)
        description = f"{kind} features of the {roi} ROI on {sequence}; event_timestamp = scan date"
    return FeatureView(
        name=view,
        entities=[patient_entity()],
        ttl=NO_TTL,
        schema=[Field(name=JOIN_KEY, dtype=String), *_fields(view, names)],
        source=_source(ws, view, feature_version),
        # a model served online must never see a label
        online=view != LABELS,
        tags=tags,
        description=description,
    )


def build_feature_views(
    ws: Workspace,
    versions: Mapping[str, str],
    feature_names: Mapping[str, Sequence[str]] | None = None,
) -> list[FeatureView]:
    """The views named in ``versions`` (view -> feature_version folder), in canonical order.

    ``feature_names`` gives the names of some views; the others take the feature columns of
    their version folder's Parquet schema (what the extractor wrote).
    """
    unknown = sorted(set(versions) - set(ALL_VIEWS))
    if unknown:
        raise FeatureViewError(f"unknown feature views {unknown}; expected some of {list(ALL_VIEWS)}")
    names = dict(feature_names or {})
    stray = sorted(set(names) - set(versions))
    if stray:
        raise FeatureViewError(f"feature_names given for views {stray} that have no entry in versions")
    return [
        build_feature_view(ws, view, versions[view], names.get(view))
        for view in ALL_VIEWS
        if view in versions
    ]
