"""The dashboard's server side: health, callbacks over HTTP, path safety, cache
(file system and a real Redis), the serve command, and no torch import.

Callbacks are exercised the way the browser does it: a POST to
``/_dash-update-component`` through Flask's test client (``call``).
"""

from __future__ import annotations

import json
import os
import shutil
import socket
import subprocess
import sys
import textwrap
import time
import urllib.request
import warnings
from pathlib import Path

import pytest
from test_app_support import EXPERIMENT, make_root

from trainmap.app.testing import callback_request
from trainmap.trainer import rundir

REPO = Path(__file__).resolve().parent.parent


@pytest.fixture(scope="module")
def fitted_root(tmp_path_factory):
    from trainmap import analysis

    root = tmp_path_factory.mktemp("root")
    make_root(root)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis.fit_experiment(root, EXPERIMENT, max_states=3, restarts=1, workers=1)
    return root


@pytest.fixture
def client(fitted_root, tmp_path):
    from trainmap.app.main import create_app

    app = create_app(fitted_root, cache_dir=tmp_path / "cache")
    return app.server.test_client()


def call(client, output: str, values: dict, triggered: str | None = None) -> dict:
    """POST one callback like the browser does; ``output`` is the callback's
    first output ``id.property``, ``values`` maps ``id.property`` to a value."""
    deps = client.get("/_dash-dependencies").get_json()
    body = callback_request(deps, output, values, triggered)
    response = client.post("/_dash-update-component", json=body)
    if response.status_code == 204:  # PreventUpdate / no_update everywhere
        return {}
    assert response.status_code == 200, response.get_data(as_text=True)[:2000]
    return response.get_json()["response"]


def test_health_and_pages(client):
    response = client.get("/health")
    assert response.status_code == 200
    assert response.get_json() == {"status": "ok", "experiments": 1}
    for path in ("/", "/selection", "/map", "/curves", "/map?experiment=..%2F..&n=x"):
        assert client.get(path).status_code == 200
    assert client.get("/_dash-layout").status_code == 200


def test_callbacks_over_http(client, fitted_root):
    from trainmap import analysis

    fit = analysis.latest_fit(str(fitted_root), EXPERIMENT)
    out = call(client, "map-graph.elements", {"map-experiment.value": EXPERIMENT, "map-n.value": 2})
    elements = out["map-graph"]["elements"]
    assert sum("source" not in e["data"] for e in elements) == 2
    assert sum("source" in e["data"] for e in elements) == len(fit.map(2).edges)

    out = call(client, "runs-table.data", {"runs-experiment.value": EXPERIMENT})
    rows = {r["run"]: r for r in out["runs-table"]["data"]}
    assert (
        rows["seed-broken"]["status"] == "broken" and "meta.json" in rows["seed-broken"]["reason"]
    )
    conv = fit.map().convergence_epoch
    assert all(rows[r]["convergence_epoch"] == conv[r] for r in conv)

    values = {
        "curves-experiment.value": EXPERIMENT,
        "curves-metric.value": "eval_acc",
        "curves-run.value": "seed-0",
        "curves-n.value": 3,
        "curves-options.value": ["band", "log"],
        "curves-smoothing.value": 5,
    }
    figure = call(client, "curves-graph.figure", values)["curves-graph"]["figure"]
    assert figure["layout"]["yaxis"]["type"] == "log"
    assert any(s["type"] == "rect" for s in figure["layout"]["shapes"])
    assert [t["name"] for t in figure["data"][:3]] == [
        "all seeds ± std",
        "all seeds mean",
        "seed-0",
    ]

    # CSV downloads: decoded states of the map, and one run with its states.
    csv = call(
        client,
        "map-download.data",
        {"map-experiment.value": EXPERIMENT, "map-n.value": 3, "map-download-button.n_clicks": 1},
        triggered="map-download-button.n_clicks",
    )["map-download"]["data"]
    lines = csv["content"].splitlines()
    # state_name: the name a user gave the state ("" if none); state_caption: the automatic one
    assert lines[0] == "run,epoch,state,state_name,state_caption" and len(lines) == 1 + 8 * 120
    csv = call(
        client,
        "curves-download.data",
        {
            "curves-experiment.value": EXPERIMENT,
            "curves-run.value": "seed-2",
            "curves-n.value": 3,
            "curves-download-button.n_clicks": 1,
        },
        triggered="curves-download-button.n_clicks",
    )["curves-download"]["data"]
    header = csv["content"].splitlines()[0].split(",")
    assert header[:2] == ["epoch", "step"] and header[-3:] == [
        "state",
        "state_name",
        "state_caption",
    ]
    assert "eval_acc" in header


