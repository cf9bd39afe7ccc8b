"""Write the Synology package's first droprun.toml: droprun's own template, package paths.

Usage (postinst runs it once, with the package's virtual environment):
    make_config.py CONFIG SHARE STATE_DIR SSH_KEY
Refuses to overwrite an existing CONFIG: the user's edits always win.
"""

from __future__ import annotations

import sys
from pathlib import Path

import tomlkit

from agent.templates import agent_template


def make_config(share: Path, state_dir: Path, ssh_key: Path) -> str:
    """Return droprun.toml text for the package: the template, state in the var dir."""
    doc = tomlkit.parse(agent_template(share))
    doc["state_dir"] = str(state_dir)
    doc.add(tomlkit.nl())
    doc.add(tomlkit.comment("The package made an ssh key for your GPU servers on first start:"))
    doc.add(tomlkit.comment(f'  key = "{ssh_key}"'))
    doc.add(tomlkit.comment(f'  known_hosts = "{ssh_key.parent / "known_hosts"}"'))
    doc.add(tomlkit.comment(f"Its public half is {ssh_key}.pub (see the package README)."))
    return tomlkit.dumps(doc)


def main(argv: list[str]) -> int:
    """Write the config named in ``argv``; return 0, or 1 if it already exists."""
    if len(argv) != 5:
        print(__doc__, file=sys.stderr)
        return 2
    config, share, state_dir, ssh_key = (Path(a) for a in argv[1:])
    if config.exists():
        print(f"{config} exists; left as it is", file=sys.stderr)
        return 1
    text = make_config(share, state_dir, ssh_key)
    tmp = config.with_name(config.name + ".tmp")
    tmp.write_text(text)
    tmp.replace(config)
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv))
