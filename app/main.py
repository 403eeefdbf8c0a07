"""The dashboard application: one Dash app with a page per view.

Start it with ``trainmap serve --root DIR`` (development server) or, in
production, ``gunicorn app.main:server`` with ``TRAINMAP_ROOT`` set. The demo
and tests call :func:`create_app` directly.

This module only wires things together (as in the Dash Pages examples): the
Flask server with its health endpoint and cache, the navigation bar and the
page container. Each page in ``app/pages/`` holds its own layout and
callbacks; data loading is in ``app/data.py``, figures in one pure
``app/*_figures.py`` module per page.

Environment variables:

``TRAINMAP_ROOT``             root of experiments (required unless given to create_app)
``TRAINMAP_CACHE_DIR``        folder for the file-system cache (default: a folder under
                              ``$XDG_CACHE_HOME`` or ``~/.cache``)
``TRAINMAP_CACHE_REDIS_URL``  use Redis for the cache instead (shared by gunicorn workers)
``TRAINMAP_CACHE_REDIS_PASSWORD``  the Redis password (or give it in the URL)

The cache holds pickles (flask-caching and diskcache load what they find there),
so it is a trust boundary, enforced here: the cache folder is created 0700 and
refused when it, or anything in it, belongs to another user, is writable by
group or others, or is a symlink; Redis is refused without a password unless it
listens on this machine's loopback (docker-compose.yml also keeps it on an
internal network).
"""

from __future__ import annotations

import ipaddress
import json
import logging
import os
import stat
import threading
from pathlib import Path
from urllib.parse import urlsplit

import dash
import flask
from dash import ALL, Dash, Input, Output, State, dcc, html

from trainmap.analysis.settings import FitSettings
from trainmap.app import components, data
from trainmap.trainer import rundir
from trainmap.trainer.errors import UserError

HERE = Path(__file__).resolve().parent
# The top-level assets/ folder (CSS); it sits beside app/ in the checkout and
# in the editable install the Docker image uses.
ASSETS = HERE.parent / "assets"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trainmap" / "dashboard"


def secure_cache_dir(path: str | os.PathLike) -> Path:
    """Create the cache folder 0700, or check an existing one; return it resolved.

    flask-caching's FileSystemCache and diskcache unpickle the files they find,
    so anyone who can write there can run code in the dashboard. The folder and
    everything in it must belong to this user, no folder in it may be writable
    by group or others, no entry may be a symlink, and no folder above it may be
    writable by everyone without the sticky bit (else it could be swapped).
    Raises UserError naming the first problem.
    """
    path = Path(path).expanduser()
    if not path.exists():
        try:
            path.mkdir(parents=True, mode=0o700)
        except OSError as error:
            raise UserError(f"cannot create the cache folder {path}: {error.strerror}") from None
        os.chmod(path, 0o700)
    path = path.resolve()
    if not hasattr(os, "getuid"):  # no owners to check (Windows): the user's own profile
        return path
    uid = os.getuid()

    def refuse(where: str, why: str):
        raise UserError(
            f"refusing the cache folder {path}: {where} {why}; the dashboard loads pickles "
            "from it, so it must be yours and writable by you only "
            "(chmod 700, or set TRAINMAP_CACHE_DIR to a new folder)"
        )

    for parent in path.parents:
        mode = parent.stat().st_mode
        if mode & stat.S_IWOTH and not mode & stat.S_ISVTX:
            refuse(str(parent), "is writable by everyone (no sticky bit)")
    for dirpath, dirnames, filenames in os.walk(path):
        for name in [None, *dirnames, *filenames]:
            entry = Path(dirpath) if name is None else Path(dirpath) / name
            info = entry.lstat()
            if stat.S_ISLNK(info.st_mode):
                refuse(str(entry), "is a symlink")
            if info.st_uid != uid:
                refuse(str(entry), f"belongs to another user (uid {info.st_uid})")
            if stat.S_ISDIR(info.st_mode) and info.st_mode & (stat.S_IWGRP | stat.S_IWOTH):
                refuse(str(entry), "is writable by group or others")
    return path


