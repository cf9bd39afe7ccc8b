"""Environment capture: what a run runs with, in results/run_N/env/ and run.info.

Real runs over a real sshd whose sessions find a fake ``nvidia-smi`` and a fake conda on
PATH (sshd's ``SetEnv``), over one without them, and git on the agent's side.
"""

from __future__ import annotations

import hashlib
import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import runinfo
from agent.envcapture import in_git_tree

from shares import TRAIN, drop, info, make_project, run_once, write_config, write_ssh_config
from testbed import SshServer, TestUser, make_tempdir, remove_tree, require_tool, running_sshd

NVIDIA_SMI = """#!/bin/sh
case "$*" in
    *--query-gpu=name,driver_version,memory.total*)
        printf 'name, driver_version, memory.total [MiB]\\n'
        printf 'NVIDIA Fake A100, 550.54.14, 81920 MiB\\n' ;;
    *--query-gpu=name*) echo "NVIDIA Fake A100" ;;
    *) echo "| NVIDIA-SMI 550.54.14    Driver Version: 550.54.14    CUDA Version: 12.4 |" ;;
esac
"""
CONDA_SH = """conda() {
    case "$1" in
        activate) PATH="{root}/envs/$2/bin:$PATH"; export PATH ;;
        list) printf '# platform: linux-64\\n@EXPLICIT\\nhttps://conda.example/t-9.tar.bz2\\n' ;;
        *) return 1 ;;
    esac
}
"""
PYTHON = """#!/bin/sh
case "$1" in
    --version) echo "Python 3.99.1" ;;
    -m) echo "torch==9.9.9" ;;
    *) exit 1 ;;
esac
"""


