"""docs/design.md and the README's map of the code stay true to the tree.

The settings tables of docs/design.md are generated from agent/schema.py and the host
kinds: a new key, kind or changed default fails here until the doc is regenerated with
``python tests/test_docs.py``. The hand-written tables (run.info keys, states, commands)
must name exactly what the code has, and every module path named must exist.
"""

from __future__ import annotations

import dataclasses
import re
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import tomlkit

from agent import runinfo
from agent.cli import make_parser
from agent.fields import Field
from agent.hosts.kinds import builtin_kinds
from agent.schema import (
    AGENT_FIELDS,
    HOST_FIELDS,
    NOTIFY_FIELDS,
    PROJECT_NOTIFY_FIELDS,
    REQUEST_ONLY_FIELDS,
    RUN_FIELDS,
)

ROOT = Path(__file__).resolve().parent.parent
DESIGN = ROOT / "docs" / "design.md"
README = ROOT / "README.md"
BLOCK_RE = re.compile(
    r"(?P<head><!-- generated: (?P<name>[a-z-]+) -->\n)(?P<body>.*?)(?P<tail><!-- end -->)",
    re.DOTALL,
)
REGENERATE = "regenerate the tables with: python tests/test_docs.py"


# -- the generated tables -------------------------------------------------------------------


def _toml(value: Any) -> str:
    """Return ``value`` as TOML (tables inline)."""
    if isinstance(value, dict):
        table = tomlkit.inline_table()
        table.update(value)
        return table.as_string()
    return tomlkit.item(value).as_string()


def _cell(text: str) -> str:
    return text.replace("|", "\\|")


def _default(spec: Field) -> str:
    if spec.required:
        return "required"
    if spec.default is None:
        return "unset"
    return f"`{_cell(_toml(spec.default))}`"


def fields_table(fields: Sequence[Field]) -> str:
    """Return a Markdown table of ``fields``: key, type, default, meaning."""
    lines = ["| key | type | default | meaning |", "|---|---|---|---|"]
    for spec in fields:
        row = (f"`{spec.name}`", _cell(spec.type.name), _default(spec), _cell(spec.doc))
        lines.append("| " + " | ".join(row) + " |")
    return "\n".join(lines) + "\n"


def kinds_text() -> str:
    """Return, per host kind, its name, what it is, and the keys only its hosts have."""
    parts = []
    for kind in builtin_kinds().values():
        head = f'`kind = "{kind.name}"`: {kind.doc}.'
        own = kind.own_fields()
        if own:
            parts.append(f"{head} Its own keys:\n\n{fields_table(own)}")
        else:
            parts.append(f"{head} No keys of its own.\n")
    return "\n".join(parts)


def generated_blocks() -> dict[str, str]:
    """Return the text of every generated block of docs/design.md, by name."""
    return {
        "run-settings": fields_table(RUN_FIELDS),
        "request-only": fields_table(REQUEST_ONLY_FIELDS),
        "agent": fields_table(AGENT_FIELDS),
        "hosts": fields_table(HOST_FIELDS),
        "host-kinds": kinds_text(),
        "notify": fields_table(NOTIFY_FIELDS),
        "project-notify": fields_table(PROJECT_NOTIFY_FIELDS),
    }


def regenerated(text: str) -> str:
    """Return ``text`` with the body of every generated block made anew."""
    blocks = generated_blocks()

    def body(match: re.Match[str]) -> str:
        new = blocks.get(match["name"], match["body"])
        return f"{match['head']}{new}{match['tail']}"

    return BLOCK_RE.sub(body, text)


# -- reading the hand-written parts ---------------------------------------------------------


def section(text: str, heading: str) -> str:
    """Return the text under the Markdown heading that starts with ``heading``, up to the
    next heading of the same or a higher level."""
    match = re.search(rf"^(#+) {re.escape(heading)}.*$", text, re.MULTILINE)
    assert match, f"no heading {heading!r}"
    level = len(match[1])
    rest = text[match.end() :]
    end = re.search(rf"^#{{1,{level}}} ", rest, re.MULTILINE)
    return rest[: end.start()] if end else rest


def first_column_keys(text: str) -> list[str]:
    """Return the backquoted word that starts each table row of ``text``."""
    return re.findall(r"^\| `([^`]+)`", text, re.MULTILINE)


