"""Helper sessions: one shell runs verb after verb, with the same answers as a fresh one.

The oracle is the real shell: the words the agent quotes come back word for word from
dash, bash and BusyBox's sh, and a log of any bytes comes back byte for byte.
"""

from __future__ import annotations

import os
import shlex
import stat
import subprocess
import threading
import time
from collections.abc import Iterator, Sequence
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.hosts import session
from agent.hosts.base import HostError, RunRef
from agent.hosts.local import LocalStream, LocalTransport
from agent.hosts.session import make_line, parse_answer
from agent.hosts.shell import ShellHost
from agent.hosts.transport import Stream
from agent.runinfo import new_run_id
from agent.schema import HostConfig

from testbed import in_threads, require_tool, run_checked

SHELLS = {
    "dash": ["sh"],
    "bash": [require_tool("bash")],
    "busybox": [require_tool("busybox"), "sh"],
}
# Any text but NUL, and the lone surrogates that stand for bytes a path held that were not
# UTF-8 (Python's surrogateescape): they must reach the shell as those bytes.
_chars = st.characters(exclude_categories=("Cs",), exclude_characters="\0") | st.sampled_from(
    [chr(c) for c in range(0xDC80, 0xDD00)]
)
_words = st.lists(st.text(_chars, max_size=12), max_size=5)


@pytest.mark.parametrize("shell", sorted(SHELLS))
@settings(max_examples=150, deadline=None)
@given(words=_words)
def test_the_quoted_line_gives_the_shell_the_same_words(shell: str, words: list[str]) -> None:
    line = make_line(words)
    assert line.count(b"\n") == 1 and line.endswith(b"\n")  # one line, whatever the words
    script = (
        "NL='\n'\nIFS= read -r line\neval \"set -- $line\"\nfor w; do printf '%s\\0' \"$w\"; done"
    )
    out = subprocess.run(
        [*SHELLS[shell], "-c", script], input=line, capture_output=True, check=True
    ).stdout
    assert out.split(b"\0")[:-1] == [w.encode("utf-8", "surrogateescape") for w in words]


def test_a_word_with_a_nul_byte_is_refused() -> None:
    with pytest.raises(ValueError, match="NUL"):
        make_line(["log", "a\0b"])


def test_an_answer_is_cut_at_its_marks_only() -> None:
    mark = b"0123abcd"
    out = b"line\n0123abcd\nnot a mark 0123abcd 7\nend"  # the mark, but not after a newline+space
    buffer = out + b"\n" + mark + b" 3\noops\n" + b"\n" + mark + b".\nnext"
    answer = parse_answer(buffer, mark)
    assert answer is not None
    result, rest = answer
    assert (result.exit_code, result.stdout, result.stderr, rest) == (3, out, b"oops\n", b"next")
    assert parse_answer(buffer[: len(buffer) - 10], mark) is None  # not whole yet


class Counting(LocalTransport):
    """The local transport, counting the sessions it starts and keeping their streams."""

    def __init__(self) -> None:
        self.streams: list[LocalStream] = []

    def start(self, argv: Sequence[str]) -> LocalStream:
        stream = super().start(argv)
        self.streams.append(stream)
        return stream


def _local(tmp_path: Path, transport: Counting) -> ShellHost:
    return ShellHost(HostConfig(name="local", remote_root=str(tmp_path / "remote")), transport)


@pytest.fixture
def counted(tmp_path: Path) -> Iterator[tuple[ShellHost, Counting]]:
    transport = Counting()
    host = _local(tmp_path, transport)
    yield host, transport
    host.close()


