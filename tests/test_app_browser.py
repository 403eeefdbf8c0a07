"""The dashboard in a real browser (headless Debian chromium through dash_duo).

Run with ``pytest --headless``. One fixture experiment (8 synthetic runs x 120
checkpoints plus a broken run) is fitted once through the real analysis API
(max_states 4, restarts 2) and served in-process; the tests open every page,
hover map edges and nodes, click another n, select runs and reload deep links,
and check that the browser console stays free of errors.
"""

from __future__ import annotations

import os
import shutil
import tempfile
import time
import warnings
from urllib.parse import parse_qs, urlparse

import pytest
from selenium.common.exceptions import StaleElementReferenceException
from selenium.webdriver.common.action_chains import ActionChains
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.by import By
from test_app_support import EXPERIMENT, make_root

from trainmap.app import evidence
from trainmap.app.browser import (  # shared with trainmap screenshots
    cy_elements,
    hover_edge,
    wait_for,
)
from trainmap.trainer import rundir

pytestmark = pytest.mark.browser
REFRESH_WAIT = 10  # the runs page polls every 3 s


@pytest.fixture(scope="module", autouse=True)
def xdg_dirs():
    """Chromium writes a profile and caches under these; keep them out of the home.

    Autouse and module-scoped, so it is set before dash_duo starts the browser.
    """
    scratch = tempfile.mkdtemp(prefix="trainmap-xdg-")
    saved = {key: os.environ.get(key) for key in ("XDG_CONFIG_HOME", "XDG_CACHE_HOME")}
    os.environ["XDG_CONFIG_HOME"] = os.path.join(scratch, "config")
    os.environ["XDG_CACHE_HOME"] = os.path.join(scratch, "cache")
    yield
    for key, value in saved.items():
        if value is None:
            os.environ.pop(key, None)
        else:
            os.environ[key] = value
    shutil.rmtree(scratch, ignore_errors=True)


@pytest.fixture(scope="module")
def fixture_root(tmp_path_factory):
    from trainmap import analysis

    root = tmp_path_factory.mktemp("root")
    truth = make_root(root)
    with warnings.catch_warnings():  # "runs excluded: seed-broken" is expected
        warnings.simplefilter("ignore")
        analysis.fit_experiment(root, EXPERIMENT, max_states=4, restarts=2, workers=2)
    return root, truth


@pytest.fixture
def dash_app(fixture_root, tmp_path):
    from trainmap import analysis
    from trainmap.app.main import create_app

    root, truth = fixture_root
    fit = analysis.latest_fit(str(root), EXPERIMENT)  # what the pages will show
    assert fit is not None and not fit.stale and len(fit.maps) == 4
    return create_app(root, cache_dir=tmp_path / "cache"), truth, fit


def other_n(fit) -> int:
    """A feasible n other than the selected one (2, or 3 if 2 is selected)."""
    return 2 if fit.selected_n != 2 else 3


# ----------------------------------------------------------------- helpers


def cy_count(dash_duo, selector: str) -> int:
    return cy_elements(dash_duo.driver, selector)


def wait_map(dash_duo, nodes: int, edges: int, timeout=10):
    dash_duo.wait_for_element("#map-graph canvas", timeout=timeout)
    deadline = time.time() + timeout
    while time.time() < deadline:
        got = (cy_count(dash_duo, "node"), cy_count(dash_duo, "edge"))
        if got == (nodes, edges):
            return
        time.sleep(0.1)
    raise AssertionError(f"map shows {got} nodes/edges, expected {(nodes, edges)}")


def query(dash_duo) -> dict:
    parsed = urlparse(dash_duo.driver.current_url)
    return {k: v[0] for k, v in parse_qs(parsed.query).items()}


def click_selection_point(dash_duo, graph_id: str, n: int):
    """Click the BIC marker for ``n`` like a user: at its position on screen."""
    points = dash_duo.driver.find_elements(
        By.CSS_SELECTOR, f"#{graph_id} .scatterlayer .trace:nth-of-type(2) .points path"
    )
    assert len(points) >= n, f"expected >= {n} BIC points, found {len(points)}"
    ActionChains(dash_duo.driver).move_to_element(points[n - 1]).click().perform()


