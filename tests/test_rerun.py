"""Running a run again with its archived code: ``droprun rerun`` and ``code_from``.

Whole runs on the local host with real rsync and processes; the command as a real process.
"""

from __future__ import annotations

import io
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from agent import runinfo
from agent.archive import make_archive

from shares import REPO, drop, info, make_project, run_once, write_config

# Prints its args and its model, so the log shows which code ran.
SHOW = """#!/bin/sh
echo "args: $*"
echo "model: $(cat lib/model.py)"
mkdir -p output && cp lib/model.py output/
"""


def droprun(*args: object, code: int = 0) -> subprocess.CompletedProcess[str]:
    result = subprocess.run(
        [sys.executable, "-m", "agent", *map(str, args)],
        capture_output=True,
        text=True,
        cwd=REPO,
        check=False,
    )
    assert result.returncode == code, result.stderr + result.stdout
    return result


def uploaded_tree_sha(server: Path, tmp: Path) -> str:
    """Return the tree hash of what the last upload left in the project's cache."""
    caches = [p for p in server.rglob("cache") if p.is_dir()]
    assert len(caches) == 1, caches
    return make_archive(caches[0], [], tmp / "cache.tar.gz").sha256


def code_v1(share: Path) -> Path:
    project = make_project(
        share,
        "proj",
        {"run.sh": SHOW, "lib/model.py": "v1", "lib/gone.py": "old", "data/a.txt": "a"},
        project_toml='args = ["--lr", "0.1"]\n',
    )
    (project / "bin" / "latest").symlink_to("lib/model.py")
    (project / "bin" / "data").chmod(0o555)  # a read-only folder in the code
    return project


