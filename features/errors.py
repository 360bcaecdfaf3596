"""Errors of the features stage, members of the :mod:`atrx.errors` family.

``FeatureError`` is the one tasks catch to record a ROI as ``failed`` (a property of the data, not
retried); the others stop a run and tell the user what to fix. Each keeps the builtin it used to be
(``ValueError``, ``FileNotFoundError``, ``RuntimeError``) so callers that catch those keep working.
"""

from __future__ import annotations

from atrx.errors import ConflictError, DataError, InputError, NotFoundError

__all__ = ["FeatureError", "FeaturesJobError", "RadiomicsParamsError", "WeightsError",
           "WeightsNotFoundError"]


class FeatureError(DataError):
    """A ROI/image pair cannot give features (empty or too small ROI, bad mask, extractor failure)."""


class RadiomicsParamsError(InputError):
    """A PyRadiomics parameter set is malformed, or PyRadiomics rejects it."""


class WeightsError(InputError):
    """A CNN weights specification is malformed or the weights do not fit ResNet34."""


class WeightsNotFoundError(NotFoundError, FileNotFoundError):
    """CNN weights are not on disk; nothing is ever downloaded, so the message says where to put them."""


class FeaturesJobError(ConflictError):
    """The driver could not store or register results (the message names the view or step)."""
