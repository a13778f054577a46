"""A rollback under load, through a real server on S3 and the operator's command.

Two models are published; while clients send requests without pause, an operator rolls
back to the first with ``python -m pipeline.models STORE rollback``: the refreshing service
serves the first model again within a few polls, and no request fails.
"""
from __future__ import annotations

import subprocess
import threading
import time
from pathlib import Path
from typing import Dict

from testing_support.models import fitted_model, publish_model
from testing_support.servers import ServeProcess
from testing_support.stages import PYTHON, REPO_ROOT, stage_env, wait_for
from tests.serve_support import Tally, keep_asking, rows_for

REFRESH_SECONDS = 1
WITHIN_SECONDS = 8.0  # a few refresh periods on a loaded machine


def test_a_rollback_is_picked_up_by_a_refreshing_service_with_no_failed_request(
    s3_url: str, aws_env: Dict[str, str], tmp_path: Path
) -> None:
    first_model = fitted_model(seed=41)
    first = publish_model(s3_url, first_model).model_version
    time.sleep(1.1)  # versions carry the creation second
    second = publish_model(s3_url, fitted_model(seed=42)).model_version
    extra = ["--model-refresh-seconds", str(REFRESH_SECONDS), "--drain-seconds", "0.2"]
    with ServeProcess(s3_url, stage_env(aws_env), tmp_path, args=extra, form="script") as server:
        server.wait_listening()
        tally, stop = Tally(), threading.Event()
        clients = [threading.Thread(target=keep_asking,
                                    args=(server.port, rows_for(first_model, 50, i), stop, tally))
                   for i in range(2)]
        for client in clients:
            client.start()
        try:
            assert wait_for(lambda: tally.versions.get(second, 0) > 10, WITHIN_SECONDS)
            done = subprocess.run(
                [PYTHON, "-m", "pipeline.models", s3_url, "rollback", first, "--reason",
                 "load test", "--by", "ci"],
                cwd=REPO_ROOT, env=stage_env(aws_env), capture_output=True, text=True,
                timeout=120)
            before = tally.versions.get(first, 0)
            back = wait_for(lambda: tally.versions.get(first, 0) > before + 10, WITHIN_SECONDS)
        finally:
            stop.set()
            for client in clients:
                client.join()
        server.terminate()
        server.process.wait(timeout=10)
        log = server.output()
    assert done.returncode == 0, done.stderr
    assert back, (tally.versions, log[-3000:])
    assert tally.failures == [], tally.failures[:5]
    assert set(tally.versions) == {first, second}
