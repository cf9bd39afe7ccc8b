#!/usr/bin/env bash
# Installs what the tests need (Debian/Ubuntu packages, a venv with droprun and its test
# tools) and runs the whole suite: lint, format check, pytest. Run as root (or with sudo):
# the tests start sshd, smbd and network namespaces.
set -euo pipefail
cd "$(dirname "$0")/.."

packages=(rsync openssh-server openssh-client samba smbclient iproute2 systemd python3-venv chromium acl busybox)
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
# Derandomized property tests: the same examples on every machine (see tests/conftest.py).
exec "$venv/bin/python" -m pytest -q --hypothesis-profile=ci "$@"
