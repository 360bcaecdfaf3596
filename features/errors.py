"""Errors raised by feature extraction; callers catch these to record a failed ROI instead of crashing."""

from __future__ import annotations


class FeatureError(ValueError):
    """A ROI/image pair cannot give features (empty or too small ROI, bad mask, extractor failure)."""


class WeightsError(ValueError):
    """A CNN weights specification is malformed or the weights do not fit ResNet34."""


class WeightsNotFoundError(FileNotFoundError):
    """CNN weights are not on disk; nothing is ever downloaded, so the message says where to put them."""
