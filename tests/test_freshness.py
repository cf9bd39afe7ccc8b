"""Outputs on the share within one backup cycle: real runs of the agent on the local host.

A finished checkpoint appears in the cycle after it was written, growing logs appear
while they grow, a checkpoint being written never appears half-written, and ``droprun
sync`` (or a ``sync`` file) mirrors at once. Bounds on time are in cycles, with room for a
busy machine; the old rule (a file must have been left alone for 5 s) took 2-3 cycles.
"""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from agent import runinfo
from agent.cli import main as droprun

from shares import drop, info, make_project, run_once, state_of, wait_for, write_config

CYCLE = 2.0  # backup_every of these tests, in seconds


@pytest.fixture
def agent_thread(tmp_path: Path) -> Iterator[tuple[Path, threading.Thread]]:
    """``agent --once`` in a thread (started by the test); joined at teardown."""
    config = write_config(tmp_path)
    thread = threading.Thread(target=run_once, args=(config,))
    yield config, thread
    if thread.is_alive():
        thread.join(120)
    assert not thread.is_alive()


def _server_dir(project: Path) -> Path:
    """The run's folder on the (local) host, once the run has been uploaded."""
    found = wait_for("the run's remote_dir", lambda: state_of(project) and info(project).remote_dir)
    return Path(found)


# The first checkpoint comes after the run's start-up work (archive, environment capture).
RENAMER = """#!/bin/sh
mkdir -p output marks
sleep 3
for i in 1 2 3; do
    head -c 1048576 /dev/urandom > output/.ckpt-$i.tmp
    mv output/.ckpt-$i.tmp output/ckpt-$i.bin
    date +%s.%N > marks/$i
    sleep 3
done
"""


def test_a_checkpoint_renamed_into_place_is_published_in_the_next_cycle(
    agent_thread: tuple[Path, threading.Thread],
) -> None:
    config, thread = agent_thread
    share = config.parent / "share"
    project = make_project(share, "ckpt", {"run.sh": RENAMER}, f'backup_every = "{CYCLE:g}s"\n')
    drop(project, "")
    thread.start()
    server = _server_dir(project)
    out = project / "results" / "run_0" / "output"
    for i in (1, 2, 3):
        seen = wait_for(f"ckpt-{i} on the share", lambda i=i: (out / f"ckpt-{i}.bin").exists())
        assert seen
        published = time.time()
        renamed = float((server / "marks" / str(i)).read_text())
        # The next cycle starts within one backup_every; the rest is transfer and slack.
        assert published - renamed < 2 * CYCLE, f"ckpt-{i} took {published - renamed:.1f} s"
        assert (out / f"ckpt-{i}.bin").stat().st_size == 1 << 20
    thread.join(120)
    result = info(project)
    assert result.state == runinfo.SUCCEEDED, result.reason
    assert result.last_mirror_at is not None


APPENDER = """#!/bin/sh
mkdir -p output
i=0
while [ $i -lt 20 ]; do
    i=$((i+1))
    printf 'step %03d,loss %s\\n' "$i" "0.$((100 - i))" >> "output/$1"
    sleep 0.5
done
"""


@pytest.mark.parametrize("name", ["metrics.csv", "events.out.tfevents.1700000000.gpu1"])
def test_a_growing_metrics_file_is_on_the_share_while_it_grows(
    agent_thread: tuple[Path, threading.Thread], name: str
) -> None:
    config, thread = agent_thread
    share = config.parent / "share"
    project = make_project(share, "grow", {"run.sh": APPENDER}, f'backup_every = "{CYCLE:g}s"\n')
    drop(project, f'args = ["{name}"]\n')
    thread.start()
    server_file = _server_dir(project) / "output" / name
    wait_for("the script's first line", server_file.exists)
    started = time.monotonic()
    on_share = project / "results" / "run_0" / "output" / name
    wait_for(f"{name} on the share", on_share.exists, deadline=2 * CYCLE + 2.0)
    assert time.monotonic() - started < 2 * CYCLE + 2.0
    copies = []
    most = False
    while state_of(project) == runinfo.RUNNING:
        copy = on_share.read_bytes()
        written = server_file.read_bytes() if server_file.exists() else b""
        copies.append(copy)
        # The share has most of the lines so far: at least half of them.
        most |= copy.count(b"\n") * 2 >= written.count(b"\n") > 2
        time.sleep(0.1)
    thread.join(120)
    assert info(project).state == runinfo.SUCCEEDED, info(project).reason
    final = on_share.read_bytes()
    assert final.count(b"\n") == 20 and final.endswith(b"step 020,loss 0.80\n")
    assert most
    assert all(final.startswith(copy) for copy in copies)  # prefixes, replaced whole


GROWER = """#!/bin/sh
mkdir -p output
python3 - <<'PY'
import time
with open("output/model.ckpt", "wb") as f:
    for i in range(20):
        f.write(bytes([65 + i]) * 50000)
        f.flush()
        time.sleep(0.3)
PY
while [ ! -e go ]; do sleep 0.1; done
"""
FULL_CKPT = b"".join(bytes([65 + i]) * 50000 for i in range(20))


def test_a_checkpoint_growing_across_cycles_appears_only_whole(
    agent_thread: tuple[Path, threading.Thread],
) -> None:
    config, thread = agent_thread
    share = config.parent / "share"
    project = make_project(share, "big", {"run.sh": GROWER}, f'backup_every = "{CYCLE:g}s"\n')
    drop(project, "")
    thread.start()
    server = _server_dir(project)
    ckpt = project / "results" / "run_0" / "output" / "model.ckpt"
    seen: list[bytes] = []

    def published() -> bool:
        if ckpt.exists():
            seen.append(ckpt.read_bytes())
        return bool(seen)

    wait_for("model.ckpt on the share, once written", published)
    assert seen == [FULL_CKPT]
    assert state_of(project) == runinfo.RUNNING  # published while the run goes on
    (server / "go").touch()
    thread.join(120)
    assert info(project).state == runinfo.SUCCEEDED
    assert ckpt.read_bytes() == FULL_CKPT


WAITER = """#!/bin/sh
mkdir -p output
echo weights > output/.best.tmp && mv output/.best.tmp output/best.ckpt
touch written
while [ ! -e go ]; do sleep 0.1; done
"""


@pytest.mark.parametrize("how", ["droprun sync", "a sync file"])
def test_sync_mirrors_at_once_long_before_backup_every(
    agent_thread: tuple[Path, threading.Thread], how: str
) -> None:
    config, thread = agent_thread
    share = config.parent / "share"
    project = make_project(share, "now", {"run.sh": WAITER}, 'backup_every = "10m"\n')
    drop(project, "")
    thread.start()
    server = _server_dir(project)
    wait_for("the checkpoint on the server", (server / "written").exists)
    run_dir = project / "results" / "run_0"
    wait_for("the run to be running", lambda: state_of(project) == runinfo.RUNNING)
    assert not (run_dir / "output" / "best.ckpt").exists()
    if how == "droprun sync":
        assert droprun(["sync", "--config", str(config), "now", "0"]) == 0
    else:
        (run_dir / "sync").write_text("")
    wait_for("best.ckpt on the share", (run_dir / "output" / "best.ckpt").exists, deadline=30)
    wait_for("last_mirror_at in run.info", lambda: info(project).last_mirror_at)
    (server / "go").touch()
    thread.join(120)
    assert info(project).state == runinfo.SUCCEEDED
    assert (run_dir / "sync").exists()  # a person's file: left where it was