def drag_zoom(dash_duo, selector: str):
    """Drag a box over the middle of a Plotly plot area, as a user zooms."""
    left, top, width, height = dash_duo.driver.execute_script(
        "const el = document.querySelector(arguments[0]); el.scrollIntoView({block: 'center'});"
        "const b = el.getBoundingClientRect(); return [b.left, b.top, b.width, b.height];",
        selector,
    )
    actions = ActionBuilder(dash_duo.driver)
    pointer = actions.pointer_action
    pointer.move_to_location(int(left + width * 0.3), int(top + height * 0.2))
    pointer.pointer_down()
    pointer.move_to_location(int(left + width * 0.5), int(top + height * 0.5))
    pointer.move_to_location(int(left + width * 0.6), int(top + height * 0.8))
    pointer.pointer_up()
    actions.perform()


def nav(dash_duo, name: str):
    dash_duo.driver.find_element(By.LINK_TEXT, name).click()


def upstream_unmount_race(entry: dict) -> bool:
    """dash-cytoscape 1.0.2 sometimes logs this when a page with a graph unmounts.

    Cytoscape's element collections call ``cy().notify`` from a queued style
    update after react-cytoscapejs has destroyed the instance (seen in about 1
    of 3 journeys, on a clean main too, never with a visible effect). It is the
    only console error allowed, and only from the dash_cytoscape bundle.
    """
    message = entry.get("message", "")
    return "dash_cytoscape" in message and "reading 'notify'" in message


def assert_no_console_errors(dash_duo):
    errors = [
        entry
        for entry in dash_duo.get_logs()
        if entry.get("level") == "SEVERE" and not upstream_unmount_race(entry)
    ]
    assert errors == [], errors


# ------------------------------------------------------------------- tests


