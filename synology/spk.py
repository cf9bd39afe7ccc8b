"""The pure parts of droprun's Synology package: INFO text, pip command lines, tar entries.

Nothing here does I/O; :mod:`spkbuild` runs the commands and writes the files.
"""

from __future__ import annotations

import struct
import tarfile
import tomllib
import zlib
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

PACKAGE_NAME = "droprun"
OS_MIN_VER = "7.0-40000"  # the first DSM 7 build; DSM 7 packages must not declare less
PYTHON_PACKAGE = "python311"  # SynoCommunity's Python 3.11 (/var/packages/python311/target)
PYTHON_VERSION = "3.11"


@dataclass(frozen=True)
class Arch:
    """One CPU family: its wheel platform tag and the DSM platform names for ``INFO``."""

    name: str
    pip_platform: str
    dsm_archs: tuple[str, ...]


def _words(text: str) -> tuple[str, ...]:
    return tuple(text.split())


# DSM platform names per generic arch, as SynoCommunity's DSM 7 toolchains list them
# (toolchain/syno-{x64,aarch64}-7.1), plus the generic names. DSM 7 ships glibc 2.26, so
# manylinux2014 wheels (glibc 2.17) run there; newer manylinux tags might not.
ARCHES: Mapping[str, Arch] = MappingProxyType(
    {
        "x86_64": Arch(
            "x86_64",
            "manylinux2014_x86_64",
            _words(
                "x86_64 apollolake avoton braswell broadwell broadwellnk broadwellnkv2"
                " broadwellntbap bromolow cedarview denverton epyc7002 geminilake geminilakenk"
                " grantley kvmx64 purley r1000 r1000nk v1000 v1000nk"
            ),
        ),
        "aarch64": Arch(
            "aarch64",
            "manylinux2014_aarch64",
            _words("armv8 aarch64 rtd1296 rtd1619b armada37xx"),
        ),
    }
)


def project_metadata(pyproject_text: str) -> tuple[str, str, tuple[str, ...]]:
    """Return ``(version, description, dependencies)`` from pyproject.toml text.

    Raises KeyError if ``[project]`` lacks version or description.
    """
    project = tomllib.loads(pyproject_text)["project"]
    return project["version"], project["description"], tuple(project.get("dependencies", ()))


def build_requirements(pyproject_text: str) -> tuple[str, ...]:
    """Return the build backend requirements (``[build-system].requires``)."""
    return tuple(tomllib.loads(pyproject_text)["build-system"]["requires"])


def spk_version(version: str, build_number: int) -> str:
    """Return DSM's ``<feature>-<build>`` version, e.g. ``0.1.0-1``.

    Raises ValueError unless ``version`` is dot-separated numbers (DSM's rule) and
    ``build_number`` is >= 0.
    """
    if not all(p.isdigit() for p in version.split(".")) or build_number < 0:
        raise ValueError(f"DSM needs a version like 1.2.3 and a build >= 0, got {version!r}")
    return f"{version}-{build_number}"


def make_info_fields(version: str, description: str, arch: Arch, checksum: str) -> dict[str, str]:
    """Return the INFO fields for one arch; ``checksum`` is the MD5 hex of package.tgz."""
    return {
        "package": PACKAGE_NAME,
        "version": version,
        "os_min_ver": OS_MIN_VER,
        "description": description,
        "arch": " ".join(arch.dsm_archs),
        "maintainer": "droprun",
        "displayname": "droprun",
        "install_dep_packages": PYTHON_PACKAGE,
        "support_conf_folder": "yes",
        "checksum": checksum,
    }


def make_info(fields: Mapping[str, str]) -> str:
    """Return INFO text: one ``key="value"`` line per field, with ``"`` and ``\\`` escaped."""
    lines = []
    for key, value in fields.items():
        escaped = value.replace("\\", "\\\\").replace('"', '\\"').replace("\n", " ")
        lines.append(f'{key}="{escaped}"')
    return "\n".join(lines) + "\n"


def parse_info(text: str) -> dict[str, str]:
    """Return the fields of INFO text as :func:`make_info` writes it.

    Raises ValueError on a line that is not ``key="value"``.
    """
    fields = {}
    for line in text.splitlines():
        key, sep, raw = line.partition("=")
        if not sep or len(raw) < 2 or raw[0] != '"' or raw[-1] != '"':
            raise ValueError(f'not a key="value" line: {line!r}')
        value, i = [], 1
        while i < len(raw) - 1:
            if raw[i] == "\\":
                i += 1
            value.append(raw[i])
            i += 1
        fields[key] = "".join(value)
    return fields


