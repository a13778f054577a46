"""The serve_model process: command line, load-before-listen, refusal, SIGTERM drain."""
from __future__ import annotations

import http.client
import signal
import threading
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest
import uvicorn

from pipeline import serve_model
from pipeline.api.routes import SINGLE_PATH
from pipeline.api.server import (
    CLOSE_HEADER,
    MAX_DRAIN_SECONDS,
    STOP_DEADLINE_SECONDS,
    DrainingServer,
    StartupError,
    load_model,
    stop_timeout_seconds,
)
from pipeline.api.settings import ServeSettings
from pipeline.serve_model import parse_options
from testing_support.models import fitted_model, publish_model
from testing_support.servers import ServeProcess, call, request
from testing_support.stages import can_connect, stage_env
from tests.oracles import answers
from tests.serve_support import RefusedRun, Tally, publish_broken, rows_for


# --- the command line -------------------------------------------------------------------------


def test_defaults_match_the_interface() -> None:
    options = parse_options(["/some/store"])
    assert (options.store_url, options.host, options.port) == ("/some/store", "0.0.0.0", 8000)
    assert options.settings.model_refresh_seconds == 0
    assert options.settings.drain_seconds == 2.0
    assert options.settings.max_batch_rows == 10_000


def test_options_reach_the_settings() -> None:
    options = parse_options(
        ["s3://b/p", "--host", "127.0.0.1", "--port", "9000", "--model-refresh-seconds", "1.5",
         "--drain-seconds", "0.5", "--max-batch-rows", "7", "--log-level", "warning"]
    )
    assert (options.host, options.port, options.log_level) == ("127.0.0.1", 9000, "warning")
    assert options.settings.model_refresh_seconds == 1.5
    assert options.settings.drain_seconds == 0.5
    assert options.settings.max_batch_rows == 7


