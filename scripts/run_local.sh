#!/usr/bin/env bash
# Run the pipeline's DAG locally: train_model >> serve_model, on the embedded local store.
#
#   bash scripts/run_local.sh            # serves on http://127.0.0.1:8000 until Ctrl-C
#   PORT=8080 bash scripts/run_local.sh
#
# Needs only python3 (>= 3.9). First run: creates .venv from requirements_pipe.txt, at the locked
# versions the stages run in the cluster (constraints/pipeline_py39.txt), and seeds ./local-store
# with simulated weekly tranches. Later runs reuse both (the venv is refreshed only when the pins
# or the lock change; tranches are simulated only into an empty store).
# Settings (environment): STORE (./local-store), HOST (127.0.0.1), PORT (8000), ROWS (1000 per
# tranche), WEEKS (8), SEED (0), TTD_API_KEY (unset: prediction endpoints are open), VENV (.venv),
# PYTHON (python3, used to create the venv).
set -euo pipefail

cd "$(dirname "$0")/.."
PYTHON="${PYTHON:-python3}"
VENV="${VENV:-.venv}"
STAMP="$VENV/.requirements_pipe.sha256"
STORE="${STORE:-./local-store}"
HOST="${HOST:-127.0.0.1}"
PORT="${PORT:-8000}"
ROWS="${ROWS:-1000}"
WEEKS="${WEEKS:-8}"
SEED="${SEED:-0}"

say() { echo "run_local: $*"; }

# 1. The environment: created once, refreshed when the pinned requirements change.
wanted="$(cat requirements_pipe.txt constraints/pipeline_py39.txt | "$PYTHON" -c \
    'import hashlib, sys; print(hashlib.sha256(sys.stdin.buffer.read()).hexdigest())')"
if [ ! -x "$VENV/bin/python" ] || [ "$(cat "$STAMP" 2>/dev/null)" != "$wanted" ]; then
    if [ ! -x "$VENV/bin/python" ]; then
        say "creating $VENV with $("$PYTHON" --version 2>&1)"
        "$PYTHON" -m venv "$VENV"
    fi
    say "installing requirements_pipe.txt (as locked) into $VENV"
    "$VENV/bin/python" -m pip install --quiet --disable-pip-version-check \
        -c constraints/pipeline_py39.txt -r requirements_pipe.txt
    echo "$wanted" > "$STAMP"
else
    say "reusing $VENV (pins and lock unchanged)"
fi
PY="$VENV/bin/python"

# 2. Data: simulated weekly tranches, written only into an empty store.
"$PY" -m pipeline.simulate "$STORE" --rows "$ROWS" --weeks "$WEEKS" --seed "$SEED" --only-if-empty

# 3. The DAG: train_model, then serve_model (which loads the model before it opens the port).
"$PY" -m pipeline.train_model "$STORE"

"$PY" -m pipeline.serve_model "$STORE" --host "$HOST" --port "$PORT" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true' INT TERM

for _ in $(seq 1 300); do
    if ! kill -0 "$server" 2>/dev/null; then
        wait "$server" || status=$?
        say "serve_model exited before it was ready (status ${status:-0})" >&2
        exit "${status:-1}"
    fi
    if "$PY" -c 'import socket, sys; socket.create_connection((sys.argv[1], int(sys.argv[2])), 1)' \
        "$HOST" "$PORT" 2>/dev/null; then
        break
    fi
    sleep 0.2
done

url="http://$HOST:$PORT"
key_header=""
key_note=""
if [ -n "${TTD_API_KEY:-}" ]; then
    # Double quotes: the pasted command reads the key from the shell, never from this output.
    key_header=' -H "X-API-Key: $TTD_API_KEY"'
    key_note="  (the key is read from \$TTD_API_KEY: export it in the shell you paste into)
"
fi
cat <<MSG

  time-to-dispatch is serving at $url   (API docs: $url/docs and $url/redoc, Ctrl-C stops it)

  curl -s -X POST $url/api/v0.1/time_to_dispatch -H 'Content-Type: application/json'$key_header \\
       -d '{"product_code": "SKU001", "orders_placed": 112}'
$key_note
MSG

status=0
wait "$server" || status=$?
if [ "$status" -gt 128 ]; then
    # Ctrl-C or SIGTERM interrupted the wait (the trap passed SIGTERM on): wait for the server's
    # graceful drain and exit with its status.
    status=0
    wait "$server" || status=$?
fi
exit "$status"
