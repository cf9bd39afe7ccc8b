"""The Synology package: build a real .spk, check it, install and run it like DSM 7 would.

The build reuses wheels from ~/.cache/droprun-wheels (downloading only what is missing), for
this machine's CPU only. The install tests lay out a temp dir like /var/packages/droprun and
run the package's own scripts with DSM's environment variables, as an unprivileged user
(DSM 7 runs them as the package's user), with this machine's python3 standing in for
SynoCommunity's Python 3.11.
"""

from __future__ import annotations

import hashlib
import io
import json
import os
import platform
import pwd
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
import tomllib
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parent.parent
SYNO = REPO / "synology"
sys.path.insert(0, str(SYNO))

import spk  # noqa: E402  (lives in synology/, not a package)

ARCH = {"x86_64": "x86_64", "amd64": "x86_64", "aarch64": "aarch64", "arm64": "aarch64"}[
    platform.machine().lower()
]
CACHE = Path.home() / ".cache" / "droprun-wheels"
PKG_USER = "droprun-spk"  # stands in for DSM's package user
VERSION = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]["version"]
COMPILED = ("cryptography", "bcrypt", "pynacl", "cffi")


def plain_python3() -> str:
    """Return a Python 3.11 that is not a pyenv shim (TESTBED: prefer /usr/bin/python3)."""
    for candidate in ("/usr/bin/python3", shutil.which("python3")):
        if candidate and Path(candidate).exists():
            out = subprocess.run(
                [candidate, "-c", "import sys; print(sys.version_info[:2] == (3, 11))"],
                capture_output=True,
                text=True,
            )
            if out.stdout.strip() == "True":
                return candidate
    raise RuntimeError("no python3.11 on this machine to stand in for SynoCommunity's")


def build(out: Path, *extra: str) -> Path:
    """Run synology/build for this machine's arch; return the one .spk it printed."""
    proc = subprocess.run(
        [SYNO / "build", "--arch", ARCH, "--out", out, "--wheel-cache", CACHE,
         "--reuse-wheels", *extra],
        capture_output=True, text=True,
    )  # fmt: skip
    assert proc.returncode == 0, proc.stderr[-4000:]
    (path,) = [Path(line) for line in proc.stdout.split()]
    return path


@pytest.fixture(scope="module")
def dist(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("dist")


@pytest.fixture(scope="module")
def spk_v1(dist: Path) -> Path:
    return build(dist)


def members(path: Path, mode: str = "r:") -> dict[str, tarfile.TarInfo]:
    with tarfile.open(path, mode) as tar:
        return {m.name.rstrip("/"): m for m in tar.getmembers()}


def read_member(path: Path, name: str) -> bytes:
    with tarfile.open(path, "r:") as tar:
        f = tar.extractfile(name)
        assert f is not None
        return f.read()


# ------------------------------------------------------------------ the .spk file


def test_spk_is_an_uncompressed_tar_of_the_dsm_layout(spk_v1: Path) -> None:
    assert spk_v1.name == f"droprun-{VERSION}-1-{ARCH}.spk"
    assert spk_v1.read_bytes()[:2] != b"\x1f\x8b"  # not gzip
    names = set(members(spk_v1))
    scripts = {f"scripts/{n}" for n in ("preinst", "postinst", "preuninst", "postuninst",
                                        "preupgrade", "postupgrade", "start-stop-status",
                                        "common")}  # fmt: skip
    others = {"INFO", "package.tgz", "scripts", "conf", "conf/privilege", "conf/resource",
              "PACKAGE_ICON.PNG", "PACKAGE_ICON_256.PNG"}  # fmt: skip
    assert names == others | scripts


def test_spk_files_are_root_owned_with_dsm_modes(spk_v1: Path) -> None:
    for name, m in members(spk_v1).items():
        assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "root", "root"), name
        if m.isdir() or name.startswith("scripts/"):
            assert m.mode == 0o755, name
        else:
            assert m.isfile() and m.mode == 0o644, name
    inner = io.BytesIO(read_member(spk_v1, "package.tgz"))
    with tarfile.open(fileobj=inner, mode="r:gz") as tar:
        for m in tar.getmembers():
            assert (m.uid, m.gid, m.uname, m.gname) == (0, 0, "root", "root"), m.name
            assert m.mode == (0o755 if m.isdir() else 0o644), m.name


