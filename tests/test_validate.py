"""Bad settings files: every problem named with file, line and key; the corpus in tests/data."""

from __future__ import annotations

import dataclasses
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from agent.agentfile import load_agent_config, validate_paths
from agent.problems import InvalidFile, Problem
from agent.settings import (
    MAX_PROBLEMS,
    MAX_REQUEST_BYTES,
    parse_request,
    read_project_layer,
)
from agent.tomlsrc import parse_text, scan_keys

DATA = Path(__file__).parent / "data"
HOSTS = frozenset({"local", "gpu1"})
CORPUS = sorted(p for p in DATA.glob("*/*") if p.suffix in (".request", ".toml"))


def problems_of(path: Path) -> list[Problem]:
    """Check one corpus file by its folder; return its problems (none: an empty list)."""
    try:
        if path.parent.name == "requests":
            parse_request(path.read_bytes(), path.name, HOSTS)
        elif path.parent.name == "projects":
            read_project_layer(path, HOSTS)
        else:
            load_agent_config(path)
    except InvalidFile as exc:
        return exc.problems
    return []


def test_the_corpus_is_big_enough():
    assert len(CORPUS) >= 40
    assert {p.parent.name for p in CORPUS} == {"requests", "projects", "agents"}


@pytest.mark.parametrize("path", CORPUS, ids=lambda p: f"{p.parent.name}/{p.name}")
def test_corpus(path):
    expected = path.with_suffix(".expected").read_text().splitlines()
    found = [
        str(dataclasses.replace(p, file=Path(p.file).name)).replace(str(path.parent), "{dir}")
        for p in problems_of(path)
    ]
    assert len(found) == len(expected), "\n".join(found)
    for fragment, line in zip(expected, found, strict=True):
        assert fragment in line
    for problem in problems_of(path):
        assert Path(problem.file).name == path.name


def request_problems(text: str | bytes, hosts=HOSTS) -> list[Problem]:
    data = text.encode() if isinstance(text, str) else text
    with pytest.raises(InvalidFile) as info:
        parse_request(data, "run.request", hosts)
    return info.value.problems


def test_message_format_names_file_line_and_key():
    [problem] = request_problems('name = "x"\n\ntimout = "1h"\n')
    assert str(problem) == 'run.request:3: timout: unknown key (did you mean "timeout"?)'


def test_all_problems_of_a_file_are_reported_in_line_order():
    text = 'output_dir = "/abs"\nargs = "x"\ntimout = 5\nhost = "nope"\n[env]\n"A B" = "1"\n'
    problems = request_problems(text)
    assert [(p.line, p.key) for p in problems] == [
        (1, "output_dir"),
        (2, "args"),
        (3, "timout"),
        (4, "host"),
        (6, 'env."A B"'),
    ]
    assert all(p.file == "run.request" for p in problems)


def test_a_request_over_the_size_limit_is_refused_unread():
    data = b"# " + b"x" * MAX_REQUEST_BYTES + b"\n"
    [problem] = request_problems(data)
    assert problem.line is None
    assert f"at most {MAX_REQUEST_BYTES}" in problem.message


def test_not_utf8_names_the_line_of_the_bad_byte():
    [problem] = request_problems(b'name = "a"\n\nnotes = "caf\xe9"\n')
    assert problem.line == 3
    assert "UTF-8" in problem.message


def test_duplicate_keys_each_reported_with_their_line():
    problems = request_problems('timeout = "1h"\nargs = []\ntimeout = "2h"\nargs = ["x"]\n')
    assert [(p.line, p.key) for p in problems] == [(3, "timeout"), (4, "args")]
    assert "first set on line 1" in problems[0].message


def test_broken_toml_gives_the_parsers_line():
    [problem] = request_problems('name = "x"\nargs = [\n  "a",\n  "b" "c",\n]\n')
    assert problem.line == 4
    assert problem.message.startswith("not valid TOML")


def test_unknown_host_is_checked_only_when_hosts_are_known():
    assert parse_request(b'host = "gpu9"\n', "run.request", None) == {"host": "gpu9"}
    [problem] = request_problems('host = "gpu9"\n')
    assert '"gpu1", "local"' in problem.message


def test_valid_requests_are_typed():
    text = (
        '\ufeffname = "lr sweep"\r\nnotes = """two\nlines"""\r\nhost = "gpu1"\r\n'
        'timeout = "1d2h"\r\nbackup_every = 90\r\nargs = ["--lr", "3e-4; rm -rf ~", "$(x)"]\r\n'
        'env.CUDA_VISIBLE_DEVICES = "0"\r\nconda_env = "torch-2.4_py3.11"\r\n'
        'run_script = "./scripts/train.sh"\r\noutput_dir = "out/ckpt"\r\n'
    )
    layer = parse_request(text.encode(), "run.request", HOSTS)
    assert layer == {
        "name": "lr sweep",
        "notes": "two\nlines",
        "host": "gpu1",
        "timeout": 93600,
        "backup_every": 90,
        "args": ("--lr", "3e-4; rm -rf ~", "$(x)"),
        "env": {"CUDA_VISIBLE_DEVICES": "0"},
        "conda_env": "torch-2.4_py3.11",
        "run_script": "./scripts/train.sh",
        "output_dir": "out/ckpt",
    }


