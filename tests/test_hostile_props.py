"""Property tests: hostile strings never crash the parsers and never reach a command unquoted.

Every builder of a command line is checked against the real consumer of that line: the
launcher is run by sh and bash, remote commands by sh, rsync's ``-e`` by rsync itself,
ssh options by ``ssh -G``.
"""

from __future__ import annotations

import os
import shlex
import shutil
import subprocess
import tempfile
from pathlib import Path

import pytest
import tomlkit
from hypothesis import HealthCheck, assume, example, given, settings
from hypothesis import strategies as st

from agent.durations import format_duration, parse_duration
from agent.hosts.base import LaunchSpec
from agent.hosts.kinds.ssh import SshConfig
from agent.hosts.launcher import make_launcher
from agent.hosts.sshargs import make_remote_command, make_rsync_target, make_ssh_argv
from agent.hosts.sync import make_pull_argv, make_upload_argv
from agent.problems import InvalidFile
from agent.schema import RUN_FIELDS
from agent.settings import parse_request
from agent.valuetypes import MAX_DURATION

HOSTS = frozenset({"local", "gpu1"})
SHELL_BITS = ["$(id)", "`id`", ";", "&&", "|", "'", '"', "\\", "*", "?", "~", "$HOME", "\n", " "]
# Any text without NUL (no command line can carry a NUL), biased towards shell syntax.
WORD = st.one_of(
    st.text(st.characters(blacklist_characters="\0", blacklist_categories=("Cs",)), max_size=30),
    st.lists(st.sampled_from([*SHELL_BITS, "a", "-", "--x", "=", "%", "%C"]), max_size=8).map(
        "".join
    ),
)
ENV_NAME = st.from_regex(r"[A-Za-z_][A-Za-z0-9_]{0,12}", fullmatch=True)
# The launcher's own shell variables are the first names a hostile env would try.
LAUNCHER_NAMES = ["D", "RUN_DIR", "SCRIPT", "st", "f", "CONDA_ENV", "CONDA_FOUND", "PATH_X"]
SAFE_PATH_PART = st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_. ,'$;&()-]{0,10}", fullmatch=True)


def _need(tool: str) -> str:
    path = shutil.which(tool)
    assert path, f"{tool} must be installed for this test"
    return path


# -- the request parser ---------------------------------------------------------------------

