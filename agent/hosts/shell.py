"""ShellHost: the whole :class:`agent.hosts.base.Host` interface on top of a Transport.

Every remote action is one call of the inline POSIX helper (``helper.sh``) or one rsync
run, so the local host and the ssh host share all run logic. Layout on the host:
``<remote_root>/<share_id>/<project>/cache/`` and ``.../<project>/run_N/``, where
``share_id`` is unique to the agent's share, so agents that share a server account never
share a cache or a run dir.
"""

from __future__ import annotations

import dataclasses
import importlib.resources
import logging
import math
import posixpath
import threading
from collections.abc import Mapping, Sequence
from pathlib import Path

from agent.envcapture import parse_sections
from agent.hosts.base import (
    HostError,
    Launched,
    LaunchSpec,
    Orphan,
    ProcStatus,
    RunRef,
    Uploaded,
)
from agent.hosts.envcache import EnvCache
from agent.hosts.helperout import parse_launched, parse_orphans, parse_polled, parse_status
from agent.hosts.launcher import CONDA_SH_PLACES, make_launcher, procs_text
from agent.hosts.mirror import Listing, parse_listing
from agent.hosts.power import PowerControl
from agent.hosts.session import SessionPool
from agent.hosts.sync import (
    LocalRsync,
    RsyncStats,
    RsyncVersions,
    make_pull_argv,
    make_seed_argv,
    make_upload_argv,
    parse_version,
    run_rsync,
)
from agent.hosts.transport import CommandResult, Stream, Transport
from agent.schema import HostConfig
from agent.valuetypes import under_home

log = logging.getLogger(__name__)


