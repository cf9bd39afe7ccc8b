"""bin.tar.gz: rsync's exclude semantics (checked against real rsync), atomic write, hash."""

from __future__ import annotations

import os
import shutil
import subprocess
import tarfile
from pathlib import Path

import pytest

from agent.archive import make_archive, select_entries, write_archive

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


# -- a share user changing bin/ between selection and reading -----------------------------


def _archived(dest: Path) -> dict[str, tarfile.TarInfo]:
    with tarfile.open(dest) as tar:
        members = {m.name: m for m in tar.getmembers()}
        for m in members.values():
            if m.isfile():
                tar.extractfile(m).read()  # the archive is whole, every member readable
    return members


def _raw_tar(dest: Path) -> bytes:
    import gzip

    return gzip.decompress(dest.read_bytes())


@pytest.fixture
def secret(tmp_path: Path) -> Path:
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "mod.py").write_text("TOP SECRET of the agent\n")
    return outside / "mod.py"


def test_file_swapped_for_a_link_after_selection_is_not_followed(
    tree: Path, tmp_path: Path, secret: Path
) -> None:
    entries = select_entries(tree, [])
    (tree / "train.py").unlink()
    (tree / "train.py").symlink_to(secret)
    dest = tmp_path / "bin.tar.gz"
    info = write_archive(tree, entries, dest)
    members = _archived(dest)
    assert "train.py" not in members and "run.sh" in members
    assert b"TOP SECRET" not in _raw_tar(dest)
    assert info.skipped == ("train.py",)
    # the archive and its hash hold what was read: the tree without the swapped file
    copy = tmp_path / "copy"
    shutil.copytree(tree, copy, symlinks=True)
    (copy / "train.py").unlink()
    assert info.sha256 == make_archive(copy, [], tmp_path / "copy.tar.gz").sha256
    assert info.files == make_archive(copy, [], tmp_path / "copy2.tar.gz").files


def test_folder_swapped_for_a_link_after_selection_is_not_entered(
    tree: Path, tmp_path: Path, secret: Path
) -> None:
    (tree / "pkg" / "mod.py").write_text("mine\n")
    entries = select_entries(tree, [])
    assert any(e.path == "pkg/mod.py" for e in entries)
    (secret.parent / "__init__.py").write_text("")  # the same names as the real pkg/
    (tree / "pkg").rename(tmp_path / "pkg.moved")
    (tree / "pkg").symlink_to(secret.parent)
    dest = tmp_path / "bin.tar.gz"
    info = write_archive(tree, entries, dest)
    assert not [name for name in _archived(dest) if name.startswith("pkg")]
    assert b"TOP SECRET" not in _raw_tar(dest)
    assert "pkg" in info.skipped and "pkg/mod.py" in info.skipped


def test_fifo_swapped_in_is_skipped_without_blocking(tree: Path, tmp_path: Path) -> None:
    import threading

    entries = select_entries(tree, [])
    (tree / "run.sh").unlink()
    os.mkfifo(tree / "run.sh")
    dest = tmp_path / "bin.tar.gz"
    result: list[object] = []
    worker = threading.Thread(
        target=lambda: result.append(write_archive(tree, entries, dest)), daemon=True
    )
    worker.start()
    worker.join(60)  # generous: the fixed code returns at once; the old one never did
    assert not worker.is_alive(), "opening a FIFO swapped in for a file blocked the archive"
    (info,) = result
    assert "run.sh" not in _archived(dest) and info.skipped == ("run.sh",)


def test_vanished_and_retyped_entries_are_skipped_not_fatal(tree: Path, tmp_path: Path) -> None:
    entries = select_entries(tree, [])
    (tree / "train.pyc").unlink()  # gone
    (tree / "linkfile").unlink()
    (tree / "linkfile").write_text("now a file\n")  # link -> file
    shutil.rmtree(tree / "empty")
    (tree / "empty").write_text("now a file\n")  # folder -> file
    (tree / "a.pyc").unlink()
    (tree / "a.pyc").mkdir()  # file -> folder
    dest = tmp_path / "bin.tar.gz"
    info = write_archive(tree, entries, dest)
    assert set(info.skipped) == {"train.pyc", "linkfile", "empty", "a.pyc"}
    assert not set(info.skipped) & set(_archived(dest))
    assert "train.py" in _archived(dest)


def test_file_shrunk_while_read_is_padded_and_reported(tmp_path: Path) -> None:
    from agent.archive import _SizedReader

    path = tmp_path / "f"
    path.write_bytes(b"0123456789")
    fd = os.open(path, os.O_RDONLY)
    try:
        os.truncate(path, 4)
        reader = _SizedReader(fd, 10)
        assert reader.read(6) + reader.read(100) == b"0123" + bytes(6)
    finally:
        os.close(fd)
    assert reader.short


def test_bin_that_is_a_link_is_refused(tree: Path, tmp_path: Path) -> None:
    (tmp_path / "link").symlink_to(tree)
    with pytest.raises(OSError):
        make_archive(tmp_path / "link", [], tmp_path / "bin.tar.gz")
