"""Build droprun's Synology DSM 7 package: ``dist/droprun-<version>-<arch>.spk``.

An SPK is an uncompressed tar of ``INFO``, ``package.tgz``, ``scripts/``, ``conf/`` and two
icons, built here with the standard library and pip, without Synology's toolchain.
``package.tgz`` carries droprun's own wheel and the wheels of all its dependencies for the
NAS's CPU, so the NAS installs without network. Downloaded wheels are kept in a cache
(``--wheel-cache``); ``--reuse-wheels`` builds offline when the cache already has them.
"""

from __future__ import annotations

import argparse
import gzip
import hashlib
import io
import os
import re
import shutil
import subprocess
import sys
import tarfile
import tempfile
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from spk import (  # this file runs as a script, next to spk.py
    ARCHES,
    PACKAGE_NAME,
    Arch,
    build_requirements,
    make_download_argv,
    make_fetch_argv,
    make_info,
    make_info_fields,
    make_png,
    make_wheel_argv,
    project_metadata,
    render_template,
    spk_version,
    tar_info,
)

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
DEFAULT_CACHE = Path.home() / ".cache" / "droprun-wheels"
SCRIPTS = ("common", "preinst", "postinst", "preuninst", "postuninst", "preupgrade",
           "postupgrade", "start-stop-status")  # fmt: skip
CONFS = ("privilege", "resource")


@dataclass(frozen=True)
class Options:
    """What to build: arches, output dir, wheel cache, DSM build number, share to request."""

    arches: tuple[str, ...]
    out_dir: Path
    cache: Path
    reuse_wheels: bool = False
    build_number: int = 1
    share_name: str = "droprun"
    python: str = sys.executable


def _run(argv: Sequence[str]) -> None:
    """Run ``argv`` with its output on stderr; raise CalledProcessError if it fails."""
    print("+", " ".join(argv), file=sys.stderr, flush=True)
    subprocess.run(argv, check=True, stdout=sys.stderr)


def _works(argv: Sequence[str]) -> bool:
    """Return True if ``argv`` succeeds; used only to ask whether the cache is complete."""
    return subprocess.run(argv, capture_output=True).returncode == 0


def _fill_cache(offline_probe: Sequence[str], online: Sequence[str], reuse: bool) -> None:
    """Download into the cache, unless ``reuse`` and the offline probe shows it is complete."""
    if not (reuse and _works(offline_probe)):
        _run(online)


def build_self_wheel(opts: Options, work: Path, pyproject_text: str) -> Path:
    """Build droprun's wheel from a snapshot of the repo; return its path."""
    backend = opts.cache / "build"
    backend.mkdir(parents=True, exist_ok=True)
    reqs = build_requirements(pyproject_text)
    _fill_cache(
        make_fetch_argv(opts.python, work / "probe", reqs, [backend]),
        make_fetch_argv(opts.python, backend, reqs),
        opts.reuse_wheels,
    )
    # build from a copy so that nothing is written into the shared working tree
    source = work / "src"
    shutil.copytree(REPO, source, ignore=shutil.ignore_patterns(
        ".*", "dist", "build", "__pycache__", "tests", "synology", "bench"))  # fmt: skip
    dest = work / "self"
    _run(make_wheel_argv(opts.python, source, dest, backend))
    wheels = sorted(dest.glob(f"{PACKAGE_NAME}-*.whl"))
    if len(wheels) != 1:
        raise RuntimeError(f"expected one droprun wheel in {dest}, found {wheels}")
    return wheels[0]


def collect_wheels(
    opts: Options, arch: Arch, self_wheel: Path, deps: Sequence[str], dest: Path
) -> list[Path]:
    """Put droprun's wheel and every dependency wheel for ``arch`` into ``dest``; list them."""
    cache = opts.cache / arch.name
    cache.mkdir(parents=True, exist_ok=True)
    # Only dependencies go into the cache: droprun's own wheel is always the fresh one.
    _fill_cache(
        make_download_argv(opts.python, arch, dest.parent / f"probe-{arch.name}", deps, [cache]),
        make_download_argv(opts.python, arch, cache, deps),
        opts.reuse_wheels,
    )
    for stale in cache.glob(f"{PACKAGE_NAME}-*.whl"):
        stale.unlink()  # left by older builds; must never shadow the fresh wheel
    version = self_wheel.name.split("-")[1]
    # resolve once more from local files only: copies exactly the needed set
    _run(
        make_download_argv(
            opts.python, arch, dest, [f"{PACKAGE_NAME}=={version}"], [self_wheel.parent, cache]
        )
    )
    return sorted(dest.glob("*.whl"))


def make_package_tgz(wheels: Sequence[Path], helpers: Sequence[Path], mtime: int) -> bytes:
    """Return package.tgz: ``wheels/`` and ``share/`` (the config helper), gzip, root-owned."""
    raw = io.BytesIO()
    with tarfile.open(fileobj=raw, mode="w", format=tarfile.GNU_FORMAT) as tar:
        for folder, files in (("wheels", wheels), ("share", helpers)):
            tar.addfile(tar_info(folder, 0, 0o755, mtime, is_dir=True))
            for path in files:
                data = path.read_bytes()
                info = tar_info(f"{folder}/{path.name}", len(data), 0o644, mtime)
                tar.addfile(info, io.BytesIO(data))
    out = io.BytesIO()
    with gzip.GzipFile(fileobj=out, mode="wb", mtime=mtime) as gz:
        gz.write(raw.getvalue())
    return out.getvalue()


