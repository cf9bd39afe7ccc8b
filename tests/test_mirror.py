"""The mirror's bookkeeping on real files: nanosecond mtimes, and the staged copies that
an agent rsync comparing whole seconds could leave stale."""

from __future__ import annotations

import os
from pathlib import Path

from agent.hosts.mirror import Listing, RemoteFile, is_live, parse_listing
from agent.outputs import forget_doubtful, forget_unsettled, publish_settled, same_mtime

S = 1_000_000_000


def test_listing_mtimes_parse_to_the_nanosecond() -> None:
    out = b"1700000001.5 1\nf\0a b\0" + b"12\0" + b"1700000000.1234567890\0l\0ln\0" + b"3\0-1.5\0"
    listing = parse_listing(out)
    assert listing.alive and listing.now == 1700000001.5
    assert listing.files["a b"].mtime_ns == 1700000000 * S + 123456789
    assert listing.files["ln"].mtime_ns == -S - S // 2


def test_same_mtime_allows_a_share_that_keeps_whole_seconds() -> None:
    assert same_mtime(5 * S + 7, 5 * S + 7)
    assert not same_mtime(5 * S + 7, 5 * S + 8)
    assert same_mtime(5 * S, 5 * S + 8)  # the share's file system dropped the fraction
    assert not same_mtime(5 * S, 6 * S + 8)


def _staged(staging: Path, name: str, data: bytes, mtime_ns: int) -> Path:
    path = staging / name
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(data)
    os.utime(path, ns=(mtime_ns, mtime_ns))
    return path


def _listing(**files: tuple[int, int]) -> Listing:
    return Listing(
        0.0,
        True,
        {
            name: RemoteFile("f", size, f"{ns // S}.{ns % S:09d}0")
            for name, (size, ns) in files.items()
        },
    )


def test_doubtful_copies_are_forgotten_and_published_ones_stay(tmp_path: Path) -> None:
    staging, dest = tmp_path / "staging", tmp_path / "output"
    dest.mkdir()
    t = 1700000000 * S
    same_second = _staged(staging, "same-second.ckpt", b"old!", t + 100)
    os.link(same_second, dest / "same-second.ckpt")  # published earlier
    _staged(staging, "current.ckpt", b"data", t + 200)
    _staged(staging, "sub/grew.ckpt", b"abc", t + 300)
    _staged(staging, "other-second.ckpt", b"data", t + 400)
    remote = _listing(
        **{
            "same-second.ckpt": (4, t + 900),
            "current.ckpt": (4, t + 200),
            "sub/grew.ckpt": (5, t + 900),
            "other-second.ckpt": (4, t + S + 400),
            "new.ckpt": (4, t),
        }
    )
    assert forget_doubtful(remote, staging) == 1
    assert not (staging / "same-second.ckpt").exists()
    assert (dest / "same-second.ckpt").read_bytes() == b"old!"
    # A size or a whole second that differs is seen by any rsync; those copies stay.
    assert sorted(p.name for p in staging.rglob("*.ckpt")) == [
        "current.ckpt",
        "grew.ckpt",
        "other-second.ckpt",
    ]


def test_copies_of_files_that_changed_during_the_pull_are_forgotten(tmp_path: Path) -> None:
    staging = tmp_path / "staging"
    t = 1700000000 * S
    for name in ("steady", "changed", "appeared"):
        _staged(staging, name, b"data", t)
    before = _listing(steady=(4, t), changed=(4, t))
    after = _listing(steady=(4, t), changed=(4, t + 1), appeared=(4, t))
    assert forget_unsettled(before, after, staging) == 2
    assert sorted(p.name for p in staging.iterdir()) == ["steady"]


def test_the_listing_says_which_files_are_open_for_writing() -> None:
    out = (
        b"1.0 1\nf\0ckpt\0" + b"1\0" + b"1.0\0f\0sub/log.txt\0" + b"1\0" + b"1.0\0"
        b"d\0/srv/x/output\0-\0-\0"
        b"w\0/srv/x/output/sub/log.txt\0-\0-\0w\0/dev/null\0-\0-\0w\0/srv/x/outputs\0-\0-\0"
    )
    listing = parse_listing(out)
    assert set(listing.files) == {"ckpt", "sub/log.txt"}
    assert listing.writing == {"sub/log.txt"}


def test_live_patterns_match_the_name_or_the_whole_path() -> None:
    live = ("*.csv", "events.out.tfevents.*", "logs/*.bin")
    assert is_live("metrics.csv", live) and is_live("a/b/metrics.csv", live)
    assert is_live("tb/events.out.tfevents.1700000000.gpu1", live)
    assert is_live("logs/x.bin", live) and not is_live("other/logs/x.bin", live)
    assert not is_live("model.ckpt", live) and not is_live("metrics.csv.bak", live)


def test_a_live_file_is_published_as_copied_and_a_complete_one_in_the_same_cycle(
    tmp_path: Path,
) -> None:
    staging, dest = tmp_path / "staging", tmp_path / "output"
    t = 1700000000 * S
    _staged(staging, "metrics.csv", b"1,2\n", t)
    _staged(staging, "model.ckpt", b"weights", t)
    _staged(staging, "half.ckpt", b"wei", t)
    before = _listing(**{"metrics.csv": (4, t), "model.ckpt": (7, t), "half.ckpt": (3, t)})
    after = _listing(**{"metrics.csv": (8, t + 5), "model.ckpt": (7, t), "half.ckpt": (3, t)})
    after = Listing(1.0, True, after.files, frozenset({"half.ckpt"}))
    published, pending = publish_settled(before, after, staging, dest, ("*.csv",))
    assert (published, pending) == (2, 2)
    assert (dest / "metrics.csv").read_bytes() == b"1,2\n"
    assert (dest / "model.ckpt").read_bytes() == b"weights"
    assert not (dest / "half.ckpt").exists()  # open for writing: a writer that pauses
    # Once the run has ended, nobody writes: the same file is complete.
    ended = Listing(2.0, False, after.files, after.writing)
    assert publish_settled(after, ended, staging, dest, ("*.csv",)) == (1, 1)
    assert (dest / "half.ckpt").read_bytes() == b"wei"
