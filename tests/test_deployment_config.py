"""The deployment configuration: bodywork.yaml, IAM policies, the cronjob script, CI and tox."""
from __future__ import annotations

import configparser
import json
import os
import subprocess
from typing import Any, Dict, List, Set

import pytest

from tests.conftest import REPO_ROOT
from tests.deployment_support import (
    REQUIREMENTS_PIPE,
    bodywork_config,
    dependency_closure,
    distributions_of,
    load_script,
    load_yaml,
    stage_file,
    third_party_imports,
)

AWS_KEYS = {"AWS_ACCESS_KEY_ID", "AWS_SECRET_ACCESS_KEY", "AWS_DEFAULT_REGION"}
TOX_ENVS = ("unit_and_functional_tests", "static_code_analysis", "deployment_config")

checker = load_script("check_stage_requirements")


@pytest.fixture(scope="module")
def config() -> Dict[str, Any]:
    """bodywork.yaml, parsed."""
    return bodywork_config()


@pytest.fixture(scope="module")
def stages(config: Dict[str, Any]) -> Dict[str, Any]:
    """bodywork.yaml's stages."""
    return dict(config["stages"])


# bodywork.yaml ------------------------------------------------------------------------------

def test_pipeline_section_names_the_dag_image_and_secrets(config: Dict[str, Any]) -> None:
    pipeline = config["pipeline"]
    assert config["version"] == "1.1"
    assert pipeline["name"] == "time-to-dispatch"
    assert pipeline["docker_image"] == "bodyworkml/bodywork-core:3.0"
    steps = [step.strip() for step in pipeline["DAG"].split(">>")]
    assert steps == ["train_model", "serve_model"]
    assert pipeline["secrets_group"]


def test_train_model_is_a_batch_stage_with_a_deadline_and_retries(stages: Dict[str, Any]) -> None:
    batch = stages["train_model"]["batch"]
    assert "service" not in stages["train_model"]
    assert batch["max_completion_time_seconds"] > 0
    assert batch["retries"] >= 1


def test_serve_model_is_two_replicas_on_port_8000_behind_an_ingress(
    stages: Dict[str, Any]
) -> None:
    from pipeline.serve_model import DEFAULT_PORT

    service = stages["serve_model"]["service"]
    assert "batch" not in stages["serve_model"]
    assert service["replicas"] == 2
    assert service["port"] == 8000 == DEFAULT_PORT
    assert service["ingress"] is True
    assert service["max_startup_time_seconds"] > 0


@pytest.mark.parametrize("name", ["train_model", "serve_model"])
def test_each_stage_gets_its_own_aws_credentials_from_a_secret(
    stages: Dict[str, Any], name: str
) -> None:
    secrets = stages[name]["secrets"]
    assert AWS_KEYS <= set(secrets)
    assert len({secrets[key] for key in AWS_KEYS}) == 1, "one secret holds all three keys"
    other = "serve_model" if name == "train_model" else "train_model"
    assert secrets["AWS_ACCESS_KEY_ID"] != stages[other]["secrets"]["AWS_ACCESS_KEY_ID"], (
        "the service's credentials must be separate so they can be read-only"
    )


def test_only_the_service_gets_the_api_key(stages: Dict[str, Any]) -> None:
    assert "TTD_API_KEY" in stages["serve_model"]["secrets"]
    assert "TTD_API_KEY" not in stages["train_model"]["secrets"]


def test_both_stages_use_the_same_s3_store(stages: Dict[str, Any]) -> None:
    stores = {stages[name]["args"][0] for name in ("train_model", "serve_model")}
    assert len(stores) == 1
    (store,) = stores
    bucket, _, prefix = store[len("s3://"):].partition("/")
    assert store.startswith("s3://") and bucket and prefix


def test_stage_args_are_accepted_by_the_stages_own_parsers(stages: Dict[str, Any]) -> None:
    from pipeline.serve_model import parse_options
    from pipeline.train_model import parse_args

    train_args = [str(a) for a in stages["train_model"]["args"]]
    serve_args = [str(a) for a in stages["serve_model"]["args"]]
    assert parse_args(train_args)[0] == train_args[0]
    parse_options(serve_args)


