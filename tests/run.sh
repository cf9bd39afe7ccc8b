#!/usr/bin/env bash
# Installs what the tests need (Debian/Ubuntu packages, a venv with droprun and its test
# tools) and runs the whole suite: lint, format check, mypy, the oldest-dependencies tests and
# pytest. Run as root (or with sudo): the tests start sshd, smbd and network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(rsync openssh-server openssh-client samba smbclient iproute2 systemd python3-venv chromium acl busybox slurm-wlm munge)
missing=()
for p in "${packages[@]}"; do dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p"); done
if ((${#missing[@]})); then
    export DEBIAN_FRONTEND=noninteractive
    apt-get update -qq
    apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi

python=${PYTHON:-python3}
venv=${VENV:-.venv}
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
"$venv/bin/pip" install -q --disable-pip-version-check -e '.[test]'

"$venv/bin/ruff" check .
"$venv/bin/ruff" format --check .
"$venv/bin/mypy" # files and settings: [tool.mypy] in pyproject.toml

# The whole suite (no arguments) also proves pyproject's lower bounds: a second venv gets
# exactly the oldest declared version of each dependency (tests/mindeps.py reads them) and
# runs the tests that touch each dependency and need no server but a loopback sshd. It uses
# Python 3.11, the NAS's (SynoCommunity's python311), where this machine has it.
if (($# == 0)); then
    min_python=${MIN_PYTHON:-python3.11}
    if ! command -v "$min_python" >/dev/null; then
        echo "note: no $min_python here; the oldest-dependencies venv uses $python" >&2
        min_python=$python
    fi
    min_venv=${MIN_VENV:-.venv-min}
    [ -x "$min_venv/bin/python" ] || "$min_python" -m venv "$min_venv"
    "$min_venv/bin/pip" install -q --disable-pip-version-check -e . pytest hypothesis aiosmtpd \
        -r <("$venv/bin/python" tests/mindeps.py)
    echo "oldest declared dependencies: $("$min_venv/bin/python" --version)," \
        $("$venv/bin/python" tests/mindeps.py)
    min_tests=(
        tests/test_settings.py tests/test_validate.py tests/test_templates.py
        tests/test_durations.py tests/test_runinfo.py tests/test_archive.py
        tests/test_share.py tests/test_sync.py tests/test_local_host.py tests/test_watcher.py
        tests/test_mindeps.py tests/test_ssh_transport.py
        tests/test_agent_watch.py::test_poll_mode_takes_requests
        tests/test_agent_watch.py::test_out_of_inotify_watches_it_says_so_and_polls
        tests/test_notify.py::test_a_failed_run_is_told_by_webhook_and_by_mail
        tests/test_notify.py::test_a_dead_webhook_never_holds_up_the_run_or_other_notices
        tests/test_notify.py::test_which_urls_a_project_may_name
    )
    # Deselected: cut_link needs a network namespace.
    "$min_venv/bin/python" -m pytest -q -p no:cacheprovider --hypothesis-profile=ci \
        "${min_tests[@]}" \
        --deselect tests/test_ssh_transport.py::test_cut_link_hits_the_deadline_then_recovers
fi

# Derandomized property tests: the same examples on every machine (see tests/conftest.py).
exec "$venv/bin/python" -m pytest -q --hypothesis-profile=ci "$@"
