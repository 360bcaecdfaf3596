"""The ``engine`` key of a radiomics parameter file: one entry point, two engines, two versions.

``features.radiomics.extract_features`` runs ``atrx`` (features.engine) or ``pyradiomics`` as the
file says; both give the same keys in the same order and the same values (the full agreement
table is tests/test_engine_agreement.py). The engine is part of the feature version, and a file
without the key stays a PyRadiomics file with the version it had before the engine existed.
"""

from __future__ import annotations

import copy
import logging

import numpy as np
import pytest
from engine_cases import brain1, cases

from features.errors import FeatureError, RadiomicsParamsError
from features.radiomics import (
    check_params,
    engine_of,
    extract_features,
    extract_radiomics,
    load_params,
    radiomics_feature_names,
)
from features.versioning import radiomics_version

logging.getLogger("radiomics").setLevel(logging.ERROR)

#: the feature version of features/params/radiomics.yaml before it had an engine key (commit
#: 9e9a77a): every workspace featurised then holds this directory, and must keep finding it
PRE_ENGINE_VERSION = "rad-ac2741a89be5"


def _with_engine(params: dict, engine: str | None) -> dict:
    out = copy.deepcopy(params)
    out.pop("engine", None)
    if engine is not None:
        out["engine"] = engine
    return out


def test_the_shipped_file_runs_our_engine() -> None:
    assert engine_of(load_params()) == "atrx"


def test_the_engine_is_part_of_the_version_and_old_files_keep_theirs() -> None:
    # a file from before the engine (and the reference block) existed keeps its version
    params = {k: v for k, v in load_params().items() if k != "reference"}
    versions = {e: radiomics_version(_with_engine(params, e)) for e in ("atrx", "pyradiomics", None)}
    assert versions["atrx"] != versions["pyradiomics"]
    assert versions[None] == versions["pyradiomics"] == PRE_ENGINE_VERSION
    assert radiomics_version(load_params()) not in versions.values()  # the block is in the version


def test_both_engines_give_the_same_keys_and_values() -> None:
    params = load_params()
    case = next(c for c in cases(large=False) if c.name == "blob_r8_0")
    ours = extract_features(case.image, case.mask, _with_engine(params, "atrx"))
    ref = extract_features(case.image, case.mask, _with_engine(params, "pyradiomics"))
    assert list(ours) == list(ref) and len(ref) == 1130
    for key, r in ref.items():
        x = ours[key]
        if np.isnan(r):
            assert np.isnan(x), key
        else:
            assert abs(x - r) <= max(1e-9, 1e-4 * abs(r)), (key, x, r)
    assert radiomics_feature_names("overall", "t2f", _with_engine(params, "atrx")) == \
        radiomics_feature_names("overall", "t2f", _with_engine(params, "pyradiomics"))


def test_brain1_through_the_canonical_names() -> None:
    params = load_params()
    case = brain1()
    got = extract_radiomics(case.image, case.mask, "tumor", "t1c", params)
    assert list(got) == radiomics_feature_names("tumor", "t1c", params)


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"engine": "nyxus"}, r"engine must be one of \['atrx', 'pyradiomics'\], got 'nyxus'"),
        ({"setting": {"resampledPixelSpacing": [1, 1, 1]}}, "resampledPixelSpacing"),
        ({"setting": {"normalize": True}}, "normalize"),
        ({"featureClass": {"glcm": ["SumVariance"]}}, "SumVariance"),
    ],
)
def test_what_our_engine_does_not_compute_is_refused_by_name(change: dict, message: str) -> None:
    params = {**load_params(), **change}
    with pytest.raises(RadiomicsParamsError, match=message) as info:
        check_params(params, source="my.yaml")
    assert "my.yaml" in str(info.value)
    if "engine" not in change:
        assert "pyradiomics" in (info.value.fix or "")  # hand the file to the reference engine


def test_pyradiomics_accepts_what_only_it_computes() -> None:
    params = {**load_params(), "engine": "pyradiomics",
              "setting": {**load_params()["setting"], "resampledPixelSpacing": [1, 1, 1]}}
    check_params(params, source="my.yaml")


def test_a_bad_roi_names_roi_and_sequence_for_both_engines() -> None:
    case = next(c for c in cases(large=False) if c.name == "tiny_20")
    for engine in ("atrx", "pyradiomics"):
        with pytest.raises(FeatureError, match="roi 'edema' of sequence 't2f'"):
            extract_radiomics(case.image, case.mask, "edema", "t2f",
                              _with_engine(load_params(), engine))
