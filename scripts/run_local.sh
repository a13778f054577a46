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
# tranche), WEEKS (8), SEED (0), TTD_API_KEY (unset: prediction endpoints are open),
# TTD_MODEL_REFRESH_SECONDS (unset: the service keeps the model it loaded; N: it polls the store
# every N s and serves a newly published model), VENV (.venv), PYTHON (python3, for the venv).
# It fails with a clear message when another process holds the port.
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

# What answers on HOST:PORT: exit 0 and "ours" when a time-to-dispatch service answers /health
# with model $1 loaded at or after the moment $2 (seconds since the epoch); exit 3 and what holds
# the port when something else answers or holds it. With $3 "port", exit 0 and nothing printed
# when the port is free (a bind test); without it, only /health is asked.
probe() {
    "$PY" - "$HOST" "$PORT" "$1" "$2" "${3:-}" <<'PY'
import json, socket, sys, urllib.request
from datetime import datetime
host, port, version, since = sys.argv[1], int(sys.argv[2]), sys.argv[3], float(sys.argv[4])
if sys.argv[5] == "port":
    free = socket.socket()
    free.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        free.bind((host, port))
        sys.exit(0)
    except OSError:
        pass
    finally:
        free.close()
try:
    with urllib.request.urlopen(f"http://{host}:{port}/health", timeout=2) as answer:
        health = json.loads(answer.read())
    served, loaded = health["model_version"], health.get("model_loaded_at")
    moment = loaded and datetime.fromisoformat(loaded.replace("Z", "+00:00")).timestamp()
    if served == version and moment and moment >= since:
        print("ours")
        sys.exit(0)
    print(f"another time-to-dispatch service, serving model {served}")
except Exception:
    print("a process that is not this time-to-dispatch service")
sys.exit(3)
PY
}

taken() {
    say "cannot serve on http://$HOST:$PORT: the port is taken by $1; stop it, or choose another" \
        "port: PORT=8001 bash scripts/run_local.sh" >&2
    exit 1
}

# 3. The DAG: train_model, then serve_model (which loads the model before it opens the port).
holder="$(probe - 0 port)" || taken "$holder"
"$PY" -m pipeline.train_model "$STORE"
version="$("$PY" -c 'import sys
from pipeline.artefacts import read_pointer
from pipeline.store import open_store
print(read_pointer(open_store(sys.argv[1]))[0].model_version)' "$STORE")"

started="$("$PY" -c 'import time; print(time.time())')"
"$PY" -m pipeline.serve_model "$STORE" --host "$HOST" --port "$PORT" &
server=$!
trap 'kill -TERM "$server" 2>/dev/null || true' INT TERM

# Ready when this server answers /health with the model just trained (or kept): a TCP connection
# alone could reach another process holding the port.
ready=""
for _ in $(seq 1 600); do
    if ! kill -0 "$server" 2>/dev/null; then
        status=0
        wait "$server" || status=$?
        holder="$(probe "$version" "$started" port)" || taken "$holder"
        say "serve_model exited before it was ready (status $status)" >&2
        exit "$(( status ? status : 1 ))"
    fi
    if [ "$(probe "$version" "$started" 2>/dev/null)" = "ours" ]; then
        ready=1
        break
    fi
    sleep 0.2
done
if [ -z "$ready" ]; then
    kill -TERM "$server" 2>/dev/null || true
    say "serve_model did not answer http://$HOST:$PORT/health with model $version in 120 s" >&2
    exit 1
fi

url="http://$HOST:$PORT"
key_header=""
key_note=""
if [ -n "${TTD_API_KEY:-}" ]; then
    # Double quotes: the pasted command reads the key from the shell, never from this output.
    key_header=' -H "X-API-Key: $TTD_API_KEY"'
    key_note="  (the key is read from \$TTD_API_KEY: export it in the shell you paste into)
"
fi
if [ -n "${TTD_MODEL_REFRESH_SECONDS:-}" ] && [ "$TTD_MODEL_REFRESH_SECONDS" != "0" ]; then
    reload="it polls $STORE every $TTD_MODEL_REFRESH_SECONDS s and serves a newly published model"
else
    reload="it keeps this model: to serve a newly published one, run this script again, or start
  it with TTD_MODEL_REFRESH_SECONDS=30 to poll the store"
fi
cat <<MSG

  time-to-dispatch is serving at $url   (API docs: $url/docs and $url/redoc, Ctrl-C stops it)
  model $version from $STORE; $reload

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