def test_journey_runs_map_selection_curves(dash_duo, dash_app, tmp_path):
    app, truth, fit = dash_app
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.start_server(app)

    # Runs: every run, the broken one with its reason, convergence from the fit.
    dash_duo.wait_for_contains_text("#runs-table", "seed-broken", timeout=10)
    table = dash_duo.find_element("#runs-table").text
    assert "broken" in table and "meta.json is not valid JSON" in table
    assert "completed" in table
    convergence = fit.map().convergence_epoch
    assert any(str(c) in table for c in convergence.values() if c is not None)
    dash_duo.wait_for_contains_text("#runs-counts", "9 runs")
    # Select seed-1 (rows sorted by name: seed-0, seed-1, ...).
    radios = dash_duo.driver.find_elements(By.CSS_SELECTOR, "#runs-table input[type=radio]")
    radios[1].click()
    wait_for(lambda: query(dash_duo).get("run") == "seed-1", message="run in the URL")

    # Training map: the fit's selected n, with the run highlighted.
    nav(dash_duo, "Training map")
    tmap = fit.map()
    wait_map(dash_duo, nodes=len(tmap.states), edges=len(tmap.edges))
    assert dash_duo.find_element("#map-run").text.strip().startswith("seed-1")
    on_path = set(tmap.paths["seed-1"])
    wait_for(lambda: cy_count(dash_duo, "node.onpath") == len(on_path), message="highlighted path")
    # Marks: start states, end states and detours, as the fit says.
    assert cy_count(dash_duo, "node.start") == sum(s.start_runs > 0 for s in tmap.states) >= 1
    assert cy_count(dash_duo, "node.end") == sum(s.end_runs > 0 for s in tmap.states) >= 1
    assert cy_count(dash_duo, "node.detour") == sum(s.is_detour for s in tmap.states)
    assert tmap.edges, "the fixture's selected map should have transitions"

    # Hover an edge with a real pointer move: its features, arrows and z changes.
    edge = max(tmap.edges, key=lambda e: e.n_runs)
    hover_edge(dash_duo.driver, f"e{edge.source}-{edge.target}")
    dash_duo.wait_for_contains_text("#map-hover-edge", f"{edge.n_runs} runs take it", timeout=5)
    text = dash_duo.find_element("#map-hover-edge").text
    top = edge.top_features[0]
    assert top.feature in text
    assert ("↑" if top.delta_z > 0 else "↓") in text and f"{top.delta_z:+.2f} z" in text
    if edge.mean_convergence_epoch is not None:
        assert f"{round(edge.mean_convergence_epoch, 1)}" in text
    edge_share = evidence.stability_share(
        fit.bootstrap.get("edge_stability"), f"{edge.source}->{edge.target}"
    )
    assert dash_duo.find_element("#map-edge-stability").text == evidence.stability_words(
        edge_share, fit.bootstrap.get("n_resamples")
    )

    # Hover a node (a detour if there is one) through Cytoscape's own event.
    state = next((s for s in tmap.states if s.is_detour), tmap.states[-1])
    dash_duo.driver.execute_script(
        "document.getElementById('map-graph')._cyreg.cy.getElementById(arguments[0])"
        ".emit('mouseover');",
        f"s{state.state}",
    )
    dash_duo.wait_for_contains_text("#map-hover-node", "occupancy", timeout=5)
    node_text = dash_duo.find_element("#map-hover-node").text
    assert f"S{state.state}" in node_text and f"{state.occupancy:.1%}" in node_text
    assert ("detour" in node_text) == state.is_detour
    best = max(state.profile.items(), key=lambda kv: abs(kv[1]))
    assert best[0] in node_text and f"{best[1]:+.2f} z" in node_text
    # The detour test in words, in the hover and in the evidence panel below the map.
    words = evidence.detour_words(f"S{state.state}", state.detour)
    assert dash_duo.find_element("#map-node-detour").text == words
    assert dash_duo.find_element("#evidence-regression").text == evidence.regression_words(
        tmap.regression
    )
    tested = [s for s in tmap.states if 0 < s.visited_runs < len(tmap.paths)]
    items = dash_duo.driver.find_elements(By.CSS_SELECTOR, "#evidence-detours li")
    assert [i.text for i in items] == [
        evidence.detour_words(f"S{s.state}", s.detour) for s in tested
    ]
    # The bootstrap over runs: how often each n is selected, each state found.
    boot = fit.bootstrap
    assert boot.get("n_resamples"), "8 runs are enough for the bootstrap"
    assert dash_duo.find_element("#evidence-n").text == evidence.n_distribution_words(
        boot, fit.selected_n
    )
    share = evidence.stability_share(boot.get("state_stability"), state.state)
    assert dash_duo.find_element("#map-node-stability").text == evidence.stability_words(
        share, boot["n_resamples"]
    )
    opacity = dash_duo.driver.execute_script(
        "return document.getElementById('map-graph')._cyreg.cy"
        ".getElementById(arguments[0]).data('opacity');",
        f"s{state.state}",
    )
    assert opacity == evidence.opacity(share)

    # A screenshot of map plus hover panel renders (tests never rewrite docs/).
    time.sleep(0.5)
    screenshot = tmp_path / "training-map.png"
    dash_duo.find_element(".map-row").screenshot(str(screenshot))
    assert screenshot.stat().st_size > 10_000

    # Click another n on the small selection plot: the map follows.
    n = other_n(fit)
    click_selection_point(dash_duo, "map-selection", n)
    wait_map(dash_duo, nodes=n, edges=len(fit.map(n).edges))
    wait_for(lambda: query(dash_duo).get("n") == str(n), message="n in the URL")

    # Metric curves: the chosen run arrives through the URL, shaded by its states.
    nav(dash_duo, "Metric curves")
    dash_duo.wait_for_element("#curves-graph .main-svg", timeout=10)
    shapes = wait_for(
        lambda: dash_duo.driver.execute_script(
            "const g = document.querySelector('#curves-graph .js-plotly-plot');"
            "return g && g.layout && g.layout.shapes ? g.layout.shapes.length : 0;"
        ),
        message="shaded phases",
    )
    path = fit.map(n).paths["seed-1"]
    segments = 1 + sum(a != b for a, b in zip(path[:-1], path[1:]))
    assert shapes == 2 * segments - 1  # a rectangle per stretch, a line per transition
    rendered = dash_duo.driver.find_elements(By.CSS_SELECTOR, "#curves-graph .shapelayer path")
    assert len(rendered) >= shapes
    assert query(dash_duo)["run"] == "seed-1" and query(dash_duo)["n"] == str(n)

    # PNG export: the modebar's camera button is there and Plotly's toImage works.
    assert dash_duo.driver.execute_script(
        "return document.querySelectorAll('#curves-graph [data-title^=\"Download plot\"]').length"
    )
    dash_duo.driver.set_script_timeout(20)
    png = dash_duo.driver.execute_async_script(
        "const done = arguments[arguments.length - 1];"
        "const g = document.querySelector('#curves-graph .js-plotly-plot');"
        "Plotly.toImage(g, {format: 'png', width: 600, height: 400})"
        ".then(done, e => done('error: ' + e));"
    )
    assert png.startswith("data:image/png;base64,") and len(png) > 5000
    assert_no_console_errors(dash_duo)


