"""bin.tar.gz: rsync's exclude semantics (checked against real rsync), atomic write, hash."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from agent.archive import make_archive, select_entries

TREE_FILES = [
    "run.sh",
    "train.py",
    "train.pyc",
    "a.pyc",
    ".git/config",
    ".git/objects/ab/cdef",
    "pkg/__init__.py",
    "pkg/__pycache__/mod.cpython-311.pyc",
    "pkg/mod.py",
    "pkg/data/x.bin",
    "pkg/data/y.txt",
    "data/big.bin",
    "data/keep/readme",
    "deep/er/data/file",
    "deep/er/data.txt",
    "deep/build/out.o",
    "build",
    "logs/2024/a.log",
    "logs/b.log",
    "notes/ab.md",
    "notes/ac.md",
    "notes/b1.md",
    "weird[x].txt",
    "sub/run.sh",
    "z/a/q/b",
    "a/b",
    "x/data",
]
TREE_DIRS = ["empty", "pkg/empty_build"]

PATTERN_SETS = [
    [],
    [".git/", "__pycache__/", "*.pyc"],
    ["data"],
    ["data/"],
    ["/data"],
    ["/data/"],
    ["data/keep"],
    ["er/data"],
    ["pkg/data/*.bin"],
    ["build"],
    ["build/"],
    ["*.log"],
    ["logs/**"],
    ["logs/***"],
    ["**/data"],
    ["/**/data"],
    ["**data"],
    ["a/**/b"],
    ["a**b"],
    ["/a/**/b"],
    ["x/**"],
    ["/x**"],
    ["*/data"],
    ["deep/**/file"],
    ["notes/a?.md"],
    ["notes/[ab]1.md"],
    ["notes/[!a]*"],
    ["weird\\[x\\].txt"],
    ["/run.sh"],
    ["run.sh"],
    ["*/run.sh"],
    ["link*"],
    ["dirlink/"],
    ["*"],
    ["*/"],
    ["p*/"],
]


def _make_tree(root: Path) -> None:
    for rel in TREE_FILES:
        path = root / rel
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(f"content of {rel}\n")
    for rel in TREE_DIRS:
        (root / rel).mkdir(parents=True)
    (root / "run.sh").chmod(0o755)
    (root / "linkfile").symlink_to("train.py")
    (root / "dirlink").symlink_to("pkg")
    (root / "dangling").symlink_to("/nonexistent/target")


def _rsync_selection(root: Path, exclude: list[str]) -> set[str]:
    rsync = shutil.which("rsync")
    assert rsync, "rsync must be installed for this test"
    argv = [rsync, "-a", "--list-only", *[f"--exclude={p}" for p in exclude], f"{root}/"]
    out = subprocess.run(argv, check=True, capture_output=True, text=True).stdout
    names = set()
    for line in out.splitlines():
        mode, _size, _date, _time, name = line.split(None, 4)
        if mode.startswith("l"):
            name = name.split(" -> ", 1)[0]
        if name != ".":
            names.add(name)
    return names


@pytest.fixture
def tree(tmp_path: Path) -> Path:
    root = tmp_path / "bin"
    _make_tree(root)
    return root


@pytest.mark.parametrize("patterns", PATTERN_SETS, ids=lambda p: ",".join(p) or "none")
def test_selection_equals_rsync(tree: Path, patterns: list[str]) -> None:
    ours = {entry.path for entry in select_entries(tree, patterns)}
    assert ours == _rsync_selection(tree, patterns)


def test_archive_contents_and_links(tree: Path, tmp_path: Path) -> None:
    dest = tmp_path / "bin.tar.gz"
    info = make_archive(tree, [".git/", "__pycache__/", "*.pyc"], dest)
    with tarfile.open(dest) as tar:
        members = tar.getmembers()
    names = [m.name for m in members]
    assert names == sorted(names)
    assert ".git/config" not in names and "train.pyc" not in names
    by_name = {m.name: m for m in members}
    assert by_name["linkfile"].issym() and by_name["linkfile"].linkname == "train.py"
    assert by_name["dirlink"].issym()
    assert by_name["dangling"].linkname == "/nonexistent/target"
    assert by_name["run.sh"].mode & 0o100
    assert by_name["empty"].isdir()
    regular = [m for m in members if m.isfile()]
    links = [m for m in members if m.issym()]
    assert info.files == len(regular) + len(links)
    assert info.bytes == sum(m.size for m in regular)
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(".bin.tar.gz")]


def test_hash_depends_on_content_not_time(tree: Path, tmp_path: Path) -> None:
    first = make_archive(tree, [], tmp_path / "a.tar.gz")
    os.utime(tree / "train.py", (1, 1))
    assert make_archive(tree, [], tmp_path / "b.tar.gz").sha256 == first.sha256
    (tree / "train.py").write_text("changed\n")
    changed = make_archive(tree, [], tmp_path / "c.tar.gz")
    assert changed.sha256 != first.sha256
    (tree / "train.py").write_text(f"content of {'train.py'}\n")
    (tree / "train.py").chmod(0o700)
    assert make_archive(tree, [], tmp_path / "d.tar.gz").sha256 != first.sha256


def test_copy_of_tree_has_same_hash(tree: Path, tmp_path: Path) -> None:
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    assert (
        make_archive(tree, ["*.pyc"], tmp_path / "a.tar.gz").sha256
        == make_archive(copy, ["*.pyc"], tmp_path / "b.tar.gz").sha256
    )


def test_failed_archive_keeps_old_file(tmp_path: Path) -> None:
    dest = tmp_path / "bin.tar.gz"
    dest.write_bytes(b"old")
    with pytest.raises(OSError):
        make_archive(tmp_path / "missing", [], dest)
    assert dest.read_bytes() == b"old"
    assert [p.name for p in tmp_path.iterdir()] == ["bin.tar.gz"]


def test_tree_signature_follows_what_would_be_archived(tmp_path):
    from agent.archive import tree_signature

    (tmp_path / "a.py").write_text("1")
    (tmp_path / "skip.pyc").write_text("x")
    first = tree_signature(tmp_path, ["*.pyc"])
    (tmp_path / "skip.pyc").write_text("changed, but excluded")
    assert tree_signature(tmp_path, ["*.pyc"]) == first
    (tmp_path / "a.py").write_text("22")
    assert tree_signature(tmp_path, ["*.pyc"]) != first