@pytest.mark.parametrize(
    "name", ["..", "../..", "/etc", "..%2F..", "x/../..", ".fits", "outside", "", None]
)
def test_names_from_the_url_cannot_leave_the_root(client, fitted_root, tmp_path, name):
    from trainmap.app import data

    outside = tmp_path / "secret"
    outside.mkdir(exist_ok=True)
    (outside / "seed-0").mkdir(exist_ok=True)
    link = fitted_root / "outside"
    if not link.exists():
        link.symlink_to(outside)  # a symlink inside the root that leads outside
    root = str(fitted_root)
    assert data.valid_experiment(root, name) is None
    assert "outside" not in data.experiments(root)
    fp = data.fingerprint(root, EXPERIMENT)
    assert data.valid_run(root, EXPERIMENT, fp, name) is None
    assert data.load_run_metrics(root, EXPERIMENT, name or "x/..") is None
    # Through HTTP: the callbacks answer with nothing rather than another folder.
    out = call(client, "map-graph.elements", {"map-experiment.value": name, "map-n.value": 2})
    assert out["map-graph"]["elements"] == []
    values = {"curves-experiment.value": EXPERIMENT, "curves-run.value": name}
    values.update({"curves-n.value": 2, "curves-download-button.n_clicks": 1})
    assert call(client, "curves-download.data", values, "curves-download-button.n_clicks") == {}


def test_memoized_loads_follow_the_fingerprint(fitted_root, tmp_path, monkeypatch):
    """Appending a checkpoint changes the key, so the table shows it at once."""
    from trainmap.app import data
    from trainmap.app.main import create_app

    monkeypatch.setattr(data, "FINGERPRINT_TTL", 0.0)  # no grace period in this test
    root = tmp_path / "root"
    shutil.copytree(fitted_root / EXPERIMENT, root / EXPERIMENT, symlinks=True)
    app = create_app(root, cache_dir=tmp_path / "cache")
    with app.server.app_context():
        fp = data.fingerprint(str(root), EXPERIMENT)
        before = {r["run"]: r for r in data.run_summaries(str(root), EXPERIMENT, fp)}
        writer = rundir.RunWriter.reopen(root / EXPERIMENT / "seed-0")
        writer.append({"epoch": 10_000, "step": 10_000, "eval_acc": 1.0})
        writer.finish("completed")
        fp2 = data.fingerprint(str(root), EXPERIMENT)
        assert fp2 != fp
        after = {r["run"]: r for r in data.run_summaries(str(root), EXPERIMENT, fp2)}
        assert after["seed-0"]["checkpoints"] == before["seed-0"]["checkpoints"] + 1
        assert after["seed-0"]["last_epoch"] == 10_000
        # The fit was made before the append: still shown, marked stale.
        overview = data.fit_overview(str(root), EXPERIMENT, fp2)
        assert overview is not None and overview["stale"]


# ------------------------------------------------------------------- Redis


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.fixture
def redis_url():
    port = free_port()
    server = subprocess.Popen(
        ["redis-server", "--port", str(port), "--save", "", "--appendonly", "no",
         "--bind", "127.0.0.1"],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )  # fmt: skip
    try:
        import redis

        client = redis.Redis(port=port)
        deadline = time.time() + 10
        while True:
            try:
                client.ping()
                break
            except redis.ConnectionError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.05)
        yield f"redis://127.0.0.1:{port}/0"
    finally:
        server.terminate()  # by its PID, which we started
        server.wait(timeout=10)