def test_deep_links_reload(dash_duo, dash_app):
    app, truth, fit = dash_app
    dash_duo.start_server(app)
    base = dash_duo.server_url

    dash_duo.driver.get(f"{base}/map?experiment={EXPERIMENT}&n=3&run=seed-2&metric=l2")
    tmap = fit.map(3)
    wait_map(dash_duo, nodes=3, edges=len(tmap.edges))
    wait_for(
        lambda: cy_count(dash_duo, "node.onpath") == len(set(tmap.paths["seed-2"])),
        message="seed-2 highlighted",
    )
    # Reload: the same view comes back, and the metric survives on the way.
    dash_duo.driver.refresh()
    wait_map(dash_duo, nodes=3, edges=len(tmap.edges))
    assert query(dash_duo) == {"experiment": EXPERIMENT, "n": "3", "run": "seed-2", "metric": "l2"}

    dash_duo.driver.get(f"{base}/curves?experiment={EXPERIMENT}&n=3&run=seed-2&metric=l2")
    dash_duo.wait_for_contains_text("#curves-metric", "l2", timeout=10)
    dash_duo.wait_for_contains_text("#curves-run", "seed-2")
    wait_for(
        lambda: dash_duo.driver.execute_script(
            "const g = document.querySelector('#curves-graph .js-plotly-plot');"
            "return g && g.layout && g.layout.yaxis && g.layout.yaxis.title"
            " && g.layout.yaxis.title.text === 'l2' && (g.layout.shapes || []).length > 0;"
        ),
        message="l2 curve with phases",
    )

    # Model selection: a click on another n chooses it and goes into the URL.
    dash_duo.driver.get(f"{base}/selection?experiment={EXPERIMENT}")
    dash_duo.wait_for_contains_text("#selection-chosen", f"n = {fit.selected_n}", timeout=10)
    n = other_n(fit)
    click_selection_point(dash_duo, "selection-graph", n)
    dash_duo.wait_for_contains_text("#selection-chosen", f"n = {n}", timeout=5)
    wait_for(lambda: query(dash_duo).get("n") == str(n), message="n in the URL")
    nav(dash_duo, "Training map")
    wait_map(dash_duo, nodes=n, edges=len(fit.map(n).edges))

    # A broken run in the URL is ignored: the page shows the band, no error.
    dash_duo.driver.get(f"{base}/curves?experiment={EXPERIMENT}&run=seed-broken&metric=l2")
    dash_duo.wait_for_contains_text("#curves-metric", "l2", timeout=10)
    wait_for(
        lambda: dash_duo.driver.execute_script(
            "const g = document.querySelector('#curves-graph .js-plotly-plot');"
            "return g && g.data && g.data.some(t => t.name === 'all seeds mean');"
        ),
        message="the all-seeds band",
    )
    assert dash_duo.find_element("#curves-run").text.strip() in ("", "none")
    dash_duo.wait_for_contains_text("#curves-run-missing", "seed-broken cannot be read")
    dash_duo.driver.get(f"{base}/map?experiment={EXPERIMENT}&run=seed-broken")
    dash_duo.wait_for_contains_text("#map-run-missing", "seed-broken is not on this map")

    # Names from the URL that do not exist (or try to leave the root) are ignored.
    dash_duo.driver.get(f"{base}/map?experiment=..%2F..%2Fetc&n=99&run=..%2Fx")
    wait_map(dash_duo, nodes=fit.selected_n, edges=len(fit.map().edges))
    assert query(dash_duo)["experiment"] == EXPERIMENT
    assert_no_console_errors(dash_duo)


