"""The status pages, made by a real agent from real runs, opened in headless Chromium."""

from __future__ import annotations

import os

import pytest
from browser import dump_dom, parse, png_colours, screenshot

from agent import runinfo
from agent.html import RELOAD_SECONDS

from shares import drop, make_project, run_once, write_config

ROWS = 7
METRICS = f"""#!/bin/sh
mkdir -p output
echo step,loss,accuracy > output/metrics.csv
i=0
while [ $i -lt {ROWS} ]; do
  i=$((i+1)); echo "$i,0.$((9-i)),0.$i" >> output/metrics.csv; echo "step $i loss 0.$((9-i))"
done
exit ${{EXIT_CODE:-0}}
"""
HOSTILE = """#!/bin/sh
echo 'epoch 1/2  loss 0.5'
echo '<script>document.title="pwned"</script>'
echo '<img src=x onerror="document.title=1">'
echo 'epoch 2/2  loss=0.25'
"""


@pytest.fixture(scope="module")
def share(tmp_path_factory):
    """A share where a real agent ran: succeeded, failed and timed-out runs, a log with
    markup in it, and a rejected request."""
    root = tmp_path_factory.mktemp("pages")
    config = write_config(root, slots=2)
    share = root / "share"
    vision = make_project(share, "vision", {"run.sh": METRICS}, 'client = "acme"\n')
    drop(vision, 'name = "good"\n', "a.request")
    drop(vision, 'name = "bad"\nenv = { EXIT_CODE = "3" }\n', "b.request")
    drop(vision, 'name = "worse"\nenv = { EXIT_CODE = "1" }\n', "c.request.txt")
    drop(vision, 'nmae = "typo"\n', "d.request")
    hostile = make_project(share, "h<b>tml", {"run.sh": HOSTILE})
    drop(hostile, 'name = "<i>markup</i>"\n')
    slow = make_project(share, "slow", {"run.sh": "#!/bin/sh\necho waiting\nsleep 60\n"})
    drop(slow, "timeout = 1\n")
    run_once(config)
    return share


def states(share):
    """Return {(project, run): state} from the run.info files."""
    return {
        (p.parent.parent.parent.name, p.parent.name): runinfo.load(p).state
        for p in share.glob("*/results/run_*/run.info")
    }


def test_every_run_appears_with_its_state(share):
    expected = states(share)
    assert sorted(expected.values()) == ["failed", "failed", "succeeded", "succeeded", "timed_out"]
    page = parse(dump_dom(share / "droprun.html"))
    shown = {(r.cells[0], r.cells[1]): r.cells[4] for r in page.rows}
    assert shown == expected
    assert not any(r.hidden for r in page.rows)
    project = parse(dump_dom(share / "vision" / "results" / "index.html"))
    assert len(project.rows) == 3 and {r.cells[3] for r in project.rows} == {"acme"}
    # The rejected request is listed with its reason, so a person sees why nothing started.
    assert any("d.request" in text and "nmae" in text for text in page.pre)


def test_the_fragment_filters_the_table(share):
    page = parse(dump_dom(share / "droprun.html", "#q=failed"))
    visible = [r.cells[4] for r in page.rows if not r.hidden]
    assert visible == ["failed", "failed"]
    assert len(page.rows) == 5  # the others are hidden, not gone


def test_the_table_is_complete_without_javascript(share):
    text = (share / "droprun.html").read_text()
    page = parse(text)
    assert len(page.rows) == 5 and not any(r.hidden for r in page.rows)
    assert "http://" not in text and "https://" not in text and "src=" not in text
    # Nothing is active any more: the page no longer reloads itself.
    assert 'http-equiv="refresh"' not in text


def test_a_screenshot_is_not_blank(share, tmp_path):
    png = screenshot(share / "droprun.html", tmp_path / "page.png", "800,600")
    assert png_colours(png) > 8  # text, links, coloured state badges


