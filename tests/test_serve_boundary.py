"""The service's import boundary: serving loads no training code and no training library.

Each check imports in a fresh interpreter, as the stage does, and reads its ``sys.modules``.
"""
from __future__ import annotations

import json
import subprocess
from typing import List

import pytest

from testing_support.stages import PIPELINE_DIR, PYTHON, REPO_ROOT, stage_env

TRAINING_ONLY = ("pipeline.training", "sklearn", "pandas", "pandera", "scipy", "matplotlib",
                 "dask", "distributed")
# What serve_model imports once it runs: the app and the server runtime (imported in main()).
SERVICE = "import pipeline.serve_model, pipeline.api.app, pipeline.api.server"
# The child process that parses an artefact (python -m pipeline.api.lookup); it reads the
# metadata with pipeline.metadata's schema, so pydantic is the one library it shares with the app.
PARSER_CHILD = "import pipeline.api.lookup"
WEB = ("fastapi", "starlette", "uvicorn", "boto3", "prometheus_client")


def loaded(statement: str, cwd: str = str(REPO_ROOT)) -> List[str]:
    """The modules a fresh interpreter holds after running ``statement``."""
    code = f"{statement}\nimport json, sys\nprint(json.dumps(sorted(sys.modules)))"
    done = subprocess.run([PYTHON, "-c", code], cwd=cwd, env=stage_env({}), capture_output=True,
                          text=True, timeout=120, check=False)
    assert done.returncode == 0, done.stderr
    modules: List[str] = json.loads(done.stdout.splitlines()[-1])
    return modules


def under(modules: List[str], roots: tuple) -> List[str]:
    """The modules that are, or sit inside, one of the packages ``roots``."""
    return [m for m in modules if any(m == root or m.startswith(root + ".") for root in roots)]


@pytest.mark.parametrize("statement, cwd", [
    ("import pipeline.serve_model", str(REPO_ROOT)),
    (SERVICE, str(REPO_ROOT)),
    ("import serve_model, pipeline.api.app, pipeline.api.server", str(PIPELINE_DIR)),
])
def test_serving_loads_no_training_module_and_no_training_library(
    statement: str, cwd: str
) -> None:
    modules = loaded(statement, cwd)
    assert "pipeline.api.app" in modules or statement == "import pipeline.serve_model"
    assert under(modules, TRAINING_ONLY) == []


def test_the_check_sees_a_training_import() -> None:
    modules = loaded(SERVICE + "\nimport pipeline.training.run")
    assert "pipeline.training.run" in under(modules, TRAINING_ONLY)
    assert "sklearn" in under(modules, TRAINING_ONLY)


def test_the_artefact_parser_child_loads_neither_the_web_stack_nor_training() -> None:
    modules = loaded(PARSER_CHILD)
    assert "numpy" in modules and "orjson" in modules and "pipeline.metadata" in modules
    assert under(modules, TRAINING_ONLY + WEB) == []


def test_the_server_runtime_lives_in_the_service_package() -> None:
    from pipeline import serve_model
    from pipeline.api import server

    for name in ("DrainingServer", "StartupError", "load_model", "serve", "server_config",
                 "stop_timeout_seconds"):
        assert getattr(server, name).__module__ == "pipeline.api.server", name
        assert not hasattr(serve_model, name) or getattr(serve_model, name) is getattr(
            server, name), name
    entry = (PIPELINE_DIR / "serve_model.py").read_text(encoding="utf-8")
    assert "class " not in entry