def test_experiment_without_fit_shows_command_and_fits_from_the_ui(dash_duo, tmp_path):
    from trainmap.app.main import create_app

    root = tmp_path / "root"
    root.mkdir()
    make_root(root, n_runs=4, n_checkpoints=40, experiment="unfitted")
    params = {"max_states": 2, "restarts": 1, "workers": 1}
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.start_server(create_app(root, cache_dir=tmp_path / "cache", fit_params=params))
    dash_duo.wait_for_contains_text("#runs-table", "seed-broken", timeout=10)

    # Live refresh: zoom the progress plot and select a run, then a run grows.
    radios = dash_duo.driver.find_elements(By.CSS_SELECTOR, "#runs-table input[type=radio]")
    radios[1].click()
    dash_duo.wait_for_element("#runs-progress .main-svg")
    # A real drag-zoom, then a run grows: the refresh must keep zoom and selection.
    drag_zoom(dash_duo, "#runs-progress .nsewdrag")
    get_range = (
        "return document.querySelector('#runs-progress .js-plotly-plot').layout.xaxis.range;"
    )
    zoomed = wait_for(
        lambda: (r := dash_duo.driver.execute_script(get_range)) and r[0] > 0.5 and r,
        message="zoom",
    )
    writer = rundir.RunWriter.reopen(root / "unfitted" / "seed-2")
    writer.append({"epoch": 40, "step": 40, "eval_acc": 0.99})
    writer.finish("completed")
    dash_duo.wait_for_contains_text("#runs-table", "41", timeout=REFRESH_WAIT)
    time.sleep(0.5)  # let the figure update land
    assert dash_duo.driver.execute_script(get_range) == zoomed  # the refresh kept the zoom
    radios = dash_duo.driver.find_elements(By.CSS_SELECTOR, "#runs-table input[type=radio]")
    assert radios[1].is_selected() and query(dash_duo)["run"] == "seed-1"

    nav(dash_duo, "Training map")
    dash_duo.wait_for_contains_text("#map-message", "trainmap fit", timeout=10)

    nav(dash_duo, "Model selection")
    dash_duo.wait_for_contains_text("#selection-command", "trainmap fit", timeout=10)
    command = dash_duo.find_element("#selection-command").text
    assert (
        command
        == f"trainmap fit {root.resolve() / 'unfitted'} --max-states 2 --restarts 1 --workers 1"
    )
    # Fit now: a background process fits, the progress bar fills, the sweep appears.
    dash_duo.find_element("#selection-fit").click()
    dash_duo.wait_for_contains_text("#selection-chosen", "n = ", timeout=90)
    progress = dash_duo.find_element("#selection-progress")
    assert progress.get_attribute("value") == progress.get_attribute("max") == "100"
    assert dash_duo.find_element("#selection-nofit").value_of_css_property("display") == "none"
    nav(dash_duo, "Training map")
    dash_duo.wait_for_element("#map-graph canvas", timeout=10)
    wait_for(lambda: cy_count(dash_duo, "node") >= 1, message="the new fit's map")
    assert_no_console_errors(dash_duo)