def test_flags_override_the_environment_which_overrides_the_defaults(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("TTD_MAX_BATCH_ROWS", "500")
    monkeypatch.setenv("TTD_ROOT_PATH", "/time-to-dispatch/serve-model")
    from_env = parse_options(["store"]).settings
    assert (from_env.max_batch_rows, from_env.root_path) == (500, "/time-to-dispatch/serve-model")
    from_flags = parse_options(["store", "--max-batch-rows", "7", "--root-path", "/x"]).settings
    assert (from_flags.max_batch_rows, from_flags.root_path) == (7, "/x")


def test_a_malformed_root_path_is_refused() -> None:
    with pytest.raises(StartupError, match="root_path"):
        parse_options(["store", "--root-path", "no-leading-slash"])


@pytest.mark.parametrize(
    "flag, accepted, rejected",
    [
        ("--port", "0", "-1"),
        ("--port", "65535", "65536"),
        ("--port", "8000", "eighty"),
        ("--model-refresh-seconds", "0", "-0.001"),
        ("--model-refresh-seconds", "0.5", "nan"),
        ("--drain-seconds", "0", "-0.1"),
        ("--drain-seconds", str(MAX_DRAIN_SECONDS), str(MAX_DRAIN_SECONDS + 0.01)),
        ("--max-batch-rows", "1", "0"),
        ("--max-batch-rows", "10", "1.5"),
        ("--log-level", "debug", "verbose"),
    ],
)
def test_option_bounds(
    flag: str, accepted: str, rejected: str, capsys: pytest.CaptureFixture[str]
) -> None:
    parse_options(["store", flag, accepted])
    with pytest.raises(SystemExit) as refused:
        parse_options(["store", flag, rejected])
    assert refused.value.code == 2
    assert flag in capsys.readouterr().err


def test_stop_budget_keeps_exit_inside_the_deadline() -> None:
    for drain in (0.0, 2.0, MAX_DRAIN_SECONDS):
        budget = stop_timeout_seconds(drain)
        assert budget >= 1
        assert drain + budget < STOP_DEADLINE_SECONDS
    assert stop_timeout_seconds(0.0) > stop_timeout_seconds(MAX_DRAIN_SECONDS)


def test_bad_store_url_is_one_clear_error(
    caplog: pytest.LogCaptureFixture, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(serve_model, "configure_logging", lambda level: None)
    assert serve_model.main(["ftp://nowhere/store"]) == 1
    errors = [r for r in caplog.records if r.levelname == "ERROR"]
    assert len(errors) == 1
    assert "ftp://nowhere/store" in errors[0].getMessage()


def test_load_model_names_the_store_when_nothing_is_published(local_url: str) -> None:
    with pytest.raises(StartupError, match="no model is published") as refused:
        load_model(local_url, ServeSettings(api_key=None))
    assert local_url in str(refused.value)


# --- the drain, unit by unit -----------------------------------------------------------------


def _server(drain: float) -> DrainingServer:
    return DrainingServer(uvicorn.Config(app=lambda: None), drain)


def test_first_signal_starts_the_drain_without_stopping() -> None:
    server = _server(2.0)
    before = time.monotonic()
    server.handle_exit(signal.SIGTERM, None)
    assert not server.should_exit and not server.force_exit
    assert server.drain_deadline is not None and server.drain_deadline >= before + 2.0
    assert CLOSE_HEADER in server.server_state.default_headers
    assert server._captured_signals == []


def test_second_signal_ends_the_drain_and_third_forces() -> None:
    server = _server(2.0)
    server.handle_exit(signal.SIGTERM, None)
    server.handle_exit(signal.SIGINT, None)
    assert server.should_exit and not server.force_exit
    server.handle_exit(signal.SIGTERM, None)
    assert server.force_exit


class _Listener:
    closed = False

    def close(self) -> None:
        self.closed = True


def test_tick_serves_through_the_window_then_stops_listening_then_lingers() -> None:
    import asyncio

    server = DrainingServer(uvicorn.Config(app=lambda: None), 60.0, linger_seconds=30.0)
    listener = _Listener()
    server.servers = [listener]  # type: ignore[list-item]
    assert asyncio.run(server.on_tick(0)) is False
    server.handle_exit(signal.SIGTERM, None)
    assert asyncio.run(server.on_tick(10)) is False
    assert CLOSE_HEADER in server.server_state.default_headers
    assert server.listening and not listener.closed

    server.drain_deadline = time.monotonic()
    assert asyncio.run(server.on_tick(11)) is False
    assert listener.closed and not server.listening and not server.should_exit

    server.drain_deadline = time.monotonic() - 30.0
    assert asyncio.run(server.on_tick(12)) is True
    assert server.should_exit


# --- a real process: refusal -------------------------------------------------------------------


BREAKAGES = {  # what is wrong with the store -> (command form, what the ERROR line says)
    "nothing published": ("module", "no model is published"),
    "checksum mismatch": ("script", "checksum mismatch"),
    "artefact unreadable": ("module", "unreadable"),
    "store unreadable": ("script", "cannot read"),
}


def _break_store(url: str, breakage: str) -> None:
    if breakage == "checksum mismatch":
        publish_model(url, fitted_model(seed=1))
        publish_broken(url, "checksum")
    elif breakage == "artefact unreadable":
        publish_model(url, fitted_model(seed=1))
        publish_broken(url, "unreadable")
    elif breakage == "store unreadable":
        (Path(url) / "models").write_text("a file where the models folder should be")


@pytest.fixture(scope="module")
def refusals(tmp_path_factory: pytest.TempPathFactory) -> Dict[str, Tuple[str, RefusedRun]]:
    """Every broken store, each with a server trying to start on it, all at once."""
    runs: Dict[str, Tuple[str, RefusedRun]] = {}
    for breakage, (form, _) in BREAKAGES.items():
        url = str(tmp_path_factory.mktemp("store"))
        _break_store(url, breakage)
        runs[breakage] = (url, RefusedRun(url, stage_env({}), form))
    return runs


@pytest.mark.parametrize("breakage", list(BREAKAGES))
def test_refuses_to_start_without_a_valid_model(
    breakage: str, refusals: Dict[str, Tuple[str, RefusedRun]]
) -> None:
    url, run = refusals[breakage]
    code, output, opened = run.result()
    assert code != 0
    lines = output.strip().splitlines()
    assert len(lines) == 1 and "ERROR" in lines[0], output
    assert "Traceback" not in output
    assert url in lines[0] and BREAKAGES[breakage][1] in lines[0]
    assert not opened, "the port opened although no valid model was loaded"


# --- a real process: serving -------------------------------------------------------------------


def test_port_opens_only_once_the_model_is_loaded(
    s3_url: str, aws_env: Dict[str, str], tmp_path: Path
) -> None:
    """Also the ``python -m pipeline.serve_model`` form (the drain test uses the script form)."""
    model = fitted_model(seed=3)
    version = publish_model(s3_url, model).model_version
    extra = ["--drain-seconds", "0.2"]
    env = stage_env(aws_env)
    with ServeProcess(s3_url, env, tmp_path, form="module", args=extra) as server:
        deadline = time.monotonic() + 30
        while not can_connect(server.port, timeout=0.05):
            assert server.process.poll() is None, server.output()
            assert time.monotonic() < deadline, server.output()
            time.sleep(0.005)
        status, health = call(server.port, "GET", "/health")
        assert status == 200 and health["model_version"] == version

        conn = http.client.HTTPConnection("127.0.0.1", server.port, timeout=10)
        status, body, _ = request(conn, "POST", SINGLE_PATH,
                                  {"product_code": "SKU002", "orders_placed": 112})
        conn.close()
        assert status == 200
        estimate, upper, extrapolated = answers(model, "SKU002", 112)
        assert body == {"est_hours_to_dispatch": pytest.approx(estimate),
                        "p90_hours_to_dispatch": pytest.approx(upper),
                        "extrapolated": extrapolated,
                        "basis": None,
                        "model_version": version}
        assert body["p90_hours_to_dispatch"] > body["est_hours_to_dispatch"]
        server.terminate()
        assert server.process.wait(timeout=STOP_DEADLINE_SECONDS) == 0, server.output()
        log = server.output()
    assert log.index(f"serving model {version}") < log.index("Uvicorn running")
    assert "Traceback" not in log


def _steady_client(port: int, rows: List[Dict[str, object]], stop: threading.Event,
                   tally: Tally) -> None:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=10)
    index = 0
    while not stop.is_set():
        row = rows[index % len(rows)]
        index += 1
        try:
            status, body, headers = request(conn, "POST", SINGLE_PATH, row)
        except (OSError, http.client.HTTPException) as exc:
            tally.fail(repr(exc))
            conn.close()
            continue
        if status != 200:
            tally.fail(f"{status}: {body}")
        else:
            tally.add(body["model_version"])
        if headers.get("connection") == "close":
            with tally.lock:
                tally.connections += 1
    conn.close()


def _fresh_health(port: int) -> str:
    """GET /health on a new connection: the status, or what went wrong."""
    try:
        return str(call(port, "GET", "/health")[0])
    except (OSError, http.client.HTTPException) as exc:
        return repr(exc)


def test_sigterm_drains_steady_traffic_and_exits_zero(local_url: str, tmp_path: Path) -> None:
    model = fitted_model(seed=5)
    version = publish_model(local_url, model).model_version
    drain = 2.0
    with ServeProcess(local_url, stage_env({}), tmp_path, form="script") as server:
        server.wait_listening()
        tally, stop = Tally(), threading.Event()
        clients = [threading.Thread(target=_steady_client,
                                    args=(server.port, rows_for(model, 50, seed=i), stop, tally),
                                    daemon=True)
                   for i in range(4)]
        for client in clients:
            client.start()
        fresh: List[str] = []
        try:
            time.sleep(0.7)
            sent = server.terminate()
            answered_at_signal = tally.answered
            while time.monotonic() < sent + drain - 0.4:
                fresh.append(_fresh_health(server.port))
                time.sleep(0.1)
        finally:
            stop.set()
            for client in clients:
                client.join()
        left = sent + STOP_DEADLINE_SECONDS - time.monotonic()
        code = server.process.wait(timeout=max(0.1, left))
        log = server.output()
    assert code == 0, log
    assert tally.failures == []
    assert set(tally.versions) == {version}
    assert tally.answered - answered_at_signal > 20
    assert tally.connections > 4, "responses during the drain ask clients to reconnect"
    assert len(fresh) >= 10 and set(fresh) == {"200"}, fresh
    assert "SIGTERM received: draining for 2.0 s" in log
    assert "Traceback" not in log