def test_rerun_runs_the_archived_code_even_after_bin_changed(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = code_v1(tmp_path / "share")
    drop(project, 'timeout = "2h"\nenv = { SEED = "7" }\n')
    run_once(config)
    first = info(project, 0)
    assert first.state == runinfo.SUCCEEDED
    # Today's code differs: one file changed, one gone, one new, the project's args too.
    (project / "bin" / "lib" / "model.py").write_text("v2")
    (project / "bin" / "lib" / "gone.py").unlink()
    (project / "bin" / "lib" / "new.py").write_text("new")
    (project / "project.toml").write_text('args = ["--lr", "0.5"]\n')

    out = droprun("rerun", "--config", config, "proj", "run_0", "timeout=1h", "env.EXTRA=x")
    assert "run.request: written" in out.stdout
    request = (project / "run.request").read_text()
    assert 'code_from = "run_0"' in request
    run_once(config)

    rerun = info(project, 1)
    assert rerun.state == runinfo.SUCCEEDED, rerun.reason
    assert rerun.rerun_of == 0
    assert rerun.bin_sha256 == first.bin_sha256
    assert uploaded_tree_sha(tmp_path / "server", tmp_path) == first.bin_sha256
    log = (project / "results" / "run_1" / "log.log").read_text()
    assert "args: --lr 0.1" in log and "model: v1" in log
    assert rerun.effective["timeout"] == "1h"
    assert rerun.effective["env"] == {"SEED": "7", "EXTRA": "x"}
    assert rerun.effective["sources"]["args"] == "request"
    assert rerun.archive_shared_with == "run_0"
    archive = project / "results" / "run_1" / "bin.tar.gz"
    assert archive.stat().st_ino == (project / "results" / "run_0" / "bin.tar.gz").stat().st_ino
    # Today's code again: the cache goes back to bin/ as it is now.
    drop(project, "")
    run_once(config)
    assert "model: v2" in (project / "results" / "run_2" / "log.log").read_text()
    assert info(project, 2).rerun_of is None


def test_code_from_by_hand_and_the_rerun_command_refusals(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = code_v1(tmp_path / "share")
    drop(project, "")
    run_once(config)
    (project / "bin" / "lib" / "model.py").write_text("v2")
    drop(project, 'code_from = "run_0"\n')
    run_once(config)
    assert info(project, 1).rerun_of == 0
    assert "model: v1" in (project / "results" / "run_1" / "log.log").read_text()

    assert "no such run" in droprun("rerun", "--config", config, "proj", "7", code=1).stderr
    (project / "results" / "run_0" / "bin.tar.gz").unlink()
    refused = droprun("rerun", "--config", config, "proj", "0", code=1).stderr
    assert "no archive" in refused and "Traceback" not in refused
    bad_host = droprun("rerun", "--config", config, "proj", "1", "host=nowhere", code=1).stderr
    assert "host" in bad_host
    assert not list(project.glob("*.request"))


def _tar(members: list[tuple[tarfile.TarInfo, bytes]]) -> bytes:
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w:gz") as tar:
        for member, data in members:
            member.size = len(data)
            tar.addfile(member, io.BytesIO(data) if data else None)
    return raw.getvalue()


@pytest.mark.parametrize("kind", ["other code", "escape", "through a link", "bomb", "not gzip"])
def test_a_changed_archive_is_refused_and_nothing_runs(tmp_path: Path, kind: str) -> None:
    config = write_config(tmp_path)
    project = code_v1(tmp_path / "share")
    drop(project, "")
    run_once(config)
    archive = project / "results" / "run_0" / "bin.tar.gz"
    outside = tmp_path / "outside"
    outside.mkdir()
    script = tarfile.TarInfo("run.sh")
    script.mode = 0o755
    if kind == "other code":
        data = _tar([(script, b"#!/bin/sh\necho evil\n")])
    elif kind == "escape":
        data = _tar([(tarfile.TarInfo("../../../../outside/x"), b"x"), (script, b"")])
    elif kind == "through a link":
        link = tarfile.TarInfo("lib")
        link.type, link.linkname = tarfile.SYMTYPE, str(outside)
        data = _tar([(link, b""), (tarfile.TarInfo("lib/x"), b"x"), (script, b"")])
    elif kind == "bomb":
        data = _tar([(tarfile.TarInfo("big"), bytes(50 << 20)), (script, b"")])
    else:
        data = b"plain text"
    archive.unlink()  # the archive is shared by hard link: write a new file, not into it
    archive.write_bytes(data)
    drop(project, 'code_from = "run_0"\n')
    run_once(config)
    result = info(project, 1)
    assert result.state == runinfo.ERROR
    assert "code_from run_0" in (result.reason or "")
    assert result.remote_pid is None and result.start_epoch is None  # nothing ran
    assert not (project / "results" / "run_1" / "log.log").exists()
    assert list(outside.iterdir()) == []
    assert not list((tmp_path / "state" / "staging").iterdir())


BAD = [
    ("code_from", '"../other/run_1"', 'like "run_3"'),
    ("code_from", '"run_-1"', 'like "run_3"'),
    ("code_from", '"other/run_1"', "another project"),
    ("code_from", '"run_9"', "does not exist"),
    ("code_from", '"run_1"', "no archive"),
    ("code_from", "3", "found 3 (an integer)"),
    ("resume_from", '"../other/run_1"', 'like "run_3"'),
    ("resume_from", '"run_-1"', 'like "run_3"'),
    ("resume_from", '"run_9"', "does not exist"),
    ("resume_from", '"run_1"', "no mirrored output"),
]


@pytest.mark.parametrize(("key", "value", "message"), BAD)
def test_bad_references_are_refused_and_nothing_runs(
    tmp_path: Path, key: str, value: str, message: str
) -> None:
    config = write_config(tmp_path)
    share = tmp_path / "share"
    other = make_project(share, "other", {"run.sh": SHOW, "lib/model.py": "o"})
    drop(other, "")
    project = code_v1(share)
    drop(project, "")
    run_once(config)
    # run_1: a run folder without an archive or an output.
    results = project / "results"
    (results / "run_1").mkdir()
    runinfo.save(results / "run_1" / "run.info", runinfo.RunInfo("proj", 1, runinfo.FAILED))
    (results / ".next_run").write_text("2\n")
    drop(project, f'name = "x"\n{key} = {value}\n')
    run_once(config)
    error = (project / "run.request.error").read_text()
    assert f"run.request:2: {key}:" in error and message in error, error
    assert (project / "run.request.rejected").exists()
    assert sorted(p.name for p in results.iterdir() if p.name.startswith("run_")) == [
        "run_0",
        "run_1",
    ]


def test_resume_from_a_run_that_has_not_ended_is_refused(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = code_v1(tmp_path / "share")
    drop(project, "", "a.request")
    drop(project, 'resume_from = "run_0"\n', "b.request")
    os.utime(project / "a.request", ns=(0, 0))  # taken first: run_0
    run_once(config)
    assert info(project, 0).state == runinfo.SUCCEEDED
    error = (project / "b.request.error").read_text()
    assert "b.request:1: resume_from:" in error and "has not ended yet" in error, error
    assert not (project / "results" / "run_1").exists()


def test_a_reference_in_project_toml_names_that_file(tmp_path: Path) -> None:
    config = write_config(tmp_path)
    project = code_v1(tmp_path / "share")
    (project / "project.toml").write_text('timeout = "1h"\nresume_from = "run_4"\n')
    drop(project, "")
    run_once(config)
    error = (project / "run.request.error").read_text()
    assert f"{project / 'project.toml'}:2: resume_from:" in error
    assert not (project / "results" / "run_0").exists()
    os.remove(project / "project.toml")