def executable(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    path.chmod(0o755)


@pytest.fixture
def fake_tools() -> Iterator[Path]:
    """A folder with bin/nvidia-smi and a conda with an env "torch", readable by anyone."""
    root = make_tempdir("drt-fake-")
    try:
        executable(root / "bin" / "nvidia-smi", NVIDIA_SMI)
        executable(
            root / "conda" / "etc" / "profile.d" / "conda.sh", CONDA_SH.replace("{root}", str(root))
        )
        executable(root / "envs" / "torch" / "bin" / "python", PYTHON)
        for folder in [root, *root.rglob("*")]:
            if folder.is_dir():
                folder.chmod(0o755)
        yield root
    finally:
        remove_tree(root)


@pytest.fixture
def gpu_server(test_user: TestUser, fake_tools: Path) -> Iterator[SshServer]:
    """A real sshd whose sessions have the fake tools first on PATH."""
    setenv = f"SetEnv PATH={fake_tools / 'bin'}:/usr/local/bin:/usr/bin:/bin\n"
    with running_sshd(test_user, "127.0.0.1", extra_config=setenv) as server:
        yield server


def git(cwd: Path, *args: str) -> str:
    argv = [require_tool("git"), "-c", "user.name=t", "-c", "user.email=t@example.com", *args]
    return subprocess.run(argv, cwd=cwd, capture_output=True, text=True, check=True).stdout


def git_project(share: Path) -> tuple[Path, str]:
    project = make_project(share, "proj", {"run.sh": TRAIN, "model.py": "W = 1\n"})
    git(project / "bin", "init", "-q")
    git(project / "bin", "add", ".")
    git(project / "bin", "commit", "-qm", "first")
    return project, git(project / "bin", "rev-parse", "HEAD").strip()


def test_gpu_conda_and_git_are_recorded(
    root: Path, gpu_server: SshServer, fake_tools: Path
) -> None:
    config = write_ssh_config(
        root, gpu_server, host_extra=f'conda_sh = "{fake_tools}/conda/etc/profile.d/conda.sh"\n'
    )
    project, commit = git_project(root / "share")
    drop(project, 'conda_env = "torch"\n')
    run_once(config)
    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result.reason
    env = project / "results" / "run_0" / "env"
    assert "NVIDIA Fake A100, 550.54.14, 81920 MiB" in (env / "nvidia-smi.csv").read_text()
    assert (env / "pip-freeze.txt").read_text() == "torch==9.9.9\n"
    conda = (env / "conda-explicit.txt").read_text()
    assert "@EXPLICIT" in conda
    assert (env / "python.txt").read_text().startswith("Python 3.99.1\n")
    assert (env / "git.txt").read_text().startswith(f"{commit}\ndirty: false\n")
    summary = result.environment
    assert summary is not None
    assert summary["python"] == "3.99.1"
    assert (summary["cuda"], summary["driver"]) == ("12.4", "550.54.14")
    assert summary["gpus"] == ["NVIDIA Fake A100"]
    assert summary["conda"] == "listed"
    packages = "torch==9.9.9\n" + conda
    assert summary["packages_sha256"] == hashlib.sha256(packages.encode()).hexdigest()
    assert (summary["git_commit"], summary["git_dirty"]) == (commit, False)
    assert "absent" not in (summary["os"], summary["kernel"], summary["hostname"])
    assert (env / "hostname.txt").read_text().strip() == summary["hostname"]
    assert result.gpu_names == ["NVIDIA Fake A100"]


def test_without_conda_nvidia_smi_or_git_the_run_succeeds_and_says_absent(
    root: Path, sshd_server: SshServer
) -> None:
    config = write_ssh_config(root, sshd_server)
    project = make_project(root / "share", "proj", {"run.sh": TRAIN})
    drop(project, "")
    run_once(config)
    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result.reason
    summary = result.environment
    assert summary is not None
    assert summary["cuda"] == summary["driver"] == summary["conda"] == "absent"
    assert summary["git_commit"] == "absent" and "git_dirty" not in summary
    assert summary["gpus"] == []
    env = project / "results" / "run_0" / "env"
    assert not (env / "nvidia-smi.csv").exists() and not (env / "conda-explicit.txt").exists()
    assert (env / "uname.txt").read_text().startswith("Linux ")
    assert "not in a git work tree" in (env / "git.txt").read_text()


def test_git_runs_nothing_of_the_repository_and_a_rerun_keeps_its_commit(
    tmp_path: Path,
) -> None:
    config = write_config(tmp_path)
    project, commit = git_project(tmp_path / "share")
    marker = tmp_path / "pwned"
    git(project / "bin", "config", "core.fsmonitor", f"touch {marker}; false")
    # Control: plain git status does run the repository's program.
    git(project / "bin", "status", "--porcelain")
    assert marker.exists()
    marker.unlink()
    (project / "bin" / "model.py").write_text("W = 2\n")
    drop(project, "")
    run_once(config)
    first = info(project, 0).environment
    assert first is not None
    assert (first["git_commit"], first["git_dirty"]) == (commit, True)
    assert not marker.exists()

    # A repository with filters: its clean program is never run, dirtiness is unknown.
    git(project / "bin", "config", "filter.evil.clean", f"touch {marker}; cat")
    (project / "bin" / ".gitattributes").write_text("* filter=evil\n")
    git(project / "bin", "commit", "-qam", "second")
    drop(project, "")
    run_once(config)
    second = info(project, 1).environment
    assert second is not None and "git_dirty" not in second
    assert "filters" in (project / "results" / "run_1" / "env" / "git.txt").read_text()
    marker.unlink(missing_ok=True)  # git commit above ran the filter itself

    drop(project, 'code_from = "run_0"\n')
    run_once(config)
    rerun = info(project, 2).environment
    assert rerun is not None
    assert (rerun["git_commit"], rerun["git_dirty"]) == (commit, True)
    assert not marker.exists()


def test_package_lists_are_taken_again_only_when_the_packages_change(tmp_path: Path) -> None:
    """Three runs in one agent: pip freeze runs for the first, and again only after the
    first run's script installed a package; the third starts no python at all."""
    venv, log = tmp_path / "venv", tmp_path / "python.log"
    site = venv / "lib" / "site"
    site.mkdir(parents=True)
    python3 = require_tool("python3")
    executable(
        venv / "bin" / "python",
        f'#!/bin/sh\necho "$*" >> {log}\nPYTHONPATH={site} exec {python3} "$@"\n',
    )
    (venv / "bin" / "activate").write_text(f"VIRTUAL_ENV={venv}; export VIRTUAL_ENV\n")
    install = (
        "#!/bin/sh\n"
        f'[ -z "$INSTALL" ] && exit 0\n'
        f'until grep -q "pip freeze" {log} 2>/dev/null; do sleep 0.1; done\n'
        f"mkdir {site}/newpkg-1.0.dist-info\n"
        f'printf "Metadata-Version: 2.1\\nName: newpkg\\nVersion: 1.0\\n" '
        f"> {site}/newpkg-1.0.dist-info/METADATA\n"
    )
    config = write_config(tmp_path)
    project = make_project(
        tmp_path / "share",
        "proj",
        {"run.sh": install},
        f'setup = ["source {venv}/bin/activate"]\n',
    )
    for i, text in enumerate(['env = { INSTALL = "1" }\n', "", ""]):
        drop(project, text, f"r{i}.request")
        os.utime(project / f"r{i}.request", ns=(i, i))
    run_once(config)
    assert [info(project, n).state for n in range(3)] == [runinfo.SUCCEEDED] * 3
    freezes = [line for line in log.read_text().splitlines() if line == "-m pip freeze"]
    assert len(freezes) == 2  # run 0, and run 1 after the install; run 2 reuses run 1's
    # Run 2 found nothing changed (envstamp) and did not even start python.
    assert len([line for line in log.read_text().splitlines() if line.startswith("-c ")]) == 2
    lists = [
        (project / "results" / f"run_{n}" / "env" / "pip-freeze.txt").read_text() for n in range(3)
    ]
    assert "newpkg==1.0" in lists[1] and lists[2] == lists[1]
    sums = {info(project, n).environment["packages_sha256"] for n in (1, 2)}  # type: ignore[index]
    assert len(sums) == 1


def test_git_is_started_only_where_a_git_folder_is_in_reach(tmp_path: Path) -> None:
    share = tmp_path / "share"
    bin_dir = share / "proj" / "bin"
    bin_dir.mkdir(parents=True)
    (tmp_path / ".git").mkdir()  # above the share: out of git's reach (the ceiling)
    assert not in_git_tree(bin_dir, share)
    (share / "proj" / ".git").write_text("gitdir: elsewhere\n")  # a worktree's .git file
    assert in_git_tree(bin_dir, share)
