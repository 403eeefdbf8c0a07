"""The strip, named phases and the metric picker as pure builders (no server, no browser).

The fit is built from synthetic truth (test_app_support.truth_fit), so the
paths, convergence epochs and detours the figures must show are known exactly.
"""

from __future__ import annotations

import numpy as np
import pandas as pd
import pytest
from test_app_support import truth_fit

from trainmap.analysis import captions
from trainmap.analysis.synthetic import make_synthetic
from trainmap.app import common_figures, curve_figures, map_figures, strip_figures


@pytest.fixture(scope="module")
def fit():
    return truth_fit(make_synthetic(n_runs=8, n_checkpoints=120, seed=3))


def with_never_converged(tmap, run):
    tmap.convergence_epoch = {**tmap.convergence_epoch, run: None}
    return tmap


def test_strip_rows_sorted_by_convergence_with_never_converged_last(fit):
    tmap = with_never_converged(fit.map(4), "seed-0")
    fig = strip_figures.strip_figure(tmap, captions.state_labels(tmap), selected_run="seed-3")
    heat = fig.data[0]
    conv = tmap.convergence_epoch
    expected = sorted((r for r in tmap.paths if conv[r] is not None), key=lambda r: (conv[r], r))
    assert list(heat.y) == expected + ["seed-0"]
    ticktext = list(fig.layout.yaxis.ticktext)
    assert ticktext[-1] == "seed-0 (never converged)" and "never" not in " ".join(ticktext[:-1])
    never = next(t for t in fig.data if t.name == "never converged")
    assert list(never.y) == ["seed-0"]
    ticks = next(t for t in fig.data if t.name == "convergence epoch")
    assert dict(zip(ticks.y, ticks.x)) == {r: conv[r] for r in expected}


def test_strip_cells_are_the_decoded_states(fit):
    tmap = fit.map(4)
    labels = captions.state_labels(tmap, {1: "plateau"})
    fig = strip_figures.strip_figure(tmap, labels)
    heat = fig.data[0]
    for i, run in enumerate(heat.y):
        columns = [list(heat.x).index(e) for e in tmap.epochs[run]]
        assert np.array(heat.z)[i, columns].tolist() == tmap.paths[run]
        assert np.array(heat.text)[i, columns].tolist() == [
            labels[k]["label"] for k in tmap.paths[run]
        ]
    # Colours: state k maps onto state_color(k) in the discrete scale.
    n = tmap.n_states
    assert [list(p) for p in heat.colorscale[::2]] == [
        [k / n, common_figures.state_color(k)] for k in range(n)
    ]
    assert (heat.zmin, heat.zmax) == (-0.5, n - 0.5)
    legend = [t.name for t in fig.data if t.name and t.name.startswith("S")]
    assert legend[1].startswith("S1 plateau · ") and len(legend) == tmap.n_states


def test_strip_outlines_detours_and_frames_the_selected_run(fit):
    tmap = fit.map(4)
    detours = {s.state for s in tmap.states if s.is_detour}
    assert detours, "the synthetic truth has a detour branch"
    fig = strip_figures.strip_figure(tmap, selected_run="seed-3")
    outlined = [s for s in fig.layout.shapes if s.name.startswith("detour")]
    runs = list(fig.data[0].y)
    expected_rows = {runs.index(r) for r, path in tmap.paths.items() if detours & set(path)}
    assert {round(s.y0 + 0.5) for s in outlined} == expected_rows
    framed = [s for s in fig.layout.shapes if s.name == "selected run"]
    assert len(framed) == 1 and round(framed[0].y0 + 0.5) == runs.index("seed-3")


def test_modal_states_take_the_most_common_state_per_epoch():
    tmap = type("Map", (), {})()
    tmap.paths = {"a": [0, 0, 1], "b": [0, 1, 1], "c": [1, 1, 2]}
    tmap.epochs = {"a": [1, 2, 3], "b": [1, 2, 3], "c": [1, 2, 3]}
    assert curve_figures.modal_states(tmap) == ([1, 2, 3], [0, 1, 1])
    tmap.paths = {"a": [0, 2], "b": [1, 1]}
    tmap.epochs = {"a": [1, 2], "b": [1, 2]}
    assert curve_figures.modal_states(tmap) == ([1, 2], [0, 1])  # ties: the lower state


def test_all_seeds_curves_are_shaded_by_the_most_common_state(fit):
    tmap = fit.map(4)
    band = pd.DataFrame({"epoch": [1, 2], "mean": [0.1, 0.2], "std": [0.0, 0.0], "count": [8, 8]})
    epochs, path = curve_figures.modal_states(tmap)
    figure = curve_figures.metric_figure("l2", band=band, states=(epochs, path)).to_plotly_json()
    named = curve_figures.name_phases(
        figure, captions.state_labels(tmap, {0: "early"}), all_seeds=True
    )
    rects = [s for s in named["layout"]["shapes"] if s["type"] == "rect"]
    assert len(rects) == len(common_figures.state_segments(epochs, path))
    assert rects[0]["name"] == "S0 early"
    span = rects[-1]["x1"] - rects[0]["x0"]
    for rect in rects:  # wide stretches are labelled in place, narrow ones are not
        wide = rect["x1"] - rect["x0"] >= curve_figures.PHASE_LABEL_MIN_WIDTH * span
        assert ("label" in rect) == wide
        assert not wide or rect["label"]["text"] == rect["name"]
    assert any("label" in rect for rect in rects)
    assert "S0 early" in [t["name"] for t in named["data"]]
    assert "most common state" in named["layout"]["legend"]["title"]["text"]


