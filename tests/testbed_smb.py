"""Samba as the real client path: a fixture smbd serving a temp share on 127.0.0.1."""

from __future__ import annotations

import os
import subprocess
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from testbed import (
    SMB_PASSWORD,
    TestUser,
    free_port,
    make_tempdir,
    remove_tree,
    require_tool,
    run_checked,
    stop_process,
    wait_listening,
)

SMB_CONFIG = """\
[global]
interfaces = 127.0.0.1
bind interfaces only = yes
smb ports = {port}
disable netbios = yes
server role = standalone server
map archive = no
load printers = no
printcap name = /dev/null
disable spoolss = yes
private dir = {tmp}/private
lock directory = {tmp}/lock
state directory = {tmp}/state
cache directory = {tmp}/cache
pid directory = {tmp}/pid
ncalrpc dir = {tmp}/ncalrpc
log file = {tmp}/log.smbd

[share]
path = {share}
read only = no
valid users = {user}
"""


@dataclass(frozen=True)
class SmbServer:
    """A running smbd serving ``share`` as ``//127.0.0.1/share`` on ``port``."""

    port: int
    user: str
    password: str
    share: Path
    tmp: Path
    pid: int

    def smbclient_argv(self, command: str) -> list[str]:
        """Return the smbclient argv that runs ``command`` (``-c``) against the share."""
        login = f"{self.user}%{self.password}"
        return [require_tool("smbclient"), "//127.0.0.1/share", "-p", str(self.port), "-U", login,
                "-c", command]  # fmt: skip

    def smbclient(self, command: str, stdin: bytes | None = None) -> str:
        """Run one smbclient command line (``-c``) against the share; fail on non-zero exit."""
        return run_checked(self.smbclient_argv(command), stdin=stdin)

    def put(self, local_path: Path, remote_name: str) -> None:
        """Upload ``local_path`` as ``remote_name`` (``dir/name`` allowed; dirs must exist)."""
        self.smbclient(f'put "{local_path}" "{_smb_name(remote_name)}"')

    def mkdir(self, remote_name: str) -> None:
        """Create the directory ``remote_name`` on the share."""
        self.smbclient(f'mkdir "{_smb_name(remote_name)}"')

    def put_slowly(
        self, local_path: Path, remote_name: str, chunk: int = 1 << 20, pause: float = 0.5
    ) -> None:
        """Upload ``local_path`` fed in ``chunk``-byte pieces with ``pause`` s between them.

        The remote file exists (empty or partial) well before it is complete, as when a slow
        client writes over SMB. smbclient may hold back up to its own buffer size, so a file
        smaller than that shows as empty until the end. Blocks until the upload is done.
        """
        argv = self.smbclient_argv(f'put /dev/stdin "{_smb_name(remote_name)}"')
        data = local_path.read_bytes()
        proc = subprocess.Popen(
            argv, stdin=subprocess.PIPE, stdout=subprocess.PIPE, stderr=subprocess.STDOUT
        )
        assert proc.stdin is not None and proc.stdout is not None
        for start in range(0, len(data), chunk):
            if start:
                time.sleep(pause)
            proc.stdin.write(data[start : start + chunk])
            proc.stdin.flush()
        proc.stdin.close()
        output = proc.stdout.read().decode(errors="replace")
        if proc.wait(timeout=60) != 0:
            pytest.fail(f"smbclient put_slowly exited with {proc.returncode}: {output}")


def _smb_name(remote_name: str) -> str:
    """Return ``remote_name`` with backslashes, as smbclient expects; reject quotes."""
    if '"' in remote_name:
        raise ValueError(f"smbclient cannot quote {remote_name!r}")
    return remote_name.replace("/", "\\")


@pytest.fixture
def smbd_server(test_user: TestUser) -> Iterator[SmbServer]:
    """A real smbd on 127.0.0.1 and a free port, serving a fresh share dir as the test user.

    Files uploaded through it are owned by the test user; the share dir is ``server.share``.
    """
    smbd, smbpasswd = require_tool("smbd"), require_tool("smbpasswd")
    require_tool("smbclient")
    tmp = make_tempdir("drt-smbd-")
    proc: subprocess.Popen[bytes] | None = None
    try:
        for sub in ("private", "lock", "state", "cache", "pid", "ncalrpc"):
            (tmp / sub).mkdir()
        share = tmp / "share"
        share.mkdir(mode=0o755)
        os.chown(share, test_user.uid, test_user.gid)
        log = tmp / "smbd.out"
        for _ in range(5):  # a picked free port can be taken before smbd binds it
            port = free_port()
            conf = tmp / "smb.conf"
            conf.write_text(SMB_CONFIG.format(port=port, tmp=tmp, share=share, user=test_user.name))
            with log.open("wb") as out:
                proc = subprocess.Popen(
                    [smbd, "-F", "--no-process-group", "--debug-stdout", "-d1", "-s", str(conf)],
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=out,
                    # smbd TERMs its whole process group on exit: keep it out of ours.
                    start_new_session=True,
                )
            try:
                wait_listening(proc, "127.0.0.1", port, log, "smbd")
                break
            except pytest.fail.Exception:
                if b"Address already in use" not in log.read_bytes():
                    raise
        assert proc is not None
        pw = f"{SMB_PASSWORD}\n{SMB_PASSWORD}\n".encode()
        run_checked([smbpasswd, "-c", str(conf), "-s", "-a", test_user.name], stdin=pw)
        yield SmbServer(port, test_user.name, SMB_PASSWORD, share, tmp, proc.pid)
    finally:
        if proc is not None:
            stop_process(proc)
        remove_tree(tmp)