TOML_VALUE = st.recursive(
    st.one_of(
        WORD,
        st.integers(min_value=-(2**63), max_value=2**63 - 1),
        st.floats(),
        st.booleans(),
    ),
    lambda inner: st.one_of(
        st.lists(inner, max_size=4), st.dictionaries(ENV_NAME | WORD, inner, max_size=3)
    ),
    max_leaves=12,
)
FIELD_NAMES = [f.name for f in RUN_FIELDS] + ["name", "notes", "address", "user", "hosts"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(st.dictionaries(st.sampled_from(FIELD_NAMES) | WORD, TOML_VALUE, max_size=6))
def test_any_request_gives_a_typed_layer_or_problems(table: dict) -> None:
    data = tomlkit.dumps(table).encode("utf-8", "surrogatepass")
    try:
        layer = parse_request(data, "run.request", HOSTS)
    except InvalidFile as exc:
        assert exc.problems
        assert all(p.file == "run.request" and p.message for p in exc.problems)
        return
    # What is accepted is exactly what was written, and of the documented kind.
    assert set(layer) <= set(FIELD_NAMES) - {"address", "user", "hosts"}
    for key in ("name", "notes", "run_script", "output_dir", "conda_env", "host"):
        if key in layer:
            assert layer[key] == table[key] and "\0" not in layer[key]
    for key in ("args", "setup", "exclude"):
        if key in layer:
            assert list(layer[key]) == table[key]
    for key in ("timeout", "backup_every"):
        if key in layer:
            assert isinstance(layer[key], int) and 0 < layer[key] <= MAX_DURATION
    if "host" in layer:
        assert layer["host"] in HOSTS
    assert all("\n" not in line and "\r" not in line for line in layer.get("setup", ()))


@settings(max_examples=200, deadline=None)
@given(st.binary(max_size=300))
def test_any_bytes_give_a_layer_or_problems(data: bytes) -> None:
    try:
        assert isinstance(parse_request(data, "run.request", HOSTS), dict)
    except InvalidFile as exc:
        assert exc.problems


# -- durations ----------------------------------------------------------------------------


@settings(max_examples=500, deadline=None)
@given(
    st.one_of(
        WORD,
        st.from_regex(r"\s*(\d{1,12}\s*[dhmsDHMS]\s*){0,5}", fullmatch=True),
        st.integers(),
        st.floats(),
        st.booleans(),
        st.none(),
        st.lists(st.integers(), max_size=2),
    )
)
@example("\uff11h")
@example("\u0663m")
@example("9" * 5000)
def test_durations_are_positive_seconds_or_a_value_error(value: object) -> None:
    try:
        seconds = parse_duration(value)
    except ValueError as exc:
        assert str(exc).startswith("found ")
        return
    assert isinstance(seconds, int) and not isinstance(seconds, bool) and seconds > 0
    if isinstance(value, str):
        assert value.isascii()


@given(st.integers(min_value=1, max_value=10 * MAX_DURATION))
def test_formatted_durations_parse_back(seconds: int) -> None:
    assert parse_duration(format_duration(seconds)) == seconds


# -- rsync command lines --------------------------------------------------------------------


@settings(max_examples=300)
@given(
    st.lists(WORD, max_size=6),
    WORD.filter(bool),
    WORD.filter(bool),
    st.none() | st.lists(WORD, min_size=1, max_size=4),
)
def test_rsync_argv_keeps_every_string_one_word(
    exclude: list[str], src: str, dest: str, rsh: list[str] | None
) -> None:
    for argv in (make_upload_argv(src, dest, exclude, rsh), make_pull_argv(src, dest, rsh)):
        assert all(isinstance(word, str) for word in argv)
        sep = argv.index("--")
        assert argv[sep + 1].rstrip("/") == src.rstrip("/")
        assert len(argv) == sep + 3
        # Before "--" every word is an option rsync defines, never a user string alone.
        options = argv[1:sep]
        if rsh is not None:
            at = options.index("-e")
            options = options[:at] + options[at + 2 :]
        assert all(word.startswith("-") for word in options)
        if rsh is not None:
            assert shlex.split(argv[argv.index("-e") + 1]) == rsh
    upload = make_upload_argv(src, dest, exclude, rsh)
    assert [w for w in upload if w.startswith("--exclude=")] == [f"--exclude={p}" for p in exclude]


def _remote_shell(tmp_path: Path) -> tuple[Path, Path]:
    """A stand-in for ssh as rsync's -e: records the argv it gets (NUL-separated), drops
    the ssh options and the host, and runs the remote command with the server's shell
    (``$LOGIN_SHELL -c``, as sshd does), so the real rsync on the other end runs it."""
    record = tmp_path / "argv.bin"
    fake = tmp_path / "fake ssh"
    fake.write_text(
        "#!/bin/sh\n"
        f"for a in \"$@\"; do printf '%s\\0' \"$a\"; done > '{record}'\n"
        'shift "$SSH_WORDS"\n'
        'if [ "$1" = -l ]; then shift 3; else shift; fi\n'
        'exec "$LOGIN_SHELL" -c "$*"\n'
    )
    fake.chmod(0o755)
    return fake, record


DECOY = str.maketrans("*?[]", "ZQZZ")
REMOTE_PART = WORD.filter(lambda w: w not in ("", ".", "..") and "/" not in w)


@settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.lists(SAFE_PATH_PART, min_size=1, max_size=3).map(lambda p: "/k/" + "/".join(p)),
    known=st.lists(SAFE_PATH_PART, min_size=1, max_size=3).map(lambda p: "/h/" + "/".join(p)),
    remote=st.lists(REMOTE_PART, min_size=1, max_size=3),
)
@example(key="/k/a", known="/h/a", remote=["\\"])
@example(key="/k/a", known="/h/a", remote=["\r"])
@example(key="/k/a", known="/h/a", remote=["*", "a\\*b", "[x]", "$(touch pwned)"])
@example(key="/k/a", known="/h/a", remote=["a\\*b"])
def test_rsync_runs_ssh_with_exactly_our_words(
    tmp_path: Path, key: str, known: str, remote: list[str]
) -> None:
    """rsync splits -e itself (not a shell): our ssh words survive it. The remote path
    then goes through the server's shell and the server's rsync (which expands
    wildcards): the file lands in exactly that folder, with any agent rsync arguments
    mode (RSYNC_OLD_ARGS sends paths on the shell's command line without -s)."""
    fake, record = _remote_shell(tmp_path)
    config = SshConfig(
        name="g",
        kind="ssh",
        address="10.200.0.2",
        user="train",
        key=Path(key),
        known_hosts=Path(known),
    )
    rsh = [str(fake), *make_ssh_argv(config, tmp_path / "ctl")[1:]]
    src = tmp_path / "src"
    src.mkdir(exist_ok=True)
    (src / "f.txt").write_text("data\n")
    for shell, old_args in [("sh", False), ("sh", True), ("bash", False)]:
        base = Path(tempfile.mkdtemp(dir=tmp_path))
        target = base.joinpath(*remote)
        target.mkdir(parents=True)
        # Siblings that a wildcard in a name would match if the server expanded it.
        for level, part in enumerate(remote):
            for decoy in ("decoy", part.translate(DECOY)):
                base.joinpath(*remote[:level], decoy).mkdir(exist_ok=True)
        record.unlink(missing_ok=True)
        env = {
            **os.environ,
            "SSH_WORDS": str(len(rsh) - 1),
            "LOGIN_SHELL": _need(shell),
            "RSYNC_OLD_ARGS": "1" if old_args else "0",
        }
        argv = make_upload_argv(str(src), make_rsync_target(config, str(target / "cache")), [], rsh)
        done = subprocess.run(argv, capture_output=True, timeout=30, check=False, env=env)
        assert done.returncode == 0, done.stderr.decode(errors="replace")
        got = [w.decode() for w in record.read_bytes().split(b"\0")[:-1]]
        assert got[: len(rsh) - 1] == rsh[1:]
        assert "train" in got[len(rsh) - 1 : len(rsh) + 2]
        files = sorted(p for p in base.rglob("*") if not p.is_dir())
        assert files == [target / "cache" / "f.txt"], (shell, old_args)
        assert not list(tmp_path.rglob("pwned"))


