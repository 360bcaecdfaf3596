"""ResNet34 deep features of one ROI: the 1,000 ImageNet logits of its largest axial slice.

Follows Liu et al. 2024: the axial slice with the largest ROI area, cropped to the ROI's bounding
box, resized bilinearly to 224x224, copied to 3 channels, ImageNet-normalised, fed to ResNet34 in
eval mode without gradients. Weights are never downloaded: they come from torchvision's cache, a
state_dict file, or a seeded random initialisation (for tests and smoke runs).
"""

from __future__ import annotations

import hashlib
import re
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch
import torch.nn.functional as F
from torchvision.models import ResNet34_Weights, resnet34

from atrx.names import deep_feature_name, view_name
from features.devices import own_stream
from features.errors import FeatureError, WeightsError, WeightsNotFoundError

N_DEEP_FEATURES = 1000
INPUT_SIZE = 224
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
_SPEC_FIX = "use --weights imagenet, --weights random:SEED or --weights PATH to a ResNet34 .pth file"
_STATE_DICT_FIX = "save the weights with torch.save(model.state_dict(), PATH) from torchvision's resnet34"


@dataclass(frozen=True)
class WeightsSpec:
    """Where ResNet34 weights come from: ``imagenet``, ``random:SEED`` or a state_dict file path.

    A file literally named ``imagenet`` in the working directory must be given as ``./imagenet``.
    """

    kind: Literal["imagenet", "random", "file"]
    seed: int | None = None
    path: Path | None = None

    @classmethod
    def parse(cls, spec: str) -> WeightsSpec:
        """Parse a ``--weights`` value; malformed ``random:`` seeds raise :class:`WeightsError`."""
        text = str(spec).strip()
        if not text:
            raise WeightsError(
                "empty weights spec; expected 'imagenet', 'random:SEED' or a .pth path", fix=_SPEC_FIX
            )
        if text == "imagenet":
            return cls("imagenet")
        if text.startswith("random:"):
            seed = text.removeprefix("random:")
            if not seed.isdigit():
                raise WeightsError(
                    f"bad weights spec {spec!r}: expected 'random:SEED' with SEED a non-negative integer",
                    fix=_SPEC_FIX,
                )
            return cls("random", seed=int(seed))
        return cls("file", path=Path(text).expanduser())

    def __str__(self) -> str:
        if self.kind == "random":
            return f"random:{self.seed}"
        return str(self.path) if self.kind == "file" else "imagenet"


def imagenet_weights_path() -> Path:
    """Where torchvision caches the ImageNet ResNet34 weights (read at call time: honours TORCH_HOME)."""
    file_name = Path(ResNet34_Weights.IMAGENET1K_V1.url).name
    return Path(torch.hub.get_dir()) / "checkpoints" / file_name


def load_resnet34(spec: str | WeightsSpec, device: str = "cpu") -> tuple[torch.nn.Module, str]:
    """ResNet34 in eval mode on ``device`` and its ``weights_id`` (sha256 of the state_dict).

    The id identifies the weights, not the spec: the same seed gives the same id, and features
    computed with different weights can never be mixed up downstream.
    """
    ws = spec if isinstance(spec, WeightsSpec) else WeightsSpec.parse(spec)
    if ws.kind == "random":
        with torch.random.fork_rng(devices=[]):  # seeded init without touching the caller's RNG
            torch.manual_seed(ws.seed)
            model = resnet34(weights=None)
    else:
        model = resnet34(weights=None)
        path = _imagenet_file() if ws.kind == "imagenet" else _existing_file(ws.path)
        _load_state_dict(model, _read_state_dict(path), path)
    weights_id = state_dict_sha256(model.state_dict())
    return model.to(device).eval(), weights_id