def test_info_has_the_fields_dsm_needs_and_the_package_checksum(spk_v1: Path) -> None:
    info = spk.parse_info(read_member(spk_v1, "INFO").decode())
    for key in ("package", "version", "os_min_ver", "description", "arch", "maintainer",
                "displayname", "checksum", "install_dep_packages"):  # fmt: skip
        assert info.get(key), key
    assert info["package"] == "droprun"
    assert info["version"] == f"{VERSION}-1"
    assert info["os_min_ver"].startswith("7.")
    assert ARCH in info["arch"].split()
    assert info["install_dep_packages"] == "python311"
    assert info["checksum"] == hashlib.md5(read_member(spk_v1, "package.tgz")).hexdigest()


def runs_on_manylinux2014(platform_tag: str) -> bool:
    """True if one of the (dot-joined) tags is a manylinux of glibc 2.17 or older for ARCH
    (manylinux1 is 2.5, manylinux2010 2.12, manylinux2014 2.17)."""
    glibc = {"manylinux1": (2, 5), "manylinux2010": (2, 12), "manylinux2014": (2, 17)}
    for tag in platform_tag.split("."):
        name, _, arch = tag.partition(f"_{ARCH}")
        if arch or not tag.endswith(ARCH):
            continue
        parts = name.split("_")
        version = glibc.get(name) or (
            (int(parts[1]), int(parts[2])) if parts[0] == "manylinux" and len(parts) == 3 else None
        )
        if version is not None and version <= (2, 17):
            return True
    return False


def test_package_tgz_carries_droprun_and_wheels_for_this_arch(spk_v1: Path) -> None:
    inner = io.BytesIO(read_member(spk_v1, "package.tgz"))
    with tarfile.open(fileobj=inner, mode="r:gz") as tar:
        wheels = [n.removeprefix("wheels/") for n in tar.getnames() if n.endswith(".whl")]
        assert "share/make_config.py" in tar.getnames()
    assert any(w.startswith(f"droprun-{VERSION}-") for w in wheels)
    for dist_name in (*COMPILED, "paramiko", "tomlkit", "watchdog", "inotify_simple", "sh"):
        assert any(w.lower().startswith(dist_name + "-") for w in wheels), dist_name
    for wheel in wheels:
        platform_tag = wheel.removesuffix(".whl").split("-")[-1]
        assert platform_tag == "any" or runs_on_manylinux2014(platform_tag), wheel
        abi = wheel.split("-")[-2]
        assert abi in ("none", "abi3", "cp311"), wheel


def test_conf_asks_for_the_package_user_and_the_share(spk_v1: Path) -> None:
    privilege = json.loads(read_member(spk_v1, "conf/privilege"))
    assert privilege["defaults"]["run-as"] == "package"
    resource = json.loads(read_member(spk_v1, "conf/resource"))
    (share,) = resource["data-share"]["shares"]
    assert share == {"name": "droprun", "permission": {"rw": ["droprun"]}}


def test_icons_are_pngs_of_the_documented_sizes(spk_v1: Path) -> None:
    for name, size in (("PACKAGE_ICON.PNG", 64), ("PACKAGE_ICON_256.PNG", 256)):
        data = read_member(spk_v1, name)
        assert data[:8] == b"\x89PNG\r\n\x1a\n"
        assert int.from_bytes(data[16:20], "big") == int.from_bytes(data[20:24], "big") == size


def test_scripts_parse_as_posix_sh(spk_v1: Path, tmp_path: Path) -> None:
    with tarfile.open(spk_v1, "r:") as tar:
        tar.extractall(tmp_path, filter="data")
    assert shutil.which("dash"), "dash (Debian's /bin/sh) is needed to check POSIX syntax"
    for script in (tmp_path / "scripts").iterdir():
        proc = subprocess.run(["dash", "-n", script], capture_output=True, text=True)
        assert proc.returncode == 0, (script.name, proc.stderr)
        assert "@" not in script.read_text().replace("droprun@$(uname -n)", ""), script.name


# ------------------------------------------------------------------ pure parts


def test_info_text_round_trips_quotes_and_backslashes() -> None:
    fields = {"package": "droprun", "description": 'say "hi" \\ bye'}
    assert spk.parse_info(spk.make_info(fields)) == fields
    with pytest.raises(ValueError):
        spk.parse_info("package=droprun\n")


def test_dsm_version_needs_numbers_and_a_build() -> None:
    assert spk.spk_version("0.1.0", 7) == "0.1.0-7"
    for bad in ("0.1.0rc1", "1.x"):
        with pytest.raises(ValueError):
            spk.spk_version(bad, 1)
    with pytest.raises(ValueError):
        spk.spk_version("1.0", -1)


