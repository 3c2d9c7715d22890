"""The ``stopgrad`` command line: parse arguments, run a verb, turn user errors into one line.

Each verb lives in a ``cmd_*`` module exposing ``register(subparsers)``, which adds its parser and
sets ``func``. A user error (bad config, bad file, bad Dataset) prints ``stopgrad: error: ...`` and
exits with status 2, without a traceback; a bug still shows its traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys

from stopgrad import __version__

VERB_MODULES = ("cmd_dynamics", "cmd_train", "cmd_experiment", "cmd_compare", "cmd_figures", "cmd_demo")


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="stopgrad",
        description="Theory and experiment for self-supervised learning without negative pairs.",
    )
    parser.add_argument("--version", action="version", version=f"stopgrad {__version__}")
    sub = parser.add_subparsers(dest="verb", metavar="VERB", required=True)
    for name in VERB_MODULES:
        try:
            module = importlib.import_module(f"stopgrad.{name}")
        except ModuleNotFoundError as exc:
            if exc.name == f"stopgrad.{name}":
                continue  # a verb module not present in this build
            raise
        module.register(sub)
    return parser


def user_errors() -> tuple[type[BaseException], ...]:
    """Exception types that are the user's input, not a bug: reported in one line."""
    from stopgrad.analysis import DatasetError
    from stopgrad.dynamics import ConfigError

    errors: list[type[BaseException]] = [ConfigError, DatasetError]
    try:
        from stopgrad.ssl_models import TrainingError

        errors.append(TrainingError)
    except ImportError:
        pass
    return tuple(errors)


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    try:
        return int(args.func(args) or 0)
    except user_errors() as err:
        print(f"stopgrad: error: {err}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("stopgrad: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
