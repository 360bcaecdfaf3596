"""Argument checks of the selectors, in scikit-learn's shape: parameters and the binary target.

As in scikit-learn (``utils/_param_validation.py``), ``__init__`` only stores arguments and ``fit``
checks them against a table of rules, one per parameter, with one error shape: "The 'x' parameter
of Foo must be ... Got ... instead." A rule is ``(what is expected, predicate)``, so the message
and the test cannot drift apart.
"""

from __future__ import annotations

import math
import numbers
from collections.abc import Callable, Mapping

import numpy as np
from sklearn.utils.multiclass import check_classification_targets

from atrx.errors import InputError

__all__ = [
    "BOOL",
    "CALLABLE_OR_STR",
    "INT_OR_NONE",
    "POSITIVE_REAL",
    "InvalidParameterError",
    "Rule",
    "binary_target",
    "check_params",
    "int_at_least",
    "is_int",
    "is_real",
    "optional",
    "positive_grid",
    "real_between",
]

#: what the parameter must be (for the message) and the test it must pass
Rule = tuple[str, Callable[[object], bool]]


class InvalidParameterError(InputError, TypeError):
    """A constructor argument has the wrong type or value (raised by ``fit``, as sklearn does)."""


def is_int(value: object) -> bool:
    """An integer that is not a bool (``True`` is no count of folds)."""
    return isinstance(value, numbers.Integral) and not isinstance(value, bool)


def is_real(value: object) -> bool:
    """A real number that is not a bool."""
    return isinstance(value, numbers.Real) and not isinstance(value, bool)


def int_at_least(low: int) -> Rule:
    """An int in ``[low, inf)``."""
    return f"an int in [{low}, inf)", lambda v: is_int(v) and v >= low  # type: ignore[operator]


def real_between(low: float, high: float) -> Rule:
    """A real number in the open interval ``(low, high)`` (NaN never is)."""
    return (f"a float in ({low:g}, {high:g})",
            lambda v: is_real(v) and low < v < high)  # type: ignore[operator]


def optional(rule: Rule) -> Rule:
    """``rule`` or None."""
    expected, accepts = rule
    return f"{expected} or None", lambda v: v is None or accepts(v)


def positive_grid(low: int = 1) -> Rule:
    """An int in ``[low, inf)`` (a grid size) or a non-empty 1-D array-like of positive floats."""

    def accepts(value: object) -> bool:
        if is_int(value):
            return value >= low  # type: ignore[operator]
        try:
            grid = np.asarray(value, dtype=float)
        except (TypeError, ValueError):
            return False
        return bool(grid.ndim == 1 and grid.size > 0 and np.all(np.isfinite(grid)) and np.all(grid > 0))

    return f"an int in [{low}, inf) or an array-like of positive floats", accepts


BOOL: Rule = ("a bool", lambda v: isinstance(v, bool | np.bool_))
CALLABLE_OR_STR: Rule = ("a str or a callable", lambda v: isinstance(v, str) or callable(v))
INT_OR_NONE: Rule = ("an int or None", lambda v: v is None or is_int(v))
POSITIVE_REAL: Rule = real_between(0.0, math.inf)


def check_params(owner: object, rules: Mapping[str, Rule]) -> None:
    """Raise :class:`InvalidParameterError` for the first parameter of ``owner`` that breaks its rule."""
    for name, (expected, accepts) in rules.items():
        value = getattr(owner, name)
        if not accepts(value):
            raise InvalidParameterError(
                f"The {name!r} parameter of {type(owner).__name__} must be {expected}. "
                f"Got {value!r} instead."
            )


def binary_target(owner: object, y: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Return ``(classes, y01)``; the larger label is the positive (event) class."""
    check_classification_targets(y)
    classes = np.unique(y)
    if classes.size != 2:
        word = "class" if classes.size == 1 else "classes"
        raise ValueError(
            f"{type(owner).__name__} needs a binary target with two classes; got {classes.size} {word}."
        )
    return classes, (y == classes[1]).astype(np.float64)
