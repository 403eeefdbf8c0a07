"""``trainmap train``: not built yet (issue 3)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Not available yet: tracked in issue 3."


def main(args: argparse.Namespace) -> int:
    from trainer.errors import UserError

    raise UserError("'trainmap train' is not available yet (issue 3)")