@pytest.mark.parametrize("name", ["train_model", "serve_model"])
def test_executable_module_exists_and_runs_as_a_script(stages: Dict[str, Any], name: str) -> None:
    path = stage_file(stages[name])
    assert path.is_file()
    assert path.parent == REPO_ROOT / "pipeline"
    assert 'if __name__ == "__main__":' in path.read_text(encoding="utf-8")


def test_stage_requirements_are_exactly_pins_of_requirements_pipe(
    stages: Dict[str, Any]
) -> None:
    pins = checker.read_pins(REQUIREMENTS_PIPE.read_text(encoding="utf-8"))
    problems = checker.pin_problems(checker.stage_requirements({"stages": stages}), pins)
    assert problems == []


@pytest.mark.parametrize("name", ["train_model", "serve_model"])
def test_stage_requirements_cover_exactly_what_the_stage_imports(
    stages: Dict[str, Any], name: str
) -> None:
    requirements = [str(r) for r in stages[name]["requirements"]]
    required = {checker.parse_requirement(r).name for r in requirements}
    imported = distributions_of(third_party_imports(stage_file(stages[name])))
    missing = imported - dependency_closure(requirements)
    assert not missing, f"{name} imports {missing} without installing them"
    assert required <= imported, f"{name} installs {required - imported} and never imports them"


def test_import_check_sees_a_dependency_left_out() -> None:
    closure = dependency_closure(["fastapi==0.128.8", "uvicorn[standard]==0.39.0"])
    assert {"starlette", "pydantic", "uvloop", "httptools"} <= closure
    assert "orjson" not in closure, "only requested extras are followed"
    assert "uvloop" not in dependency_closure(["uvicorn==0.39.0"])


def test_requirements_pipe_pins_every_line_exactly() -> None:
    pins = checker.read_pins(REQUIREMENTS_PIPE.read_text(encoding="utf-8"))
    assert pins and all("==" in pin.line for pin in pins.values())


# The pin checker itself ---------------------------------------------------------------------

def test_pin_checker_accepts_equal_pins_whatever_the_spelling() -> None:
    pins = checker.read_pins("Prometheus_Client==0.26.0\nuvicorn[standard]==0.39.0  # web\n")
    stages = {"s": ["prometheus-client==0.26.0", "uvicorn[standard] == 0.39.0"]}
    assert checker.pin_problems(stages, pins) == []


@pytest.mark.parametrize(
    "requirement, problem",
    [
        ("numpy==2.0.1", "differs from the pin"),
        ("numpy>=2.0.2", "not pinned to an exact version"),
        ("pandas==2.2.3", "not in the pipeline's requirements file"),
        ("uvicorn==0.39.0", "differs from the pin"),
    ],
)
def test_pin_checker_reports_each_kind_of_mismatch(requirement: str, problem: str) -> None:
    pins = checker.read_pins("numpy==2.0.2\nuvicorn[standard]==0.39.0\n")
    (message,) = checker.pin_problems({"stage": [requirement]}, pins)
    assert problem in message and "stage" in message


def test_resolution_targets_python_39_wheels_for_the_images_glibc() -> None:
    command = checker.resolve_command("3.9")
    assert command[command.index("--python-version") + 1] == "3.9"
    assert command[command.index("--python-platform") + 1] == "x86_64-manylinux_2_31"
    assert command[command.index("--only-binary") + 1] == ":all:"


def test_lock_check_reports_every_version_the_lock_does_not_hold() -> None:
    lock = checker.read_pins("starlette==0.49.3\nurllib3==1.26.20\n")
    resolved = checker.resolved_versions("Starlette==0.49.3\nurllib3==2.6.3\nsix==1.17.0\n")
    assert resolved == {"starlette": "0.49.3", "urllib3": "2.6.3", "six": "1.17.0"}
    problems = checker.lock_problems("serve_model", resolved, lock)
    assert problems == [
        "serve_model: resolves six==1.17.0 but the lock holds nothing",
        "serve_model: resolves urllib3==2.6.3 but the lock holds urllib3==1.26.20",
    ]