@pytest.fixture
def private_tmp(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty folder that the helper sessions started in the test take as TMPDIR."""
    tmp = tmp_path / "tmp"
    tmp.mkdir()
    monkeypatch.setenv("TMPDIR", str(tmp))
    return tmp


def _pid(stream: Stream) -> int:
    assert isinstance(stream, LocalStream)
    return stream._proc.pid


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(") ", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def test_a_log_of_any_bytes_comes_back_whole(counted: tuple[ShellHost, Counting]) -> None:
    host, transport = counted
    ref = RunRef("proj", 0, new_run_id())
    run_dir = Path(host.remote_dir(ref))
    (run_dir / ".droprun").mkdir(parents=True)
    (run_dir / ".droprun" / "run_id").write_text(ref.run_id + "\n")
    log = bytes(range(256)) * 40 + b"\nfake 0\n\nfake.\n" + os.urandom(70_000)
    (run_dir / ".droprun" / "log").write_bytes(log)
    assert host.read_log(ref, 0, len(log) + 10) == log
    assert host.read_log(ref, 1000, 5000) == log[1000:6000]
    assert len(transport.streams) == 1  # one session, reused


def test_a_failed_verb_leaves_the_session_usable(counted: tuple[ShellHost, Counting]) -> None:
    host, transport = counted
    with pytest.raises(HostError, match="refusing to remove /tmp/nope: not a run dir") as info:
        host._helper("cleanup", "/tmp/nope", "some-id")
    assert not info.value.transient
    assert host._helper("home").stdout.decode().strip() == os.path.expanduser("~")
    assert len(transport.streams) == 1


def test_a_verb_over_its_time_ends_its_session_and_the_next_gets_a_new_one(
    counted: tuple[ShellHost, Counting],
) -> None:
    host, transport = counted
    with pytest.raises(HostError, match="no answer within") as info:
        host._helper("power", "sleep 30", timeout=0.5)
    assert info.value.transient
    first = _pid(transport.streams[0])
    assert not _alive(first)  # killed with what it ran, by its pid
    assert host._helper("home").stdout.strip()
    assert len(transport.streams) == 2


def test_a_session_that_died_idle_is_replaced_and_said(
    counted: tuple[ShellHost, Counting], caplog: pytest.LogCaptureFixture
) -> None:
    host, transport = counted
    host._helper("home")
    pid = _pid(transport.streams[0])
    os.kill(pid, 9)
    transport.streams[0]._proc.wait()
    with caplog.at_level("INFO"):
        assert host._helper("home").stdout.strip()  # no error: the verb went to a new session
    assert len(transport.streams) == 2
    assert "local: home: the helper session ended" in caplog.text
    assert "retrying in a new session" in caplog.text


def test_threads_each_get_their_own_answers(counted: tuple[ShellHost, Counting]) -> None:
    host, transport = counted
    seen: list[tuple[str, str]] = []

    def ask(n: int) -> None:
        for i in range(15):
            word = f"w{n}-{i} 'q' $x\n"
            out = host._helper("power", f"printf '%s' {shlex.quote(word)}", timeout=30)
            seen.append((word, out.stdout.decode()))

    assert not in_threads(ask, 6)
    assert len(seen) == 90 and all(word == out for word, out in seen)
    assert 1 <= len(transport.streams) <= 6


def test_close_ends_every_session(tmp_path: Path) -> None:
    transport = Counting()
    host = _local(tmp_path, transport)
    threads = [threading.Thread(target=host._helper, args=("home",)) for _ in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    pids = [_pid(s) for s in transport.streams]
    host.close()
    assert pids and not any(_alive(pid) for pid in pids)


def test_sessions_are_bounded_and_a_thread_waits_for_a_free_one(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session, "MAX_OPEN", 2)
    transport = Counting()
    host = _local(tmp_path, transport)
    release = tmp_path / "release"
    busy = f"while [ ! -e {shlex.quote(str(release))} ]; do sleep 0.05; done"
    holders = [threading.Thread(target=host._helper, args=("power", busy)) for _ in range(2)]
    for t in holders:
        t.start()
    wait_for_streams = time.monotonic() + 30
    while len(transport.streams) < 2:
        assert time.monotonic() < wait_for_streams
        time.sleep(0.02)
    with pytest.raises(HostError, match="all 2 helper sessions stayed busy") as info:
        host._helper("home", timeout=0.3)
    assert info.value.transient
    waiter = threading.Thread(target=host._helper, args=("home",))
    waiter.start()  # waits for a free session ...
    release.touch()  # ... which it gets once the holders' verbs end
    for t in [*holders, waiter]:
        t.join(timeout=30)
        assert not t.is_alive()
    assert len(transport.streams) == 2  # never more than two opened
    host.close()


def test_without_a_temp_folder_a_failure_still_fails_and_dev_null_stays(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("TMPDIR", str(tmp_path / "missing"))  # mktemp fails: stderr is lost
    transport = Counting()
    host = _local(tmp_path, transport)
    with pytest.raises(HostError, match=r"cleanup failed \(exit 2\)"):
        host._helper("cleanup", "/tmp/nope", "some-id")
    assert host._helper("home").stdout.strip()
    host.close()
    assert stat.S_ISCHR(os.stat("/dev/null").st_mode)  # not removed with the session


def test_the_stderr_file_is_private_and_goes_with_its_session(
    tmp_path: Path, private_tmp: Path
) -> None:
    host = _local(tmp_path, Counting())
    host._helper("home")
    (made,) = private_tmp.iterdir()
    assert stat.S_IMODE(made.stat().st_mode) == 0o600
    host.close()
    assert not list(private_tmp.iterdir())


def test_a_session_ended_by_a_signal_takes_its_stderr_file_along(
    tmp_path: Path, private_tmp: Path
) -> None:
    transport = Counting()
    host = _local(tmp_path, transport)
    host._helper("home")
    assert len(list(private_tmp.iterdir())) == 1
    os.kill(_pid(transport.streams[0]), 1)  # SIGHUP, as when an ssh channel goes
    transport.streams[0]._proc.wait()
    assert not list(private_tmp.iterdir())
    host.close()


def test_a_session_under_busybox_ash_answers_like_dash(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, private_tmp: Path
) -> None:
    """A NAS whose sh is BusyBox's ash (no bash, no GNU tools): the same verbs, the same
    answers, its stderr file made and removed by BusyBox's mktemp."""
    busybox = require_tool("busybox")
    applets = tmp_path / "applets"
    applets.mkdir()
    for applet in run_checked([busybox, "--list"]).split():
        (applets / applet).symlink_to(busybox)
    monkeypatch.setenv("PATH", str(applets))
    transport = Counting()
    host = _local(tmp_path, transport)
    ref = RunRef("proj", 0, new_run_id())
    host._helper("mkdir", str(Path(host.remote_dir(ref)) / ".droprun"))
    (Path(host.remote_dir(ref)) / ".droprun" / "run_id").write_text(ref.run_id + "\n")
    log = bytes(range(256)) * 8 + b"\n" + os.urandom(5000)
    (Path(host.remote_dir(ref)) / ".droprun" / "log").write_bytes(log)
    assert host.read_log(ref, 0, len(log)) == log
    assert host.read_log(ref, 100, 50) == log[100:150]
    with pytest.raises(HostError, match="refusing to remove /tmp/nope: not a run dir"):
        host._helper("cleanup", "/tmp/nope", "some-id")
    assert host.status(ref).state == "not_started"
    assert len(transport.streams) == 1 and len(list(private_tmp.iterdir())) == 1
    host.close()
    assert not list(private_tmp.iterdir())


def test_a_word_no_shell_can_hold_is_an_error_and_the_session_stays(
    counted: tuple[ShellHost, Counting],
) -> None:
    host, transport = counted
    host._helper("home")
    with pytest.raises(HostError, match=r"home: cannot send it: .*NUL") as info:
        host._helper("home", "a\0b")
    assert not info.value.transient
    assert host._helper("home").stdout.strip()
    assert len(transport.streams) == 1
