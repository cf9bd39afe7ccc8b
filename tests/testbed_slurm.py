"""A real single-node Slurm cluster (munged, slurmctld, slurmd) with two fake GPUs, and the
test sshd as its login node (see /work/shared/TESTBED.md, "Slurm, single node").

Every daemon is a foreground process started here and stopped by its pid. The node has 2
CPUs and ``gpu:2`` through GRES backed by two character devices; a job with
``--gres=gpu:1`` sees ``CUDA_VISIBLE_DEVICES=0``. Client commands find the cluster through
``SLURM_CONF`` (the login sshd sets it with ``SetEnv``): without it they would look the
controller up in DNS. The ``slurm`` fixture (tests/conftest.py) shares one cluster with
every test of a session; the benchmarks start their own.
"""

from __future__ import annotations

import contextlib
import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

from testbed import (
    SshServer,
    TestUser,
    fail,
    free_port,
    make_tempdir,
    remove_tree,
    run_checked,
    running_sshd,
    stop_process,
)

SLURM_HINT = "apt-get update && apt-get install -y slurm-wlm munge"
READY_DEADLINE = 30.0

SLURM_CONF = """\
ClusterName=droprun-test
SlurmctldHost=localhost(127.0.0.1)
SlurmUser=root
SlurmctldPort={ctld_port}
SlurmdPort={slurmd_port}
AuthType=auth/munge
AuthInfo=socket={munge_socket}
StateSaveLocation={tmp}/ctld-state
SlurmdSpoolDir={tmp}/slurmd-spool
SlurmctldPidFile={tmp}/slurmctld.pid
SlurmdPidFile={tmp}/slurmd.pid
SlurmctldLogFile={tmp}/slurmctld.log
SlurmdLogFile={tmp}/slurmd.log
ProctrackType=proctrack/linuxproc
TaskPlugin=task/none
SelectType=select/cons_tres
SelectTypeParameters=CR_Core
JobAcctGatherType=jobacct_gather/none
AccountingStorageType=accounting_storage/none
JobCompType=jobcomp/filetxt
JobCompLoc={tmp}/jobcomp.txt
ReturnToService=2
MpiDefault=none
MailProg=/bin/true
KillWait=5
MinJobAge=300
GresTypes=gpu
NodeName=localhost NodeAddr=127.0.0.1 CPUs=2 RealMemory=1000 Gres=gpu:2 State=UNKNOWN
PartitionName=debug Nodes=ALL Default=YES MaxTime=INFINITE State=UP
"""

GRES_CONF = """\
AutoDetect=off
NodeName=localhost Name=gpu File={tmp}/nvidia[0-1]
"""


def require_slurm(name: str) -> str:
    """Return the path of a Slurm or munge program; fail loudly if it is not installed."""
    for candidate in (f"/usr/sbin/{name}", f"/usr/bin/{name}"):
        if os.access(candidate, os.X_OK):
            return candidate
    fail(f"{name} is not installed; install it with: {SLURM_HINT}", pytrace=False)


@dataclass(frozen=True)
class SlurmCluster:
    """A running single-node cluster: its config file, and its login node once set up."""

    conf: Path
    tmp: Path

    def env(self) -> dict[str, str]:
        """Return an environment for Slurm client commands run here."""
        return {**os.environ, "SLURM_CONF": str(self.conf)}

    def client(self, *argv: str) -> str:
        """Run a Slurm client command here (as root); return its output or fail the test."""
        done = subprocess.run(
            [require_slurm(argv[0]), *argv[1:]],
            env=self.env(),
            capture_output=True,
            check=False,
            timeout=60,
        )
        if done.returncode != 0:
            fail(f"{' '.join(argv)}: {done.stderr.decode(errors='replace')}")
        return done.stdout.decode(errors="replace")

    def jobs(self, comment: str) -> list[tuple[str, str, str]]:
        """Return (id, name, state) of every job the controller still knows whose comment
        is ``comment`` (droprun's jobs carry their run's id there)."""
        out = self.client("squeue", "-h", "-t", "all", "-o", "%i|%j|%T|%k")
        found = [line.split("|", 3) for line in out.splitlines() if line.strip()]
        return [(job, name, state) for job, name, state, note in found if note == comment]

    def log_text(self) -> str:
        """Return slurmctld's and slurmd's logs (for failure messages)."""
        return "".join(
            path.read_text(errors="replace")[-4000:]
            for path in (self.tmp / "slurmctld.log", self.tmp / "slurmd.log")
            if path.exists()
        )


def _start(argv: list[str], log: Path, env: dict[str, str]) -> subprocess.Popen[bytes]:
    with log.open("ab") as out:
        return subprocess.Popen(
            argv,
            stdin=subprocess.DEVNULL,
            stdout=out,
            stderr=out,
            env=env,
            start_new_session=True,
        )