def test_download_argv_pins_platform_python_and_abi() -> None:
    argv = spk.make_download_argv(
        "py", spk.ARCHES["aarch64"], Path("/d"), ["paramiko>=3"], [Path("/c")]
    )
    assert argv[:3] == ["py", "-m", "pip"]
    pairs = (("--platform", "manylinux2014_aarch64"), ("--python-version", "3.11"),
             ("--implementation", "cp"), ("--abi", "cp311"), ("--find-links", "/c"))  # fmt: skip
    for pair in pairs:
        i = argv.index(pair[0])
        assert argv[i + 1] == pair[1]
    assert "--only-binary=:all:" in argv and "--no-index" in argv
    assert argv[-1] == "paramiko>=3"
    online = spk.make_download_argv("py", spk.ARCHES["x86_64"], Path("/d"), ["x"])
    assert "--no-index" not in online


# ------------------------------------------------------------------ install and run


def ensure_pkg_user() -> pwd.struct_passwd:
    """Return the unprivileged user that plays DSM's package user (create it once)."""
    try:
        return pwd.getpwnam(PKG_USER)
    except KeyError:
        subprocess.run(
            ["useradd", "--system", "--no-create-home", "--shell", "/usr/sbin/nologin", PKG_USER],
            check=True,
        )
        return pwd.getpwnam(PKG_USER)


