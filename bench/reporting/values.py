"""Reading values out of records: ``field`` (a key's value wherever the record holds it), what counts as a
number, values as hashable keys, and which keys vary between records."""

from __future__ import annotations

import json
import math
from typing import Any, Callable

from bench.metrics import METRICS, TASK_PREFIX

_ABSENT = object()


def field(record: dict, key: str) -> Any:
    """The value of ``key`` in a record, or None when the record does not have it.

    Bare keys are looked up in ``spec`` (``arch``, ``frames``, ...), then at the top level
    (``status``, ``error``), then in ``metrics`` (``prefill_tok_s``, ...); metrics of the catalogue
    (``bench.metrics``) that sit deeper are found where it says (``cost.kv_cache_bytes``,
    ``work.prefill.ops``); ``compression_ratio`` is tokens_after_compression / input_tokens; ``task.X``
    is the task metric X; dotted paths such as ``spec.x``, ``metrics.x`` or ``env.kernels.x``
    are followed from the top of the record.
    """
    value = lookup(record, key)
    return None if value is _ABSENT else value


def has(record: dict, key: str) -> bool:
    """True when the record holds ``key`` (even as null)."""
    return lookup(record, key) is not _ABSENT


def lookup(record: dict, key: str) -> Any:
    """The value of ``key`` (see ``field``), or _ABSENT when the record lacks it."""
    if key == "compression_ratio":
        before, after = lookup(record, "input_tokens"), lookup(record, "tokens_after_compression")
        if is_number(before) and is_number(after) and before:
            return after / before
        return _ABSENT
    if key.startswith(TASK_PREFIX):
        return _path(record, ["task", "metrics", key[len(TASK_PREFIX):]])
    if key in METRICS and METRICS[key].path:
        return _path(record, list(METRICS[key].path))
    if key.startswith("cost."):
        return _path(record, ["metrics", *key.split(".")])
    if "." in key:
        return _path(record, key.split("."))
    for section in (["spec"], [], ["metrics"]):
        value = _path(record, [*section, key])
        if value is not _ABSENT:
            return value
    return _ABSENT


def _path(record: dict, parts: list[str]) -> Any:
    """Follow nested dict keys; _ABSENT as soon as one is missing."""
    node: Any = record
    for part in parts:
        if not isinstance(node, dict) or part not in node:
            return _ABSENT
        node = node[part]
    return node


def is_number(value: Any) -> bool:
    """True for finite ints and floats (not bools)."""
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)


def hashable(value: Any) -> Any:
    """A value usable as a dict key: lists and dicts as their JSON text with sorted keys, so that equal
    values (a dict read back from JSON in another key order) are one key; anything else as is."""
    return json.dumps(value, sort_keys=True) if isinstance(value, (list, dict)) else value


def varying(records: list[dict], keys, value: Callable[[dict, str], Any] = field) -> list[str]:
    """The ``keys`` (in their order) whose ``value(record, key)`` differs between records."""
    return [k for k in keys if len({hashable(value(r, k)) for r in records}) > 1]


def best(values: list, higher: bool | None) -> float | None:
    """The best number among a column's cells, or None when nothing should be bold (no direction, no numbers)."""
    numbers = [v for v in values if is_number(v)]
    if higher is None or not numbers:
        return None
    return max(numbers) if higher else min(numbers)