@settings(
    max_examples=25, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    key=st.lists(SAFE_PATH_PART, min_size=1, max_size=2).map(lambda p: "k %/" + "/".join(p)),
    known=st.lists(SAFE_PATH_PART, min_size=1, max_size=2).map(lambda p: "/h %/" + "/".join(p)),
    control=st.lists(SAFE_PATH_PART, min_size=1, max_size=2).map(lambda p: "/c%d/" + "/".join(p)),
)
def test_ssh_reads_our_options_back_exactly(
    tmp_path: Path, key: str, known: str, control: str
) -> None:
    """``ssh -G`` prints the options as ssh parsed them: paths come back unchanged.

    Paths here are what the schema lets through for ssh options (no quotes or backslashes).
    """
    _need("ssh")
    key_path = Path(tempfile.mkdtemp(dir=tmp_path)) / key.replace("'", "")
    key_path.parent.mkdir(parents=True, exist_ok=True)
    key_path.write_text("not a key\n")  # ssh drops an -i file that does not exist
    known, control = known.replace("'", ""), control.replace("'", "")
    config = SshConfig(
        name="g", kind="ssh", address="10.200.0.2", port=2222, user="train",
        key=key_path, known_hosts=Path(known),
    )  # fmt: skip
    argv = make_ssh_argv(config, Path(control))
    done = subprocess.run(
        [*argv, "-F", "/dev/null", "-G", "train@10.200.0.2"],
        capture_output=True,
        text=True,
        timeout=30,
        check=True,
    )
    options: dict[str, list[str]] = {}
    for line in done.stdout.splitlines():
        name, _, value = line.partition(" ")
        options.setdefault(name, []).append(value)
    assert options["port"] == ["2222"]
    assert options["user"] == ["train"]
    assert options["hostname"] == ["10.200.0.2"]
    assert options["identityfile"][0] == str(key_path).replace("%", "%%")  # -G: unexpanded
    assert options["userknownhostsfile"] == [known]
    assert options["stricthostkeychecking"] == ["true"]
    assert options["batchmode"] == ["yes"]
    assert options["controlpath"][0].startswith(control + "/cm-")


# -- remote commands -------------------------------------------------------------------------


@settings(max_examples=200, deadline=None)
@given(st.lists(WORD, min_size=1, max_size=6))
def test_remote_command_gives_back_the_exact_words(words: list[str]) -> None:
    line = make_remote_command(["printf", "%s\\0", *words])
    assert shlex.split(line) == ["printf", "%s\\0", *words]
    # The login shell on the server is sh or bash: both must see the same words.
    for shell in ("sh", "bash"):
        out = subprocess.run([_need(shell), "-c", line], capture_output=True, check=True).stdout
        assert out.split(b"\0")[:-1] == [w.encode() for w in words]


def test_remote_command_refuses_nul_and_empty() -> None:
    for bad in ([], ["a\0b"], ["echo", "\0"]):
        with pytest.raises(ValueError):
            make_remote_command(bad)


# -- the launcher ---------------------------------------------------------------------------