def cy_style(dash_duo, element_id: str, prop: str):
    return dash_duo.driver.execute_script(
        "const cy = document.getElementById('map-graph')._cyreg.cy;"
        "return cy.getElementById(arguments[0]).style(arguments[1]);",
        element_id,
        prop,
    )


def emit_mouseover(dash_duo, element_id: str):
    dash_duo.driver.execute_script(
        "document.getElementById('map-graph')._cyreg.cy.getElementById(arguments[0])"
        ".emit('mouseover');",
        element_id,
    )


def test_map_hover_highlights_neighbours_and_switches_panels(dash_duo, dash_app):
    from trainmap.app import common_figures

    app, truth, fit = dash_app
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.start_server(app)
    dash_duo.driver.get(f"{dash_duo.server_url}/map?experiment={EXPERIMENT}")
    tmap = fit.map()
    wait_map(dash_duo, nodes=len(tmap.states), edges=len(tmap.edges))
    edge = max(tmap.edges, key=lambda e: e.n_runs)
    edge_id = f"e{edge.source}-{edge.target}"
    # The probability reads the same on the edge and in the panel, explained.
    assert dash_duo.driver.execute_script(
        "return document.getElementById('map-graph')._cyreg.cy.getElementById(arguments[0])"
        ".data('label');",
        edge_id,
    ) == common_figures.prob_text(edge.prob)

    # Hover a node: it and its neighbours stay, the rest fades.
    node = tmap.states[0].state
    emit_mouseover(dash_duo, f"s{node}")
    dash_duo.wait_for_contains_text("#map-hover-node", "occupancy", timeout=5)
    near = {f"s{node}"}
    for e in tmap.edges:
        if node in (e.source, e.target):
            near |= {f"e{e.source}-{e.target}", f"s{e.source}", f"s{e.target}"}
    far = [f"s{s.state}" for s in tmap.states if f"s{s.state}" not in near]
    far += [f"e{e.source}-{e.target}" for e in tmap.edges if f"e{e.source}-{e.target}" not in near]
    wait_for(lambda: cy_style(dash_duo, f"s{node}", "font-weight") == "bold", message="focus")
    # The neighbourhood keeps its own opacity (its bootstrap stability); the rest fades.
    assert far and all(float(cy_style(dash_duo, i, "opacity")) < 0.1 for i in far)
    own = "return document.getElementById('map-graph')._cyreg.cy.getElementById(arguments[0])"
    own += ".data('opacity');"
    for i in near:
        assert float(cy_style(dash_duo, i, "opacity")) == pytest.approx(
            dash_duo.driver.execute_script(own, i)
        )
    # Counts are pluralised.
    visited = tmap.states[0].visited_runs
    assert (
        f"visited by {common_figures.plural(visited, 'run')}"
        in dash_duo.find_element("#map-hover-node").text
    )

    # Then an edge: the node panel clears, the edge panel shows p per checkpoint.
    emit_mouseover(dash_duo, edge_id)
    dash_duo.wait_for_contains_text("#map-hover-edge", f"p = {common_figures.prob_text(edge.prob)}")
    text = dash_duo.find_element("#map-hover-edge").text
    assert "per checkpoint" in text and f"{common_figures.plural(edge.n_runs, 'run')} take" in text
    dash_duo.wait_for_text_to_equal(
        "#map-hover-node", "State: hover one to see its feature profile."
    )
    wait_for(
        lambda: (
            float(cy_style(dash_duo, f"s{edge.source}", "opacity")) > 0.1
            and all(
                float(cy_style(dash_duo, f"s{s.state}", "opacity")) < 0.1
                for s in tmap.states
                if s.state not in (edge.source, edge.target)
            )
        ),
        message="the edge's neighbourhood",
    )
    # Feature rows are listed by the change they show, largest first.
    changes = [
        abs(float(td.text.split()[0]))
        for td in dash_duo.driver.find_elements(By.CSS_SELECTOR, "#map-edge-features td.num")
    ]
    assert changes and changes == sorted(changes, reverse=True)
    assert_no_console_errors(dash_duo)