def test_the_lock_holds_every_stage_pin(stages: Dict[str, Any]) -> None:
    lock = checker.read_pins((REPO_ROOT / "constraints" / "pipeline_py39.txt").read_text())
    for name in ("train_model", "serve_model"):
        for line in stages[name]["requirements"]:
            requirement = checker.parse_requirement(line)
            version = requirement.line.split("==")[1]
            assert lock[requirement.name].line == f"{requirement.name}=={version}"


# IAM ----------------------------------------------------------------------------------------

def _policy(name: str) -> List[Dict[str, Any]]:
    document = json.loads((REPO_ROOT / "deploy" / f"iam_policy_{name}.json").read_text())
    assert document["Version"] == "2012-10-17"
    return list(document["Statement"])


def _actions(statements: List[Dict[str, Any]]) -> List[str]:
    actions: List[str] = []
    for statement in statements:
        assert statement["Effect"] == "Allow"
        value = statement["Action"]
        actions.extend([value] if isinstance(value, str) else value)
    return actions


def _resources(statements: List[Dict[str, Any]]) -> List[str]:
    resources: List[str] = []
    for statement in statements:
        value = statement["Resource"]
        resources.extend([value] if isinstance(value, str) else value)
    return resources


def test_iam_policies_cover_only_the_pipelines_bucket_and_prefix(stages: Dict[str, Any]) -> None:
    bucket, _, prefix = stages["train_model"]["args"][0][len("s3://"):].partition("/")
    allowed = {
        f"arn:aws:s3:::{bucket}",
        f"arn:aws:s3:::{bucket}/{prefix}/datasets/*",
        f"arn:aws:s3:::{bucket}/{prefix}/models/*",
        f"arn:aws:s3:::{bucket}/{prefix}/reports/*",
        f"arn:aws:s3:::{bucket}/{prefix}/audit/*",
        f"arn:aws:s3:::{bucket}/{prefix}/models/latest.json",
        f"arn:aws:s3:::{bucket}/{prefix}/audit/rollbacks/*",
    }
    for name in ("train", "serve", "operator"):
        statements = _policy(name)
        assert set(_resources(statements)) <= allowed
        for statement in statements:
            if statement["Action"] == "s3:ListBucket":
                prefixes = statement["Condition"]["StringLike"]["s3:prefix"]
                assert all(p.startswith(f"{prefix}/") for p in prefixes)


def test_serve_policy_is_read_only_on_models() -> None:
    statements = _policy("serve")
    assert set(_actions(statements)) == {"s3:GetObject", "s3:ListBucket"}
    objects = [r for r in _resources(statements) if r.count("/") > 0]
    assert objects and all("/models/" in r for r in objects)


def test_train_policy_writes_models_but_never_tranches_or_deletes() -> None:
    statements = _policy("train")
    assert set(_actions(statements)) == {"s3:GetObject", "s3:ListBucket", "s3:PutObject"}
    writes = [s for s in statements if "s3:PutObject" in _actions([s])]
    assert all("/models/" in r or "/reports/" in r for r in _resources(writes))
    assert any(r.endswith("/reports/*") for r in _resources(writes))


def test_operator_policy_moves_only_the_pointer_and_writes_only_rollback_records() -> None:
    statements = _policy("operator")
    assert set(_actions(statements)) == {"s3:GetObject", "s3:ListBucket", "s3:PutObject"}
    writes = [s for s in statements if "s3:PutObject" in _actions([s])]
    assert sorted(r.split("/", 1)[1] for r in _resources(writes)) == [
        "pipeline/audit/rollbacks/*", "pipeline/models/latest.json"]


# The weekly cronjob -------------------------------------------------------------------------

