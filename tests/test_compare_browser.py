"""The Compare page in a real browser (``pytest --headless``; helpers from test_app_browser).

Two synthetic experiments from the same states, fitted separately: A with a
detour branch, B without. The page must draw both maps with matched phases
in the same colour and label, the convergence chart with its test, and keep
the compared experiments (and the other view settings) in the URL.
"""

from __future__ import annotations

import warnings

import pytest
from selenium.webdriver.common.by import By
from test_app_browser import assert_no_console_errors, query, wait_for, xdg_dirs  # noqa: F401
from test_compare import FIT, SEED, write_without_detour

pytestmark = pytest.mark.browser


@pytest.fixture(scope="module")
def compare_root(tmp_path_factory):
    from trainmap import analysis
    from trainmap.analysis.compare import compare_experiments
    from trainmap.analysis.synthetic import write_synthetic_experiment

    root = tmp_path_factory.mktemp("root")
    write_synthetic_experiment(root, "A", n_runs=12, n_checkpoints=120, seed=SEED)
    write_without_detour(root, "B", 12, 120)
    write_without_detour(root, "C", 8, 100, biases=False)
    write_synthetic_experiment(root, "unfitted", n_runs=2, n_checkpoints=20, seed=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        for name in ("A", "B", "C"):
            analysis.fit_experiment(root, name, **FIT)
    return root, compare_experiments([(root, "A"), (root, "B")])


def cy_nodes(dash_duo, i: int) -> list:
    """[label, colour in the data, colour as rendered] of every node of map ``i``."""
    return dash_duo.driver.execute_script(
        "const el = document.getElementById(arguments[0]);"
        "if (!el || !el._cyreg || !el._cyreg.cy) return [];"
        "return el._cyreg.cy.nodes().map("
        "  n => [n.data('label'), n.data('color'), n.style('background-color')]);",
        f"compare-graph-{i}",
    )


def test_compare_page_matched_maps_and_convergence(dash_duo, compare_root, tmp_path):
    from trainmap.app.main import create_app

    root, comparison = compare_root
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.start_server(create_app(root, cache_dir=tmp_path / "cache"))
    base = dash_duo.server_url
    dash_duo.driver.get(f"{base}/compare?experiments=A,B&run=seed-01&metric=l2")

    # Both maps, one node per state of each fit.
    sizes = [e["n_states"] for e in comparison.experiments]
    nodes = wait_for(
        lambda: (
            (got := [cy_nodes(dash_duo, i) for i in (0, 1)])
            and [len(g) for g in got] == sizes
            and got
        ),
        message="both maps",
    )
    # A matched phase has the same label and the same rendered colour in both maps.
    colours = [{label: (data, shown) for label, data, shown in side} for side in nodes]
    matched = [g for g in comparison.groups if g["matched"]]
    assert matched
    for group in matched:
        assert colours[0][group["label"]] == colours[1][group["label"]]
    # Distinct phases look distinct; A's detour has no counterpart and says so.
    assert len({data for data, _ in colours[0].values()}) == sizes[0]
    alone = [g for g in comparison.groups if not g["matched"]]
    assert [f"{g['label']} (only A)" for g in alone] == [
        label for label in colours[0] if label.endswith("(only A)")
    ]

    # Hovering a state says which experiment state and phase it is.
    alone_state = alone[0]["states"]["A"] if alone else 0
    dash_duo.driver.execute_script(
        "document.getElementById('compare-graph-0')._cyreg.cy.getElementById(arguments[0])"
        ".emit('mouseover');",
        f"s{alone_state}",
    )
    dash_duo.wait_for_contains_text("#compare-hover-0", f"= S{alone_state}", timeout=5)
    hover = dash_duo.find_element("#compare-hover-0").text
    assert "occupancy" in hover and ("No counterpart" if alone else "B S") in hover

    # The quality table, the per-experiment table and the transitions.
    dash_duo.wait_for_contains_text("#compare-quality", matched[0]["label"], timeout=10)
    assert comparison.quality["message"] in dash_duo.find_element("#compare-quality-text").text
    summary = dash_duo.find_element("#compare-summary").text
    assert "A" in summary and "B" in summary
    transitions = dash_duo.find_element("#compare-transitions").text
    assert all(t["source"] in transitions for t in comparison.transitions)

    # The convergence chart: a strip per experiment and the test in its title and words.
    traces = wait_for(
        lambda: dash_duo.driver.execute_script(
            "const g = document.querySelector('#compare-convergence .js-plotly-plot');"
            "return g && g.data ? g.data.map(t => t.name) : null;"
        ),
        message="the convergence chart",
    )
    assert "A: converged" in traces and "B: converged" in traces
    (test,) = comparison.convergence
    title = dash_duo.driver.execute_script(
        "return document.querySelector('#compare-convergence .js-plotly-plot').layout.title.text;"
    )
    assert "B vs A" in title and "Gehan-Wilcoxon p" in title
    assert test["message"] in dash_duo.find_element("#compare-convergence-text").text

    # The URL keeps the experiments compared and the other view settings.
    wait_for(lambda: query(dash_duo).get("experiments") == "A,B", message="experiments in URL")
    assert query(dash_duo)["run"] == "seed-01" and query(dash_duo)["metric"] == "l2"

    # Matching on shapes instead: the table says z units, the URL keeps it across a reload.
    dash_duo.driver.find_element(By.CSS_SELECTOR, "#compare-match input[value=shapes]").click()
    dash_duo.wait_for_contains_text("#compare-quality-text", " z, largest", timeout=10)
    wait_for(lambda: query(dash_duo).get("match") == "shapes", message="match in the URL")
    dash_duo.driver.refresh()
    dash_duo.wait_for_contains_text("#compare-quality-text", " z, largest", timeout=10)
    assert query(dash_duo)["experiments"] == "A,B" and query(dash_duo)["run"] == "seed-01"
    assert_no_console_errors(dash_duo)


def test_compare_page_three_experiments(dash_duo, compare_root, tmp_path):
    """A third map appears in its (hidden until now) slot, drawn at full size."""
    from trainmap.analysis.compare import compare_experiments
    from trainmap.app.main import create_app

    root, _ = compare_root
    comparison = compare_experiments([(root, "A"), (root, "B"), (root, "C")])
    dash_duo.driver.set_window_size(1400, 1000)
    dash_duo.start_server(create_app(root, cache_dir=tmp_path / "cache"))
    dash_duo.driver.get(f"{dash_duo.server_url}/compare?experiments=A,B,C")
    sizes = [e["n_states"] for e in comparison.experiments]
    wait_for(lambda: [len(cy_nodes(dash_duo, i)) for i in range(3)] == sizes, message="three maps")
    size = (
        "const cy = document.getElementById('compare-graph-2')._cyreg.cy;"
        "return [cy.width(), cy.height()];"
    )
    wait_for(
        lambda: min(dash_duo.driver.execute_script(size)) > 200, message="the third map resized"
    )
    assert not dash_duo.find_element("#compare-slot-3").is_displayed()
    # C has no bias features: the page says what the matching left out.
    dash_duo.wait_for_contains_text("#compare-message", "mean_b, median_b, var_b", timeout=5)
    assert len(dash_duo.find_element("#compare-convergence-text").text.splitlines()) == 2
    assert_no_console_errors(dash_duo)


def test_compare_page_experiment_without_fit(dash_duo, compare_root, tmp_path):
    from trainmap.app.main import create_app

    root, _ = compare_root
    dash_duo.start_server(create_app(root, cache_dir=tmp_path / "cache"))
    dash_duo.driver.get(f"{dash_duo.server_url}/compare?experiments=A,unfitted")
    dash_duo.wait_for_contains_text("#compare-message", "has no saved fit", timeout=10)
    assert (
        f"trainmap fit {root.resolve() / 'unfitted'}"
        in dash_duo.find_element("#compare-message").text
    )
    assert_no_console_errors(dash_duo)
