"""``trainmap demo``: not built yet (issue 6)."""

from __future__ import annotations

import argparse


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.epilog = "Not available yet: tracked in issue 6."


def main(args: argparse.Namespace) -> int:
    from trainer.errors import UserError

    raise UserError("'trainmap demo' is not available yet (issue 6)")