def state_dict_sha256(state_dict: dict[str, torch.Tensor]) -> str:
    """sha256 over every entry's name, dtype, shape and raw bytes, in key order."""
    digest = hashlib.sha256()
    for key, tensor in state_dict.items():
        t = tensor.detach().to("cpu").contiguous()
        digest.update(f"{key}|{t.dtype}|{tuple(t.shape)}|".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def largest_slice_crop(image: np.ndarray, mask: np.ndarray, *, what: str = "ROI") -> np.ndarray:
    """The ROI bounding-box crop of the axial slice with the largest ROI area, as 2D float32.

    Arrays are (z, y, x). Ties go to the lowest z so the choice is reproducible. Pixels inside the
    box but outside the ROI are kept, as in the paper (the crop, not the mask, goes to the CNN).
    """
    image = np.asarray(image)
    mask = np.asarray(mask)
    if image.ndim != 3 or image.shape != mask.shape:
        raise ValueError(
            f"{what}: expected 3D image and mask of equal (z, y, x) shape, got {image.shape} and {mask.shape}"
        )
    roi = mask != 0
    areas = roi.sum(axis=(1, 2))
    if not areas.any():
        raise FeatureError(f"{what}: empty mask, 0 ROI voxels in {image.shape[0]} axial slices")
    z = int(np.argmax(areas))
    ys, xs = np.nonzero(roi[z])
    crop = image[z, ys.min() : ys.max() + 1, xs.min() : xs.max() + 1]
    return np.ascontiguousarray(crop, dtype=np.float32)


def prepare_batch(crops: Sequence[np.ndarray]) -> torch.Tensor:
    """Crops -> (N, 3, 224, 224) ImageNet-normalised tensor.

    Each crop is min-max scaled to [0, 1] first: the images are z-scored (unbounded, negative),
    while the ImageNet mean/std assume [0, 1] intensities like those the network was trained on.
    A flat crop (max == min) becomes all zeros instead of dividing by zero.
    """
    if len(crops) == 0:
        raise ValueError("prepare_batch needs at least one crop, got none")
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor(IMAGENET_STD).view(1, 3, 1, 1)
    batch = []
    for i, crop in enumerate(crops):
        a = np.asarray(crop, dtype=np.float32)
        if a.ndim != 2 or min(a.shape) < 1:
            raise ValueError(f"crop {i}: expected a non-empty 2D array, got shape {a.shape}")
        if not np.isfinite(a).all():
            raise ValueError(f"crop {i}: contains NaN or infinite values")
        lo, hi = float(a.min()), float(a.max())
        a = (a - lo) / (hi - lo) if hi > lo else np.zeros_like(a)
        t = torch.from_numpy(np.ascontiguousarray(a))[None, None]
        batch.append(
            F.interpolate(t, size=(INPUT_SIZE, INPUT_SIZE), mode="bilinear", align_corners=False)
        )
    x = torch.cat(batch).expand(-1, 3, -1, -1)
    return (x - mean) / std


def deep_features(
    model: torch.nn.Module, crops: Sequence[np.ndarray], device: str = "cpu", batch_size: int = 16
) -> np.ndarray:
    """(N, 1000) float32 outputs of ``model`` for ``crops``, batched to bound memory."""
    if model.training:
        raise ValueError(
            "model is in training mode (batch-norm would use batch statistics); call model.eval()"
        )
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    out = np.empty((len(crops), N_DEEP_FEATURES), dtype=np.float32)
    with torch.inference_mode(), own_stream(device):
        for start in range(0, len(crops), batch_size):
            x = prepare_batch(crops[start : start + batch_size]).to(device)
            y = model(x)
            if y.ndim != 2 or y.shape[1] != N_DEEP_FEATURES:
                raise ValueError(
                    f"model output shape {tuple(y.shape)}, expected (N, {N_DEEP_FEATURES})"
                )
            out[start : start + len(x)] = y.float().cpu().numpy()
    return out


def deep_feature_names(roi: str, sequence: str) -> list[str]:
    """Canonical names of the 1,000 outputs, ``dl_{roi}_{sequence}__f0000`` ... ``__f0999``."""
    view_name("dl", roi, sequence)
    return [deep_feature_name(roi, sequence, i) for i in range(N_DEEP_FEATURES)]


def _imagenet_file() -> Path:
    path = imagenet_weights_path()
    if not path.is_file():
        raise WeightsNotFoundError(
            f"ImageNet ResNet34 weights not found: expected the file {path.name!r} in the directory "
            f"{str(path.parent)!r} (torch.hub.get_dir()/checkpoints; set TORCH_HOME to change it: "
            f"$TORCH_HOME/hub/checkpoints). Nothing is downloaded: copy the file there (torchvision "
            f"publishes it at {ResNet34_Weights.IMAGENET1K_V1.url}), or use --weights PATH for a "
            "ResNet34 state_dict file, or --weights random:SEED for seeded random weights (tests only)."
        )
    # torchvision's file names end in the first hex digits of the file's sha256
    prefix = re.search(r"-([0-9a-f]{8,})\.pth$", path.name)
    if prefix:
        actual = hashlib.sha256(path.read_bytes()).hexdigest()
        if not actual.startswith(prefix.group(1)):
            raise WeightsError(
                f"{str(path)!r} is corrupt or not torchvision's file: its sha256 is {actual[:16]}..., "
                f"expected one starting with {prefix.group(1)}",
                fix=f"copy torchvision's file again from {ResNet34_Weights.IMAGENET1K_V1.url}",
            )
    return path


def _existing_file(path: Path | None) -> Path:
    if path is None or not path.is_file():
        raise WeightsNotFoundError(
            f"weights file not found: {str(path)!r}; expected a ResNet34 state_dict (.pth) file, "
            "or --weights imagenet / --weights random:SEED"
        )
    return path


def _read_state_dict(path: Path) -> dict[str, torch.Tensor]:
    try:
        obj = torch.load(path, map_location="cpu", weights_only=True)
    except Exception as e:
        raise WeightsError(
            f"cannot read {str(path)!r} as a PyTorch state_dict: {type(e).__name__}: {e}",
            fix=_STATE_DICT_FIX,
        ) from e
    if isinstance(obj, dict) and isinstance(obj.get("state_dict"), dict):
        obj = obj["state_dict"]  # a training checkpoint wrapping the weights
    if not isinstance(obj, dict) or not all(isinstance(v, torch.Tensor) for v in obj.values()):
        raise WeightsError(
            f"{str(path)!r} holds a {type(obj).__name__}, expected a state_dict (name -> tensor)",
            fix=_STATE_DICT_FIX,
        )
    return obj


def _load_state_dict(model: torch.nn.Module, state: dict[str, torch.Tensor], path: Path) -> None:
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    wrong_shape = [
        f"{k} {tuple(state[k].shape)} != {tuple(v.shape)}"
        for k, v in expected.items()
        if k in state and state[k].shape != v.shape
    ]
    if missing or unexpected or wrong_shape:
        raise WeightsError(
            f"{str(path)!r} does not fit torchvision's resnet34: "
            f"{len(missing)} missing keys {missing[:3]}, {len(unexpected)} unexpected keys "
            f"{unexpected[:3]}, {len(wrong_shape)} shape mismatches {wrong_shape[:3]}",
            fix="give the weights of torchvision's resnet34 with its 1000-class head",
        )
    model.load_state_dict(state, strict=True)
