"""Reference tissue (features/reference.py): the shell around the lesion and its statistics, the
parameter block, and the columns the features job stores with every radiomics view."""

from __future__ import annotations

import numpy as np
import pytest
from scipy import ndimage

from features.errors import RadiomicsParamsError
from features.radiomics import load_params, params_hash, pyradiomics_params, view_feature_names
from features.reference import (
    ReferenceSettings,
    reference_feature_names,
    reference_settings,
    reference_stats,
    shell_mask,
)


def _ball(shape: tuple[int, int, int], center: tuple[float, float, float], radius: float,
          spacing: tuple[float, float, float] = (1.0, 1.0, 1.0)) -> np.ndarray:
    grid = np.indices(shape).astype(float)
    d2 = sum(((g - c) * s) ** 2 for g, c, s in zip(grid, center, spacing, strict=True))
    return d2 <= radius**2


@pytest.mark.parametrize("spacing", [(1.0, 1.0, 1.0), (3.0, 1.0, 0.8)])
def test_shell_is_the_brain_within_reach_of_the_lesion_and_outside_it(spacing) -> None:
    shape = (30, 60, 70)
    lesion = _ball(shape, (15, 30, 35), 6.0, spacing)
    brain = np.ones(shape, dtype=bool)
    brain[:, :, 50:] = False  # the brain ends beside the lesion
    shell = shell_mask(lesion.astype(np.uint8), brain.astype(np.uint8), spacing, 5.0)
    # brute force on the whole grid: the distance of every voxel to the nearest lesion voxel
    distance = ndimage.distance_transform_edt(~lesion, sampling=spacing)
    expected = (distance <= 5.0) & ~lesion & brain
    np.testing.assert_array_equal(shell, expected)
    assert shell.any() and not (shell & lesion).any() and not shell[:, :, 50:].any()


def test_shell_of_an_empty_lesion_is_empty_and_a_lesion_at_the_edge_is_clipped() -> None:
    shape = (10, 12, 14)
    assert not shell_mask(np.zeros(shape), np.ones(shape), (1, 1, 1), 10).any()
    edge = np.zeros(shape, dtype=bool)
    edge[0, 0, 0] = True
    shell = shell_mask(edge, np.ones(shape), (1, 1, 1), 2.0)
    assert shell[0, 0, 2] and shell[1, 1, 1] and not shell[0, 0, 3] and not shell[0, 0, 0]


def test_stats_are_median_and_iqr_of_the_shell_or_nan_when_too_few() -> None:
    rng = np.random.default_rng(0)
    image = rng.normal(2.0, 3.0, (20, 20, 20))
    shell = np.zeros(image.shape, dtype=bool)
    shell[5:10] = True
    got = reference_stats(image, shell, min_voxels=100)
    q25, q50, q75 = np.percentile(image[5:10], [25, 50, 75])
    assert got == pytest.approx({"median": q50, "iqr": q75 - q25, "voxels": 2000.0})
    few = reference_stats(image, shell, min_voxels=2001)
    assert np.isnan(few["median"]) and np.isnan(few["iqr"]) and few["voxels"] == 2000.0


def test_parameter_block_is_validated_naming_the_key() -> None:
    assert reference_settings({}) is None and reference_feature_names("tumor", "t1c", {}) == []
    assert reference_settings({"reference": {}}) == ReferenceSettings("shell", 10.0, 100)
    for bad, word in (({"tissue": "white_matter"}, "tissue"), ({"shell_mm": 0}, "shell_mm"),
                      ({"shell_mm": "10"}, "shell_mm"), ({"min_voxels": 0}, "min_voxels"),
                      ({"width": 3}, "unknown keys"), ([1], "mapping")):
        with pytest.raises(RadiomicsParamsError, match=word) as info:
            reference_settings({"reference": bad}, "radiomics.yaml")
        assert "radiomics.yaml" in str(info.value) and info.value.fix


def test_shipped_views_carry_the_reference_columns_and_the_block_is_part_of_the_version() -> None:
    params = load_params()
    names = view_feature_names("edema", "t2f", params)
    assert names[-3:] == ["rad_edema_t2f__reference__shell__median",
                          "rad_edema_t2f__reference__shell__iqr",
                          "rad_edema_t2f__reference__shell__voxels"]
    assert len(names) == 1133 and "reference" not in pyradiomics_params(params)
    wider = {**params, "reference": {**params["reference"], "shell_mm": 5}}
    without = {k: v for k, v in params.items() if k != "reference"}
    assert len({params_hash(params), params_hash(wider), params_hash(without)}) == 3