def _pip(python: str, *words: str) -> list[str]:
    return [python, "-m", "pip", *words]


def make_wheel_argv(python: str, source: Path, dest: Path, find_links: Path) -> list[str]:
    """Return pip's argv that builds droprun's wheel, installing the backend from ``find_links``."""
    return _pip(
        python, "wheel", "--no-deps", "--no-index", "--find-links", str(find_links),
        "--wheel-dir", str(dest), str(source),
    )  # fmt: skip


def make_fetch_argv(
    python: str, dest: Path, requirements: Sequence[str], find_links: Sequence[Path] = ()
) -> list[str]:
    """Return pip's argv that gets pure-Python wheels for this machine (the build backend).

    With ``find_links`` it resolves from those directories alone.
    """
    argv = _pip(python, "download", "--only-binary=:all:", "--dest", str(dest))
    if find_links:
        argv.append("--no-index")
    for link in find_links:
        argv += ["--find-links", str(link)]
    return [*argv, *requirements]


def make_download_argv(
    python: str,
    arch: Arch,
    dest: Path,
    requirements: Sequence[str],
    find_links: Sequence[Path] = (),
) -> list[str]:
    """Return pip's argv that gets ``requirements`` and their dependencies for ``arch``.

    Only binary wheels for CPython 3.11 on manylinux2014. With ``find_links`` it resolves
    from those directories alone (and fails if anything is missing there).
    """
    argv = _pip(
        python, "download", "--only-binary=:all:", "--platform", arch.pip_platform,
        "--python-version", PYTHON_VERSION, "--implementation", "cp",
        "--abi", "cp" + PYTHON_VERSION.replace(".", ""), "--dest", str(dest),
    )  # fmt: skip
    if find_links:
        argv.append("--no-index")
    for link in find_links:
        argv += ["--find-links", str(link)]
    return [*argv, *requirements]


def make_png(size: int) -> bytes:
    """Return a ``size`` x ``size`` RGBA PNG: a blue drop on a transparent background."""
    cx, cy, r = size / 2, size * 0.6, size * 0.3
    top = size * 0.12
    rows = []
    for y in range(size):
        row = bytearray(b"\0")  # scanline filter: none
        py = y + 0.5
        for x in range(size):
            dx, dy = x + 0.5 - cx, py - cy
            in_circle = dx * dx + dy * dy <= r * r
            in_tip = top <= py <= cy and abs(dx) <= r * (py - top) / (cy - top)
            row += b"\x21\x76\xcc\xff" if in_circle or in_tip else b"\0\0\0\0"
        rows.append(bytes(row))

    def chunk(kind: bytes, data: bytes) -> bytes:
        crc = zlib.crc32(kind + data) & 0xFFFFFFFF
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", crc)

    header = struct.pack(">IIBBBBB", size, size, 8, 6, 0, 0, 0)  # 8-bit RGBA
    return (
        b"\x89PNG\r\n\x1a\n"
        + chunk(b"IHDR", header)
        + chunk(b"IDAT", zlib.compress(b"".join(rows), 9))
        + chunk(b"IEND", b"")
    )


def tar_info(
    name: str, size: int, mode: int, mtime: int, *, is_dir: bool = False
) -> tarfile.TarInfo:
    """Return a tar entry owned by root:root, never by whoever runs the build.

    DSM chowns the unpacked files to the package's user anyway (``run-as: package``).
    """
    info = tarfile.TarInfo(name)
    info.type = tarfile.DIRTYPE if is_dir else tarfile.REGTYPE
    info.size = 0 if is_dir else size
    info.mode = mode
    info.mtime = mtime
    info.uid = info.gid = 0
    info.uname = info.gname = "root"
    return info


def render_template(text: str, share_name: str) -> str:
    """Return a script or conf text with its ``@NAME@`` placeholders filled in."""
    values = {
        "@SHARE_NAME@": share_name,
        "@PACKAGE@": PACKAGE_NAME,
        "@PYTHON_PACKAGE@": PYTHON_PACKAGE,
        "@PYTHON_VERSION@": PYTHON_VERSION,
    }
    for placeholder, value in values.items():
        text = text.replace(placeholder, value)
    return text
