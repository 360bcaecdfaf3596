"""Errors of the Feast layer, members of the :mod:`atrx.errors` family.

Each keeps the builtin it used to be (``ValueError``, ``FileNotFoundError``), so callers that
catch those keep working.
"""

from __future__ import annotations

from atrx.errors import DataError, InputError, NotFoundError

__all__ = ["FeatureViewError", "NoPartsError", "OfflineSchemaError"]


class FeatureViewError(InputError):
    """A view, feature version or feature name that the offline store or Feast does not know."""


class NoPartsError(NotFoundError, FileNotFoundError):
    """A version folder of the offline store has no part files (nothing was written there yet)."""


class OfflineSchemaError(DataError):
    """A frame or file does not follow the offline store's column contract."""
