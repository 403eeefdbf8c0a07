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
        "For several workers use gunicorn: TRAINMAP_ROOT=DIR gunicorn trainmap.app.main:server. "
        "Cache: $TRAINMAP_CACHE_DIR (files) or $TRAINMAP_CACHE_REDIS_URL (Redis)."
    )


def check_address(host: str, port: int) -> None:
    """Refuse, in one line, a host that does not resolve or a port that cannot be bound.

    Checked before anything else starts (the demo trains first), so a typo costs
    nothing; the server binds again for real when it starts.
    """
    import errno
    import socket

    from trainmap.trainer.errors import UserError

    if not 0 < port < 65536:
        raise UserError(f"invalid port {port}: use 1..65535")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError) as error:
        raise UserError(f"invalid --host {host!r}: {error}") from None
    family, kind, proto, _, address = infos[0]
    with socket.socket(family, kind, proto) as probe:
        probe.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            probe.bind(address)
        except OSError as error:
            reason = "port in use" if error.errno == errno.EADDRINUSE else error.strerror
            raise UserError(f"cannot listen on {host}:{port}: {reason}") from None


def main(args: argparse.Namespace) -> int:
    from trainmap.trainer.errors import UserError

    if not args.root:
        raise UserError("no root of experiments: pass --root DIR or set TRAINMAP_ROOT")
    if not os.path.isdir(args.root):
        raise UserError(f"root {args.root} is not a directory")
    check_address(args.host, args.port)
    from trainmap.app.main import serve

    serve(args.root, host=args.host, port=args.port, debug=args.debug, access_log=args.access_log)
    return 0