class ShellHost(PowerControl):
    """A :class:`agent.hosts.base.Host` that runs everything through ``transport``.

    ``local_rsync`` is the agent's rsync, shared by all hosts so that its version is
    asked once.
    """

    limit_slack = 0.0  # the launcher ends the script at its limit

    def __init__(
        self,
        config: HostConfig,
        transport: Transport,
        *,
        share_id: str = "",
        rsync_timeout: float = 6 * 3600.0,
        command_timeout: float = 60.0,
        local_rsync: LocalRsync | None = None,
    ) -> None:
        self.name = config.name
        self.slots = config.slots
        self.config = config
        self.transport = transport
        self.share_id = share_id
        self.rsync_timeout = rsync_timeout
        self.command_timeout = command_timeout
        self._helper_text = (
            procs_text()
            + importlib.resources.files("agent.hosts").joinpath("helper.sh").read_text()
        )
        super().__init__()
        self._sessions = SessionPool(self._start_session, self.name)
        self._root: str | None = None
        self._locks_lock = threading.Lock()
        self._cache_locks: dict[str, threading.Lock] = {}
        self._local_rsync = local_rsync or LocalRsync()
        self._versions_lock = threading.Lock()
        self._remote_rsync: str | None = None
        self._env = EnvCache()
        self._gpu_names: dict[str, list[str] | None] = {}
        self._made_parents: set[str] = set()  # caches' parents known to exist
        # Run ids with none of their processes left: stopped by this host, or seen exited.
        self._stopped: set[str] = set()

    # -- paths -------------------------------------------------------------------------

    def _remote_root(self) -> str:
        """Return this share's folder in ``remote_root`` on the host, ``~`` expanded."""
        if self._root is None:
            root = self.config.remote_root
            rest = under_home(root)
            if rest is not None:
                root = self.transport.home().rstrip("/") + rest
            self._root = posixpath.normpath(posixpath.join(root, self.share_id))
        return self._root

    def cache_dir(self, project: str) -> str:
        """Return the project's persistent upload cache on the host."""
        return posixpath.join(self._remote_root(), project, "cache")

    def remote_dir(self, ref: RunRef) -> str:
        """Return the run directory on the host."""
        return posixpath.join(self._remote_root(), ref.project, f"run_{ref.run}")

    def orphans(self) -> list[Orphan]:
        """Return every run dir under this share's part of ``remote_root`` on the host."""
        return parse_orphans(self._helper("orphans", self._remote_root(), timeout=600.0).stdout)

    # -- the helper ----------------------------------------------------------------------

    def _start_session(self) -> Stream:
        """Start a helper session on the host (``serve``; a kind may extend the text)."""
        return self.transport.start(["sh", "-c", self._helper_text, "droprun-helper", "serve"])

    def _helper(
        self, verb: str, *args: str, stdin: bytes | None = None, timeout: float | None = None
    ) -> CommandResult:
        """Run one helper verb (in a session, unless it reads ``stdin``); return its
        result, raise HostError if it failed."""
        timeout = timeout or self.command_timeout
        if stdin is None:
            result = self._sessions.call([verb, *args], timeout)
            lost = False  # a verb's own status: the session's failures raise above
        else:
            argv = ["sh", "-c", self._helper_text, "droprun-helper", verb, *args]
            result = self.transport.run(argv, stdin=stdin, timeout=timeout)
            lost = result.exit_code == 255  # ssh's own: the connection failed
        if result.exit_code != 0:
            err = result.stderr.decode(errors="replace").strip()
            raise HostError(
                f"{self.name}: {verb} failed (exit {result.exit_code}): {err}", transient=lost
            )
        self.answered()
        return result

    def gpu_names(self, devices: str | None = None) -> list[str] | None:
        """Return the names of the GPUs ``devices`` (all if None) via ``nvidia-smi``.

        Returns None when the host has no ``nvidia-smi``. Raises HostError if it fails.
        Asked once per set of devices: a host's GPUs do not change while the agent runs.
        """
        key = devices or ""
        if key not in self._gpu_names:
            out = self._helper("gpus", key).stdout.decode(errors="replace")
            names = None
            if not out.startswith("no-nvidia-smi"):
                names = [line.strip() for line in out.splitlines() if line.strip()]
            self._gpu_names[key] = names
        names = self._gpu_names[key]
        return None if names is None else list(names)

    def environment(
        self, conda_env: str | None, venv: str | None, devices: str | None
    ) -> dict[str, str | None]:
        """Return the sections of the ``envinfo`` helper's output: one call for all of it.

        The last answer is reused while the helper's ``envstamp`` says nothing it looked at
        changed; otherwise the package lists of the last call for the same ``conda_env`` and
        ``venv`` are kept, and the helper is asked to skip listing them again while they are
        unchanged (see :class:`EnvCache`).
        """
        if self.config.conda_sh:
            places = [self.config.conda_sh]
        else:
            places = [f"{place}/etc/profile.d/conda.sh" for place in CONDA_SH_PLACES]

        def ask(known: Mapping[str, str | None]) -> dict[str, str | None]:
            keys = (known.get("pip-key") or "", known.get("conda-key") or "")
            argv = (conda_env or "", venv or "", devices or "", *keys, *places)
            return parse_sections(self._helper("envinfo", *argv, timeout=300.0).stdout)

        def stamp(paths: Sequence[str]) -> str:
            return self._helper("envstamp", *paths).stdout.decode(errors="replace")

        return self._env.get(conda_env, venv, ask, devices=devices, stamp=stamp)

    # -- rsync at both ends -----------------------------------------------------------------

    def rsync_versions(self) -> RsyncVersions:
        """Return the rsync versions of the agent and of this host (each asked once).

        Raises HostError: permanent if rsync is missing or prints no version.
        """
        local = self._local_rsync.version()
        with self._versions_lock:
            if self._remote_rsync is None:
                self._remote_rsync = self._ask_remote_version()
            return RsyncVersions(local, self._remote_rsync)

    def _ask_remote_version(self) -> str:
        """Run ``rsync --version`` on the host (in a helper session, which the upload's
        next verbs reuse); return the version or raise HostError."""
        result = self._sessions.call(["rsync-version"], self.command_timeout)
        out = result.stdout.decode(errors="replace")
        version = parse_version(out) if result.exit_code == 0 else None
        if version is None:
            err = result.stderr.decode(errors="replace").strip()
            if result.exit_code == 127 or "not found" in err:
                raise HostError(f"{self.name}: rsync is not installed on the host: {err}")
            raise HostError(
                f"{self.name}: cannot tell the host's rsync version "
                f"(exit {result.exit_code}): {(out + err).strip()[:300]}"
            )
        return version

    def _supported_versions(self) -> RsyncVersions:
        """Return the versions; raise HostError (permanent) if droprun cannot use them."""
        versions = self.rsync_versions()
        problem = versions.problem()
        if problem is not None:
            raise HostError(f"{self.name}: {problem}")
        return versions

    # -- a run ---------------------------------------------------------------------------

    def upload(self, ref: RunRef, bin_dir: Path, exclude: Sequence[str]) -> Uploaded:
        """rsync ``bin_dir`` into the cache and make the run dir from it.

        A dir of the run's name that carries another run's id is moved aside first.
        Returns the bytes sent and where such a dir went.
        """
        cache = self.cache_dir(ref.project)
        argv = make_upload_argv(
            str(bin_dir),
            self.transport.rsync_target(cache),
            exclude,
            self.transport.rsync_shell(),
            receiver_ns=self._supported_versions().upload_ns,
        )
        # Runs of one project in several slots share the cache: one rsync into it at a
        # time, and no copy out of it while another rsync renames files in it.
        with self._cache_lock(ref.project):
            stats = self._upload_to_cache(cache, argv)
            out = self._helper("prepare", cache, self.remote_dir(ref), ref.run_id).stdout
        word, _, aside = out.decode(errors="surrogateescape").partition("\n")
        return Uploaded(stats.bytes_sent, aside if word == "moved" else None)

    def _upload_to_cache(self, cache: str, argv: list[str]) -> RsyncStats:
        """rsync into ``cache``, making its parent first unless it was made before.

        A parent made earlier may be gone since (a host that lost /tmp): a failed rsync
        is tried once more after making it.
        """
        parent = posixpath.dirname(cache)
        if parent in self._made_parents:
            try:
                return run_rsync(argv, timeout=self.rsync_timeout)
            except HostError:
                self._made_parents.discard(parent)
        self._helper("mkdir", parent)
        self._made_parents.add(parent)
        return run_rsync(argv, timeout=self.rsync_timeout)

    def _cache_lock(self, project: str) -> threading.Lock:
        """Return the lock that serialises uploads into ``project``'s cache."""
        with self._locks_lock:
            return self._cache_locks.setdefault(project, threading.Lock())

    def launch(self, ref: RunRef, spec: LaunchSpec) -> Launched:
        """Write the launcher into the run dir and start it once (one helper verb, in a
        session: the launcher goes as a word); return pid and start."""
        run_dir = self.remote_dir(ref)
        spec = dataclasses.replace(spec, run_id=ref.run_id)
        script = make_launcher(spec, self.config.conda_sh)
        return parse_launched(self._helper("launch", run_dir, ref.run_id, script).stdout)

    def status(self, ref: RunRef) -> ProcStatus:
        """Return the state of the run's processes."""
        return parse_status(self._helper("status", self.remote_dir(ref), ref.run_id).stdout)

    def poll(self, ref: RunRef, offset: int, limit: int = 1 << 20) -> tuple[ProcStatus, bytes]:
        """Return the run's status and up to ``limit`` bytes of its log from ``offset``.

        One helper call; a subclass with its own ``status`` (a scheduler's) gets that
        status and the log of a run that is not pending.
        """
        if type(self).status is not ShellHost.status:
            status = self.status(ref)
            return status, b"" if status.state == "pending" else self.read_log(ref, offset, limit)
        run_dir = self.remote_dir(ref)
        polled = parse_polled(
            self._helper("poll", run_dir, ref.run_id, str(offset), str(limit)).stdout
        )
        if polled[0].state == "exited":  # the launcher ended every process before that
            self._stopped.add(ref.run_id)
        return polled

    def stop(
        self, ref: RunRef, grace: float, offset: int, limit: int = 1 << 20
    ) -> tuple[ProcStatus, bytes]:
        """Kill what is left of a started run (as :meth:`kill`); return its status after
        that and up to ``limit`` bytes of its log from ``offset``.

        One helper call; a subclass with its own ``status`` or ``kill`` gets those.
        """
        if type(self).status is not ShellHost.status or type(self).kill is not ShellHost.kill:
            status = self.status(ref)
            if status.state != "not_started":
                self.kill(ref, grace)
                if status.state == "running":
                    status = self.status(ref)
            return status, self.read_log(ref, offset, limit)
        seconds = max(0, math.ceil(grace))
        argv = (self.remote_dir(ref), ref.run_id, str(seconds), str(offset), str(limit))
        stopped = parse_polled(self._helper("stop", *argv, timeout=seconds + 30.0).stdout)
        self._stopped.add(ref.run_id)
        return stopped

    def read_log(self, ref: RunRef, offset: int, limit: int = 1 << 20) -> bytes:
        """Return up to ``limit`` bytes of the run's log from byte ``offset``."""
        run_dir = self.remote_dir(ref)
        return self._helper("log", run_dir, ref.run_id, str(offset), str(limit)).stdout

    def seed_output(
        self, ref: RunRef, src: Path, output_dir: str, link_dest: str | None = None
    ) -> int:
        """rsync ``src`` into the run's ``output_dir`` (linking from ``link_dest`` on the
        host where files are equal); return the bytes sent."""
        dest = posixpath.join(self.remote_dir(ref), output_dir)
        self._helper("mkdir", dest)
        argv = make_seed_argv(
            str(src),
            self.transport.rsync_target(dest),
            link_dest,
            self.transport.rsync_shell(),
            receiver_ns=self._supported_versions().upload_ns,
        )
        return run_rsync(argv, timeout=self.rsync_timeout).bytes_sent

    def kill(self, ref: RunRef, grace: float) -> None:
        """TERM every process of the run, KILL the rest after ``grace`` s; return when gone."""
        seconds = max(0, math.ceil(grace))
        run_dir = self.remote_dir(ref)
        self._helper("kill", run_dir, ref.run_id, str(seconds), timeout=seconds + 30.0)

    def cleanup(self, ref: RunRef) -> None:
        """Remove the run dir on the host; the project cache stays."""
        self._helper("cleanup", self.remote_dir(ref), ref.run_id, timeout=600.0)
        self._stopped.discard(ref.run_id)

    def close(self) -> None:
        """End the helper sessions and release the transport's connections."""
        self._sessions.close()
        self.transport.close()

    # -- mirroring -----------------------------------------------------------------------

    def list_outputs(self, ref: RunRef, output_dir: str) -> Listing:
        """Return the helper's listing of the run's ``output_dir``."""
        out_dir = posixpath.join(self.remote_dir(ref), output_dir)
        argv = [self.remote_dir(ref), ref.run_id, out_dir]
        if ref.run_id in self._stopped:  # no process left to ask about
            argv.append("ended")
        return parse_listing(self._helper("list", *argv).stdout)

    def pulls_nanoseconds(self) -> bool:
        """Return True if a pull compares mtimes to the nanosecond (both rsyncs >= 3.1.3)."""
        return self._supported_versions().pull_ns

    def pull_outputs(self, ref: RunRef, output_dir: str, staging: Path) -> int:
        """rsync the run's ``output_dir`` into ``staging`` (a folder on the agent's side,
        written to temp names and renamed; ``--delete`` only there); return bytes received."""
        src = posixpath.join(self.remote_dir(ref), output_dir)
        argv = make_pull_argv(
            self.transport.rsync_target(src),
            str(staging),
            self.transport.rsync_shell(),
            receiver_ns=self.pulls_nanoseconds(),
        )
        return run_rsync(argv, timeout=self.rsync_timeout, ok_codes=(0, 24)).bytes_received
