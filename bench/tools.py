"""What the scenarios share: a byte-counting TCP relay, /proc readers, test data, timing.

The sshd itself comes from the test bed (``tests/testbed.py``), so the benchmarks and the
tests log in to exactly the same kind of server.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import random
import socket
import statistics
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]
PIPE_SIZE = 1 << 20
F_SETPIPE_SZ = getattr(fcntl, "F_SETPIPE_SZ", 1031)


def testbed():  # imported late, so that `python -m bench --help` stays cheap
    """Return the test bed module (``tests/testbed.py``), importing it from the checkout."""
    tests = str(REPO / "tests")
    if tests not in sys.path:
        sys.path.insert(0, tests)
    import testbed as module

    return module


class CountingRelay:
    """A TCP relay on 127.0.0.1 in front of ``target_port`` that counts every byte.

    Both directions are copied with ``splice`` (no copy through Python), so the relay adds
    little to the transfer; ``total`` is what crossed "the network", ssh framing included.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self._listener = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = int(self._listener.getsockname()[1])
        self._lock = threading.Lock()
        self._bytes = 0
        self._pumps = 0
        self._accepter = threading.Thread(target=self._accept, daemon=True)

    def __enter__(self) -> CountingRelay:
        self._accepter.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._listener.shutdown(socket.SHUT_RDWR)  # wakes the accept(); close() alone does not
        self._listener.close()
        self._accepter.join(timeout=5)

    @property
    def total(self) -> int:
        """Bytes relayed so far, both directions."""
        with self._lock:
            return self._bytes

    def settled_total(self, deadline: float = 30.0) -> int:
        """Wait until no connection is open any more, then return :attr:`total`.

        Raises TimeoutError if a connection stays open for ``deadline`` seconds.
        """
        end = time.monotonic() + deadline
        while True:
            with self._lock:
                if self._pumps == 0:
                    return self._bytes
            if time.monotonic() > end:
                raise TimeoutError("a relayed connection stayed open")
            time.sleep(0.01)

    def _accept(self) -> None:
        while True:
            try:
                client, _ = self._listener.accept()
            except OSError:
                return  # listener closed: the relay is done
            server = socket.create_connection(("127.0.0.1", self.target_port))
            pair = [client, server]
            for sock in pair:  # as ssh does: small packets go out at once (no Nagle delay)
                sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            with self._lock:
                self._pumps += 2
            for src, dst in ((client, server), (server, client)):
                threading.Thread(target=self._pump, args=(src, dst, pair), daemon=True).start()

    def _pump(self, src: socket.socket, dst: socket.socket, pair: list[socket.socket]) -> None:
        read_end, write_end = os.pipe()
        try:
            with contextlib.suppress(OSError):  # a bigger pipe is only faster, not needed
                fcntl.fcntl(write_end, F_SETPIPE_SZ, PIPE_SIZE)
            while True:
                try:
                    n = os.splice(src.fileno(), write_end, PIPE_SIZE)
                except OSError:
                    n = 0  # reset by the peer: the same as its end of stream here
                if n == 0:
                    break
                with self._lock:
                    self._bytes += n
                while n:
                    n -= os.splice(read_end, dst.fileno(), n)
            with contextlib.suppress(OSError):  # the other side may be gone already
                dst.shutdown(socket.SHUT_WR)
        finally:
            os.close(read_end)
            os.close(write_end)
            with self._lock:
                self._pumps -= 1
                pair.append(src)  # marks this direction done; the second one closes both
                both_done = len(pair) == 4
            if both_done:
                for sock in pair[:2]:
                    sock.close()


# -- /proc -----------------------------------------------------------------------------------


def cpu_seconds(pid: int) -> float:
    """Return the user+system CPU seconds that process ``pid`` (all its threads) has used."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def vm_kib(pid: int, key: str) -> int:
    """Return a ``/proc/PID/status`` memory figure (``VmRSS``, ``VmHWM``) in KiB."""
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith(key + ":"):
            return int(line.split()[1])
    raise KeyError(key)


# -- data ------------------------------------------------------------------------------------


def write_random(path: Path, size: int, rng: random.Random) -> None:
    """Write ``size`` incompressible bytes to ``path`` (parents created)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with open(path, "wb") as out:
        left = size
        while left:
            chunk = min(left, 8 << 20)
            out.write(rng.randbytes(chunk))
            left -= chunk


