"""Checks of single config values, with messages in the user's words: key, value, what is allowed.

A leaf module (no project imports): components check their own constructor arguments with these,
and :mod:`prunelab.config` uses them for the plain config sections. Every failure is a
:class:`ConfigError`; a component raises it with its own argument name (``alpha=nan ...``) and
:func:`prunelab.config.build` prefixes the config path (``method.alpha=nan ...``).
"""

from __future__ import annotations

import math
import re
from collections.abc import Iterable
from typing import Any


class ConfigError(ValueError):
    """A config value that cannot work: says which key, what value, and what is allowed."""


def number(value: Any, key: str, low: float | None = None, high: float | None = None,
           low_open: bool = False, high_open: bool = False, what: str = "") -> float:
    """A finite real number in the given interval (bools and NaN/inf are rejected)."""
    interval = _interval(low, high, low_open, high_open)
    hint = f" ({what})" if what else ""
    if isinstance(value, bool) or not isinstance(value, (int, float)):
        raise ConfigError(f"{key}={value!r} must be a number{' in ' + interval if interval else ''}{hint}")
    if not math.isfinite(value):
        raise ConfigError(f"{key}={value!r} must be a finite number{' in ' + interval if interval else ''}{hint}")
    too_low = low is not None and (value <= low if low_open else value < low)
    too_high = high is not None and (value >= high if high_open else value > high)
    if too_low or too_high:
        raise ConfigError(f"{key}={value!r} is outside {interval}{hint}")
    return float(value)


def integer(value: Any, key: str, low: int | None = None, high: int | None = None, what: str = "") -> int:
    """An int (not a bool, not a float) in ``[low, high]``."""
    hint = f" ({what})" if what else ""
    if isinstance(value, bool) or not isinstance(value, int):
        bounds = _interval(low, high, False, False)
        raise ConfigError(f"{key}={value!r} must be an integer{' in ' + bounds if bounds else ''}{hint}")
    if (low is not None and value < low) or (high is not None and value > high):
        if low == 1 and high is None:
            raise ConfigError(f"{key}={value!r} must be a positive integer{hint}")
        raise ConfigError(f"{key}={value!r} is outside {_interval(low, high, False, False)}{hint}")
    return value


def positive_int(value: Any, key: str, what: str = "") -> int:
    return integer(value, key, low=1, what=what)


def positive_ints(values: Any, key: str, high: int | None = None, what: str = "") -> tuple[int, ...]:
    """A non-empty list of positive integers (each at most ``high``)."""
    if isinstance(values, (str, bytes)) or not isinstance(values, Iterable):
        raise ConfigError(f"{key}={values!r} must be a list of positive integers")
    out = tuple(integer(v, f"{key}[{i}]", low=1, high=high, what=what) for i, v in enumerate(values))
    if not out:
        raise ConfigError(f"{key} must list at least one value")
    return out


def choice(value: Any, key: str, allowed: Iterable[Any]) -> Any:
    allowed = tuple(allowed)
    if value not in allowed:
        raise ConfigError(f"{key}={value!r} is not valid; allowed: {', '.join(map(str, allowed))}")
    return value


SAFE_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}")  # a directory name that stays where it is put


def file_name(value: Any, key: str, why: str) -> str:
    """A name used as one directory level (``multirun/<model.name>/``): no ``/``, no ``..``."""
    if not isinstance(value, str) or not SAFE_NAME.fullmatch(value):
        raise ConfigError(f"{key}={value!r} must be a plain file name, as {why}; allowed: letters, digits, '.', '_' "
                          "and '-', starting with a letter or digit, at most 100 characters")
    return value


def boolean(value: Any, key: str) -> bool:
    if not isinstance(value, bool):
        raise ConfigError(f"{key}={value!r} must be true or false")
    return value


def _interval(low, high, low_open: bool, high_open: bool) -> str:
    if low is None and high is None:
        return ""
    left = "(" if low_open or low is None else "["
    right = ")" if high_open or high is None else "]"
    return f"{left}{'-inf' if low is None else f'{low:g}'}, {'inf' if high is None else f'{high:g}'}{right}"