def test_url_keeps_every_view_setting_and_missing_links_say_so(dash_duo, dash_app):
    app, truth, fit = dash_app
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.start_server(app)
    base = dash_duo.server_url
    view = {
        "experiment": EXPERIMENT,
        "n": "3",
        "run": "seed-2",
        "metric": "l2",
        "seeds": "0",
        "log": "1",
        "smooth": "11",
    }
    dash_duo.driver.get(f"{base}/curves?" + "&".join(f"{k}={v}" for k, v in view.items()))
    is_log = (
        "const g = document.querySelector('#curves-graph .js-plotly-plot');"
        "return g && g.layout && g.layout.yaxis && g.layout.yaxis.type === 'log'"
        " && !g.data.some(t => t.name === 'all seeds mean');"
    )
    wait_for(lambda: dash_duo.driver.execute_script(is_log), message="log y, no band")
    wait_for(lambda: query(dash_duo) == view, message="every setting in the URL")
    # Turn log y off: the URL follows; a reload keeps it.
    log_box = dash_duo.driver.find_elements(By.CSS_SELECTOR, "#curves-options input")[1]
    log_box.click()
    wait_for(lambda: "log" not in query(dash_duo), message="log off in the URL")
    dash_duo.driver.refresh()
    dash_duo.wait_for_contains_text("#curves-run", "seed-2", timeout=10)
    boxes = dash_duo.driver.find_elements(By.CSS_SELECTOR, "#curves-options input")
    assert [b.is_selected() for b in boxes] == [False, False]
    expected = {k: v for k, v in view.items() if k != "log"}
    wait_for(lambda: query(dash_duo) == expected, message="the view after reload")

    # Every page carries the whole view: the nav, the runs page's links, the
    # selection page's "Open the training map".
    nav(dash_duo, "Runs")
    dash_duo.wait_for_contains_text("#runs-table", "seed-broken", timeout=10)
    links = dash_duo.driver.find_elements(By.CSS_SELECTOR, ".hint a")
    wait_for(
        lambda: all(
            {k: v[0] for k, v in parse_qs(urlparse(a.get_attribute("href")).query).items()}
            == expected
            for a in links
        ),
        message="in-page links keep the view",
    )
    nav(dash_duo, "Model selection")
    link = dash_duo.wait_for_element(".selection-map-link", timeout=10)
    wait_for(lambda: "smooth=11" in link.get_attribute("href"), message="selection link")
    link.click()
    tmap = fit.map(3)
    wait_map(dash_duo, nodes=3, edges=len(tmap.edges))
    wait_for(lambda: query(dash_duo) == expected, message="the map keeps the view")

    # Links to things that are not there say so, then show what exists.
    dash_duo.driver.get(f"{base}/map?experiment=nope&run=seed-1")
    dash_duo.wait_for_contains_text("#missing-notice", "No experiment named “nope”", timeout=10)
    assert f"showing {EXPERIMENT} instead" in dash_duo.find_element("#missing-notice").text
    dash_duo.driver.get(f"{base}/curves?experiment={EXPERIMENT}&run=seed-99")
    dash_duo.wait_for_contains_text("#missing-notice", "No run named “seed-99”", timeout=10)
    dash_duo.driver.get(f"{base}/curves?experiment={EXPERIMENT}&run=seed-1")
    dash_duo.wait_for_contains_text("#curves-run", "seed-1", timeout=10)
    assert dash_duo.find_element("#missing-notice").text == ""
    assert_no_console_errors(dash_duo)


