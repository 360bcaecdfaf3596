"""ResNet34 deep features: weights handling, crop selection and batching."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from features.deep import (
    N_DEEP_FEATURES,
    WeightsSpec,
    deep_feature_names,
    deep_features,
    imagenet_weights_path,
    largest_slice_crop,
    load_resnet34,
    prepare_batch,
)
from features.errors import FeatureError, WeightsError, WeightsNotFoundError


@pytest.fixture(scope="module")
def model_seed0() -> tuple[torch.nn.Module, str]:
    return load_resnet34("random:0")


@pytest.fixture(scope="module")
def crops() -> list[np.ndarray]:
    rng = np.random.default_rng(3)
    return [rng.standard_normal(shape).astype(np.float32) for shape in [(31, 47), (64, 20), (9, 9)]]


def test_weights_spec_parsing(tmp_path) -> None:
    assert WeightsSpec.parse("imagenet") == WeightsSpec("imagenet")
    assert WeightsSpec.parse("random:7") == WeightsSpec("random", seed=7)
    assert WeightsSpec.parse(str(tmp_path / "w.pth")).path == tmp_path / "w.pth"
    for bad in ("random:", "random:-1", "random:x", ""):
        with pytest.raises(WeightsError):
            WeightsSpec.parse(bad)


def test_random_seed_is_deterministic(model_seed0, crops) -> None:
    model, weights_id = model_seed0
    again, again_id = load_resnet34("random:0")
    other, other_id = load_resnet34("random:1")
    assert not model.training
    assert again_id == weights_id != other_id
    a = deep_features(model, crops)
    assert a.shape == (len(crops), N_DEEP_FEATURES) and a.dtype == np.float32
    np.testing.assert_array_equal(a, deep_features(again, crops))
    assert not np.allclose(a, deep_features(other, crops))


def test_batch_equals_one_by_one(model_seed0, crops) -> None:
    model, _ = model_seed0
    together = deep_features(model, crops, batch_size=16)
    alone = np.concatenate([deep_features(model, [c]) for c in crops])
    np.testing.assert_allclose(together, alone, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(
        deep_features(model, crops, batch_size=2), together, rtol=1e-4, atol=1e-5
    )


def test_deep_features_refuses_training_mode(crops) -> None:
    model, _ = load_resnet34("random:2")
    model.train()
    with pytest.raises(ValueError, match="training mode"):
        deep_features(model, crops)


def test_prepare_batch() -> None:
    flat = np.full((5, 7), 3.0, dtype=np.float32)
    ramp = np.arange(12, dtype=np.float32).reshape(3, 4) * 2 - 5
    x = prepare_batch([ramp, flat])
    assert x.shape == (2, 3, 224, 224) and x.dtype == torch.float32
    # channel c of a [0, 1] image: (v - mean_c) / std_c, so the flat crop is (0 - mean) / std
    torch.testing.assert_close(x[1, 0], torch.full((224, 224), -0.485 / 0.229))
    unscaled = x[0, 1] * 0.224 + 0.456
    assert float(unscaled.min()) >= -1e-6 and float(unscaled.max()) <= 1 + 1e-6
    torch.testing.assert_close(x[0, 0] * 0.229 + 0.485, unscaled)


def test_largest_slice_crop_picks_slice_and_bbox() -> None:
    image = np.arange(6 * 20 * 30, dtype=np.float64).reshape(6, 20, 30)
    mask = np.zeros(image.shape, dtype=np.uint8)
    mask[1, 2:4, 2:4] = 1  # area 4
    mask[4, 5:12, 8:20] = 1  # area 84: the largest
    mask[4, 3, 25] = 1  # widens slice 4's bounding box to y 3..11, x 8..25
    mask[5, 0:9, 0:9] = 1  # area 81
    crop = largest_slice_crop(image, mask)
    assert crop.dtype == np.float32
    np.testing.assert_array_equal(crop, image[4, 3:12, 8:26].astype(np.float32))


def test_largest_slice_crop_empty_mask() -> None:
    with pytest.raises(FeatureError, match="empty mask"):
        largest_slice_crop(np.zeros((3, 4, 5)), np.zeros((3, 4, 5)), what="roi 'edema'")


def test_missing_imagenet_weights_say_where_to_put_them(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    expected = tmp_path / "hub" / "checkpoints" / "resnet34-b627a593.pth"
    assert imagenet_weights_path() == expected
    with pytest.raises(WeightsNotFoundError) as info:
        load_resnet34("imagenet")
    message = str(info.value)
    for part in (
        "resnet34-b627a593.pth",
        str(expected.parent),
        "TORCH_HOME",
        "--weights PATH",
        "random:SEED",
    ):
        assert part in message


def test_corrupt_imagenet_file_is_refused(tmp_path, monkeypatch) -> None:
    monkeypatch.setenv("TORCH_HOME", str(tmp_path))
    imagenet_weights_path().parent.mkdir(parents=True)
    imagenet_weights_path().write_bytes(b"not weights")
    with pytest.raises(WeightsError, match="corrupt"):
        load_resnet34("imagenet")


def test_weights_file_round_trip_and_errors(tmp_path, model_seed0) -> None:
    model, weights_id = model_seed0
    good = tmp_path / "resnet34.pth"
    torch.save(model.state_dict(), good)
    _, loaded_id = load_resnet34(str(good))
    assert loaded_id == weights_id

    with pytest.raises(WeightsNotFoundError, match="missing.pth"):
        load_resnet34(str(tmp_path / "missing.pth"))
    wrong = tmp_path / "wrong.pth"
    torch.save({"fc.weight": torch.zeros(3, 3)}, wrong)
    with pytest.raises(WeightsError, match="does not fit.*missing keys.*shape mismatches"):
        load_resnet34(str(wrong))
    junk = tmp_path / "junk.pth"
    junk.write_text("hello")
    with pytest.raises(WeightsError, match="cannot read"):
        load_resnet34(str(junk))


def test_deep_feature_names() -> None:
    names = deep_feature_names("overall", "t2f")
    assert len(names) == len(set(names)) == N_DEEP_FEATURES
    assert names[0] == "dl_overall_t2f__f0000" and names[-1] == "dl_overall_t2f__f0999"
