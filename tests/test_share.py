"""Accepting and rejecting requests on a real folder tree."""

from __future__ import annotations

import os

import pytest

from agent import names, runinfo, share
from agent.agentfile import load_agent_config
from agent.problems import InvalidFile
from agent.settings import MAX_REQUEST_BYTES

from shares import drop, make_project, write_config


@pytest.fixture
def config(tmp_path):
    return load_agent_config(write_config(tmp_path))


def test_junk_is_ignored():
    for name in (
        "._run.request",
        ".DS_Store",
        "Thumbs.db",
        "desktop.ini",
        "@eaDir",
        "~$x.request",
        "run.request~",
        ".run.request.swp",
        "#recycle",
    ):
        assert names.is_junk(name), name
    assert not names.is_junk("run.request")


def test_find_requests_skips_junk_and_hidden(config):
    project = make_project(config.share, "p", {"run.sh": ""})
    for name in ("run.request", "._run.request", "x.request.rejected", ".hidden.request"):
        (project / name).write_text("")
    (config.share / "@eaDir").mkdir()
    (config.share / "@eaDir" / "y.request").write_text("")
    found = [p.name for p in share.find_requests(config.share)]
    assert found == ["run.request"]


def test_run_numbers_are_never_reused(config):
    project = make_project(config.share, "p", {"run.sh": ""})
    numbers = [share.claim_run_dir(project)[0] for _ in range(3)]
    assert numbers == [0, 1, 2]
    (project / "results" / "run_2").rmdir()  # a person deletes the newest run
    assert share.claim_run_dir(project)[0] == 3


def test_accept_moves_the_request_verbatim(config):
    project = make_project(config.share, "p", {"run.sh": ""})
    text = '# my run\nname = "x"  # keep this comment\n'
    request = drop(project, text)
    result = share.accept(request, config)
    assert isinstance(result, share.Accepted)
    assert (result.run_dir / "run.request").read_text() == text
    info = runinfo.load(result.run_dir / "run.info")
    assert info.state == runinfo.ACCEPTED and info.name == "x"
    assert info.request_sha256 and len(info.request_sha256) == 64
    assert info.submitted_by


def reject_text(result) -> str:
    assert isinstance(result, share.Rejected)
    return result.error_file.read_text()


def test_rejected_request_is_kept_with_its_reasons(config):
    project = make_project(config.share, "p", {"run.sh": ""})
    text = 'timout = "1h"\nargs = "x"\nhost = "nowhere"\n'
    result = share.accept(drop(project, text), config)
    error = reject_text(result)
    assert result.rejected.read_text() == text
    assert not (project / "run.request").exists()
    assert "run.request:1" in error and "timeout" in error  # did you mean
    assert "run.request:2" in error and "args" in error
    assert "run.request:3" in error and "nowhere" in error
    assert not (project / "results").exists()


def test_a_second_rejection_never_overwrites_the_first(config):
    project = make_project(config.share, "p", {"run.sh": ""})
    first = share.accept(drop(project, "bad = 1\n"), config)
    second = share.accept(drop(project, "worse = 2\n"), config)
    assert first.rejected.read_text() == "bad = 1\n"
    assert second.rejected.read_text() == "worse = 2\n"
    assert first.error_file != second.error_file


def test_project_without_bin_is_rejected(config):
    folder = config.share / "nobin"
    folder.mkdir()
    error = reject_text(share.accept(drop(folder, ""), config))
    assert "bin/" in error


def test_bin_linking_outside_the_share_is_rejected(config, tmp_path):
    outside = tmp_path / "outside"
    outside.mkdir()
    folder = config.share / "evil"
    folder.mkdir()
    os.symlink(outside, folder / "bin")
    error = reject_text(share.accept(drop(folder, ""), config))
    assert "outside the share" in error


def test_symlinked_request_is_rejected_not_followed(config, tmp_path):
    project = make_project(config.share, "p", {"run.sh": ""})
    secret = tmp_path / "secret"
    secret.write_text("timeout = 1\n")
    os.symlink(secret, project / "run.request")
    error = reject_text(share.accept(project / "run.request", config))
    assert "not a regular file" in error
    assert secret.read_text() == "timeout = 1\n"


def test_huge_request_is_rejected_without_reading_it_all(config):
    project = make_project(config.share, "p", {"run.sh": ""})
    request = project / "run.request"
    with open(request, "wb") as f:
        f.write(b"# " + b"x" * (MAX_REQUEST_BYTES * 4) + b"\n")
    error = reject_text(share.accept(request, config))
    assert "at most 65536" in error


def test_not_utf8_is_rejected(config):
    project = make_project(config.share, "p", {"run.sh": ""})
    (project / "run.request").write_bytes(b'name = "\xff\xfe"\n')
    error = reject_text(share.accept(project / "run.request", config))
    assert "UTF-8" in error


