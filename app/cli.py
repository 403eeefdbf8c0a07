"""``trainmap serve``: serve the dashboard for a root of experiments.

Imports only argparse at module level so ``trainmap --help`` stays fast; Dash
is imported when the command runs.
"""

from __future__ import annotations

import argparse
import os


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        default=os.environ.get("TRAINMAP_ROOT"),
        help="root folder of experiments (default: $TRAINMAP_ROOT)",
    )
    parser.add_argument("--host", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8050, help="port (default 8050)")
    parser.add_argument("--debug", action="store_true", help="Dash debug mode (reloads on edits)")
    parser.add_argument(
        "--access-log", action="store_true", help="log every HTTP request (off by default)"
    )
    parser.epilog = (
        "For several workers use gunicorn: TRAINMAP_ROOT=DIR gunicorn app.main:server. "
        "Cache: $TRAINMAP_CACHE_DIR (files) or $TRAINMAP_CACHE_REDIS_URL (Redis)."
    )


def main(args: argparse.Namespace) -> int:
    from trainer.errors import UserError

    if not args.root:
        raise UserError("no root of experiments: pass --root DIR or set TRAINMAP_ROOT")
    if not os.path.isdir(args.root):
        raise UserError(f"root {args.root} is not a directory")
    if not 0 < args.port < 65536:
        raise UserError(f"invalid port {args.port}")
    from app.main import serve

    serve(args.root, host=args.host, port=args.port, debug=args.debug, access_log=args.access_log)
    return 0
