"""``--model_args`` of the two outside harnesses' ``viperbench`` models (lm-eval's and lmms-eval's), checked alike.

Both harnesses split ``key=value,key=value`` and turn numbers and booleans into Python values;
here every key must be one the model knows and every value of its type, or one line says which
(a typo never runs silently without what it meant). A compressor's own keys are separated by
``;`` (``compressor=transv:schedule=uni_2_0.5;init=random``), since the harnesses split on commas.
"""

from __future__ import annotations

from typing import Callable

from bench.errors import UserError

# the keys a cell takes in both models: key -> type; ints and floats also have a least value
CELL_ARGS = {"arch": str, "preset": str, "checkpoint": str, "compressor": str, "device": str, "dtype": str,
             "prefill_chunk": int, "seed": int}
LEAST = {"prefill_chunk": 1, "seed": 0, "max_length": 1, "frames": 1, "tokens_per_frame": 1, "fps": 0.0}


def parse(arg_string: str, split: Callable[[str], dict]) -> dict:
    """``--model_args`` text -> a dict, by the harness's own ``split``; malformed text is one line."""
    try:
        return split(arg_string)
    except (ValueError, IndexError) as exc:
        raise UserError(f"malformed --model_args {arg_string!r} ({exc}): write key=value,key=value") from None


def check(args: dict, schema: dict[str, type]) -> dict:
    """Parsed ``model_args`` -> the constructor's keywords; unknown keys and wrong types are one line."""
    unknown = [k for k in args if k not in schema]
    if unknown:
        raise UserError(f"unknown model_args key(s) {', '.join(map(repr, unknown))} for --model viperbench; "
                        f"valid: {', '.join(schema)}")
    out = {}
    for key, value in args.items():
        if value is None or value == "":
            continue
        kind = schema[key]
        if kind is int:
            if isinstance(value, bool) or not isinstance(value, int) or value < LEAST[key]:
                raise UserError(f"model_args {key}={value!r}: must be an integer >= {LEAST[key]}")
        elif kind is float:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value <= LEAST[key]:
                raise UserError(f"model_args {key}={value!r}: must be a number > {LEAST[key]:g}")
        elif isinstance(value, bool):
            raise UserError(f"model_args {key}={value!r}: must be a name or a path")
        out[key] = kind(value)
    return out


def cell_values(args: dict, **defaults) -> dict:
    """Checked ``model_args`` -> ``make_spec`` values (``preset`` dropped when a checkpoint is named)."""
    values = {**defaults, **{k: v for k, v in args.items() if k in CELL_ARGS or k in defaults}}
    if values.get("checkpoint"):
        values.pop("preset", None)
    if values.get("compressor"):
        values["compressor"] = str(values["compressor"]).replace(";", ",")
    return {k: v for k, v in values.items() if v is not None}