_REDIS_WORKER = textwrap.dedent(
    """
    import json, sys
    root, experiment, redis_url, forbid = sys.argv[1:5]
    if forbid == "forbid":
        # The second process must not read runs or fits: everything from Redis.
        import analysis, trainer.rundir as rundir
        def refuse(*args, **kwargs):
            raise AssertionError("read from disk although the cache holds it")
        rundir.list_runs = refuse
        rundir.load_run = refuse
        analysis.list_fits = refuse
        analysis.load_fit = refuse
    from trainmap.app import data
    from trainmap.app.main import create_app
    app = create_app(root, cache_dir=sys.argv[5], redis_url=redis_url)
    with app.server.app_context():
        fp = data.fingerprint(root, experiment)
        runs = data.run_summaries(root, experiment, fp)
        elements = data.map_view(root, experiment, fp, 2)
        metrics = data.load_run_metrics(root, experiment, "seed-0")
    print(json.dumps({"runs": len(runs), "elements": len(elements), "rows": len(metrics)}))
    """
)


def test_redis_cache_is_shared_between_processes(fitted_root, tmp_path, redis_url):
    import redis

    def worker(forbid: str, cache: str):
        out = subprocess.run(
            [sys.executable, "-c", _REDIS_WORKER, str(fitted_root), EXPERIMENT, redis_url,
             forbid, str(tmp_path / cache)],
            capture_output=True, text=True, cwd=REPO, timeout=120,
        )  # fmt: skip
        assert out.returncode == 0, out.stderr[-3000:]
        return json.loads(out.stdout.strip().splitlines()[-1])

    first = worker("allow", "cache-a")
    keys = redis.Redis.from_url(redis_url).keys("trainmap:*")
    assert len(keys) >= 3, keys  # summaries, fit, map view, run metrics...
    # A second process with its own (empty) file cache dir reads it all from Redis.
    second = worker("forbid", "cache-b")
    assert first == second == {"runs": 9, "elements": second["elements"], "rows": 120}
    assert second["elements"] > 2


# ------------------------------------------------------------ serve command


def test_import_app_does_not_import_torch(fitted_root):
    code = textwrap.dedent(
        f"""
        import sys
        import app, app.main, app.cli, app.data, app.map_figures
        from trainmap.app.main import create_app
        client = create_app({str(fitted_root)!r}, cache_dir={str(fitted_root / ".cache-t")!r}).server.test_client()
        for path in ("/", "/map", "/selection", "/curves", "/health", "/_dash-layout"):
            assert client.get(path).status_code == 200, path
        import trainer.cli
        trainer.cli.build_parser()
        print("torch" in sys.modules)
        """
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO)
    assert out.returncode == 0, out.stderr[-3000:]
    assert out.stdout.strip() == "False"


def test_serve_command(fitted_root, tmp_path):
    bad = subprocess.run(
        [sys.executable, "-m", "trainmap.trainer.cli", "serve", "--root", str(tmp_path / "missing")],
        capture_output=True, text=True, cwd=REPO,
    )  # fmt: skip
    assert bad.returncode == 2 and "is not a directory" in bad.stderr
    port = free_port()
    env = {**os.environ, "TRAINMAP_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("TRAINMAP_CACHE_REDIS_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "trainmap.trainer.cli", "serve", "--root", str(fitted_root),
         "--port", str(port)],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2) as r:
                    assert json.loads(r.read()) == {"status": "ok", "experiments": 1}
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
        with urllib.request.urlopen(f"http://127.0.0.1:{port}/map", timeout=5) as r:
            assert r.status == 200 and b"trainmap" in r.read()
    finally:
        server.terminate()
        server.wait(timeout=10)
    # The address and how to stop stay on screen: no line per request by default.
    output = server.stdout.read().decode()
    assert f"http://127.0.0.1:{port}/" in output and "Ctrl-C to stop" in output
    assert "GET /health" not in output and "GET /map" not in output


