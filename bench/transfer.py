"""Scenarios 1-3: bytes and time over ssh, droprun's ShellHost against scp / a bare ssh pipe.

Scenarios 1 and 2 go through a :class:`bench.tools.CountingRelay` for both sides, so the
bytes are what crossed the wire (ssh framing and key exchange included). Scenario 3 talks
to the sshd directly: it measures the ceiling, and a relay would only lower it.
"""

from __future__ import annotations

import random
import shutil
import subprocess
from pathlib import Path

from agent.hosts.base import RunRef
from agent.hosts.shell import ShellHost
from agent.hosts.ssh import SshTransport
from agent.outputs import mirror
from agent.runinfo import new_run_id
from agent.schema import HostConfig
from bench.plan import MIB, Plan
from bench.report import Row
from bench.tools import (
    CountingRelay,
    Login,
    chown_tree,
    login_for,
    make_code_tree,
    median,
    run,
    timed,
    write_random,
)

EXCLUDE = (".git/", "__pycache__/", "*.pyc")


def ssh_host(server: object, login: Login, state: Path) -> ShellHost:
    """Return a fresh droprun ssh host (new connections) that reaches the server via ``login``."""
    config: HostConfig = server.host_config(  # type: ignore[attr-defined]
        name="bench", port=login.port, known_hosts=login.known_hosts
    )
    return ShellHost(config, SshTransport(config, state))


def upload_second_run(server: object, tmp: Path, plan: Plan) -> list[Row]:
    """Scenario 1: a second run's upload after one 1 KiB file changed, vs ``scp -r`` of bin/."""
    code = make_code_tree(tmp / "s1" / "bin", plan.code_bytes, plan.code_files)
    base = server.base  # type: ignore[attr-defined]
    with CountingRelay(server.port) as relay:  # type: ignore[attr-defined]
        login = login_for(server, relay.port, tmp)
        host = ssh_host(server, login, tmp / "state")
        host.upload(
            RunRef("s1", 0, f"bench0-{new_run_id()}"), code, EXCLUDE
        )  # the first run fills the cache
        host.close()
        write_random(code / "config" / "params.txt", 1024, random.Random(2))

        before = relay.settled_total()
        host = ssh_host(server, login, tmp / "state")
        sent: list[int] = []
        t_drop = timed(
            lambda: sent.append(
                host.upload(RunRef("s1", 1, f"bench1-{new_run_id()}"), code, EXCLUDE)
            )
        )
        host.close()
        b_drop = relay.settled_total() - before

        before = relay.total
        t_scp = timed(lambda: run(login.scp_to(code, f"{base}/scp_run_1")))
        b_scp = relay.settled_total() - before
    label = f"1 upload 2nd run ({plan.code_bytes // MIB} MiB, {plan.code_files} files)"
    return [
        Row(label, "bytes on the wire", "B", b_drop, b_scp, "< 1% of scp", b_drop < 0.01 * b_scp,
            f"rsync itself reports {sent[0]} B sent; the rest is ssh and helper commands"),
        Row(label, "wall time", "s", t_drop, t_scp, "-", None),
    ]  # fmt: skip


