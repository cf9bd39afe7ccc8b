"""The launcher script, run for real under sh (dash) and bash."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest

from agent.hosts.base import LaunchSpec
from agent.hosts.launcher import make_launcher

NASTY = [
    "plain",
    "with space",
    "it's",
    'dq"uote',
    "$(touch pwned)",
    "`touch pwned2`",
    "a; touch pwned3",
    "new\nline",
    "*",
    "",
    "-e",
    "\\back\\slash",
    "$HOME",
]

RECORDER = """#!/bin/sh
for a in "$@"; do printf '%s\\0' "$a"; done > argv.bin
printf '%s\\0' "$NASTY1" "$NASTY2" "$CUDA_VISIBLE_DEVICES" "${FROM_SETUP-unset}" > env.bin
printf 'to stdout\\n'
printf 'to stderr\\n' >&2
exit "${EXIT_WITH:-0}"
"""

SHELLS = ["sh", "bash"]


def _need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} must be installed for this test"
    return path


def _run_dir(tmp_path: Path, script: str = RECORDER, name: str = "run.sh") -> Path:
    run_dir = tmp_path / "run_0"
    (run_dir / ".droprun").mkdir(parents=True)
    path = run_dir / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(script)
    path.chmod(0o755)
    return run_dir


def _start(
    run_dir: Path,
    spec: LaunchSpec,
    shell: str,
    conda_sh: str | None = None,
    env: dict | None = None,
) -> subprocess.Popen:
    (run_dir / ".droprun" / "launch.sh").write_text(make_launcher(spec, conda_sh))
    log = open(run_dir / ".droprun" / "log", "wb")  # noqa: SIM115 - handed to the child
    try:
        return subprocess.Popen(
            [_need(shell), ".droprun/launch.sh"],
            cwd=run_dir,
            stdin=subprocess.DEVNULL,
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
            env=env,
        )
    finally:
        log.close()


def _finish(run_dir: Path, proc: subprocess.Popen) -> int:
    proc.wait(timeout=30)
    return int((run_dir / ".droprun" / "exit").read_text())


def _log(run_dir: Path) -> str:
    return (run_dir / ".droprun" / "log").read_text()


@pytest.mark.parametrize("shell", SHELLS)
def test_args_and_env_arrive_as_exact_data(tmp_path: Path, shell: str) -> None:
    run_dir = _run_dir(tmp_path)
    spec = LaunchSpec(
        run_script="run.sh",
        args=NASTY,
        env={"NASTY1": "x'; touch pwned4; '$(id)`id`", "NASTY2": "multi\nline\t$PATH"},
        output_dir="out dir/$(touch pwned5)",
        cuda_visible_devices="2,3",
    )
    before = time.time()
    proc = _start(run_dir, spec, shell)
    assert _finish(run_dir, proc) == 0
    assert (run_dir / "argv.bin").read_bytes().split(b"\0")[:-1] == [a.encode() for a in NASTY]
    env = (run_dir / "env.bin").read_bytes().split(b"\0")[:-1]
    assert env == [spec.env["NASTY1"].encode(), spec.env["NASTY2"].encode(), b"2,3", b"unset"]
    assert (run_dir / "out dir" / "$(touch pwned5)").is_dir()
    assert not list(run_dir.glob("pwned*"))
    assert int((run_dir / ".droprun" / "pid").read_text()) == proc.pid
    start = int((run_dir / ".droprun" / "start").read_text())
    end = int((run_dir / ".droprun" / "end").read_text())
    assert int(before) <= start <= end
    assert "to stdout" in _log(run_dir) and "to stderr" in _log(run_dir)
    assert not list((run_dir / ".droprun").glob("*.tmp"))


@pytest.mark.parametrize("shell", SHELLS)
def test_exit_status_is_recorded(tmp_path: Path, shell: str) -> None:
    run_dir = _run_dir(tmp_path)
    proc = _start(run_dir, LaunchSpec("run.sh", env={"EXIT_WITH": "3"}), shell)
    assert _finish(run_dir, proc) == 3


def test_script_in_subdir_not_executable_is_made_executable(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path, name="scripts/go.sh")
    (run_dir / "scripts" / "go.sh").chmod(0o644)
    proc = _start(run_dir, LaunchSpec("scripts/go.sh", args=["a"]), "sh")
    assert _finish(run_dir, proc) == 0
    assert (run_dir / "argv.bin").read_bytes() == b"a\0"


@pytest.mark.parametrize("shell", SHELLS)
def test_missing_script_is_127_with_message(tmp_path: Path, shell: str) -> None:
    run_dir = _run_dir(tmp_path)
    proc = _start(run_dir, LaunchSpec("nope.sh"), shell)
    assert _finish(run_dir, proc) == 127
    assert "nope.sh does not exist" in _log(run_dir)


@pytest.mark.parametrize("shell", SHELLS)
def test_setup_lines_run_verbatim_in_order(tmp_path: Path, shell: str) -> None:
    run_dir = _run_dir(tmp_path)
    (tmp_path / "activate_env.sh").write_text('FROM_SETUP="v$1"; export FROM_SETUP\n')
    setup = [f"source {tmp_path}/activate_env.sh 2.4", 'export FROM_SETUP="$FROM_SETUP-$(echo x)"']
    proc = _start(run_dir, LaunchSpec("run.sh", setup=setup), shell)
    assert _finish(run_dir, proc) == 0
    assert (run_dir / "env.bin").read_bytes().split(b"\0")[3] == b"v2.4-x"


@pytest.mark.parametrize("shell", SHELLS)
def test_failing_setup_line_stops_the_run(tmp_path: Path, shell: str) -> None:
    run_dir = _run_dir(tmp_path)
    proc = _start(run_dir, LaunchSpec("run.sh", setup=["true", "(exit 5)"]), shell)
    assert _finish(run_dir, proc) == 5
    assert "setup line 2 failed" in _log(run_dir)
    assert not (run_dir / "argv.bin").exists()


def test_setup_line_that_exits_is_still_recorded(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    proc = _start(run_dir, LaunchSpec("run.sh", setup=["exit 4"]), "sh")
    assert _finish(run_dir, proc) == 4


FAKE_CONDA = """conda() {
    [ "$1" = activate ] || return 1
    [ "$2" = "my-env.1" ] || { echo "no such env: $2" >&2; return 1; }
    CONDA_DEFAULT_ENV=$2; export CONDA_DEFAULT_ENV
}
"""


@pytest.mark.parametrize("shell", SHELLS)
def test_conda_activation_before_setup(tmp_path: Path, shell: str) -> None:
    run_dir = _run_dir(tmp_path)
    conda_sh = tmp_path / "conda.sh"
    conda_sh.write_text(FAKE_CONDA)
    spec = LaunchSpec("run.sh", conda_env="my-env.1", setup=['FROM_SETUP="$CONDA_DEFAULT_ENV"'])
    proc = _start(run_dir, spec, shell, conda_sh=str(conda_sh))
    assert _finish(run_dir, proc) == 0
    assert (run_dir / "env.bin").read_bytes().split(b"\0")[3] == b"unset"  # not exported
    spec = LaunchSpec(
        "run.sh", conda_env="my-env.1", setup=['export FROM_SETUP="$CONDA_DEFAULT_ENV"']
    )
    proc = _start(run_dir, spec, shell, conda_sh=str(conda_sh))
    assert _finish(run_dir, proc) == 0
    assert (run_dir / "env.bin").read_bytes().split(b"\0")[3] == b"my-env.1"


def test_conda_found_in_home(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    home = tmp_path / "home"
    (home / "miniconda3" / "etc" / "profile.d").mkdir(parents=True)
    (home / "miniconda3" / "etc" / "profile.d" / "conda.sh").write_text(FAKE_CONDA)
    env = {"HOME": str(home), "PATH": "/usr/bin:/bin"}
    spec = LaunchSpec("run.sh", conda_env="other")
    proc = _start(run_dir, spec, "sh", env=env)
    assert _finish(run_dir, proc) == 127
    assert "could not activate conda environment other" in _log(run_dir)


def test_missing_conda_is_127_with_message(tmp_path: Path) -> None:
    run_dir = _run_dir(tmp_path)
    env = {"HOME": str(tmp_path / "nohome"), "PATH": "/usr/bin:/bin"}
    proc = _start(run_dir, LaunchSpec("run.sh", conda_env="torch"), "sh", env=env)
    assert _finish(run_dir, proc) == 127
    assert "conda was not found" in _log(run_dir)
    assert not (run_dir / "argv.bin").exists()


SLEEPER = """#!/bin/sh
trap 'echo got-term; sleep 0.5; exit 7' TERM
echo started > started
while :; do sleep 0.05; done
"""
EXEC_SLEEP = "#!/bin/sh\necho started > started\nexec sleep 30\n"


@pytest.mark.parametrize("shell", SHELLS)
@pytest.mark.parametrize(("script", "expected"), [(SLEEPER, 7), (EXEC_SLEEP, 143)])
def test_term_to_group_records_child_status(
    tmp_path: Path, shell: str, script: str, expected: int
) -> None:
    run_dir = _run_dir(tmp_path, script=script)
    proc = _start(run_dir, LaunchSpec("run.sh"), shell)
    deadline = time.monotonic() + 20
    while not (run_dir / "started").exists():
        assert time.monotonic() < deadline, _log(run_dir)
        time.sleep(0.02)
    os.killpg(proc.pid, signal.SIGTERM)
    assert _finish(run_dir, proc) == expected
    with pytest.raises(ProcessLookupError):
        os.killpg(proc.pid, 0)


def test_bad_env_name_and_multiline_setup_are_refused() -> None:
    with pytest.raises(ValueError):
        make_launcher(LaunchSpec("run.sh", env={"A B": "x"}), None)
    with pytest.raises(ValueError):
        make_launcher(LaunchSpec("run.sh", setup=["echo a\necho b"]), None)


WARNED = """#!/bin/sh
trap 'echo warned > warned; exit 5' USR1
echo started > started
while :; do sleep 0.05; done
"""


@pytest.mark.parametrize("shell", SHELLS)
def test_signal_before_timeout_warns_the_script_with_usr1(tmp_path: Path, shell: str) -> None:
    run_dir = _run_dir(tmp_path, script=WARNED)
    proc = _start(run_dir, LaunchSpec("run.sh", timeout=30, signal_before=29), shell)
    assert _finish(run_dir, proc) == 5  # the script's own answer to the warning
    assert (run_dir / "warned").exists()
    assert not (run_dir / ".droprun" / "timed_out").exists()


@pytest.mark.parametrize("shell", SHELLS)
def test_usr1_to_the_launcher_reaches_the_script_as_slurm_sends_it(
    tmp_path: Path, shell: str
) -> None:
    run_dir = _run_dir(tmp_path, script=WARNED)
    proc = _start(run_dir, LaunchSpec("run.sh"), shell)
    deadline = time.monotonic() + 20
    while not (run_dir / "started").exists():
        assert time.monotonic() < deadline, _log(run_dir)
        time.sleep(0.02)
    proc.send_signal(signal.SIGUSR1)  # --signal=B:USR1 signals the batch shell only
    assert _finish(run_dir, proc) == 5
    assert (run_dir / "warned").exists()