def test_exports_carry_state_names_and_captions(fit):
    tmap = fit.map(4)
    labels = captions.state_labels(tmap, {2: "late"})
    frame = common_figures.with_state_names(map_figures.states_frame(tmap), labels)
    assert set(frame.loc[frame["state"] == 2, "state_name"]) == {"late"}
    assert set(frame.loc[frame["state"] != 2, "state_name"]) == {""}
    assert set(frame.loc[frame["state"] == 0, "state_caption"]) == {labels[0]["caption"]}
    metrics = pd.DataFrame({"epoch": [1, 2, 999], "l2": [1.0, 2.0, 3.0]})
    run = curve_figures.run_export_frame(metrics, ([1, 2], [2, 0]))
    named = common_figures.with_state_names(run, labels)
    assert named["state_name"].tolist() == ["late", "", ""]  # no state at epoch 999


def test_map_nodes_carry_names_captions_and_feature_definitions(fit):
    tmap = fit.map(4)
    labels = captions.state_labels(tmap, {0: "start"})
    elements = map_figures.label_states(map_figures.map_elements(tmap), labels)
    node = next(e["data"] for e in elements if e["data"]["id"] == "s0")
    assert node["label"] == f"S0 start\n{labels[0]['caption']}" and node["name"] == "start"
    assert all(row["title"] and row["name"] for row in node["profile"])
    edge = next(e["data"] for e in elements if "source" in e["data"])
    assert all(row["name"] and row["title"] for row in edge["features"])


def test_metric_options_grouped_by_hook_point_and_searchable():
    options = curve_figures.metric_options(["a/l2", "l2", "eval_acc", "b/var_w", "custom"])
    values = [o["value"] for o in options]
    assert values == [
        "__group__",
        "l2",
        "eval_acc",
        "custom",
        "__group__a",
        "a/l2",
        "__group__b",
        "b/var_w",
    ]
    headers = [o for o in options if o.get("disabled")]
    assert [h["label"] for h in headers] == ["— all hook points (model level) —", "— a —", "— b —"]
    l2 = options[1]
    assert l2["label"] == "l2 · L2 (Frobenius) norm" and "Frobenius" in l2["search"]
    assert l2["title"].startswith("L2 (Frobenius) norm:")
    assert next(o for o in options if o["value"] == "custom")["label"] == "custom"


def test_a_large_strip_stays_light(fit, monkeypatch):
    monkeypatch.setattr(strip_figures, "STRIP_MAX_TEXT_CELLS", 10)
    monkeypatch.setattr(strip_figures, "STRIP_MAX_TICKS", 4)
    fig = strip_figures.strip_figure(fit.map(4))
    assert fig.data[0].text is None and "S%{z}" in fig.data[0].hovertemplate
    assert fig.layout.yaxis.showticklabels is False and fig.layout.yaxis.ticktext is None


# --------------------------------------------- vectorised = the simple loops


def random_map(seed: int, n_runs: int = 7, n_states: int = 4, sparse: bool = False):
    """A plain map object: runs of different lengths and epochs, flickering states."""
    rng = np.random.default_rng(seed)
    tmap = type("Map", (), {})()
    tmap.n_states = n_states
    tmap.paths, tmap.epochs = {}, {}
    for i in range(n_runs):
        length = int(rng.integers(1, 60))
        step = 1000 if sparse else int(rng.integers(1, 4))
        tmap.epochs[f"r{i}"] = (int(rng.integers(0, 5)) + step * np.arange(length)).tolist()
        tmap.paths[f"r{i}"] = rng.integers(0, n_states, length).tolist()
    tmap.convergence_epoch = {r: (None if i % 3 == 0 else 7 * i) for i, r in enumerate(tmap.paths)}
    tmap.states = []
    return tmap


def simple_modal_states(tmap):
    counts: dict[int, dict[int, int]] = {}
    for run, path in tmap.paths.items():
        for epoch, state in zip(tmap.epochs[run], path):
            per = counts.setdefault(int(epoch), {})
            per[int(state)] = per.get(int(state), 0) + 1
    epochs = sorted(counts)
    return epochs, [min(counts[e], key=lambda k, c=counts[e]: (-c[k], k)) for e in epochs]


