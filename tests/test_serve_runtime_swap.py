"""Swap under load (issue 5, item 5; issue 3's refresh test), through a real server on S3.

While clients send single and batch requests without pause, a new model is published:
it is served within a few seconds, no request fails, every answer is the estimate of
the model it names, and no client goes back to the old model once it saw the new one.
A broken model published next is ignored (the good one keeps serving), and the refresh
loop keeps working after it: a third model is picked up.
"""
from __future__ import annotations

import threading
import time
from pathlib import Path
from typing import Dict, List

import pytest

from pipeline.model_format import DispatchModel
from testing_support.models import fitted_model, publish_model
from testing_support.servers import ServeProcess
from testing_support.stages import stage_env, wait_for
from tests.oracles import answers as model_answers
from tests.serve_support import Answer, Tally, keep_asking, publish_broken, rows_for

REFRESH_SECONDS = 1
CLIENTS = 2
SWAP_WITHIN_SECONDS = 8.0  # generous: a few refresh periods on a loaded machine


def test_new_model_swapped_in_under_load_and_broken_one_ignored(
    s3_url: str, aws_env: Dict[str, str], tmp_path: Path
) -> None:
    models: Dict[str, DispatchModel] = {}
    first = fitted_model(seed=31)
    models[publish_model(s3_url, first).model_version] = first
    extra = ["--model-refresh-seconds", str(REFRESH_SECONDS), "--drain-seconds", "0.2"]
    with ServeProcess(s3_url, stage_env(aws_env), tmp_path, args=extra, form="script") as server:
        server.wait_listening()
        tally, stop = Tally(), threading.Event()
        seen: List[List[Answer]] = [[] for _ in range(CLIENTS)]
        clients = [threading.Thread(target=keep_asking,
                                    args=(server.port, rows_for(first, 80, i), stop, tally,
                                          seen[i]))
                   for i in range(CLIENTS)]
        for client in clients:
            client.start()
        try:
            time.sleep(0.5)
            second = fitted_model(seed=32)
            version2 = publish_model(s3_url, second).model_version
            models[version2] = second
            swapped = wait_for(lambda: tally.versions.get(version2, 0) > 10,
                               SWAP_WITHIN_SECONDS)

            broken = publish_broken(s3_url, "checksum")
            time.sleep(1.5 * REFRESH_SECONDS)
            after_broken = dict(tally.versions)
            time.sleep(1.0 * REFRESH_SECONDS)
            still = {v: n - after_broken.get(v, 0) for v, n in tally.versions.items()}

            third = fitted_model(seed=33)
            version3 = publish_model(s3_url, third).model_version
            models[version3] = third
            recovered = wait_for(lambda: tally.versions.get(version3, 0) > 10,
                                 SWAP_WITHIN_SECONDS)
        finally:
            stop.set()
            for client in clients:
                client.join()
        server.terminate()
        code = server.process.wait(timeout=10)
        log = server.output()

    assert swapped and recovered, (tally.versions, log[-3000:])
    assert tally.failures == [], tally.failures[:5]
    assert broken not in tally.versions
    assert {v for v, n in still.items() if n} == {version2}, "the broken model was not served"
    assert "new model rejected" in log and "checksum mismatch" in log
    assert set(tally.versions) == set(models)
    rank = {version: i for i, version in enumerate(models)}
    for answers in seen:
        wrong = [a for a in answers
                 if a[3] != pytest.approx(model_answers(models[a[0]], a[1], a[2])[0], rel=1e-9)]
        assert wrong == [], wrong[:5]
        ranks = [rank[a[0]] for a in answers]
        assert ranks == sorted(ranks), "a client went back to an older model"
    assert code == 0, log
