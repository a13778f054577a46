"""Graceful stop (issue 5, item 6): SIGTERM with large batches in flight and connections arriving.

Every request sent reaches an answer: the batches in flight, the new connections that
keep arriving during the drain window (as they do until Kubernetes removes the pod from
its endpoints), and a batch whose body is still being uploaded when the window closes.
After the window the port refuses new connections, and the process exits 0 within 10 s.
"""
from __future__ import annotations

import http.client
import json
import socket
import threading
import time
from pathlib import Path
from typing import Any, Dict, List

from pipeline.api.routes import BATCH_PATH, SINGLE_PATH
from pipeline.api.server import STOP_DEADLINE_SECONDS
from testing_support.models import fitted_model, publish_model
from testing_support.servers import ServeProcess
from testing_support.stages import can_connect, stage_env
from tests.serve_support import Tally, rows_for

BATCH_ROWS = 10_000
DRAIN_SECONDS = 2.0  # the default: the server is started without --drain-seconds
ARRIVALS_SECONDS = 1.6  # new connections keep coming this long after SIGTERM
SLOW_BODY_DONE = DRAIN_SECONDS + 1.2  # the slow upload's last byte, after the window closed
PORT_CHECK = DRAIN_SECONDS + 0.6  # when the window has closed but the slow upload still runs


def _batch_client(port: int, body: bytes, stop: threading.Event, tally: Tally) -> None:
    """Large batches back to back, reconnecting whenever the server asks to close."""
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
    while not stop.is_set():
        try:
            conn.request("POST", BATCH_PATH, body=body,
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
        except (OSError, http.client.HTTPException, ValueError) as exc:
            tally.fail(f"batch: {exc!r}")
            conn.close()
            continue
        if response.status != 200 or len(answer["est_hours_to_dispatch"]) != BATCH_ROWS:
            tally.fail(f"batch: {response.status} {str(answer)[:200]}")
        else:
            tally.add(answer["model_version"])
    conn.close()


def _arrivals(port: int, row: Dict[str, Any], stop: threading.Event, tally: Tally) -> None:
    """A brand-new connection for every request, as a stream of fresh clients would open."""
    while not stop.is_set():
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=20)
        try:
            conn.request("POST", SINGLE_PATH, body=json.dumps(row).encode(),
                         headers={"Content-Type": "application/json"})
            response = conn.getresponse()
            answer = json.loads(response.read())
            if response.status != 200:
                tally.fail(f"arrival: {response.status} {answer}")
            else:
                tally.add(answer["model_version"])
                with tally.lock:
                    tally.connections += 1
        except (OSError, http.client.HTTPException, ValueError) as exc:
            tally.fail(f"arrival: {exc!r}")
        finally:
            conn.close()
        time.sleep(0.02)


def _slow_upload(port: int, body: bytes, finish_at: float, result: List[Any]) -> None:
    """Send the head and half a batch now, the rest at ``finish_at``; keep the answer."""
    head = (f"POST {BATCH_PATH} HTTP/1.1\r\nHost: 127.0.0.1\r\n"
            f"Content-Type: application/json\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    half = len(body) // 2
    try:
        with socket.create_connection(("127.0.0.1", port), timeout=20) as sock:
            sock.sendall(head + body[:half])
            time.sleep(max(0.0, finish_at - time.monotonic()))
            sock.sendall(body[half:])
            response = http.client.HTTPResponse(sock)
            response.begin()
            result.append((response.status, json.loads(response.read())))
    except (OSError, http.client.HTTPException, ValueError) as exc:
        result.append(exc)


def test_sigterm_with_batches_in_flight_and_new_connections_arriving(
    local_url: str, tmp_path: Path
) -> None:
    model = fitted_model(seed=21)
    version = publish_model(local_url, model).model_version
    body = json.dumps(rows_for(model, BATCH_ROWS, seed=1)).encode()
    with ServeProcess(local_url, stage_env({}), tmp_path, form="script") as server:
        server.wait_listening()
        tally, batches_stop, arrivals_stop = Tally(), threading.Event(), threading.Event()
        threads = [threading.Thread(target=_batch_client, daemon=True,
                                    args=(server.port, body, batches_stop, tally))
                   for _ in range(2)]
        threads.append(threading.Thread(target=_arrivals, args=(
            server.port, rows_for(model, 1, seed=2)[0], arrivals_stop, tally), daemon=True))
        for thread in threads:
            thread.start()
        slow: List[Any] = []
        try:
            time.sleep(0.8)
            answered_before, connections_before = tally.answered, tally.connections
            sent = server.terminate()

            time.sleep(1.5)
            uploader = threading.Thread(target=_slow_upload, daemon=True,
                                        args=(server.port, body, sent + SLOW_BODY_DONE, slow))
            uploader.start()
            threads.append(uploader)
            time.sleep(max(0.0, sent + ARRIVALS_SECONDS - time.monotonic()))
            arrivals_stop.set()
            time.sleep(max(0.0, sent + DRAIN_SECONDS - 0.2 - time.monotonic()))
            batches_stop.set()

            time.sleep(max(0.0, sent + PORT_CHECK - time.monotonic()))
            still_running = server.process.poll() is None
            refused_after_window = not can_connect(server.port)
        finally:
            arrivals_stop.set()
            batches_stop.set()
            for thread in threads:
                thread.join(timeout=30)
        left = sent + STOP_DEADLINE_SECONDS - time.monotonic()
        code = server.process.wait(timeout=max(0.1, left))
        log = server.output()

    assert code == 0, log
    assert tally.failures == [], tally.failures[:5]
    assert set(tally.versions) == {version}
    assert tally.answered - answered_before > 10
    assert tally.connections - connections_before >= 3, "new connections answered while draining"
    assert len(slow) == 1 and not isinstance(slow[0], Exception), slow
    status, answer = slow[0]
    assert status == 200 and len(answer["est_hours_to_dispatch"]) == BATCH_ROWS
    assert still_running and refused_after_window, "after the window: not listening, finishing"
    assert "Traceback" not in log
