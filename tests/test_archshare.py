"""Shared archives: an unchanged bin/ costs one bin.tar.gz however many runs use it.

Whole runs on the local host with real files; sizes measured with ``du``.
"""

from __future__ import annotations

import hashlib
import os
import random
import shutil
import subprocess
import tarfile
from pathlib import Path

from agent import runinfo

from shares import TRAIN, drop, info, make_project, run_once, write_config
from testbed import require_tool, tmpfs

BIG = 3 << 20  # random, so gzip cannot shrink it: the archive is about this big


def du_bytes(path: Path) -> int:
    """Return the disk usage of ``path`` in bytes as ``du`` counts it (hard links once)."""
    out = subprocess.run(
        [require_tool("du"), "-s", "--block-size=1", str(path)],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return int(out.split()[0])


def file_sha(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def big_project(share: Path) -> Path:
    project = make_project(share, "proj", {"run.sh": TRAIN, "lib/model.py": "W = 1\n"})
    (project / "bin" / "weights.bin").write_bytes(random.randbytes(BIG))
    return project


def archive(project: Path, run: int) -> Path:
    return project / "results" / f"run_{run}" / "bin.tar.gz"


def test_ten_unchanged_runs_add_one_archive_and_survive_deleting_nine(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = big_project(tmp_path / "share")
    before = du_bytes(tmp_path / "share")
    for i in range(10):
        drop(project, f'name = "r{i}"\n', f"r{i}.request")
        os.utime(project / f"r{i}.request", ns=(i, i))  # taken oldest first: r0 is run_0
    run_once(config)

    runs = [info(project, n) for n in range(10)]
    assert {r.state for r in runs} == {runinfo.SUCCEEDED}
    size = archive(project, 0).stat().st_size
    assert size > BIG  # random bytes do not compress
    added = du_bytes(tmp_path / "share") - before
    # One archive, plus ten runs' logs, outputs and run.info files (a few KiB each).
    assert size <= added < size + 1024 * 1024, (added, size)
    assert {r.bin_sha256 for r in runs} == {runs[0].bin_sha256}
    assert runs[0].archive_shared_with is None
    assert all(r.archive_shared_with is not None for r in runs[1:])
    assert len({archive(project, n).stat().st_ino for n in range(10)}) == 1
    original = file_sha(archive(project, 0))

    survivor = random.randrange(10)
    for n in range(10):
        if n != survivor:
            shutil.rmtree(project / "results" / f"run_{n}")
    kept = archive(project, survivor)
    assert file_sha(kept) == original
    with tarfile.open(kept) as tar:
        weights = tar.extractfile("weights.bin")
        assert weights is not None
        assert weights.read() == (project / "bin" / "weights.bin").read_bytes()

    # The index points at deleted runs now: the next run finds the survivor's archive.
    drop(project, "")
    run_once(config)
    assert info(project, 10).archive_shared_with == f"run_{survivor}"
    assert kept.stat().st_nlink == 2


def test_equal_content_is_linked_changed_content_is_not(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = big_project(tmp_path / "share")
    drop(project, "")
    run_once(config)
    # Touched but equal: bin/'s fingerprint changed, the archive's hash did not.
    os.utime(project / "bin" / "lib" / "model.py", ns=(10**18, 10**18))
    drop(project, "")
    run_once(config)
    assert info(project, 1).archive_shared_with == "run_0"
    assert info(project, 1).bin_sha256 == info(project, 0).bin_sha256
    assert archive(project, 1).stat().st_ino == archive(project, 0).stat().st_ino

    (project / "bin" / "lib" / "model.py").write_text("W = 2\n")
    drop(project, "")
    run_once(config)
    changed = info(project, 2)
    assert changed.archive_shared_with is None
    assert changed.bin_sha256 != info(project, 0).bin_sha256
    assert archive(project, 2).stat().st_ino != archive(project, 0).stat().st_ino
    with tarfile.open(archive(project, 2)) as tar:
        model = tar.extractfile("lib/model.py")
        assert model is not None and model.read() == b"W = 2\n"
    assert archive(project, 0).stat().st_nlink == 2  # runs 0 and 1 only


def test_where_the_share_cannot_hard_link_each_run_keeps_a_copy(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = big_project(tmp_path / "share")
    drop(project, "")
    run_once(config)
    # Run 0's folder moves onto its own file system: a link to it cannot be made (EXDEV).
    run_0 = project / "results" / "run_0"
    saved = tmp_path / "saved_run_0"
    shutil.copytree(run_0, saved)
    with tmpfs(run_0, "16m"):
        shutil.copytree(saved, run_0, dirs_exist_ok=True)
        drop(project, "")
        run_once(config)
        result = info(project, 1)
        assert result.state == runinfo.SUCCEEDED
        assert result.archive_shared_with is None
        assert result.bin_sha256 == info(project, 0).bin_sha256
        assert archive(project, 1).stat().st_dev != archive(project, 0).stat().st_dev
        assert file_sha(archive(project, 1)) == file_sha(archive(project, 0))


def test_a_replaced_archive_or_a_hostile_index_is_never_shared(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = big_project(tmp_path / "share")
    drop(project, "")
    run_once(config)
    results = project / "results"
    # Someone replaces run 0's archive with other bytes, and scribbles into the index.
    fake = results / "run_0" / "fake.tar.gz"
    fake.write_bytes(b"not the archive")
    os.replace(fake, archive(project, 0))
    with (results / ".archives").open("a") as index:
        index.write("garbage line\n1 " + "0" * 64 + " - 99 1 1 1 1 1\n")
    drop(project, "")
    run_once(config)
    result = info(project, 1)
    assert result.archive_shared_with is None
    assert archive(project, 1).stat().st_size > BIG
    # The index as a link to a file outside: never written through, replaced.
    outside = tmp_path / "outside.txt"
    outside.write_text("keep\n")
    (results / ".archives").unlink()
    (results / ".archives").symlink_to(outside)
    drop(project, "")
    run_once(config)
    assert outside.read_text() == "keep\n"
    assert not (results / ".archives").is_symlink()
    assert info(project, 2).state == runinfo.SUCCEEDED
    drop(project, "")  # the new index knows run 2's archive
    run_once(config)
    assert info(project, 3).archive_shared_with == "run_2"
