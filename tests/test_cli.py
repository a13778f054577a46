"""Every command's --help: each default said once, no switch shown with a True/False default,
log levels in either case, and a benchmark's --help that prints help instead of running."""
from __future__ import annotations

import re
import subprocess
from typing import Dict, List, Tuple

import pytest

from pipeline import serve_model, train_model
from pipeline.training.run import TrainOptions
from testing_support.stages import PYTHON, REPO_ROOT, stage_env

HELPS: Tuple[Tuple[str, ...], ...] = (
    ("-m", "pipeline.train_model", "--help"),
    ("-m", "pipeline.serve_model", "--help"),
    ("-m", "pipeline.simulate", "--help"),
    ("-m", "pipeline.models", "--help"),
    ("-m", "pipeline.models", "STORE", "rollback", "--help"),
    ("benchmarks/reliability_full.py", "--help"),
    ("benchmarks/bench_train.py", "--help"),
    ("scripts/make_doc_examples.py", "--help"),
)
OPTION = re.compile(r"^  (-\S+)")


def help_text(args: Tuple[str, ...]) -> str:
    done = subprocess.run([PYTHON, *args], cwd=REPO_ROOT, env=stage_env({}),
                          capture_output=True, text=True, timeout=120)
    assert done.returncode == 0, done.stderr
    return done.stdout


def option_helps(text: str) -> Dict[str, str]:
    """Each option's help, joined into one line."""
    found: Dict[str, List[str]] = {}
    current = None
    for line in text.splitlines():
        named = OPTION.match(line)
        if named:
            current = named.group(1).rstrip(",")
            found[current] = [line]
        elif current is not None and line.startswith("    "):
            found[current].append(line)
        else:
            current = None
    return {name: " ".join(" ".join(lines).split()) for name, lines in found.items()}


@pytest.mark.parametrize("args", HELPS, ids=lambda args: " ".join(args[-3:]))
def test_each_default_is_said_once_and_no_switch_shows_one(args: Tuple[str, ...]) -> None:
    helps = option_helps(help_text(args))
    assert helps, "the help lists options"
    for name, text in helps.items():
        assert text.lower().count("default") <= 1, f"{name}: {text}"
        assert "(default: True)" not in text and "(default: False)" not in text, f"{name}: {text}"


def test_train_models_switches_say_what_they_do_without_a_default() -> None:
    helps = option_helps(help_text(HELPS[0]))
    assert helps["--no-report"] == "--no-report write no run report under reports/"
    assert "default" not in helps["--force"]
    assert "(default: the usable CPUs" in helps["--n-jobs"]


@pytest.mark.parametrize("given", ["debug", "DEBUG", "Warning", "info"])
def test_both_stages_take_a_log_level_in_either_case(given: str) -> None:
    _, options, level = train_model.parse_args(["store", "--log-level", given])
    assert isinstance(options, TrainOptions) and level == given.upper()
    parsed = serve_model.parse_options(["store", "--log-level", given])
    assert parsed.log_level == given.lower()


def test_an_unknown_log_level_is_refused_naming_the_choices(
    capsys: pytest.CaptureFixture[str],
) -> None:
    with pytest.raises(SystemExit) as exited:
        train_model.parse_args(["store", "--log-level", "loud"])
    assert exited.value.code == 2
    assert "DEBUG, INFO, WARNING, ERROR (either case)" in capsys.readouterr().err


def test_a_benchmarks_help_prints_help_instead_of_running_it() -> None:
    text = help_text(("benchmarks/reliability_full.py", "--help"))
    assert text.startswith("usage: reliability_full.py")
    assert "reliability tests (full)" not in text
