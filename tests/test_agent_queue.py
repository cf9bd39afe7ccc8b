"""Per-host queues with a real agent process: slots, FIFO, no run lost, no run stops others."""

from __future__ import annotations

from pathlib import Path

from agent import runinfo

from shares import AgentProcess, info, make_project, wait_for, wait_state, write_config

# Records its start and end under a lock, and the most that ever ran at once.
COUNTED = """#!/bin/sh
LOG="$RECORD"
exec 9>>"$LOG.lock"
flock 9
now=$(cat "$LOG.now" 2>/dev/null || echo 0)
now=$((now + 1))
echo $now > "$LOG.now"
echo "start $PROJECT $* $now" >> "$LOG"
flock -u 9
sleep 0.2
flock 9
now=$(cat "$LOG.now")
echo $((now - 1)) > "$LOG.now"
echo "end $PROJECT $*" >> "$LOG"
flock -u 9
"""


def test_fifty_requests_on_two_slots_all_run_numbered_without_gaps_two_at_a_time(tmp_path):
    config = write_config(tmp_path, slots=2, extra="rescan = 3600")
    share = tmp_path / "share"
    record = tmp_path / "record"
    projects = [make_project(share, f"proj{i}", {"run.sh": COUNTED}) for i in range(5)]
    proc = AgentProcess(config, tmp_path / "agent.log")
    wait_for("the agent", lambda: (share / ".droprun" / "agent.lock").exists())
    for n in range(10):
        for project in projects:
            env = f'env = {{ RECORD = "{record}", PROJECT = "{project.name}" }}\n'
            (project / f"r{n:02d}.request").write_text(f'args = ["{n}"]\n{env}')
    for project in projects:
        for run in range(10):
            wait_state(project, run, runinfo.SUCCEEDED)
    proc.stop()

    lines = record.read_text().splitlines()
    starts = [line.split() for line in lines if line.startswith("start")]
    assert len(starts) == 50
    assert max(int(s[3]) for s in starts) == 2  # never more than two at once, and two used
    for project in projects:
        runs = sorted(int(p.name.removeprefix("run_")) for p in (project / "results").glob("run_*"))
        assert runs == list(range(10))
        args = sorted(info(project, run).effective["args"][0] for run in runs)
        assert args == [str(n) for n in range(10)]  # each request exactly once
        assert not list(project.glob("*.request*"))


def test_a_bad_request_and_a_failing_run_do_not_stop_the_agent(tmp_path):
    config = write_config(tmp_path, extra="rescan = 3600")
    share = tmp_path / "share"
    good = make_project(share, "good", {"run.sh": "#!/bin/sh\necho fine\n"})
    bad = make_project(share, "bad", {"run.sh": "#!/bin/sh\nexit 3\n"})
    proc = AgentProcess(config, tmp_path / "agent.log")
    (bad / "a.request").write_text("timeout = [not toml\n")
    (bad / "b.request").write_text('host = "nowhere"\n')
    wait_for("the rejection", lambda: (bad / "b.request.error").exists())
    (bad / "run.request").write_text("")
    wait_state(bad, 0, runinfo.FAILED)
    # A run whose run.info got corrupted on the share: its driver fails, the agent goes on.
    broken = bad / "results" / "run_7"
    broken.mkdir()
    (broken / "run.info").write_text("format = 1\nproject = 'bad'\nrun = 7\nstate = 'queued'\n")
    (good / "run.request").write_text("")
    wait_state(good, 0, runinfo.SUCCEEDED)
    assert (bad / "a.request.rejected").exists() and (bad / "b.request.rejected").exists()
    assert info(bad).exit_code == 3
    assert proc.proc.poll() is None
    proc.stop()
    # At the next start the broken run is resumed, fails inside the agent, and is recorded.
    proc = AgentProcess(config, tmp_path / "agent.log")
    wait_state(bad, 7, runinfo.ERROR)
    (good / "again.request").write_text("")
    wait_state(good, 1, runinfo.SUCCEEDED)
    proc.stop()


def first_accepted_first_served(record: Path) -> list[str]:
    return [line.split()[2] for line in record.read_text().splitlines() if "start" in line]


def test_queued_runs_start_in_the_order_they_were_accepted(tmp_path):
    config = write_config(tmp_path, extra="rescan = 3600")
    share = tmp_path / "share"
    record = tmp_path / "record"
    project = make_project(share, "p", {"run.sh": COUNTED})
    proc = AgentProcess(config, tmp_path / "agent.log")
    env = f'env = {{ RECORD = "{record}", PROJECT = "p" }}\n'
    for n in range(6):
        (project / f"r{n}.request").write_text(f'args = ["{n}"]\n{env}')
        wait_for(f"request {n} to be taken", lambda n=n: not (project / f"r{n}.request").exists())
    wait_state(project, 5, runinfo.SUCCEEDED)
    proc.stop()
    assert first_accepted_first_served(record) == [str(n) for n in range(6)]
