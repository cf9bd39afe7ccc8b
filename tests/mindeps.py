"""Print pip requirements that pin each of droprun's dependencies to its declared minimum.

``python tests/mindeps.py [pyproject.toml]`` reads ``[project].dependencies`` and prints
one ``name==version`` line per dependency, taken from its ``>=`` bound, so that
tests/run.sh can install exactly the oldest versions pyproject promises to work with.
A dependency without a ``>=`` bound is an error: its minimum would be untested.
"""

from __future__ import annotations

import re
import sys
import tomllib
from pathlib import Path

# name, optional [extras], then the specifiers (";" starts environment markers).
_REQUIREMENT = re.compile(r"\s*([A-Za-z0-9][A-Za-z0-9._-]*)\s*(\[[^\]]*\])?\s*([^;]*)")
_LOWER = re.compile(r">=\s*([^,\s]+)")


def minimum_pin(requirement: str) -> str:
    """Return ``name==version`` for ``requirement``'s ``>=`` bound.

    Raises ValueError if it has no ``>=`` bound.
    """
    match = _REQUIREMENT.match(requirement)
    lower = _LOWER.search(match.group(3)) if match else None
    if match is None or lower is None:
        raise ValueError(f"pyproject.toml: dependency {requirement!r} has no >= lower bound")
    return f"{match.group(1)}{match.group(2) or ''}=={lower.group(1)}"


def minimum_pins(pyproject_text: str) -> list[str]:
    """Return the pins for every ``[project].dependencies`` entry of ``pyproject_text``."""
    return [minimum_pin(r) for r in tomllib.loads(pyproject_text)["project"]["dependencies"]]


def main(argv: list[str]) -> int:
    """Print the pins for the pyproject.toml named in ``argv`` (default: the repo's)."""
    path = Path(argv[1]) if len(argv) > 1 else Path(__file__).parent.parent / "pyproject.toml"
    try:
        pins = minimum_pins(path.read_text())
    except ValueError as exc:
        print(exc, file=sys.stderr)
        return 1
    print("\n".join(pins))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