@dataclass
class FakeDsm:
    """A temp dir laid out like /var/packages/droprun, driven like DSM 7's Package Center."""

    root: Path  # plays /var/packages/droprun
    share: Path  # the shared folder that conf/resource asks for
    python: str
    user: pwd.struct_passwd
    version: str = ""

    @property
    def target(self) -> Path:
        return self.root / "target"

    @property
    def var(self) -> Path:
        return self.root / "var"

    def env(self, status: str, spk_dir: Path, **extra: str) -> dict[str, str]:
        env = {
            "PATH": "/usr/local/bin:/usr/bin:/bin:/usr/sbin:/sbin",
            "HOME": "/nonexistent",
            "SYNOPKG_PKGNAME": "droprun",
            "SYNOPKG_PKGVER": self.version,
            "SYNOPKG_PKGDEST": str(self.target),
            "SYNOPKG_PKGDEST_VOL": "/volume1",
            "SYNOPKG_PKGVAR": str(self.var),
            "SYNOPKG_PKGHOME": str(self.root / "home"),
            "SYNOPKG_PKGINST_TEMP_DIR": str(spk_dir),
            "SYNOPKG_TEMP_LOGFILE": str(self.root / "tmp" / "messages"),
            "SYNOPKG_PKG_STATUS": status,
            "SYNOPKG_DSM_VERSION_MAJOR": "7",
            "SYNOPKG_DSM_VERSION_MINOR": "2",
            "SYNOPKG_DSM_VERSION_BUILD": "72806",
            "SYNOPKG_DSM_LANGUAGE": "enu",
            "DROPRUN_PYTHON": self.python,
            "DROPRUN_PKG_ROOT": str(self.root),
        }
        return {**env, **extra}

    def script(
        self, scripts: Path, name: str, status: str, *args: str, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        """Run one package script as the package user, like synopkg does."""
        argv = [str(scripts / name), *args]
        return self.run_as(argv, self.env(status, scripts.parent, **extra), timeout=180)

    def must(self, scripts: Path, name: str, status: str, *args: str, **extra: str) -> str:
        proc = self.script(scripts, name, status, *args, **extra)
        messages = self.root / "tmp" / "messages"
        shown = messages.read_text() if messages.exists() else ""
        assert proc.returncode == 0, f"{name} {args}: {proc.stdout}{proc.stderr}{shown}"
        return proc.stdout

    def unpack(self, spk_path: Path, into: Path) -> Path:
        """Unpack the .spk like Package Center (into its temp dir); return that dir."""
        shutil.rmtree(into, ignore_errors=True)
        into.mkdir(parents=True)
        with tarfile.open(spk_path, "r:") as tar:
            tar.extractall(into, filter="data")
        self.version = spk.parse_info((into / "INFO").read_text())["version"]
        return into

    def place(self, unpacked: Path) -> None:
        """Move package.tgz into the target and the scripts/conf into the package dir."""
        shutil.rmtree(self.target, ignore_errors=True)
        self.target.mkdir()
        with tarfile.open(unpacked / "package.tgz", "r:gz") as tar:
            tar.extractall(self.target, filter="data")
        for folder in ("scripts", "conf"):
            shutil.rmtree(self.root / folder, ignore_errors=True)
            shutil.copytree(unpacked / folder, self.root / folder)
        self.chown()

    def chown(self) -> None:
        """What ``run-as: package`` does: the package's files belong to its user."""
        for path in [self.root, *self.root.rglob("*"), self.share, *self.share.rglob("*")]:
            os.lchown(path, self.user.pw_uid, self.user.pw_gid)

    def install(self, spk_path: Path) -> None:
        """DSM 7 install: preinst, unpack, postinst, grant the share, start."""
        new = self.unpack(spk_path, self.root / "tmp" / "install")
        self.must(new / "scripts", "preinst", "INSTALL")
        self.var.mkdir()
        self.place(new)
        self.must(self.root / "scripts", "postinst", "INSTALL")
        (self.root / "shares").mkdir()
        (self.root / "shares" / "droprun").symlink_to(self.share)  # data-share worker
        self.chown()

    def upgrade(self, spk_path: Path) -> None:
        """DSM 7 upgrade: stop, pre/post uninst of the old, pre/post inst and upgrade of the new."""
        old_version = self.version
        self.ctl("stop", "STOP")
        new = self.unpack(spk_path, self.root / "tmp" / "upgrade")
        self.must(new / "scripts", "preupgrade", "UPGRADE", SYNOPKG_OLD_PKGVER=old_version)
        self.must(self.root / "scripts", "preuninst", "UPGRADE")
        shutil.rmtree(self.target)
        self.must(self.root / "scripts", "postuninst", "UPGRADE")
        self.must(new / "scripts", "preinst", "UPGRADE")
        self.place(new)
        self.must(self.root / "scripts", "postinst", "UPGRADE", SYNOPKG_OLD_PKGVER=old_version)
        self.must(self.root / "scripts", "postupgrade", "UPGRADE", SYNOPKG_OLD_PKGVER=old_version)

    def run_as(
        self, argv: list[str], env: dict[str, str] | None = None, timeout: float = 120
    ) -> subprocess.CompletedProcess[str]:
        """Run a command as the package user (what ``sudo -u droprun`` does on the NAS)."""
        return subprocess.run(
            argv,
            env=env or {"PATH": "/usr/bin:/bin", "HOME": str(self.root / "home")},
            cwd="/",
            user=self.user.pw_uid,
            group=self.user.pw_gid,
            extra_groups=[],
            capture_output=True,
            text=True,
            timeout=timeout,
        )

    def ctl(self, action: str, status: str) -> subprocess.CompletedProcess[str]:
        return self.script(self.root / "scripts", "start-stop-status", status, action)

    def pid(self) -> int | None:
        pid_file = self.var / "droprun.pid"
        return int(pid_file.read_text()) if pid_file.exists() else None


@pytest.fixture
def dsm() -> Iterator[FakeDsm]:
    user = ensure_pkg_user()
    # not under pytest's tmp dir: that is 0700, and the package user must reach its files
    base = Path(tempfile.mkdtemp(prefix="droprun-dsm-"))
    base.chmod(0o755)
    root = base / "packages" / "droprun"
    (root / "tmp").mkdir(parents=True)
    (root / "home").mkdir()
    share = base / "volume1" / "droprun"
    share.mkdir(parents=True)
    for d in (base / "packages", base / "volume1"):
        d.chmod(0o755)
    fake = FakeDsm(root=root, share=share, python=plain_python3(), user=user)
    fake.chown()
    yield fake
    stop_agent(fake)
    shutil.rmtree(base)


def stop_agent(fake: FakeDsm) -> None:
    """Stop an agent a failed test left running, by its pid."""
    pid = fake.pid()
    cmdline = Path(f"/proc/{pid}/cmdline")
    if pid is not None and cmdline.exists() and b"droprun" in cmdline.read_bytes():
        os.kill(pid, 15)
        deadline = time.monotonic() + 30
        while Path(f"/proc/{pid}/cmdline").exists() and time.monotonic() < deadline:
            if not Path(f"/proc/{pid}/cmdline").read_bytes():
                break  # a zombie: gone as far as we are concerned
            time.sleep(0.1)


def poll_state(run_info: Path, states: set[str], timeout: float = 40) -> dict:
    deadline = time.monotonic() + timeout
    last: dict = {}
    while time.monotonic() < deadline:
        if run_info.exists():
            last = tomllib.loads(run_info.read_text())
            if last.get("state") in states:
                return last
        time.sleep(0.2)
    raise AssertionError(f"{run_info}: state never reached {states}; last: {last}")


def test_preinst_refuses_without_python(spk_v1: Path, dsm: FakeDsm) -> None:
    new = dsm.unpack(spk_v1, dsm.root / "tmp" / "install")
    dsm.chown()
    proc = dsm.script(new / "scripts", "preinst", "INSTALL", DROPRUN_PYTHON="/nonexistent/python3")
    assert proc.returncode != 0
    assert "Python 3.11" in (dsm.root / "tmp" / "messages").read_text()


def drop_request(share: Path, project: str, run_sh: str) -> Path:
    """Make ``<share>/<project>`` with a bin/run.sh and drop a run.request; return the folder."""
    folder = share / project
    (folder / "bin").mkdir(parents=True, exist_ok=True)
    (folder / "bin" / "run.sh").write_text(run_sh)
    (folder / "run.request").write_text('name = "synology"\n')
    return folder


TERMINAL = {"succeeded", "failed", "error", "timed_out", "cancelled"}


def test_install_start_serve_stop_and_upgrade_keeps_config(
    spk_v1: Path, dist: Path, dsm: FakeDsm
) -> None:
    dsm.install(spk_v1)
    config = dsm.var / "droprun.toml"
    log = dsm.var / "droprun.log"
    text = config.read_text()
    settings = tomllib.loads(text)
    assert settings["share"] == str(dsm.root / "shares" / "droprun")
    assert settings["state_dir"] == str(dsm.var / "state")
    assert (dsm.target / "env" / "bin" / "droprun").exists()
    assert dsm.ctl("status", "STATUS").returncode == 3

    # a bad config: start fails, says so, and the log has the agent's reason
    config.write_text('share = "/nonexistent/share"\nbogus = 1\n')
    log.write_bytes(b"old\n" * (10 * 1024 * 1024 // 4 + 1))  # over 10 MiB: rotated at start
    dsm.chown()
    assert dsm.ctl("start", "START").returncode == 1
    assert log.with_name("droprun.log.1").read_bytes().startswith(b"old\n")
    assert not log.read_bytes().startswith(b"old\n")
    assert dsm.ctl("status", "STATUS").returncode == 3
    assert "bogus" in log.read_text()
    assert "did not start" in (dsm.root / "tmp" / "messages").read_text()
    config.write_text(text)

    # start: the ssh key appears, status says running, a second start is harmless
    assert dsm.ctl("start", "START").returncode == 0, log.read_text()
    assert dsm.ctl("status", "STATUS").returncode == 0
    assert dsm.ctl("start", "START").returncode == 0
    key = dsm.var / "ssh" / "id_ed25519"
    public = key.with_suffix(".pub").read_text()
    assert public.startswith("ssh-ed25519 ") and public.strip() in log.read_text()
    assert dsm.ctl("log", "STATUS").stdout.strip() == str(log)

    # the agent serves a request dropped on the share (local host: the NAS itself)
    project = drop_request(dsm.share, "proj", "#!/bin/sh\necho hello from the nas\n")
    dsm.chown()
    info = poll_state(project / "results" / "run_0" / "run.info", TERMINAL)
    assert info["state"] == "succeeded", info
    assert "hello from the nas" in (project / "results" / "run_0" / "log.log").read_text()

    # stop: the agent is gone, the pid file too
    pid = dsm.pid()
    assert dsm.ctl("stop", "STOP").returncode == 0
    assert dsm.ctl("status", "STATUS").returncode == 3
    assert not (dsm.var / "droprun.pid").exists()
    cmdline = Path(f"/proc/{pid}/cmdline")
    assert not cmdline.exists() or cmdline.read_bytes() == b""  # gone (or a zombie)

    # the Task Scheduler way: droprun agent --once as the package user
    drop_request(dsm.share, "proj", "#!/bin/sh\necho once\n")
    dsm.chown()
    once = dsm.run_as([str(dsm.target / "env" / "bin" / "droprun"), "agent", "--once",
                       "--config", str(config)])  # fmt: skip
    assert once.returncode == 0, once.stderr
    info = tomllib.loads((project / "results" / "run_1" / "run.info").read_text())
    assert info["state"] == "succeeded", info

    # the admin edits the config; an upgrade to a new build keeps it byte for byte
    config.write_text(text + "\n# edited by the admin\n")
    edited = config.read_text()
    spk_v2 = build(dist, "--build-number", "2")
    dsm.upgrade(spk_v2)
    assert dsm.version == f"{VERSION}-2"
    assert config.read_text() == edited
    assert key.with_suffix(".pub").read_text() == public
    assert dsm.ctl("start", "START").returncode == 0, log.read_text()
    assert dsm.ctl("status", "STATUS").returncode == 0
    assert dsm.ctl("stop", "STOP").returncode == 0