def test_an_empty_request_is_valid():
    assert parse_request(b"", "run.request", HOSTS) == {}
    assert parse_request(b"# just a comment\n\n", "run.request", HOSTS) == {}


def test_hostile_sizes_are_refused_with_a_message():
    many_env = "[env]\n" + "".join(f'V{i} = "x"\n' for i in range(1001))
    long_arg = 'args = ["' + "x" * 5000 + '"]\n'
    deep = "args = " + "[" * 200 + "]" * 200 + "\n"
    for text in (many_env, long_arg, deep):
        [problem] = request_problems(text)
        assert problem.line == 1 or problem.key == "env", problem


def test_scanner_maps_key_paths_to_lines():
    text = (
        'a = 1\ns = """\nb = 2\n"""\n"q.k" = "#x"\narr = [\n  "]",  # ]\n]\n'
        "[hosts.gpu1]\nport = 22\nenv.X = '1'\n[ hosts . \"gpu 2\" ]\nx = 1\n"
        "[[runs]]\nk = 1\n[[runs]]\nk = 2\n"
    )
    lines = scan_keys(text).lines
    assert lines[("a",)] == 1
    assert ("b",) not in lines
    assert lines[("q.k",)] == 5
    assert lines[("arr",)] == 6
    assert lines[("hosts", "gpu1")] == 9
    assert lines[("hosts", "gpu1", "port")] == 10
    assert lines[("hosts", "gpu1", "env", "X")] == 11
    assert lines[("hosts", "gpu 2", "x")] == 13
    assert lines[("runs", "[1]", "k")] == 17
    assert scan_keys(text).duplicates == ()
    assert parse_text(text, "f").problems == ()


def test_scanner_never_raises_on_garbage():
    for text in ('a = "unclosed\n[x', "[", "= 1", 'a = """', "[[a", "'\\", "a.=1\n[b.]\n"):
        scan_keys(text)
        assert parse_text(text, "f").problems


def write(path: Path, text: str) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)
    return path


def test_validate_paths_on_a_mix_of_files(tmp_path):
    (tmp_path / "share").mkdir()
    agent = write(tmp_path / "droprun.toml", 'share = "share"\n[hosts.gpu1]\nkind = "ssh"\n')
    good = write(tmp_path / "share/p/run.request", 'host = "gpu1"\n')
    bad_host = write(tmp_path / "share/p/other.request", 'host = "gpu2"\n')
    project = write(tmp_path / "share/p/project.toml", 'name = "x"\n')
    other = write(tmp_path / "notes.txt", "hello\n")
    template = write(tmp_path / "run.request.template", "timeout = 0\n")
    missing = tmp_path / "gone.request"
    problems = validate_paths([good, bad_host, agent, project, other, missing, template], None)
    by_file = {(Path(p.file).name, p.line, p.key) for p in problems}
    assert by_file == {
        ("other.request", 1, "host"),
        ("droprun.toml", 2, "hosts.gpu1.address"),
        ("droprun.toml", 2, "hosts.gpu1.user"),
        ("project.toml", 1, "name"),
        ("notes.txt", None, None),
        ("gone.request", None, None),
        ("run.request.template", 1, "timeout"),
    }
    # The agent file's hosts are known even though it has problems: gpu1 is fine.
    assert not any(Path(p.file).name == "run.request" for p in problems)


def test_validate_paths_uses_the_given_config_for_hosts(tmp_path):
    (tmp_path / "share").mkdir()
    agent = write(tmp_path / "droprun.toml", 'share = "share"\n')
    config = load_agent_config(agent)
    request = write(tmp_path / "run.request", 'host = "gpu1"\n')
    [problem] = validate_paths([request], config)
    assert problem.key == "host"
    assert validate_paths([request], None) == []
    assert validate_paths([agent, request], None)[0].key == "host"


def test_deep_keys_are_refused_before_parsing():
    [problem] = request_problems("x = 1\n" + "a." * 20 + "b = 1\n")
    assert (problem.line, problem.message) == (2, "keys are nested more than 10 levels deep")


def test_a_flood_of_problems_is_cut_short():
    problems = request_problems("".join(f"k{i} = 1\n" for i in range(500)))
    assert len(problems) == MAX_PROBLEMS + 1
    assert problems[-1].message == f"and {500 - MAX_PROBLEMS} more problems not shown"


TOMLISH = st.text(alphabet="ab.=[]{}\"'\n #,\\1tu:-_ ", max_size=80)


@settings(max_examples=300, deadline=None)
@given(st.one_of(TOMLISH, st.binary(max_size=80).map(lambda b: b.decode("latin-1"))))
def test_any_text_gives_a_layer_or_invalid_file(text):
    scan_keys(text)
    try:
        layer = parse_request(text.encode("utf-8", "surrogatepass"), "run.request", HOSTS)
    except InvalidFile as exc:
        assert exc.problems
        assert all(p.file == "run.request" and p.message for p in exc.problems)
    else:
        assert isinstance(layer, dict)
