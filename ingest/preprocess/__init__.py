"""Per-study MRI preprocessing: the pure science between reading files and writing the store.

Reorient, N4 bias correction, rigid T2f->T1c registration, resampling onto a 1 mm grid that
covers the T1c, brain mask, z-score and the derived ROIs. Every decision the pipeline takes
(the fitted bias fields, the registration transform, thresholds, z-score statistics) is written
to ``steps`` so that :func:`replay` rebuilds the same arrays from the same inputs without
fitting or optimising anything again. No file I/O, no Dask, no global state.

- :mod:`~ingest.preprocess.params`: the version, the parameters, the constants, the error
- :mod:`~ingest.preprocess.ops`: pure operations (grids, reorient, resample, brain mask, z-score)
- :mod:`~ingest.preprocess.fitting`: the two fits (N4 bias field, rigid registration)
- :mod:`~ingest.preprocess.records`: the JSON shape of each recorded step
- :mod:`~ingest.preprocess.steps`: how each step decides, records and is applied again
- :mod:`~ingest.preprocess.pipeline`: the engine that runs the steps and replays a record
"""

from __future__ import annotations

from ingest.preprocess.fitting import head_mask, n4_bias_correct, register_rigid
from ingest.preprocess.ops import (
    brain_mask,
    brain_thresholds,
    check_same_geometry,
    geometry_of,
    isotropic_reference,
    reorient,
    resample_to_grid,
    tissue_threshold,
    zscore,
)
from ingest.preprocess.params import (
    MIN_T2F_BRAIN_COVERAGE,
    PREPROCESS_VERSION,
    REPLAYABLE_VERSIONS,
    PreprocessError,
    PreprocessParams,
    Space,
)
from ingest.preprocess.pipeline import PreprocessedStudy, preprocess_study, replay
from ingest.preprocess.records import (
    StepRecord,
    image_fingerprint,
    steps_to_json,
    transform_from_record,
    transform_to_record,
)

__all__ = [
    "MIN_T2F_BRAIN_COVERAGE",
    "PREPROCESS_VERSION",
    "REPLAYABLE_VERSIONS",
    "PreprocessError",
    "PreprocessParams",
    "PreprocessedStudy",
    "Space",
    "StepRecord",
    "brain_mask",
    "brain_thresholds",
    "check_same_geometry",
    "geometry_of",
    "head_mask",
    "image_fingerprint",
    "isotropic_reference",
    "n4_bias_correct",
    "preprocess_study",
    "register_rigid",
    "reorient",
    "replay",
    "resample_to_grid",
    "steps_to_json",
    "tissue_threshold",
    "transform_from_record",
    "transform_to_record",
    "zscore",
]