def write_spk(path: Path, files: Mapping[str, tuple[bytes, int]], mtime: int) -> None:
    """Write the uncompressed SPK tar atomically; ``files`` maps names to (content, mode)."""
    tmp = path.with_name(path.name + ".tmp")
    with tarfile.open(tmp, mode="w", format=tarfile.GNU_FORMAT) as tar:
        folders: set[str] = set()
        for name, (data, mode) in files.items():
            folder = name.rpartition("/")[0]
            if folder and folder not in folders:
                tar.addfile(tar_info(folder, 0, 0o755, mtime, is_dir=True))
                folders.add(folder)
            tar.addfile(tar_info(name, len(data), mode, mtime), io.BytesIO(data))
    tmp.replace(path)


def build(opts: Options) -> list[Path]:
    """Build one SPK per arch in ``opts``; return their paths.

    Raises CalledProcessError if pip fails (e.g. no network and an incomplete cache).
    """
    pyproject_text = (REPO / "pyproject.toml").read_text()
    py_version, description, deps = project_metadata(pyproject_text)
    version = spk_version(py_version, opts.build_number)
    mtime = int(os.environ.get("SOURCE_DATE_EPOCH", time.time()))

    def rendered(folder: str, name: str, mode: int) -> tuple[str, tuple[bytes, int]]:
        text = render_template((HERE / folder / name).read_text(), opts.share_name)
        return f"{folder}/{name}", (text.encode(), mode)

    fixed = dict(
        [rendered("scripts", n, 0o755) for n in SCRIPTS]
        + [rendered("conf", n, 0o644) for n in CONFS]
        + [("PACKAGE_ICON.PNG", (make_png(64), 0o644)),
           ("PACKAGE_ICON_256.PNG", (make_png(256), 0o644))]
    )  # fmt: skip
    helpers = sorted((HERE / "package" / "share").glob("*.py"))
    opts.out_dir.mkdir(parents=True, exist_ok=True)
    built = []
    with tempfile.TemporaryDirectory(prefix="spkbuild-") as tmp:
        work = Path(tmp)
        self_wheel = build_self_wheel(opts, work, pyproject_text)
        for arch in (ARCHES[name] for name in opts.arches):
            wheels = collect_wheels(opts, arch, self_wheel, deps, work / f"wheels-{arch.name}")
            package_tgz = make_package_tgz(wheels, helpers, mtime)
            checksum = hashlib.md5(package_tgz).hexdigest()
            info = make_info(make_info_fields(version, description, arch, checksum))
            files = {"INFO": (info.encode(), 0o644), "package.tgz": (package_tgz, 0o644)}
            path = opts.out_dir / f"{PACKAGE_NAME}-{version}-{arch.name}.spk"
            write_spk(path, {**files, **fixed}, mtime)
            built.append(path)
    return built


def parse_args(argv: Sequence[str]) -> Options:
    """Return the build options from the command line (argparse exits 2 on usage errors)."""
    p = argparse.ArgumentParser(prog="synology/build", description=__doc__.split("\n")[0])
    p.add_argument(
        "--arch",
        action="append",
        choices=sorted(ARCHES),
        help="CPU family to build for; repeatable (default: all)",
    )
    p.add_argument(
        "--out", type=Path, default=REPO / "dist", help="where the .spk files go (default: dist/)"
    )
    p.add_argument(
        "--wheel-cache",
        type=Path,
        default=DEFAULT_CACHE,
        help=f"where downloaded wheels are kept (default: {DEFAULT_CACHE})",
    )
    p.add_argument(
        "--reuse-wheels",
        action="store_true",
        help="build offline from the cache when it has every wheel needed; "
        "download only if something is missing",
    )
    p.add_argument(
        "--build-number",
        type=int,
        default=1,
        help="DSM build number, after the '-' in the version (default: 1)",
    )
    p.add_argument(
        "--share",
        default="droprun",
        help="shared folder DSM creates and grants the package (default: droprun)",
    )
    a = p.parse_args(argv)  # fmt: skip
    if a.build_number < 0:
        p.error("--build-number must be >= 0")
    if not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]*", a.share):
        p.error("--share must be a plain shared folder name (letters, digits, _ . -)")
    return Options(
        arches=tuple(dict.fromkeys(a.arch or sorted(ARCHES))),
        out_dir=a.out,
        cache=a.wheel_cache,
        reuse_wheels=a.reuse_wheels,
        build_number=a.build_number,
        share_name=a.share,
    )


def main(argv: Sequence[str] | None = None) -> int:
    """Build the packages and print their paths; return 0, or 1 if pip failed."""
    opts = parse_args(sys.argv[1:] if argv is None else argv)
    try:
        paths = build(opts)
    except subprocess.CalledProcessError as exc:
        print(f"build failed: {' '.join(exc.cmd)} exited {exc.returncode}", file=sys.stderr)
        return 1
    for path in paths:
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(main())