def test_markup_in_a_log_shows_as_text_and_never_runs(share):
    run_page = share / "h<b>tml" / "results" / "run_0" / "index.html"
    page = parse(dump_dom(run_page))
    assert page.scripts == 1  # droprun's own
    assert page.title == "droprun: h<b>tml/run_0"
    assert any('<script>document.title="pwned"</script>' in text for text in page.pre)
    # The curve came from the log: two points.
    assert page.polylines == {"loss": 2}
    root = parse(dump_dom(share / "droprun.html"))
    assert any(r.cells[2] == "<i>markup</i>" for r in root.rows)


def test_the_chart_has_one_point_per_metrics_row(share):
    page = parse(dump_dom(share / "vision" / "results" / "run_0" / "index.html"))
    assert page.polylines == {"loss": ROWS, "accuracy": ROWS}


def test_pages_reload_only_while_something_is_active(tmp_path):
    from agent.index import RunSummary, ShareIndex
    from agent.pages import project_page, root_page, run_page

    index = ShareIndex(tmp_path)
    run_dir = tmp_path / "p" / "results" / "run_0"
    running = RunSummary("p", 0, run_dir, state="running", start_epoch=1)
    index.projects = {"p": {0: running}}
    refresh = f'<meta http-equiv="refresh" content="{RELOAD_SECONDS}">'
    assert refresh in root_page(index, 100) and refresh in project_page(index, "p", 100)
    assert refresh in run_page(running, 100)
    ended = RunSummary("p", 0, run_dir, state="failed", start_epoch=1, duration_s=5)
    index.projects = {"p": {0: ended}}
    assert refresh not in root_page(index, 100) + project_page(index, "p", 100)
    assert refresh not in run_page(ended, 100)


def test_a_state_change_rewrites_only_the_pages_it_touches(share):
    import logging

    from agent.agentfile import load_agent_config
    from agent.context import RunContext
    from agent.publish import Publisher

    config = load_agent_config(share.parent / "droprun.toml")
    publisher = Publisher(RunContext(config=config, hosts={}, log=logging.getLogger("t")))
    publisher.load()
    publisher.write_pages()  # nothing changed since the agent wrote them

    def inodes():
        return {p: os.stat(p).st_ino for p in [*share.rglob("index.html"), share / "droprun.html"]}

    before = inodes()
    run_dir = share / "vision" / "results" / "run_1"
    info = runinfo.load(run_dir / "run.info")
    info.name = "renamed"
    runinfo.save(run_dir / "run.info", info)
    publisher.note(run_dir)
    publisher.write_pages()
    changed = {p.relative_to(share) for p, ino in inodes().items() if before[p] != ino}
    assert changed == {
        run_dir.relative_to(share) / "index.html",
        share.joinpath("vision/results/index.html").relative_to(share),
        share.joinpath("droprun.html").relative_to(share),
    }


def test_new_projects_and_removed_rejections_are_followed(tmp_path):
    import logging

    from agent.agentfile import load_agent_config
    from agent.context import RunContext
    from agent.publish import Publisher

    config = load_agent_config(write_config(tmp_path))
    publisher = Publisher(RunContext(config=config, hosts={}, log=logging.getLogger("t")))
    publisher.load()
    publisher.write_pages()
    project = make_project(config.share, "later", {"run.sh": ""})
    (project / "x.request.error").write_text("droprun could not accept it: no such key")
    publisher.rescan()
    publisher.write_pages()
    page = (config.share / "droprun.html").read_text()
    assert "<td>later</td>" in page and "no such key" in page  # no runs, no page yet
    (project / "x.request.error").unlink()
    publisher.rescan()
    publisher.write_pages()
    assert "no such key" not in (config.share / "droprun.html").read_text()


def test_a_page_from_the_saved_data_is_the_page_from_the_file(share):
    """The publisher takes a run.info as its driver saved it instead of reading it back:
    the summary and the page are the same as from the file, for every run on the share."""
    from agent.index import read_summary, summary_of
    from agent.pages import run_page

    runs = sorted(share.glob("*/results/run_*"))
    assert len(runs) >= 4
    for run_dir in runs:
        data = runinfo.load(run_dir / "run.info").to_data()
        project, number = run_dir.parent.parent.name, int(run_dir.name.removeprefix("run_"))
        from_file = read_summary(run_dir, project, number)
        assert summary_of(run_dir, data) == from_file
        assert run_page(from_file, 1e9, data) == run_page(from_file, 1e9)