@pytest.mark.parametrize("seed", range(6))
def test_vectorised_modal_states_and_epoch_range_equal_the_simple_loops(seed):
    tmap = random_map(seed, sparse=seed % 2 == 1)
    assert curve_figures.modal_states(tmap) == simple_modal_states(tmap)
    for state in range(tmap.n_states + 1):
        epochs = [e for r, p in tmap.paths.items() for e, k in zip(tmap.epochs[r], p) if k == state]
        expected = None
        if epochs:
            lo, hi = np.percentile(np.asarray(epochs, dtype=float), [10, 90])
            expected = (int(round(lo)), int(round(hi)))
        assert captions.epoch_range(tmap, state) == expected


@pytest.mark.parametrize("epochs", [[5, 3, 3, 9, 5], [10**9, 3, 10**9, -4], [7], []])
def test_epoch_columns_equal_np_unique(epochs):
    columns, position = common_figures.epoch_columns(epochs)
    expected, inverse = np.unique(np.asarray(epochs, dtype=np.int64), return_inverse=True)
    assert columns.tolist() == expected.tolist() and position.tolist() == inverse.tolist()


def test_states_table_and_path_highlight_equal_the_simple_versions(fit):
    tmap = fit.map(4)
    frame = map_figures.states_frame(tmap)
    simple = pd.concat(
        [
            pd.DataFrame({"run": run, "epoch": tmap.epochs[run], "state": path})
            for run, path in sorted(tmap.paths.items())
        ],
        ignore_index=True,
    )
    pd.testing.assert_frame_equal(frame, simple, check_dtype=False)
    elements = map_figures.map_elements(tmap)
    for path in tmap.paths.values():
        on_nodes = {f"s{s}" for s in path}
        on_edges = {f"e{a}-{b}" for a, b in zip(path[:-1], path[1:]) if a != b}
        onpath = {
            e["data"]["id"]
            for e in map_figures.highlight_path(elements, np.asarray(path))
            if "onpath" in e["classes"].split()
        }
        assert onpath == {e["data"]["id"] for e in elements} & (on_nodes | on_edges)


def simple_thinned_strip(tmap, runs, per_column):
    """Per run and bin of ``per_column`` distinct epochs: the most common state (ties: lower)."""
    epochs = sorted({e for r in runs for e in tmap.epochs[r]})
    bin_of = {e: i // per_column for i, e in enumerate(epochs)}
    n_bins = -(-len(epochs) // per_column)
    z = np.full((len(runs), n_bins), np.nan)
    for i, run in enumerate(runs):
        votes: dict[int, list[int]] = {}
        for epoch, state in zip(tmap.epochs[run], tmap.paths[run]):
            votes.setdefault(bin_of[epoch], []).append(state)
        for b, states in votes.items():
            z[i, b] = min(set(states), key=lambda k, s=states: (-s.count(k), k))
    return z, len(epochs)


@pytest.mark.parametrize("max_columns", [1, 4, 10, 1000])
def test_a_strip_past_max_columns_shows_the_most_common_state_per_bin(max_columns):
    tmap = random_map(11, n_runs=9)
    runs = strip_figures.strip_order(tmap)
    x, z, per_column, n_epochs = strip_figures.strip_cells(tmap, runs, max_columns)
    assert per_column == max(1, -(-n_epochs // max_columns)) and len(x) <= max_columns
    expected, n_distinct = simple_thinned_strip(tmap, runs, per_column)
    assert n_epochs == n_distinct
    np.testing.assert_array_equal(z, expected)
    fig = strip_figures.strip_figure(tmap, max_columns=max_columns, selected_run=runs[2])
    heat = fig.data[0]
    assert list(heat.y) == runs  # a click on a row still names its run
    framed = [s for s in fig.layout.shapes if s.name == "selected run"]
    assert len(framed) == 1 and round(framed[0].y0 + 0.5) == 2
    if per_column > 1:  # thinned: said in the title and the hover, by how much
        assert f"most common state of {per_column} checkpoint epochs" in fig.layout.title.text
        assert f"{n_epochs} epochs thinned to {len(x)} columns" in fig.layout.title.text
        assert f"most common state of {per_column}" in heat.hovertemplate
    else:
        assert "thinned" not in fig.layout.title.text and list(heat.x) == sorted(
            {e for r in runs for e in tmap.epochs[r]}
        )


def test_a_thinned_strip_outlines_the_detour_stretches_it_shows(fit):
    tmap = fit.map(4)
    detours = {s.state for s in tmap.states if s.is_detour}
    fig = strip_figures.strip_figure(tmap, max_columns=12)
    heat = fig.data[0]
    z = np.array(heat.z, dtype=float)
    outlined = [s for s in fig.layout.shapes if s.name.startswith("detour")]
    shown = {(i, j) for i, j in zip(*np.nonzero(np.isin(z, list(detours))))}
    assert shown, "some thinned cells still show the detour"
    covered = set()
    for shape in outlined:
        row = round(shape.y0 + 0.5)
        covered |= {(row, j) for j, x in enumerate(heat.x) if shape.x0 < x < shape.x1}
    assert covered == shown