def test_serve_access_log_option(fitted_root, tmp_path):
    port = free_port()
    env = {**os.environ, "TRAINMAP_CACHE_DIR": str(tmp_path / "cache")}
    env.pop("TRAINMAP_CACHE_REDIS_URL", None)
    server = subprocess.Popen(
        [sys.executable, "-m", "trainmap.trainer.cli", "serve", "--root", str(fitted_root),
         "--port", str(port), "--access-log"],
        cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT,
    )  # fmt: skip
    try:
        deadline = time.time() + 30
        while True:
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                    break
            except OSError:
                if time.time() > deadline or server.poll() is not None:
                    raise
                time.sleep(0.2)
    finally:
        server.terminate()
        server.wait(timeout=10)
    assert "GET /health" in server.stdout.read().decode()


def test_fit_now_shows_the_analysis_message_when_the_fit_fails(tmp_path):
    """Runs far too short for the features: analysis raises, the page says why."""
    from trainmap.app.main import create_app

    root = tmp_path / "root"
    root.mkdir()
    make_root(root, n_runs=3, n_checkpoints=4, experiment="short")
    params = {"max_states": 2, "restarts": 1, "workers": 1}
    create_app(root, cache_dir=tmp_path / "cache", fit_params=params)
    from trainmap.app.pages import selection

    progress = []
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        fitted, error = selection.fit_now(progress.append, 1, "short")
    assert fitted is dash_no_update()
    text = json.dumps(error.to_plotly_json(), default=lambda c: c.to_plotly_json())
    assert "The fit failed: every fit failed" in text and "too few points" in text
    assert "What to do" in text and f"trainmap fit {root.resolve() / 'short'}" in text
    assert progress[-1][2] == "fit failed"
    assert not (root / "short" / ".fits").exists() or not any((root / "short" / ".fits").iterdir())


def dash_no_update():
    import dash

    return dash.no_update


def _walk(component, inside_loading=False):
    """(component, whether a dcc.Loading wraps it) for a layout tree."""
    from dash import dcc

    yield component, inside_loading
    inside_loading = inside_loading or isinstance(component, dcc.Loading)
    children = getattr(component, "children", None)
    for child in children if isinstance(children, list | tuple) else [children]:
        if hasattr(child, "to_plotly_json"):
            yield from _walk(child, inside_loading)


def test_every_chart_and_table_has_a_loading_state(fitted_root, tmp_path):
    import dash_cytoscape
    from dash import dash_table, dcc

    from trainmap.app.main import create_app

    app = create_app(fitted_root, cache_dir=tmp_path / "cache")
    from trainmap.app.pages import curves, runs, selection, training_map

    slow = (dcc.Graph, dash_table.DataTable, dash_cytoscape.Cytoscape)
    with app.server.app_context():
        for page in (runs, selection, training_map, curves):
            found = [
                (c.id, wrapped)
                for c, wrapped in _walk(page.layout(experiment=EXPERIMENT))
                if isinstance(c, slow)
            ]
            assert found and all(wrapped for _, wrapped in found), (page.__name__, found)


def test_deep_links_to_missing_things_say_so(fitted_root, tmp_path):
    from trainmap.app import components
    from trainmap.app.main import create_app

    app = create_app(fitted_root, cache_dir=tmp_path / "cache")
    root = str(fitted_root)
    with app.server.app_context():
        missing = components.missing_notice(root, "nope", EXPERIMENT, None)
        assert "No experiment named “nope”" in missing.children[0].children
        assert f"showing {EXPERIMENT} instead" in missing.children[0].children
        run = components.missing_notice(root, EXPERIMENT, EXPERIMENT, "seed-99")
        assert "No run named “seed-99” in" in run.children[0].children
        assert components.missing_notice(root, EXPERIMENT, EXPERIMENT, "seed-1").children == []
        assert components.missing_notice(root, None, EXPERIMENT, None).children == []
    # Links between pages keep the whole view, in the URL's key order.
    href = components.page_href("/map", {"run": "seed-1", "log": "1", "x": "y"}, n=3)
    assert href == "/map?n=3&run=seed-1&log=1"