def mirror_checkpoints(server: object, tmp: Path, plan: Plan) -> list[Row]:
    """Scenario 2: one new checkpoint per cycle; droprun's mirror vs ``scp -r`` of the folder."""
    code = tmp / "s2" / "bin"
    code.mkdir(parents=True)
    (code / "run.sh").write_text("#!/bin/sh\n")
    ref = RunRef("s2", 0, f"bench0-{new_run_id()}")
    rng = random.Random(3)
    dest = tmp / "s2" / "results" / "run_0" / "output"
    backup = tmp / "s2" / "scp-backup"
    backup.mkdir(parents=True)
    t_drop = t_scp = 0.0
    b_drop = b_scp = 0
    with CountingRelay(server.port) as relay:  # type: ignore[attr-defined]
        login = login_for(server, relay.port, tmp)
        host = ssh_host(server, login, tmp / "state")
        host.upload(ref, code, EXCLUDE)
        host.close()
        out = Path(host.remote_dir(ref)) / "output"
        out.mkdir()
        owner = out.parent.stat()
        for cycle in range(plan.ckpt_cycles):
            ckpt = out / f"ckpt_{cycle:03d}.pt"
            write_random(ckpt, plan.ckpt_bytes, rng)
            chown_tree(out, owner.st_uid, owner.st_gid)  # the training runs as the login user

            # Backups are minutes apart, so each one pays for its own connections.
            before = relay.settled_total()
            t_drop += timed(lambda: mirror(host, ref, "output", dest))
            host.close()
            b_drop += relay.settled_total() - before

            before = relay.total
            t_scp += timed(lambda: run(login.scp_from(str(out), backup)))
            b_scp += relay.settled_total() - before
    mirrored = sorted(p.name for p in dest.iterdir())
    if len(mirrored) != plan.ckpt_cycles:
        raise RuntimeError(f"scenario 2: only {len(mirrored)} checkpoints were mirrored")
    final = plan.ckpt_cycles * plan.ckpt_bytes
    label = f"2 mirror ({plan.ckpt_cycles} x {plan.ckpt_bytes / MIB:g} MiB ckpts)"
    note = (
        f"final output {final / MIB:g} MiB: droprun moved {b_drop / final:.3f}x it, "
        f"scp {b_scp / final:.2f}x"
    )
    return [
        Row(label, "bytes on the wire", "B", b_drop, b_scp, "droprun < 1.1x final output",
            b_drop < 1.1 * final, note),
        Row(label, "total time", "s", t_drop, t_scp, "-", None),
    ]  # fmt: skip


def throughput(server: object, tmp: Path, plan: Plan) -> list[Row]:
    """Scenario 3: one fresh big file, droprun's upload vs ``cat FILE | ssh 'cat > f'``."""
    code = tmp / "s3" / "bin"
    big = code / "weights.bin"
    write_random(big, plan.big_file, random.Random(4))
    base: Path = server.base  # type: ignore[attr-defined]
    login = login_for(server, server.port, tmp)  # type: ignore[attr-defined]
    drop_rates, ssh_rates = [], []
    for rep in range(plan.repeats):
        ref = RunRef(
            f"s3-{rep}", 0, f"bench0-{new_run_id()}"
        )  # a new project: nothing of the file is cached yet
        drop_rates.append(plan.big_file / _timed_upload(server, login, tmp, ref, code) / MIB)
        ssh_rates.append(plan.big_file / _timed_pipe(login, big, base / f"pipe-{rep}") / MIB)
    d, s = median(drop_rates), median(ssh_rates)
    label = f"3 throughput ({plan.big_file // MIB} MiB fresh file)"
    return [
        Row(label, "upload rate", "MiB/s", d, s, ">= 0.9 of the ssh pipe", d >= 0.9 * s,
            f"median of {plan.repeats}; upload time includes connecting and making the run dir"),
    ]  # fmt: skip


def _timed_upload(server: object, login: Login, tmp: Path, ref: RunRef, code: Path) -> float:
    """Upload ``code`` as ``ref`` with a fresh host; remove the project on the server after.

    Returns the upload's wall time in seconds.
    """
    host = ssh_host(server, login, tmp / "state")
    seconds = timed(lambda: host.upload(ref, code, EXCLUDE))
    host.close()
    shutil.rmtree(Path(host.cache_dir(ref.project)).parent)
    return seconds


def _timed_pipe(login: Login, big: Path, target: Path) -> float:
    """Send ``big`` as ``cat big | ssh 'cat > target'``; remove ``target`` after.

    Returns the wall time in seconds. Raises RuntimeError if ssh fails or the file is short.
    """

    def pipe() -> None:
        with open(big, "rb") as src:
            done = subprocess.run(login.ssh(f"cat > {target}"), stdin=src, check=False)
        if done.returncode != 0:
            raise RuntimeError(f"ssh pipe exited {done.returncode}")

    seconds = timed(pipe)
    if target.stat().st_size != big.stat().st_size:
        raise RuntimeError("scenario 3: the ssh pipe did not deliver the whole file")
    target.unlink()
    return seconds


def run_all(tmp: Path, plan: Plan) -> list[Row]:
    """Run scenarios 1-3 against one sshd on 127.0.0.1; return their rows."""
    from bench.tools import ssh_server

    rows: list[Row] = []
    with ssh_server() as server:
        for scenario in (upload_second_run, mirror_checkpoints, throughput):
            rows += scenario(server, tmp, plan)
    return rows
