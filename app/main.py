"""The dashboard application: one Dash app with a page per view.

Start it with ``trainmap serve --root DIR`` (development server) or, in
production, ``gunicorn app.main:server`` with ``TRAINMAP_ROOT`` set. The demo
and tests call :func:`create_app` directly.

This module only wires things together (as in the Dash Pages examples): the
Flask server with its health endpoint and cache, the navigation bar and the
page container. Each page in ``app/pages/`` holds its own layout and
callbacks; data loading is in ``app/data.py``, figures in ``app/figures.py``.

Environment variables:

``TRAINMAP_ROOT``             root of experiments (required unless given to create_app)
``TRAINMAP_CACHE_DIR``        folder for the file-system cache (default: a folder under
                              ``$XDG_CACHE_HOME`` or ``~/.cache``)
``TRAINMAP_CACHE_REDIS_URL``  use Redis for the cache instead (shared by gunicorn workers)
"""

from __future__ import annotations

import os
import threading
from pathlib import Path

import dash
import flask
from dash import ALL, Dash, Input, Output, State, dcc, html

from app import data
from trainer.errors import UserError

HERE = Path(__file__).resolve().parent
# The top-level assets/ folder (CSS); it sits beside app/ in the checkout and
# in the editable install the Docker image uses.
ASSETS = HERE.parent / "assets"


def default_cache_dir() -> Path:
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base) / "trainmap" / "dashboard"


def cache_config(cache_dir: str | os.PathLike | None, redis_url: str | None) -> dict:
    """flask-caching settings: Redis when a URL is given, else files in ``cache_dir``.

    Entries never expire (timeout 0): every key contains a content fingerprint,
    so an old entry is never wrong, only unused; the threshold bounds the folder.
    """
    if redis_url:
        return {
            "CACHE_TYPE": "RedisCache",
            "CACHE_REDIS_URL": redis_url,
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


def _navbar() -> html.Header:
    links = [
        dcc.Link(
            page["name"],
            href=page["relative_path"],
            id={"type": "app-nav", "path": page["relative_path"]},
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
    for (const key of ["experiment", "n", "run", "metric", "experiments", "match"]) {
        const value = query ? query[key] : null;
        if (value !== null && value !== undefined && value !== "") params.set(key, value);
    }
    const search = params.toString() ? "?" + params.toString() : "";
    if (window.location.search !== search) {
        window.history.replaceState(window.history.state, "", window.location.pathname + search);
    }
    return ids.map(id => id.path + search);
}
"""


def create_app(
    root: str | os.PathLike | None = None,
    cache_dir: str | os.PathLike | None = None,
    redis_url: str | None = None,
    fit_params: dict | None = None,
) -> Dash:
    """Build the dashboard for ``root`` (default ``$TRAINMAP_ROOT``).

    The cache goes to Redis when ``redis_url`` (or ``$TRAINMAP_CACHE_REDIS_URL``)
    is set, else to files in ``cache_dir`` (or ``$TRAINMAP_CACHE_DIR``).
    ``fit_params`` are keyword arguments for ``analysis.fit_experiment`` when a
    user fits from the Model selection page (default: analysis's defaults).
    """
    root = root or os.environ.get("TRAINMAP_ROOT")
    if not root:
        raise UserError("no root of experiments: pass --root DIR or set TRAINMAP_ROOT")
    root_path = Path(root).expanduser().resolve()
    if not root_path.is_dir():
        raise UserError(f"root {root_path} is not a directory")
    cache_path = Path(cache_dir or os.environ.get("TRAINMAP_CACHE_DIR") or default_cache_dir())
    cache_path.mkdir(parents=True, exist_ok=True)
    redis_url = redis_url or os.environ.get("TRAINMAP_CACHE_REDIS_URL") or None

    server = flask.Flask("trainmap")
    server.config["TRAINMAP_ROOT"] = str(root_path)
    data.cache.init_app(server, config=cache_config(cache_path / "views", redis_url))
    # The fit runs in a forked process without Flask's app context; it reads the
    # root from here (one served root per process), never from the browser.
    data.BACKGROUND["root"] = str(root_path)
    data.BACKGROUND["fit_params"] = dict(fit_params or {})

    @server.route("/health")
    def health():
        return flask.jsonify(status="ok", experiments=len(data.experiments(str(root_path))))

    app = Dash(
        "app",  # so the pages import as app.pages.<name>
        server=server,
        use_pages=True,
        pages_folder=str(HERE / "pages"),
        assets_folder=str(ASSETS),
        title="trainmap",
        # Pages mount their components later, so callbacks refer to ids that
        # are not in the initial layout.
        suppress_callback_exceptions=True,
        background_callback_manager=_background_manager(cache_path),
    )
    app.layout = _layout
    app.clientside_callback(
        _SYNC_URL_JS,
        Output({"type": "app-nav", "path": ALL}, "href"),
        Input("app-query", "data"),
        State({"type": "app-nav", "path": ALL}, "id"),
    )
    return app


def serve(root: str | os.PathLike, host: str = "127.0.0.1", port: int = 8050, debug=False):
    """Run the development server (blocking); production uses gunicorn."""
    app = create_app(root)
    print(f"trainmap dashboard for {app.server.config['TRAINMAP_ROOT']} on http://{host}:{port}/")
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
