"""``trainmap serve``: not built yet (issue 5)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Not available yet: tracked in issue 5."


def main(args: argparse.Namespace) -> int:
    from trainer.errors import UserError

    raise UserError("'trainmap serve' is not available yet (issue 5)")
