"""Numeric values from the command line and from matrix files: finite and in a stated domain.

Each parser is an argparse ``type`` (``p.add_argument("--fps", type=flags.positive_float)``): a bad
value becomes argparse's one line naming the flag. The cell settings (``bench.spec``) run the same
parsers on their values, so ``--frames nan`` and ``frames = nan`` in a TOML file get the same rule.

A parser carries its ``domain`` (the words of its error) and ``outside``: sample values it must
refuse, which tests/test_bad_inputs_flags.py feeds to every flag that uses it.
"""

from __future__ import annotations

import argparse
import math
import re
from typing import Any, Callable

NAN_INF = ("nan", "inf", "-inf")
SEED_MAX = 2**32 - 1  # numpy's seeds are unsigned 32-bit
SIZE_UNITS = {"": 1, "b": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
RATE_UNITS = {"": 1, "kb": 10**3, "mb": 10**6, "gb": 10**9, "tb": 10**12,
              "kib": 2**10, "mib": 2**20, "gib": 2**30, "tib": 2**40}
_NUMBER_UNIT = re.compile(r"\s*([0-9]*\.?[0-9]+)\s*([a-zA-Z]*)\s*")


class BadValue(ValueError):
    """A value outside its parser's domain; the message says what was expected."""


class FlagType:
    """An argparse type: ``convert`` text (or a TOML value) to a value, ``ok`` the value, else refuse."""

    def __init__(self, name: str, domain: str, convert: Callable[[Any], Any], ok: Callable[[Any], bool],
                 outside: tuple[str, ...]):
        self.__name__, self.domain, self.convert, self.ok, self.outside = name, domain, convert, ok, outside

    def parse(self, value: Any) -> Any:
        """The parsed value, or BadValue naming the domain and the value."""
        try:
            parsed = self.convert(value)
        except BadValue:
            raise
        except (TypeError, ValueError, OverflowError):
            parsed = None
        if parsed is None or not self.ok(parsed):
            raise BadValue(f"expected {self.domain}, got {describe(value)}")
        return parsed

    def __call__(self, text: Any) -> Any:
        try:
            return self.parse(text)
        except BadValue as exc:
            raise argparse.ArgumentTypeError(str(exc)) from None

    def __repr__(self) -> str:
        return f"<flag type {self.__name__}: {self.domain}>"


def describe(value: Any) -> str:
    """A value as the error shows it: ``'nan'`` for text, ``0 (an integer)`` for a TOML value."""
    if isinstance(value, str):
        return repr(value)
    if isinstance(value, bool):
        return f"{str(value).lower()} (a boolean)"
    kind = {bool: "a boolean", int: "an integer", float: "a number", dict: "a table", list: "a list"}
    return f"{value!r} ({kind.get(type(value), type(value).__name__)})"


def _integer(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, int):
        return value
    if isinstance(value, str):
        return int(value.strip())  # "nan", "inf", "2.5" and "" raise ValueError
    raise TypeError(value)


def _number(value: Any) -> float:
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, (int, float)):
        number = float(value)
    elif isinstance(value, str):
        number = float(value.strip())
    else:
        raise TypeError(value)
    if not math.isfinite(number):
        raise ValueError(value)
    return number


def _scaled(value: Any, units: dict[str, int], suffix: str = "") -> float:
    """``"8GiB"`` / ``"3.35TB/s"`` / a plain finite number, in base units."""
    if isinstance(value, bool):
        raise TypeError(value)
    if isinstance(value, (int, float)):
        return _number(value)
    if not isinstance(value, str):
        raise TypeError(value)
    text = value.strip()
    if suffix and text.lower().endswith(suffix):
        text = text[: -len(suffix)]
    m = _NUMBER_UNIT.fullmatch(text)
    if not m or m.group(2).lower() not in units:
        raise ValueError(value)
    return float(m.group(1)) * units[m.group(2).lower()]


def _bytes(value: Any) -> int:
    """``"8GiB"`` or a number of bytes; from TOML an integer (bytes) or such a string."""
    if isinstance(value, int) and not isinstance(value, bool):
        return value
    if not isinstance(value, str):
        raise TypeError(value)
    return int(_scaled(value, SIZE_UNITS))


def _percent(value: Any) -> float:
    """``"5%"`` -> 0.05, ``"0.05"`` -> 0.05; a bare number above 1 is refused (``5`` is not 500%)."""
    text = value.strip() if isinstance(value, str) else value
    if isinstance(text, str) and text.endswith("%"):
        return _number(text[:-1]) / 100
    number = _number(text)
    if number > 1:
        raise BadValue(f"expected a percentage such as 5% or a fraction such as 0.05, got {describe(value)} "
                       f"(a bare number above 1: write {_number(text):g}% for {_number(text):g} percent)")
    return number


def _int_list(value: Any) -> tuple[int, ...]:
    if not isinstance(value, str):
        raise TypeError(value)
    parts = [p.strip() for p in value.split(",") if p.strip()]
    if not parts:
        raise ValueError(value)
    return tuple(_integer(p) for p in parts)


positive_int = FlagType("positive_int", "a positive integer", _integer, lambda v: v > 0, (*NAN_INF, "0", "-1", "2.5"))
nonnegative_int = FlagType("nonnegative_int", "an integer >= 0", _integer, lambda v: v >= 0, (*NAN_INF, "-1"))
seed = FlagType("seed", f"an integer from 0 to {SEED_MAX}", _integer, lambda v: 0 <= v <= SEED_MAX,
                (*NAN_INF, "-1", str(SEED_MAX + 1)))
positive_float = FlagType("positive_float", "a positive finite number", _number, lambda v: v > 0,
                          (*NAN_INF, "0", "-1"))
nonnegative_float = FlagType("nonnegative_float", "a finite number >= 0", _number, lambda v: v >= 0,
                             (*NAN_INF, "-1"))
fraction = FlagType("fraction", "a fraction from 0 up to (not including) 1", _number, lambda v: 0 <= v < 1,
                    (*NAN_INF, "-1", "1"))
percent = FlagType("percent", "a percentage from 0% to 100% (e.g. 5%) or a fraction from 0 to 1 (e.g. 0.05)",
                   _percent, lambda v: 0 <= v <= 1, (*NAN_INF, "-1", "5", "101%", "-5%"))
positive_size = FlagType("positive_size", "a positive size such as 512MiB, 8GiB or 2GB", _bytes, lambda v: v > 0,
                         (*NAN_INF, "0", "-1", "0GiB", "8XB"))
nonnegative_size = FlagType("nonnegative_size", "a size >= 0 such as 0, 512MiB or 1.5GiB", _bytes,
                            lambda v: v >= 0, (*NAN_INF, "-1", "-1GiB", "8XB"))
positive_rate = FlagType("positive_rate", "a positive rate such as 3.35TB/s, 900GB/s or bytes/s",
                         lambda v: _scaled(v, RATE_UNITS, "/s"), lambda v: v > 0, (*NAN_INF, "0", "-1", "0TB/s"))
positive_int_list = FlagType("positive_int_list", "positive integers separated by commas, e.g. 4,8,16", _int_list,
                             lambda v: min(v) > 0, (*NAN_INF, "0", "-1", "4,0"))

TYPES = (positive_int, nonnegative_int, seed, positive_float, nonnegative_float, fraction, percent, positive_size,
         nonnegative_size, positive_rate, positive_int_list)
