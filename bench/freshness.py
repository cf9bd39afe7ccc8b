"""Scenario 8: how soon a checkpoint written on the server is on the share.

The training script writes each checkpoint to a temp name and renames it into ``output/``
(so it is complete the moment it appears), one every few seconds, and records the rename
time. droprun: the real agent (a subprocess) runs it on an ssh host with
``backup_every = "2s"``; the figure is the time from the rename to the file in
``results/run_0/output/``. Baseline: the seed's way, the same script started over ssh and
``scp -r`` of the whole output folder every cycle; a checkpoint counts once scp has
copied all of it. Server, share and bench share one clock (one machine).
"""

from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path

import tomlkit

from bench.agentproc import Agent
from bench.plan import MIB, Plan
from bench.report import Row
from bench.sshstart import HOST, finished, write_ssh_config
from bench.tools import login_for, median, p95, run, ssh_server, wait_for

CYCLE = 2.0  # backup_every, s
WRITER = """#!/bin/sh
# writer MARKS COUNT BYTES EVERY: checkpoints by rename into output/, rename times in MARKS
mkdir -p output
i=0
while [ "$i" -lt "$2" ]; do
    i=$((i + 1))
    sleep "$4"
    head -c "$3" /dev/urandom > output/.ckpt-$i.tmp
    mv output/.ckpt-$i.tmp output/ckpt-$i.bin
    date +%s.%N > "$1/$i.tmp" && mv "$1/$i.tmp" "$1/$i"
done
"""


def _watch(out: Path, marks: Path, count: int, size: int, deadline: float) -> list[float]:
    """Return, per checkpoint, seconds from its rename (``marks/N``) to ``out`` holding all
    of it; polls until all are there. Raises TimeoutError after ``deadline`` s."""
    seen: dict[int, float] = {}

    def all_there() -> bool:
        for n in range(1, count + 1):
            if n not in seen:
                path = out / f"ckpt-{n}.bin"
                if path.exists() and path.stat().st_size == size:
                    seen[n] = time.time()
        return len(seen) == count

    wait_for(all_there, deadline, "every checkpoint on the share", poll=0.02)
    return [seen[n] - float((marks / str(n)).read_text()) for n in range(1, count + 1)]


def freshness(tmp: Path, plan: Plan) -> list[Row]:
    """Scenario 8: rename on the server -> on the share, droprun against scp every cycle."""
    root = tmp / "s8"
    count, size, every = plan.fresh_ckpts, plan.fresh_bytes, plan.fresh_every
    deadline = count * every + 120.0
    args = [str(count), str(size), f"{every:g}"]
    with ssh_server() as server:
        # droprun
        config = write_ssh_config(root, server)
        project = root / "share" / "fresh"
        (project / "bin").mkdir(parents=True)
        (project / "bin" / "run.sh").write_text(WRITER)
        (project / "project.toml").write_text(f'backup_every = "{CYCLE:g}s"\n')
        marks = root / "marks"
        marks.mkdir(mode=0o777)
        marks.chmod(0o777)  # the script runs as the ssh test user
        with Agent(config, root / "agent.log") as agent:
            agent.wait_quiet(60)
            request = tomlkit.dumps({"host": HOST, "args": [str(marks), *args]})
            (project / "run.request").write_text(request)
            out = project / "results" / "run_0" / "output"
            drop = _watch(out, marks, count, size, deadline)
            finished(agent, project / "results" / "run_0" / "run.info", 120, "scenario 8")
        # the seed: the script over ssh, scp -r of its output folder every cycle
        login = login_for(server, server.port, root)  # type: ignore[attr-defined]
        base = f"{server.base}/scp-run"  # type: ignore[attr-defined]
        scp_marks = root / "scp-marks"
        scp_marks.mkdir(mode=0o777)
        scp_marks.chmod(0o777)
        script = root / "writer.sh"
        script.write_text(WRITER)
        script.chmod(0o755)
        run(login.ssh(f"mkdir -p {base}"))
        backup = root / "scp-backup"
        backup.mkdir()
        writer = subprocess.Popen(
            login.ssh(f"cd {base} && sh {script} {scp_marks} {' '.join(args)}"),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.DEVNULL,
        )
        stop = threading.Event()

        def seed_loop() -> None:  # the seed's backup loop: sleep a cycle, copy everything
            while not stop.wait(CYCLE):
                subprocess.run(login.scp_from(f"{base}/output", backup), capture_output=True)

        loop = threading.Thread(target=seed_loop)
        loop.start()
        try:
            scp = _watch(backup / "output", scp_marks, count, size, deadline)
        finally:
            stop.set()
            loop.join()
            writer.wait(timeout=deadline)
    label = f"8 rename -> share ({count} x {size / MIB:g} MiB, every {every:g} s)"
    met = median(drop) <= 2.5 if plan.full else None
    return [
        Row(label, "median", "s", median(drop), median(scp), "<= 2.5 s (a cycle + transfer)",
            met, f'backup_every = "{CYCLE:g}s"; baseline: scp -r of the folder every cycle'),
        Row(label, "p95", "s", p95(drop), p95(scp), "-", None),
    ]  # fmt: skip


def run_all(tmp: Path, plan: Plan) -> list[Row]:
    """Every scenario of this group."""
    return freshness(tmp, plan)