def test_usable_at_800_px(dash_duo, dash_app):
    app, truth, fit = dash_app
    dash_duo.driver.set_window_size(800, 900)
    dash_duo.start_server(app)
    base = dash_duo.server_url
    # Runs: proportional font, numbers right-aligned, empty columns left out.
    dash_duo.wait_for_contains_text("#runs-table", "seed-broken", timeout=10)
    header = dash_duo.find_element("#runs-table").text
    assert "predicted convergence" not in header  # every run completed: no prediction
    cell = dash_duo.driver.find_element(
        By.CSS_SELECTOR, "#runs-table td[data-dash-column=checkpoints]"
    )
    assert cell.value_of_css_property("text-align") == "right"
    assert "mono" not in cell.value_of_css_property("font-family").lower()
    run_cell = dash_duo.driver.find_element(By.CSS_SELECTOR, "#runs-table td[data-dash-column=run]")
    assert run_cell.value_of_css_property("text-align") == "left"

    # Map: full width, the panel below it, nothing wider than the window.
    dash_duo.driver.get(f"{base}/map?experiment={EXPERIMENT}")
    wait_map(dash_duo, nodes=fit.selected_n, edges=len(fit.map().edges))
    rects = dash_duo.driver.execute_script(
        "const r = s => document.querySelector(s).getBoundingClientRect();"
        "return [r('#map-graph'), r('.map-side'), document.documentElement.scrollWidth,"
        " window.innerWidth];"
    )
    graph, side, scroll_width, inner = rects
    assert graph["width"] > 0.8 * inner and side["top"] >= graph["bottom"] - 1
    assert scroll_width <= inner

    # Selection: Plotly's toolbar sits above the subplot titles, not over them.
    dash_duo.driver.get(f"{base}/selection?experiment={EXPERIMENT}")
    dash_duo.wait_for_element("#selection-graph .modebar", timeout=10)
    modebar, titles = dash_duo.driver.execute_script(
        "const g = document.querySelector('#selection-graph');"
        "const titles = [...g.querySelectorAll('.annotation-text')]"
        ".map(t => t.getBoundingClientRect().top);"
        "return [g.querySelector('.modebar').getBoundingClientRect().bottom, Math.min(...titles)];"
    )
    assert modebar <= titles
    assert_no_console_errors(dash_duo)


def is_hidden(dash_duo, selector: str) -> bool:
    """True when the element is not displayed; False while Dash is replacing it."""
    try:
        return not dash_duo.find_element(selector).is_displayed()
    except StaleElementReferenceException:
        return False


def test_empty_root_and_failed_fit_say_so(dash_duo, tmp_path):
    """An empty root: messages, no empty axes. Then runs too short for the
    features: "Fit now" shows the analysis's message and what to do."""
    from trainmap.app.main import create_app

    root = tmp_path / "root"
    root.mkdir()
    params = {"max_states": 2, "restarts": 1, "workers": 1}
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.start_server(create_app(root, cache_dir=tmp_path / "cache", fit_params=params))
    dash_duo.wait_for_contains_text(".content", "No experiments under", timeout=10)
    wait_for(lambda: is_hidden(dash_duo, "#runs-progress"), message="no empty progress plot")
    wait_for(lambda: is_hidden(dash_duo, "#runs-table"), message="no empty runs table")
    nav(dash_duo, "Model selection")
    dash_duo.wait_for_contains_text("#selection-info", "No experiments under", timeout=10)
    wait_for(lambda: is_hidden(dash_duo, "#selection-graph"), message="no empty axes")

    make_root(root, n_runs=3, n_checkpoints=4, experiment="short")
    dash_duo.driver.get(f"{dash_duo.server_url}/selection?experiment=short")
    dash_duo.wait_for_contains_text("#selection-command", "trainmap fit", timeout=10)
    dash_duo.find_element("#selection-fit").click()
    dash_duo.wait_for_contains_text("#selection-fit-message", "too few points", timeout=90)
    assert "The fit failed" in dash_duo.find_element("#selection-fit-message").text
    assert "What to do" in dash_duo.find_element("#selection-fit-error").text
    assert dash_duo.find_element("#selection-fit-status").text == "fit failed"
    assert dash_duo.find_element("#selection-fit").is_enabled()  # one can try again
    assert_no_console_errors(dash_duo)