def check_redis(redis_url: str, password: str | None) -> None:
    """Refuse a Redis without a password unless it is on this machine's loopback.

    Its entries are pickles the dashboard loads, so whoever can write to it can
    run code here: a Redis reachable from elsewhere must need a password.
    """
    try:
        parts = urlsplit(redis_url)
        host, _ = parts.hostname, parts.port  # a bad port raises here, not on first use
    except ValueError as error:
        raise UserError(f"invalid Redis URL {redis_url!r}: {error}") from None
    if parts.scheme not in ("redis", "rediss", "unix"):
        raise UserError(f"invalid Redis URL {redis_url!r}: use redis://HOST:PORT/DB")
    if parts.password or password or parts.scheme == "unix":
        return
    loopback = host == "localhost"
    try:
        loopback = loopback or ipaddress.ip_address(host or "").is_loopback
    except ValueError:
        pass
    if not loopback:
        raise UserError(
            f"refusing Redis at {host} without a password: the dashboard loads pickles from "
            "it; set TRAINMAP_CACHE_REDIS_PASSWORD (or redis://:PASSWORD@host) and keep "
            "Redis on a private network"
        )


def cache_config(
    cache_dir: str | os.PathLike | None, redis_url: str | None, redis_password: str | None = None
) -> dict:
    """flask-caching settings: Redis when a URL is given, else files in ``cache_dir``.

    Entries never expire (timeout 0): every key contains a content fingerprint,
    so an old entry is never wrong, only unused; the threshold bounds the folder.
    """
    if redis_url:
        return {
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": redis_url,
            # with a URL, flask-caching passes only CACHE_OPTIONS to redis.from_url
            "CACHE_OPTIONS": {"password": redis_password} if redis_password else {},
            "CACHE_KEY_PREFIX": "trainmap:",
            "CACHE_DEFAULT_TIMEOUT": 0,
        }
    return {
        "CACHE_TYPE": "FileSystemCache",
        "CACHE_DIR": str(cache_dir),
        "CACHE_THRESHOLD": 5000,
        "CACHE_DEFAULT_TIMEOUT": 0,
    }


def _background_manager(cache_dir: Path):
    """Runs "Fit now" in a separate process (needs the ``diskcache`` package)."""
    try:
        import diskcache
    except ImportError:  # the selection page then shows the CLI command only
        return None
    return dash.DiskcacheManager(diskcache.Cache(str(cache_dir / "background")))


LOG = logging.getLogger("trainmap.app")


def _callback_failed(error: Exception):
    """Every callback's last line of defence: an input it cannot use is no update, not a 500.

    Pages validate what they can (``app.data.parse_n``, ``valid_*``); this catches
    the rest, e.g. a value of the wrong type posted by hand (``n`` as text, ``run``
    as a list, malformed hover data). The failure is logged with its inputs, so a
    real bug still shows up in the server log; the browser keeps what it shows.
    """
    context = dash.callback_context
    LOG.warning(
        "callback %s failed on inputs %s: %s: %s",
        getattr(context, "outputs_list", "?"),
        {k: repr(v)[:80] for k, v in (getattr(context, "inputs", None) or {}).items()},
        type(error).__name__,
        error,
        exc_info=error,
    )
    return None  # Dash turns None into no_update for every output


def _navbar() -> html.Header:
    links = [
        dcc.Link(
            page["name"],
            href=page["relative_path"],
            id={"type": "app-nav", "path": page["relative_path"], "from": "nav"},
            className="nav-link",
        )
        for page in sorted(dash.page_registry.values(), key=lambda p: p.get("order", 99))
    ]
    return html.Header(
        [html.Span("trainmap", className="brand"), html.Nav(links, className="nav")],
        className="topbar",
    )


def _layout() -> html.Div:
    return html.Div(
        [
            _navbar(),
            # What the pages are showing (experiment, n, run, metric). Pages
            # write it; one clientside callback mirrors it into the URL and the
            # nav links, so a view can be shared, reloaded and carried between pages.
            dcc.Store(id="app-query", data={}),
            html.Main(dash.page_container, className="content"),
        ]
    )


# Mirror app-query into the address bar with replaceState (no navigation: the
# page stays as it is) and into every nav link, so switching pages keeps the view.
_SYNC_URL_JS = """
function(query, ids) {
    const params = new URLSearchParams();
    for (const key of KEYS) {
        const value = query ? query[key] : null;
        if (value !== null && value !== undefined && value !== "") params.set(key, value);
    }
    const search = params.toString() ? "?" + params.toString() : "";
    if (window.location.search !== search) {
        window.history.replaceState(window.history.state, "", window.location.pathname + search);
    }
    return ids.map(id => id.path + search);
}
""".replace("KEYS", json.dumps(list(components.QUERY_KEYS)))