def test_broken_project_toml_rejects_the_request_and_names_it(config):
    project = make_project(config.share, "p", {"run.sh": ""}, project_toml="timeout = \n")
    error = reject_text(share.accept(drop(project, ""), config))
    assert "project.toml" in error


# -- the request swapped for a link, FIFO or folder after accept()'s lstat ----------------


def _read_in_thread(path):
    """Return what read_request(path) returned or raised; fail if it blocks."""
    import threading

    result = []

    def read():
        try:
            result.append(share.read_request(path))
        except Exception as exc:  # handed to the test, which checks it
            result.append(exc)

    worker = threading.Thread(target=read, daemon=True)
    worker.start()
    worker.join(60)  # generous: the fixed code returns at once; the old one never did
    assert not worker.is_alive(), f"read_request({path.name}) blocked"
    return result[0]


def test_read_request_refuses_a_fifo_without_blocking(tmp_path):
    fifo = tmp_path / "run.request"
    os.mkfifo(fifo)
    outcome = _read_in_thread(fifo)
    assert isinstance(outcome, InvalidFile)
    assert "run.request: is a FIFO, not a regular file" in str(outcome)


def test_read_request_refuses_a_link_and_never_reads_its_target(tmp_path):
    secret = tmp_path / "secret"
    secret.write_text('name = "agent secret"\n')
    link = tmp_path / "run.request"
    link.symlink_to(secret)
    outcome = _read_in_thread(link)
    assert isinstance(outcome, InvalidFile)
    assert "is a link" in str(outcome) and "agent secret" not in str(outcome)
    (tmp_path / "dev.request").symlink_to("/dev/zero")  # would never end if followed
    assert "is a link" in str(_read_in_thread(tmp_path / "dev.request"))


def test_read_request_refuses_a_folder(tmp_path):
    (tmp_path / "run.request").mkdir()
    assert "is a folder" in str(_read_in_thread(tmp_path / "run.request"))


def test_read_request_reads_a_plain_file_up_to_the_limit_plus_one(tmp_path):
    small = tmp_path / "small.request"
    small.write_text('name = "x"\n')
    assert _read_in_thread(small) == b'name = "x"\n'
    huge = tmp_path / "huge.request"
    huge.write_bytes(b"x" * (MAX_REQUEST_BYTES * 3))
    assert _read_in_thread(huge) == b"x" * (MAX_REQUEST_BYTES + 1)
    with pytest.raises(FileNotFoundError):
        share.read_request(tmp_path / "gone.request")


def test_fifo_request_is_rejected_and_kept(config):
    project = make_project(config.share, "p", {"run.sh": ""})
    os.mkfifo(project / "run.request")
    result = share.accept(project / "run.request", config)
    assert "not a regular file" in reject_text(result)
    assert result.rejected.is_fifo() and not (project / "results").exists()


def test_requests_as_people_save_them_are_named_in_one_place():
    assert names.request_kind("run.request") == "plain"
    assert names.request_kind("run.request.txt") == "plain"  # Windows hid the .txt
    assert names.request_kind("Run.Request.TXT") == "plain"
    for rich in ("run.request.rtf", "run.request.docx", "run.request.pages", "a.REQUEST.RTF"):
        assert names.request_kind(rich) == "rich", rich
    for other in ("run.request.rejected", "run.request.error", "run.txt", "._run.request.txt"):
        assert names.request_kind(other) is None, other
    assert names.is_cancel_name("cancel") and names.is_cancel_name("cancel.txt")
    assert not names.is_project_name("_droprun")


def test_a_request_saved_as_txt_is_taken_and_rich_text_is_answered(config):
    project = make_project(config.share, "p", {"run.sh": ""})
    (config.share / "_droprun" / "bin").mkdir(parents=True)  # reserved: never a project
    (config.share / "_droprun" / "run.request").write_text("")
    drop(project, 'name = "from windows"\n', "run.request.txt")
    drop(project, "{\\rtf1\\ansi name = 1}", "run.request.rtf")
    found = share.find_requests(config.share)
    assert sorted(p.name for p in found) == ["run.request.rtf", "run.request.txt"]
    accepted = share.accept(project / "run.request.txt", config)
    assert isinstance(accepted, share.Accepted) and accepted.info.name == "from windows"
    assert (accepted.run_dir / "run.request").read_text() == 'name = "from windows"\n'
    error = reject_text(share.accept(project / "run.request.rtf", config))
    assert "rich-text" in error and "plain text" in error
    assert 'save it again as "run.request"' in error
    assert (project / "run.request.rtf.rejected").read_text() == "{\\rtf1\\ansi name = 1}"
    assert (project / "run.request.rtf.error").exists()
