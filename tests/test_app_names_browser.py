"""Named phases and the runs × epochs strip in a real browser (``pytest --headless``).

Its own fitted fixture root (the fixtures of test_app_browser, re-used): the
tests here write state names next to the fit, which must not leak into the
other browser tests.
"""

from __future__ import annotations

import pytest
from selenium.webdriver.common.actions.action_builder import ActionBuilder
from selenium.webdriver.common.by import By
from test_app_browser import (  # noqa: F401  (fixtures are used by name)
    assert_no_console_errors,
    dash_app,
    fixture_root,
    nav,
    query,
    wait_for,
    wait_map,
    xdg_dirs,
)
from test_app_support import EXPERIMENT

from trainmap.analysis import captions
from trainmap.app import strip_figures

pytestmark = pytest.mark.browser

PLOT = "document.querySelector('#{} .js-plotly-plot')"


def node_label(dash_duo, state: int) -> str:
    return dash_duo.driver.execute_script(
        "const el = document.getElementById('map-graph');"
        "if (!el || !el._cyreg || !el._cyreg.cy) return '';"
        "return el._cyreg.cy.getElementById(arguments[0]).data('label') || '';",
        f"s{state}",
    )


def strip_texts(dash_duo) -> list[str]:
    """The state labels the strip's cells show on hover, and its legend entries."""
    return dash_duo.driver.execute_script(
        f"const g = {PLOT.format('map-strip')};"
        "if (!g || !g.data) return [];"
        "return g.data[0].text.flat().concat(g.data.map(t => t.name));"
    )


def click_strip_row(dash_duo, run: str, epoch: int):
    """A real click on the strip's cell (run, epoch), where the user would click."""
    x, y = dash_duo.driver.execute_script(
        f"const g = {PLOT.format('map-strip')};"
        "g.scrollIntoView({block: 'center'});"
        "const fl = g._fullLayout, box = g.getBoundingClientRect();"
        "return [box.left + fl._size.l + fl.xaxis.d2p(arguments[1]),"
        "        box.top + fl._size.t + fl.yaxis.d2p(arguments[0])];",
        run,
        epoch,
    )
    actions = ActionBuilder(dash_duo.driver)
    actions.pointer_action.move_to_location(int(x), int(y))
    actions.pointer_action.click()
    actions.perform()


def test_rename_a_state_and_see_it_on_the_map_and_in_the_strip(dash_duo, dash_app):  # noqa: F811
    app, _truth, fit = dash_app
    tmap = fit.map()
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.start_server(app)
    dash_duo.wait_for_page(f"{dash_duo.server_url}/map?experiment={EXPERIMENT}")
    wait_map(dash_duo, nodes=len(tmap.states), edges=len(tmap.edges))
    # Every node is captioned: when runs are in it and what sets it apart.
    caption = captions.state_caption(tmap, 0)
    wait_for(lambda: node_label(dash_duo, 0) == f"S0\n{caption}", message="captioned node")

    dash_duo.select_dcc_dropdown("#map-rename-state", index=0)
    name_box = dash_duo.find_element("#map-rename-name")
    name_box.clear()
    name_box.send_keys("early phase")
    dash_duo.find_element("#map-rename-save").click()
    dash_duo.wait_for_contains_text("#map-rename-message", "S0 is now named 'early phase'")
    wait_for(
        lambda: node_label(dash_duo, 0) == f"S0 early phase\n{caption}", message="name on the map"
    )
    wait_for(
        lambda: any(t.startswith("S0 early phase") for t in strip_texts(dash_duo)),
        message="name in the strip",
    )
    # The curves page's legend names the phase too (all seeds: most common state per epoch).
    nav(dash_duo, "Metric curves")
    names = wait_for(
        lambda: dash_duo.driver.execute_script(
            f"const g = {PLOT.format('curves-graph')};"
            "return g && g.data ? g.data.map(t => t.name).join('|') : '';"
        ),
        message="curves legend",
    )
    wait_for(
        lambda: (
            "S0 early phase"
            in dash_duo.driver.execute_script(
                f"const g = {PLOT.format('curves-graph')};"
                "return g && g.data ? g.data.map(t => t.name).join('|') : '';"
            )
        ),
        message=f"named phase in the curves legend (got {names})",
    )
    assert_no_console_errors(dash_duo)


@pytest.mark.parametrize("max_columns", [None, 7], ids=["every-checkpoint", "thinned"])
def test_click_a_strip_row_selects_the_run_everywhere(
    dash_duo,
    dash_app,  # noqa: F811
    monkeypatch,
    max_columns,
):
    app, _truth, fit = dash_app
    tmap = fit.map()
    if max_columns:  # the server runs in this process: its strip shows 7 columns
        monkeypatch.setattr(strip_figures, "STRIP_MAX_COLUMNS", max_columns)
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.start_server(app)
    dash_duo.wait_for_page(f"{dash_duo.server_url}/map?experiment={EXPERIMENT}")
    wait_map(dash_duo, nodes=len(tmap.states), edges=len(tmap.edges))
    dash_duo.wait_for_element("#map-strip .heatmaplayer", timeout=10)
    # Rows are sorted by convergence epoch; never-converged runs last and marked.
    order = dash_duo.driver.execute_script(
        f"return {PLOT.format('map-strip')}._fullLayout.yaxis.ticktext;"
    )
    conv = tmap.convergence_epoch
    expected = sorted(tmap.paths, key=lambda r: (conv[r] is None, conv[r] or 0, r))
    assert [t.split(" ")[0] for t in order] == expected
    assert all(("never converged" in t) == (conv[r] is None) for t, r in zip(order, expected))
    title = dash_duo.driver.execute_script(f"return {PLOT.format('map-strip')}.layout.title.text;")
    assert ("thinned" in title) == bool(max_columns)

    run = expected[len(expected) // 2]
    # A click that lands while plotly redraws the strip (its figure can arrive twice on
    # first load) is dropped by the browser; a user clicks again, and so does this test.
    for attempt in range(3):
        click_strip_row(dash_duo, run, int(tmap.epochs[run][len(tmap.epochs[run]) // 2]))
        try:
            wait_for(lambda: query(dash_duo).get("run") == run, 5, "clicked run in the URL")
            break
        except AssertionError:
            if attempt == 2:
                raise
    assert dash_duo.find_element("#map-run").text.strip().startswith(run)
    wait_for(lambda: dash_duo.driver.find_elements(By.CSS_SELECTOR, "#map-graph"), message="map")
    # The other pages open with that run selected.
    nav(dash_duo, "Metric curves")
    dash_duo.wait_for_contains_text("#curves-run", run, timeout=10)
    assert query(dash_duo)["run"] == run
    assert_no_console_errors(dash_duo)