def create_app(
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    redis_url: str | None = None,
    fit_params: dict | None = None,
) -> Dash:
    """Build the dashboard for ``root`` (default ``$TRAINMAP_ROOT``).

    The cache goes to Redis when ``redis_url`` (or ``$TRAINMAP_CACHE_REDIS_URL``)
    is set, else to files in ``cache_dir`` (or ``$TRAINMAP_CACHE_DIR``).
    ``fit_params`` change the ``analysis.settings.FitSettings`` a user fits with
    from the Model selection page (default: its defaults); they are checked here.
    """
    root = root or os.environ.get("TRAINMAP_ROOT")
    if not root:
        raise UserError("no root of experiments: pass --root DIR or set TRAINMAP_ROOT")
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise UserError(f"root {root_path} is not a directory")
    cache_path = Path(cache_dir or os.environ.get("TRAINMAP_CACHE_DIR") or default_cache_dir())
    cache_path = secure_cache_dir(cache_path)  # the background fits' diskcache lives here too
    for sub in ("views", "background", "metrics"):
        secure_cache_dir(cache_path / sub)
    # Runs on a read-only volume keep their columnar metrics caches here instead.
    rundir.configure_metrics_cache(spare_dir=cache_path / "metrics")
    redis_url = redis_url or os.environ.get("TRAINMAP_CACHE_REDIS_URL") or None
    redis_password = os.environ.get("TRAINMAP_CACHE_REDIS_PASSWORD") or None
    if redis_url:
        check_redis(redis_url, redis_password)

    server = flask.Flask("trainmap")
    server.config["TRAINMAP_ROOT"] = str(root_path)
    data.cache.init_app(
        server, config=cache_config(cache_path / "views", redis_url, redis_password)
    )
    # The fit runs in a forked process without Flask's app context; it reads the
    # root from here (one served root per process), never from the browser.
    data.BACKGROUND["root"] = str(root_path)
    try:
        data.BACKGROUND["fit_settings"] = FitSettings().replace(**(fit_params or {})).validate()
    except (TypeError, ValueError) as error:
        raise UserError(f"fit settings for the Fit now button: {error}") from None

    @server.route("/health")
    def health():
        return flask.jsonify(status="ok", experiments=len(data.experiments(str(root_path))))

    app = Dash(
        "trainmap.app",  # so the pages import as trainmap.app.pages.<name>
        server=server,
        use_pages=True,
        pages_folder=str(HERE / "pages"),
        assets_folder=str(ASSETS),
        title="trainmap",
        # Pages mount their components later, so callbacks refer to ids that
        # are not in the initial layout.
        suppress_callback_exceptions=True,
        background_callback_manager=_background_manager(cache_path),
        on_error=_callback_failed,
    )
    app.layout = _layout
    app.clientside_callback(
        _SYNC_URL_JS,
        # Nav links and in-page links (components.nav_link) alike.
        Output({"type": "app-nav", "path": ALL, "from": ALL}, "href"),
        Input("app-query", "data"),
        State({"type": "app-nav", "path": ALL, "from": ALL}, "id"),
    )
    return app


def serve(
    root: str | os.PathLike,
    host: str = "127.0.0.1",
    port: int = 8050,
    debug=False,
    access_log: bool = False,
):
    """Run the development server (blocking); production uses gunicorn.

    One line per request drowns the address to open, so the request log is
    off unless ``access_log``; warnings and errors are always shown.
    """
    app = create_app(root)
    if not access_log:
        logging.getLogger("werkzeug").setLevel(logging.WARNING)
    print(
        f"trainmap dashboard for {app.server.config['TRAINMAP_ROOT']}\n"
        f"  open http://{host}:{port}/  (Ctrl-C to stop)",
        flush=True,
    )
    app.run(host=host, port=port, debug=debug)


_APP: Dash | None = None
_APP_LOCK = threading.Lock()


def get_app() -> Dash:
    """The app for ``$TRAINMAP_ROOT``, created on first use (one per process)."""
    global _APP
    with _APP_LOCK:
        if _APP is None:
            _APP = create_app()
        return _APP


def __getattr__(name: str):
    # ``gunicorn app.main:server`` looks up ``server`` here. Building it lazily
    # keeps ``import app.main`` cheap and free of side effects (tests, the demo).
    if name == "server":
        return get_app().server
    if name == "app":
        return get_app()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