# Its own variables have names longer than any generated one (ENV_NAME): a loop
# variable named like a generated env var would overwrite the value being recorded.
RECORDER = """#!/bin/sh
for recorder_word_ in "$@"; do printf '%s\\0' "$recorder_word_"; done > argv.bin
for recorder_name_ in $ENV_NAMES; do
    eval "printf '%s\\0' \\"\\${$recorder_name_-UNSET}\\""
done > env.bin
"""

OUTPUT_DIR = st.lists(
    st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_ .$'\";&|()*-]{0,8}", fullmatch=True),
    min_size=1,
    max_size=3,
).map("/".join)


@settings(
    max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
@given(
    args=st.lists(WORD, max_size=6),
    env=st.dictionaries(ENV_NAME | st.sampled_from(LAUNCHER_NAMES), WORD, max_size=5),
    output_dir=OUTPUT_DIR,
    script=st.from_regex(r"[A-Za-z0-9_][A-Za-z0-9_ .$'\";&()-]{0,10}", fullmatch=True),
    shell=st.sampled_from(["sh", "bash"]),
)
@example(args=["$(touch pwned)"], env={"D": "/tmp", "RUN_DIR": "/"}, output_dir="o",
         script="run.sh", shell="sh")  # fmt: skip
@example(args=["0"], env={"a": "", "n": "x"}, output_dir="1", script="0", shell="sh")
def test_launcher_passes_every_word_exactly(
    tmp_path: Path, args: list[str], env: dict[str, str], output_dir: str, script: str, shell: str
) -> None:
    """The generated script passes sh -n, and run for real gives the script its exact argv
    and environment, records its exit status, and creates nothing else."""
    assume(output_dir.split("/")[0] != script)  # a folder where the script is: user error
    env = {k: v for k, v in env.items() if k not in ("ENV_NAMES", "PATH", "IFS")}
    names = sorted(env)
    env["ENV_NAMES"] = " ".join(names)
    base = Path(tempfile.mkdtemp(dir=tmp_path))
    run_dir = base / "run_0"
    (run_dir / ".droprun").mkdir(parents=True)
    (run_dir / script).write_text(RECORDER)
    (run_dir / script).chmod(0o755)
    spec = LaunchSpec(run_script=script, args=args, env=env, output_dir=output_dir)
    text = make_launcher(spec, None)
    launcher = run_dir / ".droprun" / "launch.sh"
    launcher.write_text(text)
    subprocess.run([_need(shell), "-n", str(launcher)], check=True, timeout=30)
    done = subprocess.run(
        [_need(shell), ".droprun/launch.sh"],
        cwd=run_dir,
        capture_output=True,
        timeout=30,
        env={"PATH": os.environ["PATH"], "HOME": str(base)},
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (run_dir / ".droprun" / "exit").read_text() == "0\n"
    assert (run_dir / "argv.bin").read_bytes().split(b"\0")[:-1] == [a.encode() for a in args]
    values = (run_dir / "env.bin").read_bytes().split(b"\0")[:-1]
    assert values == [env[name].encode() for name in names]
    assert (run_dir / output_dir).is_dir()
    assert [p.name for p in base.iterdir()] == ["run_0"]


@pytest.mark.parametrize("where", ["~/my conda/etc/conda.sh", "{tmp}/it's conda/conda.sh"])
def test_a_configured_conda_sh_is_found_in_home_and_with_odd_characters(
    tmp_path: Path, where: str
) -> None:
    """conda_sh = "~/..." is the documented example: ~ must expand, spaces must not split."""
    home = tmp_path / "home"
    path = Path(where.replace("~", str(home)).replace("{tmp}", str(tmp_path)))
    path.parent.mkdir(parents=True)
    path.write_text('conda() { [ "$1" = activate ] && MARK="active $2"; }\n')
    run_dir = tmp_path / "run_0"
    (run_dir / ".droprun").mkdir(parents=True)
    (run_dir / "run.sh").write_text('#!/bin/sh\nprintf "%s" "$MARK" > mark.txt\n')
    (run_dir / "run.sh").chmod(0o755)
    spec = LaunchSpec("run.sh", conda_env="torch", setup=["export MARK"])
    (run_dir / ".droprun" / "launch.sh").write_text(
        make_launcher(spec, where.replace("{tmp}", str(tmp_path)))
    )
    done = subprocess.run(
        [_need("sh"), ".droprun/launch.sh"],
        cwd=run_dir,
        capture_output=True,
        env={"PATH": os.environ["PATH"], "HOME": str(home)},
        timeout=30,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    assert (run_dir / "mark.txt").read_text() == "active torch"
