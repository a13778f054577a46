#!/usr/bin/env bash
# Every check: tests, static analysis and the deployment-config checks (tox.ini's envlist).
#
#   bash scripts/run_checks.sh                 # all tox environments
#   bash scripts/run_checks.sh -e static_code_analysis   # arguments go to tox
#
# Needs only python3 (>= 3.11) and network access to PyPI. The tools (tox, tox-uv) live in
# .tox/.cicd-venv, rebuilt when requirements_cicd.txt changes; tox builds its own environments.
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
TOOLS_VENV=".tox/.cicd-venv"
STAMP="$TOOLS_VENV/.requirements.sha256"

if ! "$PYTHON" -c 'import sys; sys.exit(0 if sys.version_info >= (3, 11) else 1)'; then
    echo "run_checks: $("$PYTHON" --version 2>&1) is too old; the checks need Python >= 3.11" \
         "(set PYTHON=/path/to/python3.11)" >&2
    exit 2
fi

sha256_of() {
    "$PYTHON" -c 'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())' \
        < "$1"
}
wanted="$(sha256_of requirements_cicd.txt)"
if [ ! -x "$TOOLS_VENV/bin/tox" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]; then
    echo "run_checks: installing the check tools (requirements_cicd.txt) into $TOOLS_VENV"
    rm -rf "$TOOLS_VENV"
    "$PYTHON" -m venv "$TOOLS_VENV"
    "$TOOLS_VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -r requirements_cicd.txt
    echo "$wanted" > "$STAMP"
fi

start=$(date +%s)
status=0
"$TOOLS_VENV/bin/tox" run "$@" || status=$?
echo "run_checks: finished in $(( $(date +%s) - start )) s with exit status $status"
exit "$status"
