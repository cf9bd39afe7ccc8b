"""Sweeps: a request with a ``[sweep]`` table becomes one run per combination of its values.

```toml
[sweep]
lr = [0.1, 0.01]
batch = [64, 128]
mode = "product"   # or "zip": the first values together, then the second ones...
```

Each combination's values reach the script as arguments after the run's ``args``
(``--lr 0.1 --batch 64``) and as variables (``DROPRUN_PARAM_LR=0.1``). A sweep is at most
MAX_RUNS runs. Pure functions only; :mod:`agent.share` claims the runs.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from agent.tomlsrc import describe
from agent.valuetypes import MAX_ITEMS, MAX_NAME, MAX_STRING, BadEntries, Context, ValueType

MAX_RUNS = 256
MODES = ("product", "zip")
ENV_PREFIX = "DROPRUN_PARAM_"
_KEY_RE = re.compile(r"[A-Za-z_][A-Za-z0-9_-]*")
Scalar = str | int | float | bool


@dataclass(frozen=True)
class Sweep:
    """A checked ``[sweep]`` table: its mode and each key with its values, in file order."""

    mode: str
    params: tuple[tuple[str, tuple[Scalar, ...]], ...]

    def combinations(self) -> list[dict[str, Scalar]]:
        """Return one {key: value} per run, in order (pure)."""
        names = [name for name, _ in self.params]
        columns = [values for _, values in self.params]
        rows = zip(*columns, strict=True) if self.mode == "zip" else itertools.product(*columns)
        return [dict(zip(names, row, strict=True)) for row in rows]


def env_name(key: str) -> str:
    """Return the variable that carries sweep key ``key`` (pure)."""
    return ENV_PREFIX + key.upper().replace("-", "_")


def word(value: Scalar) -> str:
    """Return a sweep value as the script sees it: ``true``, ``64``, ``0.1``, text (pure)."""
    if isinstance(value, bool):
        return "true" if value else "false"
    return repr(value) if isinstance(value, float) else str(value)


def _values(value: object) -> tuple[Scalar, ...]:
    """Return the checked values of one sweep key; raise ValueError saying what is wrong."""
    if not isinstance(value, list):
        raise ValueError(f"found {describe(value)}, expected an array of values like [0.1, 0.01]")
    if not value:
        raise ValueError("found an empty array, expected at least one value")
    if len(value) > MAX_ITEMS:
        raise ValueError(f"found an array of {len(value)} items, expected at most {MAX_ITEMS}")
    for number, item in enumerate(value, start=1):
        if isinstance(item, float) and not math.isfinite(item):
            raise ValueError(f"item {number}: found {describe(item)}, expected a finite number")
        if not isinstance(item, str | int | float):
            raise ValueError(
                f"item {number}: found {describe(item)}, expected a string, number or boolean"
            )
        if isinstance(item, str) and ("\0" in item or len(item) > MAX_STRING):
            raise ValueError(f"item {number}: expected a string without NUL characters")
    return tuple(value)


def _convert(value: object, _context: Context) -> Sweep:
    """Check a ``[sweep]`` table; raise BadEntries (one per bad key) or ValueError."""
    if not isinstance(value, dict):
        raise ValueError(f"found {describe(value)}, expected a table like {{ lr = [0.1, 0.01] }}")
    bad: list[tuple[str, str]] = []
    params: list[tuple[str, tuple[Scalar, ...]]] = []
    mode = value.get("mode", "product")
    if mode not in MODES:
        bad.append(("mode", f'found {describe(mode)}, expected "product" or "zip"'))
    variables: dict[str, str] = {}
    for key, item in value.items():
        if key == "mode":
            continue
        if not _KEY_RE.fullmatch(key) or len(key) > MAX_NAME:
            bad.append((key, "not a parameter name: expected letters, digits, _ and -"))
            continue
        if env_name(key) in variables:
            bad.append(
                (key, f"gives the same variable {env_name(key)} as {variables[env_name(key)]}")
            )
            continue
        variables[env_name(key)] = key
        try:
            params.append((key, _values(item)))
        except ValueError as exc:
            bad.append((key, str(exc)))
    if bad:
        raise BadEntries(bad)
    if not params:
        raise ValueError("found an empty sweep, expected at least one key with an array of values")
    lengths = [len(values) for _, values in params]
    if mode == "zip" and len(set(lengths)) > 1:
        shown = ", ".join(f"{key} has {len(values)}" for key, values in params)
        raise ValueError(f'mode = "zip" pairs the values, so every key needs as many: {shown}')
    count = lengths[0] if mode == "zip" else math.prod(lengths)
    if count > MAX_RUNS:
        raise ValueError(f"found {count} combinations, a sweep makes at most {MAX_RUNS} runs")
    return Sweep(str(mode), tuple(params))


SWEEP = ValueType("table of arrays", _convert)


def clashes(sweep: Sweep, args: Sequence[str], env: Mapping[str, str]) -> list[tuple[str, str]]:
    """Return (key, message) for each sweep key that the run's args or env set already."""
    found = []
    for key, _ in sweep.params:
        flag = f"--{key}"
        if any(arg == flag or arg.startswith(flag + "=") for arg in args):
            found.append((key, f'args already hold "{flag}": the sweep would pass it twice'))
        elif env_name(key) in env:
            found.append((key, f"env already sets {env_name(key)}, which the sweep sets"))
    return found


def run_layer(
    base: Mapping[str, Any],
    args: Sequence[str],
    env: Mapping[str, str],
    values: Mapping[str, Scalar],
) -> dict[str, Any]:
    """Return the request layer of one combination: ``base`` with the sweep's values
    appended to the run's ``args`` and added to its ``env`` (pure)."""
    extra_args = [part for key, value in values.items() for part in (f"--{key}", word(value))]
    extra_env = {env_name(key): word(value) for key, value in values.items()}
    layer = {k: v for k, v in base.items() if k != "sweep"}
    layer["args"] = (*args, *extra_args)
    layer["env"] = {**env, **extra_env}
    return layer