CRON_ENV = {
    "GIT_URL": "https://github.com/example/time-to-dispatch.git",
    "AWS_DEFAULT_REGION": "eu-west-2",
    "TRAIN_AWS_ACCESS_KEY_ID": "train-id",
    "TRAIN_AWS_SECRET_ACCESS_KEY": "train-secret-value",
    "SERVE_AWS_ACCESS_KEY_ID": "serve-id",
    "SERVE_AWS_SECRET_ACCESS_KEY": "serve-secret-value",
    "TTD_API_KEY": "api-key-value",
}


def _run_cron_script(env: Dict[str, str]) -> subprocess.CompletedProcess[str]:
    base = {k: v for k, v in os.environ.items() if k not in CRON_ENV}
    return subprocess.run(
        ["bash", str(REPO_ROOT / "scripts" / "create_cronjob.sh")],
        env=dict(base, **env), capture_output=True, text=True, timeout=30,
    )


def test_cronjob_script_creates_every_secret_the_stages_read_and_a_friday_schedule(
    config: Dict[str, Any], stages: Dict[str, Any]
) -> None:
    done = _run_cron_script(dict(CRON_ENV, DRY_RUN="1"))
    assert done.returncode == 0, done.stderr
    lines = [ln[2:] for ln in done.stdout.splitlines() if ln.startswith("+ ")]
    group = config["pipeline"]["secrets_group"]
    created: Dict[str, Set[str]] = {}
    for line in lines:
        words = line.split()
        if words[:3] == ["bodywork", "create", "secret"]:
            assert words[words.index("--group") + 1] == group
            keys = {w.split("=")[0] for w in words if "=" in w}
            created[words[3]] = keys
    needed: Dict[str, Set[str]] = {}
    for stage in stages.values():
        for key, secret in stage["secrets"].items():
            needed.setdefault(secret, set()).add(key)
    assert created == needed
    (cron,) = [ln for ln in lines if ln.startswith("bodywork create cronjob")]
    assert CRON_ENV["GIT_URL"] in cron and "--branch master" in cron
    assert "--schedule 30\\ 23\\ \\*\\ \\*\\ 5" in cron, "Fridays 23:30, after the 23:00 delivery"
    for secret_value in ("train-secret-value", "serve-secret-value", "api-key-value"):
        assert secret_value not in done.stdout + done.stderr


def test_cronjob_script_refuses_to_run_without_the_credentials() -> None:
    env = dict(CRON_ENV, DRY_RUN="1")
    del env["SERVE_AWS_SECRET_ACCESS_KEY"]
    done = _run_cron_script(env)
    assert done.returncode == 2
    assert "SERVE_AWS_SECRET_ACCESS_KEY" in done.stderr
    assert "bodywork" not in done.stdout


# CI -----------------------------------------------------------------------------------------

def _workflow_jobs(ci: Dict[str, Any]) -> Dict[str, Dict[str, Any]]:
    jobs: Dict[str, Dict[str, Any]] = {}
    for name, workflow in ci["workflows"].items():
        if name == "version":
            continue
        for entry in workflow["jobs"]:
            job_name, spec = (entry, {}) if isinstance(entry, str) else next(iter(entry.items()))
            jobs[job_name] = spec or {}
    return jobs


def _job_commands(ci: Dict[str, Any], job: str) -> str:
    text = []
    for step in ci["jobs"][job]["steps"]:
        if isinstance(step, dict) and "run" in step:
            run = step["run"]
            text.append(run if isinstance(run, str) else run["command"])
        elif isinstance(step, str) and step in ci.get("commands", {}):
            text.append(json.dumps(ci["commands"][step]))
    return "\n".join(text)


@pytest.fixture(scope="module")
def circleci() -> Dict[str, Any]:
    """.circleci/config.yml, parsed."""
    return load_yaml(REPO_ROOT / ".circleci" / "config.yml")


