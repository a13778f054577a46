"""time-to-dispatch: the two stages (train_model, serve_model), the commands (models, simulate),
what both stages share at this level, training only in training/, serving only in api/.

Below: the command-line pieces every command shares (help text and log levels).
"""
from __future__ import annotations

import argparse
from typing import Callable, Sequence


class HelpFormatter(argparse.HelpFormatter):
    """Adds ``(default: X)`` to an option that takes a value, once.

    Not to a switch (its default is only the opposite of what it does), not to an option whose
    help already says its default, nor to one without a default.
    """

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if (action.nargs == 0 or not action.option_strings or "default" in text
                or action.default in (None, argparse.SUPPRESS)):
            return text
        return f"{text} (default: %(default)s)"


def log_level(choices: Sequence[str]) -> Callable[[str], str]:
    """An argparse type accepting a log level in either case, spelt as ``choices`` spell it."""
    spelt = {choice.lower(): choice for choice in choices}

    def parse(text: str) -> str:
        try:
            return spelt[text.lower()]
        except KeyError:
            raise argparse.ArgumentTypeError(
                f"must be one of {', '.join(choices)} (either case), not {text!r}") from None

    return parse