def make_code_tree(root: Path, total: int, files: int, seed: int = 1) -> Path:
    """Make a ``bin/``-like tree of ``files`` files, ``total`` bytes in all; return ``root``.

    Files are spread over 20 folders; ``config/params.txt`` is a 1 KiB file among them.
    """
    rng = random.Random(seed)
    root.mkdir(parents=True, exist_ok=True)
    (root / "run.sh").write_text("#!/bin/sh\nexit 0\n")
    (root / "run.sh").chmod(0o755)
    write_random(root / "config" / "params.txt", 1024, rng)
    each = max(1, (total - 1024) // max(1, files - 2))
    for i in range(files - 2):
        write_random(root / f"pkg{i % 20:02d}" / f"mod{i:05d}.bin", each, rng)
    return root


# -- timing ----------------------------------------------------------------------------------


def timed(action: Callable[[], object]) -> float:
    """Run ``action``; return its wall time in seconds."""
    start = time.perf_counter()
    action()
    return time.perf_counter() - start


def median(values: list[float]) -> float:
    """Median of ``values``."""
    return statistics.median(values)


def p95(values: list[float]) -> float:
    """95th percentile (nearest rank) of ``values``."""
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, max(0, round(0.95 * len(ordered)) - 1))]


def wait_for(check: Callable[[], bool], deadline: float, what: str, poll: float = 0.005) -> float:
    """Poll ``check`` until it is true; return ``time.time()`` when it was seen true.

    Raises TimeoutError naming ``what`` after ``deadline`` seconds.
    """
    end = time.monotonic() + deadline
    while not check():
        if time.monotonic() > end:
            raise TimeoutError(f"{what}: not within {deadline:g} s")
        time.sleep(poll)
    return time.time()


# -- ssh -------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Login:
    """How the system ssh/scp clients reach the test sshd, directly or through a relay."""

    port: int
    key: Path
    known_hosts: Path
    user: str

    def options(self) -> list[str]:
        """Return the ``-i``/``-o`` options shared by ssh and scp (no port)."""
        argv = ["-i", str(self.key)]
        for option in (
            "BatchMode=yes",
            "IdentitiesOnly=yes",
            "StrictHostKeyChecking=yes",
            f"UserKnownHostsFile={self.known_hosts}",
            "GlobalKnownHostsFile=/dev/null",
            "ConnectTimeout=10",
        ):
            argv += ["-o", option]
        return argv

    def ssh(self, *command: str) -> list[str]:
        """Return the ssh argv that runs ``command`` (one shell line) on the server."""
        return ["ssh", "-p", str(self.port), *self.options(), f"{self.user}@127.0.0.1", *command]

    def scp_to(self, local: Path, remote: str) -> list[str]:
        """Return ``scp -r local user@host:remote``."""
        return ["scp", "-r", "-q", "-P", str(self.port), *self.options(), str(local),
                f"{self.user}@127.0.0.1:{remote}"]  # fmt: skip

    def scp_from(self, remote: str, local: Path) -> list[str]:
        """Return ``scp -r user@host:remote local``."""
        return ["scp", "-r", "-q", "-P", str(self.port), *self.options(),
                f"{self.user}@127.0.0.1:{remote}", str(local)]  # fmt: skip


def run(argv: list[str], stdin: int | None = None) -> None:
    """Run ``argv``; raise RuntimeError with its stderr if it fails."""
    done = subprocess.run(argv, stdin=stdin, capture_output=True, check=False)
    if done.returncode != 0:
        raise RuntimeError(f"{argv[0]} exited {done.returncode}: {done.stderr.decode()[-800:]}")


@contextlib.contextmanager
def ssh_server() -> Iterator[object]:
    """Run the test bed's sshd on 127.0.0.1 (as the test user) for the ``with`` block."""
    bed = testbed()
    with bed.running_sshd(bed.ensure_test_user(), "127.0.0.1") as server:
        yield server


def login_for(server: object, port: int, tmp: Path) -> Login:
    """Return a :class:`Login` for ``server`` reached on ``port`` (its own or a relay's)."""
    known = tmp / f"known_hosts_{port}"
    known.write_text(f"[127.0.0.1]:{port} {server.host_public_key}\n")  # type: ignore[attr-defined]
    return Login(port, server.key, known, server.user)  # type: ignore[attr-defined]


def chown_tree(path: Path, uid: int, gid: int) -> None:
    """Give ``path`` and everything below it to ``uid:gid``."""
    os.chown(path, uid, gid)
    for parent, dirs, files in os.walk(path):
        for name in dirs + files:
            os.chown(os.path.join(parent, name), uid, gid, follow_symlinks=False)