def _wait(what: str, check: object, procs: list[subprocess.Popen[bytes]], tmp: Path) -> None:
    """Poll ``check()`` until true; fail with the daemons' logs if one died or time ran out."""
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        dead = [p for p in procs if p.poll() is not None]
        if dead:
            break
        if check():  # type: ignore[operator]
            return
        time.sleep(0.1)
    logs = "".join(
        f"--- {p.name}\n{p.read_text(errors='replace')[-3000:]}" for p in sorted(tmp.glob("*.log"))
    )
    fail(f"Slurm test cluster: {what} not ready in {READY_DEADLINE} s\n{logs}")


def _node_state(env: dict[str, str]) -> str:
    done = subprocess.run(
        [require_slurm("sinfo"), "-h", "-N", "-o", "%T"],
        env=env,
        capture_output=True,
        check=False,
        timeout=30,
    )
    return done.stdout.decode(errors="replace").strip() if done.returncode == 0 else ""


@contextlib.contextmanager
def running_slurm(user: TestUser) -> Iterator[SlurmCluster]:
    """Run munged, slurmctld and slurmd in a fresh temp dir until the context ends; then
    cancel every job of ``user`` (a job's processes outlive slurmd) and stop them all."""
    munged, mungekey = require_slurm("munged"), require_slurm("mungekey")
    slurmctld, slurmd = require_slurm("slurmctld"), require_slurm("slurmd")
    tmp = make_tempdir("drt-slurm-")
    procs: list[subprocess.Popen[bytes]] = []
    try:
        munge_dir = tmp / "munge"
        munge_dir.mkdir(mode=0o755)
        munge_dir.chmod(0o755)  # clients (the test user over ssh) reach its socket
        key = tmp / "munge.key"
        run_checked([mungekey, "--create", f"--keyfile={key}"])
        socket = munge_dir / "munge.socket"
        procs.append(
            _start(
                [
                    munged,
                    "-F",
                    "--force",
                    f"--key-file={key}",
                    f"--socket={socket}",
                    f"--pid-file={tmp / 'munged.pid'}",
                    f"--log-file={tmp / 'munged.log'}",
                    f"--seed-file={tmp / 'munged.seed'}",
                ],
                tmp / "munged.out",
                dict(os.environ),
            )
        )
        _wait("munged", socket.exists, procs, tmp)
        for n in range(2):  # the fake GPUs: character devices, as GRES wants files
            run_checked(["mknod", str(tmp / f"nvidia{n}"), "c", "1", "3"])
        conf = tmp / "slurm.conf"
        conf.write_text(
            SLURM_CONF.format(
                ctld_port=free_port(), slurmd_port=free_port(), munge_socket=socket, tmp=tmp
            )
        )
        (tmp / "gres.conf").write_text(GRES_CONF.format(tmp=tmp))
        env = {**os.environ, "SLURM_CONF": str(conf)}
        procs.append(_start([slurmctld, "-D", "-f", str(conf)], tmp / "slurmctld.out", env))
        procs.append(
            _start([slurmd, "-D", "-N", "localhost", "-f", str(conf)], tmp / "slurmd.out", env)
        )
        _wait("the node", lambda: _node_state(env) not in ("", "unknown"), procs, tmp)
        cluster = SlurmCluster(conf, tmp)
        if _node_state(env) != "idle":  # a node can come up drained: let it take jobs
            cluster.client("scontrol", "update", "nodename=localhost", "state=resume")
        _wait("the node", lambda: _node_state(env) == "idle", procs, tmp)
        yield cluster
    finally:
        if len(procs) == 3 and all(p.poll() is None for p in procs):
            _cancel_all(SlurmCluster(tmp / "slurm.conf", tmp), user.name)
        for proc in reversed(procs):
            stop_process(proc)
        remove_tree(tmp)


def _cancel_all(cluster: SlurmCluster, user: str) -> None:
    """Cancel every job of ``user`` and wait (a while) until none runs any more."""
    subprocess.run(
        [require_slurm("scancel"), f"--user={user}"],
        env=cluster.env(),
        capture_output=True,
        timeout=30,
        check=False,
    )
    deadline = time.monotonic() + READY_DEADLINE
    while time.monotonic() < deadline:
        out = cluster.client("squeue", "-h", "-o", "%T")
        if not out.strip():
            return
        time.sleep(0.2)


@dataclass(frozen=True)
class SlurmLogin:
    """The cluster and the sshd that is its login node."""

    cluster: SlurmCluster
    ssh: SshServer


@contextlib.contextmanager
def slurm_login(user: TestUser, path_first: Path | None = None) -> Iterator[SlurmLogin]:
    """Run a cluster and a login sshd whose sessions find it (``SetEnv SLURM_CONF``);
    ``path_first`` goes in front of the sessions' PATH (for wrappers that count calls)."""
    with running_slurm(user) as cluster:
        extra = f"SetEnv SLURM_CONF={cluster.conf}"
        if path_first is not None:
            extra += f" PATH={path_first}:/usr/local/bin:/usr/bin:/bin"
        with running_sshd(user, "127.0.0.1", extra_config=extra + "\n") as server:
            yield SlurmLogin(cluster, server)
