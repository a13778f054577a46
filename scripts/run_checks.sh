#!/usr/bin/env bash
# Every check: tests, static analysis and the deployment-config checks (tox.ini's envlist).
#
#   bash scripts/run_checks.sh                 # all tox environments
#   bash scripts/run_checks.sh -e static_code_analysis   # arguments go to tox
#
# Needs python3 (>= 3.11), a Python 3.9 for the deployment checks (the image's Python: `python3.9`
# on PATH, pyenv's, or TTD_PYTHON39=/path/to/python3.9) and network access to PyPI. The tools
# (tox, tox-uv) live in .tox/.cicd-venv, rebuilt when requirements_cicd.txt changes; tox builds
# its own environments, each under a complete lock (constraints/).
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

find_python39() {
    local candidate
    for candidate in "${TTD_PYTHON39:-}" "$(command -v python3.9 || true)" \
            "$(pyenv root 2>/dev/null || echo "$HOME/.pyenv")"/versions/3.9*/bin/python3.9; do
        if [ -n "$candidate" ] && [ -x "$candidate" ] && "$candidate" -c \
                'import sys; sys.exit(0 if sys.version_info[:2] == (3, 9) else 1)' 2>/dev/null; then
            echo "$candidate"
            return 0
        fi
    done
    return 1
}
if ! TTD_PYTHON39="$(find_python39)"; then
    echo "run_checks: no Python 3.9 found (the stages run on the image's Python 3.9);" \
         "install one or set TTD_PYTHON39=/path/to/python3.9" >&2
    exit 2
fi
export TTD_PYTHON39

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
