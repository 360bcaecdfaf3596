"""The offline store's column contract, checked on a frame as it becomes an Arrow table.

:func:`to_table` is the one gate every write passes (:mod:`feature_repo.offline`): a bad frame fails
here, naming the view and the column, instead of as a NULL-filled training matrix later. Pure: no
files, no Feast.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
import pandas as pd
import pyarrow as pa

from feature_repo.errors import OfflineSchemaError
from feature_repo.layout import (
    ATRX_STATUS_VALUES,
    CLINICAL,
    CLINICAL_FEATURES,
    CREATED_TIMESTAMP,
    EVENT_TIMESTAMP,
    FEATURE_VERSION,
    IMAGING_EXTRA_COLUMNS,
    JOIN_KEY,
    KEY_COLUMNS,
    LABEL_FEATURES,
    SCAN_VERSION,
    SEX_VALUES,
    STUDY_ID,
    check_version,
    check_view,
    imaging_spec,
)

__all__ = ["require_columns", "to_table", "utc_timestamps"]

_TIMESTAMP = pa.timestamp("us", tz="UTC")
_ARROW_TYPES = {
    "float32": pa.float32(),
    "float64": pa.float64(),
    "int64": pa.int64(),
    "string": pa.string(),
}


def require_columns(view: str, frame: pd.DataFrame, columns: Sequence[str]) -> None:
    if not isinstance(frame, pd.DataFrame):
        raise TypeError(f"{view}: expected a pandas DataFrame, got {type(frame).__name__}")
    missing = [c for c in columns if c not in frame.columns]
    if missing:
        raise OfflineSchemaError(
            f"{view}: frame lacks required column(s) {missing}; it needs {list(columns)}"
        )


def utc_timestamps(view: str, column: str, values: pd.Series) -> pd.Series:
    """Timestamps as UTC; naive values (and plain dates) are taken to be UTC already."""
    if pd.api.types.is_numeric_dtype(values) or pd.api.types.is_bool_dtype(values):
        raise OfflineSchemaError(
            f"{view}: column {column!r} must hold timestamps or dates, got dtype {values.dtype}"
        )
    try:
        out = pd.to_datetime(values, utc=True)
    except (TypeError, ValueError) as exc:
        raise OfflineSchemaError(
            f"{view}: column {column!r} must hold timestamps or dates ({exc})"
        ) from exc
    if out.isna().any():
        raise OfflineSchemaError(
            f"{view}: column {column!r} has {int(out.isna().sum())} missing value(s); every row "
            "needs one"
        )
    return out


def _strings(view: str, column: str, values: pd.Series, nullable: bool) -> pa.Array:
    nulls = values.isna()
    if not nullable and nulls.any():
        raise OfflineSchemaError(f"{view}: column {column!r} has missing values")
    if not values[~nulls].map(lambda v: isinstance(v, str)).all():
        raise OfflineSchemaError(f"{view}: column {column!r} must hold strings")
    return pa.array(values.astype(object).where(~nulls, None), type=pa.string())


def _numbers(view: str, column: str, values: pd.Series, dtype: str) -> pa.Array:
    if pd.api.types.is_bool_dtype(values) or not pd.api.types.is_numeric_dtype(values):
        raise OfflineSchemaError(
            f"{view}: column {column!r} must be numeric ({dtype}), got dtype {values.dtype}"
        )
    if dtype == "int64":
        present = values.dropna()
        if not pd.api.types.is_integer_dtype(values) and not (present == np.round(present)).all():
            raise OfflineSchemaError(f"{view}: column {column!r} must hold whole numbers (int64)")
        return pa.array(values.astype("Int64"), type=pa.int64(), from_pandas=True)
    return pa.array(values.astype(dtype), type=_ARROW_TYPES[dtype], from_pandas=True)


def _feature_columns(
    view: str, frame: pd.DataFrame, fixed: Sequence[str], feature_names: Sequence[str] | None
) -> list[str]:
    spec = imaging_spec(view)
    rest = [c for c in frame.columns if c not in fixed]
    if spec is None:
        expected = list(CLINICAL_FEATURES if view == CLINICAL else LABEL_FEATURES)
        if feature_names is not None and list(feature_names) != expected:
            raise OfflineSchemaError(f"{view}: its features are fixed: {expected}")
    else:
        bad = [c for c in rest if not isinstance(c, str) or not c.startswith(f"{view}__")]
        if bad:
            raise OfflineSchemaError(
                f"{view}: unexpected column(s) {bad[:5]}; imaging feature columns are canonical "
                f"names starting with '{view}__' (atrx.names), other columns are not stored"
            )
        expected = list(feature_names) if feature_names is not None else rest
        if not expected:
            raise OfflineSchemaError(f"{view}: frame has no feature columns ('{view}__...')")
    missing = [c for c in expected if c not in frame.columns]
    extra = [c for c in rest if c not in expected]
    if missing or extra:
        raise OfflineSchemaError(
            f"{view}: feature columns do not match: missing {missing[:5]}, unexpected {extra[:5]}"
        )
    return expected


def to_table(
    view: str, feature_version: str, frame: pd.DataFrame, feature_names: Sequence[str] | None
) -> pa.Table:
    check_view(view)
    check_version(feature_version)
    imaging = imaging_spec(view) is not None
    fixed = [*KEY_COLUMNS, *(IMAGING_EXTRA_COLUMNS if imaging else ())]
    require_columns(view, frame, [c for c in fixed if c != FEATURE_VERSION])
    frame = frame.reset_index(drop=True)
    features = _feature_columns(view, frame, fixed, feature_names)

    if FEATURE_VERSION in frame.columns:
        other = sorted(set(frame[FEATURE_VERSION].dropna().astype(str)) - {feature_version})
        if other or frame[FEATURE_VERSION].isna().any():
            raise OfflineSchemaError(
                f"{view}: column {FEATURE_VERSION!r} holds {other or ['<missing>']} but the frame is "
                f"being written to version folder {feature_version!r}"
            )
    columns: dict[str, pa.Array] = {
        JOIN_KEY: _strings(view, JOIN_KEY, frame[JOIN_KEY], nullable=False),
        EVENT_TIMESTAMP: pa.array(
            utc_timestamps(view, EVENT_TIMESTAMP, frame[EVENT_TIMESTAMP])
        ).cast(_TIMESTAMP, safe=False),
        CREATED_TIMESTAMP: pa.array(
            utc_timestamps(view, CREATED_TIMESTAMP, frame[CREATED_TIMESTAMP])
        ).cast(_TIMESTAMP, safe=False),
        FEATURE_VERSION: pa.array([feature_version] * len(frame), type=pa.string()),
    }
    if imaging:
        columns[STUDY_ID] = _strings(view, STUDY_ID, frame[STUDY_ID], nullable=False)
        scan_version = frame[SCAN_VERSION]
        if scan_version.isna().any():
            raise OfflineSchemaError(f"{view}: column {SCAN_VERSION!r} has missing values")
        columns[SCAN_VERSION] = _numbers(view, SCAN_VERSION, scan_version, "int64")
        for name in features:
            columns[name] = _numbers(view, name, frame[name], "float32")
    else:
        dtypes = CLINICAL_FEATURES if view == CLINICAL else LABEL_FEATURES
        for name in features:
            values = frame[name]
            if dtypes[name] == "string":
                columns[name] = _strings(view, name, values, nullable=view == CLINICAL)
            else:
                columns[name] = _numbers(view, name, values, dtypes[name])
        _check_tabular_values(view, frame)

    keys = frame[[JOIN_KEY]].assign(
        _e=columns[EVENT_TIMESTAMP].to_pandas(), _c=columns[CREATED_TIMESTAMP].to_pandas()
    )
    dup = keys.duplicated()
    if dup.any():
        raise OfflineSchemaError(
            f"{view}: {int(dup.sum())} row(s) repeat a (patient_id, event_timestamp, "
            f"created_timestamp) triple, e.g. patient {keys[JOIN_KEY][dup].iloc[0]!r}; "
            "which one is current would be arbitrary"
        )
    return pa.table(columns)


def _check_tabular_values(view: str, frame: pd.DataFrame) -> None:
    if view == CLINICAL:
        sex = frame["sex"].dropna()
        bad = sorted(set(sex) - SEX_VALUES)
        if bad:
            raise OfflineSchemaError(
                f"{view}: column 'sex' has {bad}; expected {sorted(SEX_VALUES)}"
            )
        return
    status = frame["atrx_status"]
    bad = sorted(set(status) - ATRX_STATUS_VALUES)
    if bad:
        raise OfflineSchemaError(
            f"{view}: column 'atrx_status' has {bad}; expected {sorted(ATRX_STATUS_VALUES)}"
        )
    mutant = frame["atrx_mutant"]
    if mutant.isna().any() or not mutant.isin([0, 1]).all():
        raise OfflineSchemaError(f"{view}: column 'atrx_mutant' must be 0 or 1 in every row")
    if ((status == "mutant").astype("int64") != mutant.astype("int64")).any():
        raise OfflineSchemaError(
            f"{view}: 'atrx_mutant' disagrees with 'atrx_status' (1 means 'mutant')"
        )
