"""The deployment configuration: bodywork.yaml, IAM policies, the cronjob script, CI and tox."""
from __future__ import annotations

import configparser
import json
import os
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path
from typing import Any, Dict, List, Optional, Set, Tuple

import pytest

from testing_support.stages import REPO_ROOT
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

locks = load_script("locks")


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


def _marked(name: str) -> List[str]:
    pins = locks.read_pins(REQUIREMENTS_PIPE.read_text(encoding="utf-8"))
    return locks.stage_inputs(pins)[name]


def test_stage_requirements_are_exactly_the_stage_locks(stages: Dict[str, Any]) -> None:
    for name in ("train_model", "serve_model"):
        lock = locks.read_pins((REPO_ROOT / "constraints" / f"{name}_py39.txt").read_text())
        listed = [str(r) for r in stages[name]["requirements"]]
        assert listed == locks.locked_lines(lock), f"bodywork.yaml {name} is not its lock"
        assert all(re.fullmatch(r"[a-z0-9-]+==[^=\s]+", line) for line in listed)


def test_locks_agree_with_the_requirements_files_and_each_other() -> None:
    assert locks.agreement_problems() == []


@pytest.mark.parametrize("name", ["train_model", "serve_model"])
def test_stage_pins_cover_exactly_what_the_stage_imports(
    stages: Dict[str, Any], name: str
) -> None:
    marked = _marked(name)
    required = {locks.parse_line(r).name for r in marked}  # type: ignore[union-attr]
    imported = distributions_of(third_party_imports(stage_file(stages[name])))
    missing = imported - dependency_closure(marked)
    assert not missing, f"{name} imports {missing} without installing them"
    assert required <= imported, f"{name} installs {required - imported} and never imports them"


def test_serve_stage_installs_no_training_library(stages: Dict[str, Any]) -> None:
    listed = {locks.parse_line(str(r)).name for r in stages["serve_model"]["requirements"]}
    assert not listed & {"scikit-learn", "pandas", "pandera", "scipy", "polars", "matplotlib"}


def test_import_check_sees_a_dependency_left_out() -> None:
    closure = dependency_closure(["fastapi==0.128.8", "uvicorn[standard]==0.39.0"])
    assert {"starlette", "pydantic", "uvloop", "httptools"} <= closure
    assert "orjson" not in closure, "only requested extras are followed"
    assert "uvloop" not in dependency_closure(["uvicorn==0.39.0"])


def test_requirements_pipe_pins_every_line_exactly_for_named_stages() -> None:
    pins = locks.read_pins(REQUIREMENTS_PIPE.read_text(encoding="utf-8"))
    assert pins and all(pin.version for pin in pins.values())
    assert all(pin.stages and set(pin.stages) <= set(locks.STAGES) for pin in pins.values())


# The lock tool itself -----------------------------------------------------------------------

def test_requirement_lines_parse_names_versions_extras_and_stage_markers() -> None:
    pin = locks.parse_line("Uvicorn[standard] == 0.39.0   # stages: serve_model, train_model")
    assert pin == locks.Pin("uvicorn", "0.39.0", "Uvicorn[standard]==0.39.0",
                            ("serve_model", "train_model"))
    assert locks.parse_line("click<8.1").version == ""  # type: ignore[union-attr]
    assert locks.parse_line("# a comment") is None and locks.parse_line("-r x.txt") is None
    marker = locks.parse_line("typing-extensions==4.16.0 ; python_full_version < '3.13'")
    assert marker is not None and marker.version == "4.16.0"


def test_stage_locks_target_the_images_python_and_wheels() -> None:
    for lock in locks.STAGE_LOCKS + (locks.PIPELINE, locks.DEPLOY):
        target = lock.target()
        assert target[target.index("--python-version") + 1] == "3.9"
        assert target[target.index("--python-platform") + 1] == "x86_64-manylinux_2_31"
    assert locks.PIPELINE.target()[-2:] == ["--only-binary", ":all:"]


def test_lock_comparison_names_every_added_lacking_and_changed_package() -> None:
    written = locks.read_pins("alpha==1.0\nbeta==1.0\ngamma==2.0\n")
    resolved = locks.read_pins("Alpha==1.0\nbeta==1.1\ndelta==0.1\n")
    assert locks.differences("x", written, resolved) == [
        "x: has beta==1.1, expected ==1.0", "x: adds delta==0.1", "x: lacks gamma==2.0",
    ]
    assert locks.pins_held("y", locks.read_pins("beta==1.0\nzeta==3\n"), written) == [
        "y: pins zeta==3 but the lock holds nothing",
    ]


def _wheel(folder: Path, name: str, version: str, requires: Tuple[str, ...] = ()) -> None:
    """A minimal pure-Python wheel with only its metadata, for an offline index."""
    info = f"{name}-{version}.dist-info"
    metadata = f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n" + "".join(
        f"Requires-Dist: {r}\n" for r in requires)
    with zipfile.ZipFile(folder / f"{name}-{version}-py3-none-any.whl", "w") as wheel:
        wheel.writestr(f"{info}/METADATA", metadata)
        wheel.writestr(f"{info}/WHEEL", "Wheel-Version: 1.0\nGenerator: test\n"
                       "Root-Is-Purelib: true\nTag: py3-none-any\n")
        wheel.writestr(f"{info}/RECORD", "")


@pytest.fixture
def index_with_a_newer_release(tmp_path: Path) -> List[str]:
    """An offline index where alpha 1.0 needs beta, and beta 1.1 came out after the lock."""
    wheels = tmp_path / "wheels"
    wheels.mkdir()
    _wheel(wheels, "alpha", "1.0", ("beta",))
    _wheel(wheels, "beta", "1.0")
    _wheel(wheels, "beta", "1.1")
    return ["--no-index", "--find-links", str(wheels)]


