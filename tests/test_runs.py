"""Whole runs on the built-in local host: real rsync, real processes, real files."""

from __future__ import annotations

import tarfile

from agent import runinfo

from shares import (
    LINGER,
    TRAIN,
    drop,
    info,
    make_project,
    on_host,
    pid_alive,
    run_once,
    write_config,
)


def test_a_run_succeeds_and_files_everything(tmp_path):
    config = write_config(tmp_path)
    project = make_project(
        tmp_path / "share",
        "proj",
        {"run.sh": TRAIN, "data/readme.txt": "hello\n", "junk.pyc": "x"},
        project_toml='timeout = "1h"\n',
    )
    drop(project, 'name = "first"\nargs = ["--lr", "0.1"]\n')
    run_once(config)

    run_dir = project / "results" / "run_0"
    result = info(project)
    assert result.state == runinfo.SUCCEEDED
    assert result.exit_code == 0
    assert result.name == "first"
    assert [h["state"] for h in result.history] == [
        "accepted",
        "queued",
        "uploading",
        "running",
        "finishing",
        "succeeded",
    ]
    assert not (project / "run.request").exists()
    assert (run_dir / "run.request").read_text() == 'name = "first"\nargs = ["--lr", "0.1"]\n'
    log = (run_dir / "log.log").read_text()
    assert "args: --lr 0.1" in log and "epoch 3" in log
    assert sorted(p.name for p in (run_dir / "output").iterdir()) == [
        "ckpt-1.txt",
        "ckpt-2.txt",
        "ckpt-3.txt",
    ]
    with tarfile.open(run_dir / "bin.tar.gz") as tar:
        names = {m.name.removeprefix("./") for m in tar.getmembers() if m.isfile()}
    assert names == {"run.sh", "data/readme.txt"}  # *.pyc is excluded by default
    assert result.bin_files == 2
    assert result.bytes_uploaded and result.bytes_uploaded > 0
    assert result.start_epoch and result.end_epoch and result.duration_s is not None
    assert result.effective["timeout"] == "1h"
    assert result.effective["sources"]["timeout"] == "project"
    assert result.effective["sources"]["args"] == "request"
    assert result.effective["sources"]["backup_every"] == "built-in"
    # the run dir on the server is gone, the cache stays
    server = on_host(tmp_path / "server", tmp_path / "share") / "proj"
    assert (server / "cache" / "run.sh").exists()
    assert not (server / "run_0").exists()


def test_non_zero_exit_is_failed(tmp_path):
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": TRAIN})
    drop(project, 'env = { EXIT_CODE = "3" }\n')
    run_once(config)
    result = info(project)
    assert result.state == runinfo.FAILED
    assert result.exit_code == 3
    assert "3" in (result.reason or "")


def test_time_limit_kills_the_whole_process_tree(tmp_path):
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"run.sh": LINGER})
    drop(project, 'timeout = "1s"\n')
    run_once(config)
    result = info(project)
    assert result.state == runinfo.TIMED_OUT
    assert "time limit" in (result.reason or "")
    out = project / "results" / "run_0" / "output"
    for name in ("child.pid", "main.pid"):
        assert not pid_alive(int((out / name).read_text()))


def test_cancel_file_stops_the_run(tmp_path):
    import threading
    import time

    config = write_config(tmp_path)
    script = "#!/bin/sh\necho waiting\nmkdir -p output\necho $$ > output/main.pid\nsleep 300\n"
    project = make_project(tmp_path / "share", "proj", {"run.sh": script})
    drop(project, "")

    def cancel_when_running() -> None:
        deadline = time.monotonic() + 60
        path = project / "results" / "run_0" / "run.info"
        while time.monotonic() < deadline:
            if path.exists() and runinfo.load(path).state == runinfo.RUNNING:
                (path.parent / "cancel").write_text("")
                return
            time.sleep(0.1)

    canceller = threading.Thread(target=cancel_when_running)
    canceller.start()
    run_once(config)
    canceller.join()
    result = info(project)
    assert result.state == runinfo.CANCELLED
    pid = int((project / "results" / "run_0" / "output" / "main.pid").read_text())
    assert not pid_alive(pid)


def test_missing_run_script_is_an_error(tmp_path):
    config = write_config(tmp_path)
    project = make_project(tmp_path / "share", "proj", {"train.py": "print(1)\n"})
    drop(project, 'run_script = "nope.sh"\n')
    run_once(config)
    result = info(project)
    assert result.state == runinfo.ERROR
    assert "nope.sh" in (result.reason or "")


def test_two_requests_together_get_different_numbers(tmp_path):
    config = write_config(tmp_path, slots=2)
    project = make_project(tmp_path / "share", "proj", {"run.sh": TRAIN})
    drop(project, 'name = "a"\n', "a.request")
    drop(project, 'name = "b"\n', "b.request")
    run_once(config)
    names = {info(project, n).name for n in (0, 1)}
    assert names == {"a", "b"}
    assert all(info(project, n).state == runinfo.SUCCEEDED for n in (0, 1))


def test_setup_conda_env_and_args_are_data(tmp_path):
    config = write_config(tmp_path)
    script = '#!/bin/sh\nfor a in "$@"; do printf "[%s]\\n" "$a"; done\necho "SETUP=$SETUP_DONE"\n'
    project = make_project(tmp_path / "share", "proj", {"run.sh": script})
    drop(
        project,
        'args = ["a b", "$(touch /tmp/pwned)", "`id`", "x; rm -rf /", "it\'s"]\n'
        'setup = ["export SETUP_DONE=yes"]\n'
        'name = "$(reboot)"\n',
    )
    run_once(config)
    log = (project / "results" / "run_0" / "log.log").read_text()
    for word in ("a b", "$(touch /tmp/pwned)", "`id`", "x; rm -rf /", "it's"):
        assert f"[{word}]" in log
    assert "SETUP=yes" in log
    assert info(project).name == "$(reboot)"


def test_short_runs_ask_the_host_once_per_step(tmp_path, monkeypatch):
    """A run that is seen exited is not stopped again, and a host that has just answered is
    not asked whether it is up: two short runs in a row, one ``true``, no ``stop``."""
    from agent.hosts import power
    from agent.hosts.local import LocalTransport
    from agent.hosts.session import Session

    verbs: list[str] = []  # helper verbs (per call or in a session) and plain commands
    real_run, real_call = LocalTransport.run, Session.call

    def recording_run(self, argv, **kwargs):
        verbs.append(argv[4] if list(argv[:2]) == ["sh", "-c"] else argv[0])
        return real_run(self, argv, **kwargs)

    def recording_call(self, words, timeout):
        verbs.append(words[0])
        return real_call(self, words, timeout)

    monkeypatch.setattr(LocalTransport, "run", recording_run)
    monkeypatch.setattr(Session, "call", recording_call)
    monkeypatch.setattr(power, "ANSWER_HOLDS", 3600.0)  # no clock in a test: "just" is now
    config = write_config(tmp_path)  # one slot: the runs go one after the other
    project = make_project(tmp_path / "share", "proj", {"run.sh": TRAIN})
    drop(project, 'name = "one"\n', "one.request")
    drop(project, 'name = "two"\n', "two.request")
    run_once(config)
    for run in (0, 1):
        assert info(project, run).state == runinfo.SUCCEEDED
        log = (project / "results" / f"run_{run}" / "log.log").read_text()
        assert log.endswith("epoch 3\n")
    assert verbs.count("true") == 1  # the first run's: nothing had answered yet
    assert "stop" not in verbs and "kill" not in verbs
    assert verbs.count("launch") == 2 and verbs.count("cleanup") == 2
