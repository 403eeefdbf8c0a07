"""The ``trainmap`` command line.

Each subcommand lives with the package that owns it; this module only builds the
parser and dispatches. A subcommand module provides ``add_arguments(parser)``
and ``main(args) -> int``, and must import cheaply (no torch at import time),
so ``trainmap --help`` and ``trainmap runs list`` stay fast.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys

from trainmap.trainer.errors import UserError

# name -> (module, one-line help)
SUBCOMMANDS = {
    "train": (
        "trainmap.trainer.train_cli",
        "train a built-in task across seeds into ROOT/EXPERIMENT",
    ),
    "fit": ("trainmap.analysis.cli", "fit and select HMMs over an experiment's runs"),
    "compare": (
        "trainmap.analysis.compare_cli",
        "compare experiments' training maps and convergence",
    ),
    "predict": ("trainmap.analysis.predict_cli", "predict when a run still training will converge"),
    "glossary": (
        "trainmap.analysis.glossary",
        "what each metric and term means (display names, units)",
    ),
    "serve": ("trainmap.app.cli", "serve the dashboard for a root of experiments"),
    "demo": (
        "trainmap.app.demo",
        "train modadd with and without LayerNorm, fit, compare and serve the dashboard",
    ),
    "runs": ("trainmap.trainer.runs_cli", "inspect run directories (runs list ROOT)"),
    "screenshots": (
        "trainmap.app.screenshots",
        "write the documentation's screenshots from the fitted runs under ROOT (needs selenium)",
    ),
    "reproduce": (
        "trainmap.trainer.reproduce",
        "check the paper's claims on the quick presets; write docs/reproduction.md",
    ),
}


class _Parser(argparse.ArgumentParser):
    """argparse, but a mistake is one line (the usage is one ``--help`` away)."""

    def error(self, message: str):
        self.exit(2, f"{self.prog}: error: {message} (see {self.prog} --help)\n")


def build_parser() -> argparse.ArgumentParser:
    parser = _Parser(
        prog="trainmap",
        description="See how your models learn: track, fit training maps, explore them.",
    )
    parser.add_argument("--version", action="version", version="trainmap 0.1.0")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name, (module_name, help_text) in SUBCOMMANDS.items():
        sub = subparsers.add_parser(name, help=help_text, description=help_text)
        module = importlib.import_module(module_name)
        module.add_arguments(sub)
        sub.set_defaults(handler=module.main)
    return parser


def run_command(args: argparse.Namespace) -> int:
    try:
        return int(args.handler(args) or 0)
    except ModuleNotFoundError as error:
        if error.name != "torch":
            raise
        # the dashboard's Docker image (trainmap-dashboard) is built without torch
        raise UserError(
            f"`trainmap {args.command}` needs torch, which is not installed: pip install torch "
            "(in Docker, run it in the trainmap image, not trainmap-dashboard)"
        ) from None


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help()
        return 2
    try:
        return run_command(args)
    except UserError as error:
        # one line, whatever the message holds (some name a command on a line of its own)
        print(f"trainmap {args.command}: error: {' '.join(str(error).split())}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print(f"trainmap {args.command}: interrupted", file=sys.stderr)
        return 130
    except Exception as error:  # a bug, or a failure no check foresaw: still one line
        if os.environ.get("TRAINMAP_DEBUG"):
            raise
        text = " ".join(str(error).split())[:300]
        print(
            f"trainmap {args.command}: unexpected error: {type(error).__name__}: {text} "
            "(TRAINMAP_DEBUG=1 shows the traceback)",
            file=sys.stderr,
        )
        return 1


if __name__ == "__main__":
    sys.exit(main())