def module_names(readme: str) -> list[str]:
    """Return the modules named in the last column of the README's layout table
    (backquoted words outside parentheses)."""
    names = []
    for row in re.findall(r"^\|.*\|$", section(readme, "Layout of the code"), re.MULTILINE):
        cells = [c.strip() for c in row.strip("|").split("|")]
        modules = re.sub(r"\([^()]*\)", "", cells[-1])
        names += re.findall(r"`([^`]+)`", modules)
    return names


def module_path(name: str) -> Path:
    """Return the file that the README's name ``name`` stands for (it may not exist)."""
    base = ROOT / "agent" / name.rstrip("/")
    if name.endswith(".sh"):
        return base
    if base.is_dir():
        return base / "__init__.py"
    return base.with_name(base.name + ".py")


def tree_modules() -> set[str]:
    """Return every module and shell file of agent/ as the README names it."""
    agent = ROOT / "agent"
    found = set()
    for path in [*agent.rglob("*.py"), *agent.rglob("*.sh")]:
        rel = path.relative_to(agent)
        if rel.name == "__main__.py" or rel == Path("__init__.py"):
            continue
        if rel.name == "__init__.py":
            found.add(rel.parent.as_posix())
        elif rel.suffix == ".py":
            found.add(rel.with_suffix("").as_posix())
        else:
            found.add(rel.as_posix())
    return found


# -- the tests --------------------------------------------------------------------------------


def test_generated_tables_match_the_schema():
    text = DESIGN.read_text(encoding="utf-8")
    names = [m["name"] for m in BLOCK_RE.finditer(text)]
    blocks = generated_blocks()
    assert sorted(names) == sorted(blocks), f"generated blocks: {names}"
    stale = [m["name"] for m in BLOCK_RE.finditer(text) if m["body"] != blocks[m["name"]]]
    assert not stale, f"docs/design.md: the tables {stale} are out of date; {REGENERATE}"


def test_every_setting_and_host_kind_key_is_documented():
    text = DESIGN.read_text(encoding="utf-8")
    keys = set(first_column_keys(text))
    fields = RUN_FIELDS + REQUEST_ONLY_FIELDS + AGENT_FIELDS + HOST_FIELDS + NOTIFY_FIELDS
    kinds = builtin_kinds().values()
    fields += tuple(spec for kind in kinds for spec in kind.own_fields())
    assert {spec.name for spec in fields} <= keys
    for kind in kinds:
        assert f'`kind = "{kind.name}"`' in text


def test_every_run_info_key_has_its_line():
    documented = first_column_keys(section(DESIGN.read_text(encoding="utf-8"), "3.1"))
    fields = [f.name for f in dataclasses.fields(runinfo.RunInfo)]
    assert sorted(documented) == sorted(["format", *fields])


def test_every_state_has_its_line():
    documented = first_column_keys(section(DESIGN.read_text(encoding="utf-8"), "3.2"))
    assert documented == list(runinfo.STATES)


def test_every_command_has_its_line():
    parser = make_parser()
    commands = next(a for a in parser._actions if a.dest == "command").choices
    text = section(DESIGN.read_text(encoding="utf-8"), "5.")
    documented = [key.split()[1] for key in first_column_keys(text) if key.startswith("droprun ")]
    assert sorted(set(documented)) == sorted(commands)


def test_every_agent_path_in_the_design_exists():
    text = DESIGN.read_text(encoding="utf-8")
    paths = set(re.findall(r"`(agent/[A-Za-z0-9_/.]+)`", text))
    assert paths, "the design names no module"
    missing = sorted(p for p in paths if not (ROOT / p.rstrip("/")).exists())
    assert not missing, f"docs/design.md names paths that do not exist: {missing}"


def test_the_readme_layout_names_every_module_and_only_real_ones():
    names = module_names(README.read_text(encoding="utf-8"))
    missing = sorted(n for n in names if not module_path(n).is_file())
    assert not missing, f"README's layout names modules that do not exist: {missing}"
    unnamed = sorted(tree_modules() - {n.rstrip("/") for n in names})
    assert not unnamed, f"README's layout does not name: {unnamed}"


def test_the_readme_points_to_the_design():
    readme = README.read_text(encoding="utf-8")
    assert "docs/design.md" in readme
    assert "in the shared folder" not in readme


if __name__ == "__main__":
    DESIGN.write_text(regenerated(DESIGN.read_text(encoding="utf-8")), encoding="utf-8")
    print(f"{DESIGN}: generated tables written")
