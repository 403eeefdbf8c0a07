"""Naming a state over HTTP, as the browser posts it: checked, stored beside the fit,
shown in the map's elements and the CSV export; the browser never names a path."""

from __future__ import annotations

import warnings

import pytest
from test_app_server import call
from test_app_support import EXPERIMENT, make_root

from trainmap import analysis


@pytest.fixture
def client(tmp_path):
    from trainmap.app.main import create_app

    root = tmp_path / "root"
    root.mkdir()
    make_root(root, n_runs=6, n_checkpoints=40)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        result = analysis.fit_experiment(root, EXPERIMENT, max_states=3, restarts=1, workers=1)
    app = create_app(root, cache_dir=tmp_path / "cache")
    return app.server.test_client(), root, result


def save(client, state, name, n):
    values = {
        "map-rename-save.n_clicks": 1,
        "map-rename-name.n_submit": None,
        "map-experiment.value": EXPERIMENT,
        "map-n.value": n,
        "map-rename-state.value": state,
        "map-rename-name.value": name,
        "map-names.data": 0,
    }
    return call(client, "map-rename-message.children", values, "map-rename-save.n_clicks")


def test_rename_over_http(client):
    client, root, result = client
    n = result.selected_n
    out = save(client, 0, "early", n)
    assert out["map-rename-message"]["children"] == "S0 is now named 'early'."
    assert out["map-names"]["data"] == 1
    assert analysis.state_names(root, EXPERIMENT, result.fingerprint, n) == {0: "early"}

    elements = call(
        client,
        "map-graph.elements",
        {
            "map-experiment.value": EXPERIMENT,
            "map-n.value": n,
            "map-run.value": None,
            "map-names.data": 1,
        },
    )["map-graph"]["elements"]
    node = next(e["data"] for e in elements if e["data"]["id"] == "s0")
    assert node["label"].startswith("S0 early\nepoch")
    csv = call(
        client,
        "map-download.data",
        {"map-experiment.value": EXPERIMENT, "map-n.value": n, "map-download-button.n_clicks": 1},
        triggered="map-download-button.n_clicks",
    )["map-download"]["data"]["content"]
    assert ",0,early," in csv


@pytest.mark.parametrize(
    "state, name, message",
    [
        (0, "x" * 41, "at most 40 characters"),
        (0, "a\x1b[31mred", "control characters"),
        (99, "late", "has states"),
        ("../../etc", "late", "not a state of this map"),
    ],
)
def test_bad_names_are_refused_with_the_reason(client, state, name, message):
    client, root, result = client
    out = save(client, state, name, result.selected_n)
    assert message in out["map-rename-message"]["children"]
    assert "map-names" not in out  # nothing to redraw
    assert analysis.state_names(root, EXPERIMENT, result.fingerprint, result.selected_n) == {}
