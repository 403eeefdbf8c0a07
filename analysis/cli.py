"""``trainmap fit``: not built yet (issue 4)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Not available yet: tracked in issue 4."


def main(args: argparse.Namespace) -> int:
    from trainer.errors import UserError

    raise UserError("'trainmap fit' is not available yet (issue 4)")