def _lock(folder: Path, text: str) -> "locks.Lock":
    lock = locks.Lock("fake_py39", (), "3.9", locks.IMAGE_PLATFORM, directory=folder)
    lock.path.write_text(text)
    return lock


def test_a_newer_transitive_release_changes_nothing_for_a_complete_lock(
    tmp_path: Path, index_with_a_newer_release: List[str]
) -> None:
    lock = _lock(tmp_path, "alpha==1.0\nbeta==1.0\n")
    assert locks.resolves_to_itself(lock, index_with_a_newer_release) == []
    # What a fresh resolution (the old check) would have picked instead:
    status, text, _ = locks.uv_compile(lock, "alpha==1.0\n", index_with_a_newer_release)
    assert status == 0 and locks.read_pins(text)["beta"].version == "1.1"


def test_an_incomplete_or_uninstallable_lock_is_reported(
    tmp_path: Path, index_with_a_newer_release: List[str]
) -> None:
    incomplete = _lock(tmp_path, "alpha==1.0\n")
    assert locks.resolves_to_itself(incomplete, index_with_a_newer_release) == [
        "fake_py39 resolved as written: adds beta==1.1",
    ]
    missing = _lock(tmp_path, "alpha==1.0\nbeta==9.9\n")
    (problem,) = locks.resolves_to_itself(missing, index_with_a_newer_release)
    assert problem.startswith("fake_py39: does not install as written for CPython 3.9")
    assert "beta" in problem


def test_outdated_names_newer_releases_without_failing(
    tmp_path: Path, index_with_a_newer_release: List[str]
) -> None:
    inputs = tmp_path / "requirements.in"
    inputs.write_text("alpha==1.0\n")
    lock = _lock(tmp_path, "alpha==1.0\nbeta==1.0\n")._replace(inputs=(inputs,))
    assert locks.outdated(index_with_a_newer_release, [lock]) == ["fake_py39: beta 1.0 -> 1.1"]


def test_newer_releases_are_reported_by_a_scheduled_job_outside_the_checks(
    circleci: Dict[str, Any]
) -> None:
    assert "python scripts/locks.py outdated" in _job_commands(circleci, "report-newer-releases")
    workflows = circleci["workflows"]
    (name,) = [n for n, w in workflows.items()
               if isinstance(w, dict) and "report-newer-releases" in json.dumps(w.get("jobs"))]
    (trigger,) = workflows[name]["triggers"]
    assert trigger["schedule"]["filters"]["branches"] == {"only": "master"}
    assert "report-newer-releases" not in json.dumps(workflows["check"])


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


def check_jsonschema() -> Optional[str]:
    """check-jsonschema beside this Python (tox -e deployment_config installs it) or on PATH."""
    beside = Path(sys.executable).with_name("check-jsonschema")
    return str(beside) if beside.exists() else shutil.which("check-jsonschema")


def test_deployment_config_validates_this_file_against_circlecis_schema() -> None:
    commands = _tox()["testenv:deployment_config"]["commands"]
    assert "check-jsonschema --builtin-schema vendor.circle-ci .circleci/config.yml" in commands
    assert "circleci_schema" in commands
    deploy = (REPO_ROOT / "requirements_deploy.txt").read_text()
    assert "check-jsonschema" in locks.read_pins(deploy)


@pytest.mark.skipif(check_jsonschema() is None,
                    reason="check-jsonschema is installed by tox -e deployment_config only")
def test_circleci_schema_check_passes_this_file_and_refuses_a_broken_one(
    circleci: Dict[str, Any], tmp_path: Path
) -> None:
    broken = json.loads(json.dumps(circleci))
    job = broken["jobs"]["static-code-analysis"]
    job["stepz"] = job.pop("steps")
    (tmp_path / "config.yml").write_text(json.dumps(broken))
    results = {}
    for name, path in (("ours", REPO_ROOT / ".circleci" / "config.yml"),
                       ("broken", tmp_path / "config.yml")):
        results[name] = subprocess.run(
            [str(check_jsonschema()), "--builtin-schema", "vendor.circle-ci", str(path)],
            capture_output=True, text=True, timeout=120, check=False)
    assert results["ours"].returncode == 0, results["ours"].stdout + results["ours"].stderr
    assert results["broken"].returncode == 1
    assert "static-code-analysis" in results["broken"].stdout


def test_ci_installs_promtool_where_the_tests_run(circleci: Dict[str, Any]) -> None:
    tests_job = _job_commands(circleci, "unit-and-functional-tests")
    assert "apt-get install" in tests_job and "prometheus" in tests_job
    assert tests_job.index("prometheus") < tests_job.index("tox run -e unit_and_functional_tests")
    ci_run = (REPO_ROOT / ".ci" / "run").read_text()
    assert "command -v promtool" in ci_run and "wanted+=(prometheus)" in ci_run


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
    notebook = locks.read_pins((REPO_ROOT / "notebooks" / "requirements_nb.txt").read_text())
    tests = locks.read_pins((REPO_ROOT / "requirements_test.txt").read_text())
    shared = set(notebook) & set(tests)
    assert {"ipykernel"} <= shared
    # matplotlib is a pipeline pin (train_model draws its run reports): one pin for all three.
    pipeline = locks.read_pins((REPO_ROOT / "requirements_pipe.txt").read_text())
    assert "matplotlib" in pipeline and "matplotlib" not in notebook and "matplotlib" not in tests
    assert {name: notebook[name].version for name in shared} == {
        name: tests[name].version for name in shared
    }
    text = (REPO_ROOT / "notebooks" / "requirements_nb.txt").read_text()
    assert "-r ../requirements_pipe.txt" in text