def test_ci_runs_static_analysis_then_tests_on_every_branch_but_master(
    circleci: Dict[str, Any]
) -> None:
    jobs = _workflow_jobs(circleci)
    checks = ["static-code-analysis", "unit-and-functional-tests", "deployment-config"]
    for job in checks:
        assert jobs[job]["filters"]["branches"] == {"ignore": "master"}
    assert jobs["static-code-analysis"].get("requires") is None
    assert jobs["unit-and-functional-tests"]["requires"] == ["static-code-analysis"]
    assert "tox run -e static_code_analysis" in _job_commands(circleci, "static-code-analysis")
    assert "tox run -e unit_and_functional_tests" in _job_commands(
        circleci, "unit-and-functional-tests"
    )
    assert "tox run -e deployment_config" in _job_commands(circleci, "deployment-config")


def test_ci_deploys_with_bodywork_to_eks_only_on_master(circleci: Dict[str, Any]) -> None:
    jobs = _workflow_jobs(circleci)
    assert jobs["deploy-to-eks"]["filters"]["branches"] == {"only": "master"}
    commands = _job_commands(circleci, "deploy-to-eks")
    assert "aws eks update-kubeconfig" in commands
    assert "bodywork create deployment" in commands and "--branch master" in commands
    assert commands.index("update-kubeconfig") < commands.index("bodywork create deployment")
    assert "bodywork==3.0.12" in commands and "constraints/bodywork.txt" in commands
    assert "PIP_BUILD_CONSTRAINT=constraints/bodywork.txt" in commands


# tox, the check command and the notebook's pins ---------------------------------------------

def _tox() -> configparser.ConfigParser:
    parser = configparser.ConfigParser(interpolation=None)
    parser.read(REPO_ROOT / "tox.ini")
    return parser


def test_tox_runs_the_three_environments_without_building_a_package() -> None:
    tox = _tox()
    envlist = [e.strip() for e in tox["tox"]["envlist"].split(",")]
    assert sorted(envlist) == sorted(TOX_ENVS)
    assert tox["tox"]["skipsdist"] == "true"
    for env in TOX_ENVS:
        assert tox.has_section(f"testenv:{env}")


def test_static_analysis_targets_python_39() -> None:
    commands = _tox()["testenv:static_code_analysis"]["commands"]
    assert "mypy --config-file mypy.ini" in commands and "flake8 --config flake8.ini" in commands
    assert "vermin -t=3.9-" in commands
    mypy = configparser.ConfigParser()
    mypy.read(REPO_ROOT / "mypy.ini")
    assert mypy["mypy"]["python_version"] == "3.9" and mypy["mypy"]["strict"] == "True"
    flake8 = configparser.ConfigParser()
    flake8.read(REPO_ROOT / "flake8.ini")
    assert flake8["flake8"]["max-line-length"] == "100"


def test_test_environment_accepts_pytests_no_tests_exit() -> None:
    commands = _tox()["testenv:unit_and_functional_tests"]["commands"]
    assert '"$rc" -eq 5' in commands


def test_ci_run_calls_the_check_script() -> None:
    text = (REPO_ROOT / ".ci" / "run").read_text()
    assert "scripts/run_checks.sh" in text
    assert "tox" in (REPO_ROOT / "scripts" / "run_checks.sh").read_text()


def test_notebook_requirements_share_the_test_environments_pins() -> None:
    notebook = checker.read_pins((REPO_ROOT / "notebooks" / "requirements_nb.txt").read_text())
    tests = checker.read_pins((REPO_ROOT / "requirements_test.txt").read_text())
    shared = set(notebook) & set(tests)
    assert {"ipykernel"} <= shared
    # matplotlib is a pipeline pin (train_model draws its run reports): one pin for all three.
    pipeline = checker.read_pins((REPO_ROOT / "requirements_pipe.txt").read_text())
    assert "matplotlib" in pipeline and "matplotlib" not in notebook and "matplotlib" not in tests
    assert {name: notebook[name].line for name in shared} == {
        name: tests[name].line for name in shared
    }
    text = (REPO_ROOT / "notebooks" / "requirements_nb.txt").read_text()
    assert "-r ../requirements_pipe.txt" in text
