"""The N4 field put on the image grid one axis at a time equals ITK's cubic B-spline resample.

``n4_field_interpolation: separable`` interpolates the recorded coarse log bias field separably
(ingest.preprocess.field); the tolerance stated there: the field within 1e-9 of
``sitk.Resample(..., sitkBSpline)``, so the corrected float32 image within one unit in the last
place; the default since 2026-12-04. Records without ``field_interpolation`` (``itk``, and every
record before it) replay through ``sitk.Resample``, bit for bit. 1.2.0's settings
(``ingest/preprocess/1.2.0.yaml``) keep the digest 1.2.0 wrote.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import SimpleITK as sitk

from atrx.config.base import load_yaml_model
from ingest.preprocess import PreprocessParams, steps
from ingest.preprocess.field import SEPARABLE, axis_weights, field_on_grid
from ingest.preprocess.fitting import _field_grid, apply_log_bias
from ingest.preprocess.ops import from_array
from ingest.preprocess.params import PreprocessError
from ingest.preprocess.records import field_from_record

_PARAMS_DIR = Path(__file__).resolve().parents[1] / "ingest" / "preprocess"


def _image(shape_zyx: tuple[int, int, int], spacing: tuple[float, float, float],
           direction: tuple[float, ...] | None = None, seed: int = 0) -> sitk.Image:
    rng = np.random.default_rng(seed)
    image = sitk.GetImageFromArray((200 + 50 * rng.random(shape_zyx)).astype(np.float32))
    image.SetSpacing(spacing)
    image.SetOrigin((-101.5, -97.25, -60.0))
    if direction is not None:
        image.SetDirection(direction)
    return image


def _field(image: sitk.Image, seed: int = 1) -> sitk.Image:
    coarse = _field_grid(image, 8.0)
    rng = np.random.default_rng(seed)
    values = np.round(0.2 * rng.standard_normal(sitk.GetArrayFromImage(coarse).shape), 6)
    return from_array(values, coarse)


def _itk(coarse: sitk.Image, image: sitk.Image) -> np.ndarray:
    return sitk.GetArrayFromImage(sitk.Resample(coarse, image, sitk.Transform(3, sitk.sitkIdentity),
                                                sitk.sitkBSpline, 0.0, sitk.sitkFloat64))


# a rotated (oblique) acquisition: the coarse grid takes the image's direction
_OBLIQUE = tuple(sitk.VersorTransform((0.2, 0.3, 0.9), 0.4).GetMatrix())


@pytest.mark.parametrize("shape, spacing, direction", [
    ((40, 90, 80), (1.1, 1.1, 2.5), None),             # clinical T1c-like, anisotropic
    ((12, 60, 64), (0.9, 0.9, 5.5), _OBLIQUE),          # thick slices, oblique
    ((7, 9, 33), (1.0, 1.0, 1.0), None),                # fewer coarse nodes than 4 on two axes
])
def test_separable_field_equals_itk_bspline_resample(shape, spacing, direction) -> None:
    image = _image(shape, spacing, direction)
    coarse = _field(image)
    ours, itk = field_on_grid(coarse, image), _itk(coarse, image)
    assert ours.shape == itk.shape
    assert np.abs(ours - itk).max() <= 1e-9


def test_corrected_image_within_one_ulp_of_the_itk_path() -> None:
    image = _image((40, 90, 80), (1.1, 1.1, 2.5))
    coarse = _field(image)
    new = sitk.GetArrayFromImage(apply_log_bias(image, coarse, SEPARABLE))
    old = sitk.GetArrayFromImage(apply_log_bias(image, coarse, None))
    ulp = np.spacing(np.abs(old))
    assert new.dtype == np.float32 and np.all(np.abs(new - old) <= ulp)


def test_weights_are_a_partition_of_unity_with_mirrored_ends() -> None:
    w = axis_weights(np.array([0.0, 0.5, 3.0, 6.0]), 7)
    assert np.allclose(w.sum(axis=1), 1.0)
    assert w[0, 1] == pytest.approx(2 / 6)  # index -1 mirrors onto 1: 1/6 + 1/6
    assert w[3, 5] == pytest.approx(2 / 6)  # index 7 mirrors onto 5


def _n4_record(image: sitk.Image, **params) -> dict:
    rec, _ = steps.n4_bias_correct.run(None, PreprocessParams(**params), "t1c", image)
    return rec


def test_separable_records_name_the_interpolation_and_others_replay_through_itk() -> None:
    image = _image((24, 48, 48), (1.2, 1.2, 3.0))
    assert "field_interpolation" not in _n4_record(image, n4_field_interpolation="itk")  # as 1.2.0
    rec = _n4_record(image)  # the default since 2026-12-04
    assert rec["field_interpolation"] == SEPARABLE
    _, again = steps.n4_bias_correct.run(rec, None, "t1c", image)
    _, first = steps.n4_bias_correct.run(dict(rec), None, "t1c", image)
    assert np.array_equal(sitk.GetArrayFromImage(again), sitk.GetArrayFromImage(first))
    old = {k: v for k, v in rec.items() if k != "field_interpolation"}  # as "itk" writes it
    _, replayed = steps.n4_bias_correct.run(old, None, "t1c", image)
    coarse = field_from_record(rec["log_bias_field"])
    assert np.array_equal(sitk.GetArrayFromImage(replayed),
                          sitk.GetArrayFromImage(apply_log_bias(sitk.Cast(image, sitk.sitkFloat32),
                                                                coarse, None)))
    with pytest.raises(PreprocessError, match="unknown N4 field interpolation"):
        steps.n4_bias_correct.run({**rec, "field_interpolation": "nearest"}, None, "t1c", image)


def test_1_2_0_settings_keep_the_digests_1_2_0_wrote() -> None:
    """Data ingested with 1.2.0's settings stays current under them (ingest/preprocess/1.2.0.yaml):
    the digests below are those of 1.2.0's PreprocessParams; the new defaults are a new digest."""
    old = load_yaml_model(PreprocessParams, _PARAMS_DIR / "1.2.0.yaml")
    assert old.digest() == "8cdf32a7221f6f295ee111f3e4f2eac79d360aa331da1c9f712e4cbaf24b3b0a"
    assert old.model_copy(update={"brain_opening_mm": 2.0}).digest() == (
        "c2a6b53f36bc71b3e8bdd583b7d21798b0e8271802a353e008a2c1fb58ecf782")
    assert PreprocessParams().digest() != old.digest()
    for knob in ({"n4_field_interpolation": "separable"}, {"reg_sampling_strategy": "lattice"},
                 {"reg_fixed_mask": "head"}):
        assert old.model_copy(update=knob).digest() != old.digest()
