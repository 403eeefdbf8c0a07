"""The dashboard's pure builders (the app/*_figures.py modules), without a server or a browser.

The fit used here is built from synthetic truth (test_app_support.truth_fit),
so the expected states, edges and detours are known exactly.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from test_app_support import truth_fit

from trainmap.analysis.synthetic import make_synthetic
from trainmap.app import (
    common_figures,
    curve_figures,
    evidence,
    map_figures,
    prediction_figures,
    runs_figures,
    selection_figures,
)


@pytest.fixture(scope="module")
def fit():
    return truth_fit(make_synthetic(n_runs=8, n_checkpoints=120, seed=3))


FIGURE_MODULES = [p.stem for p in (Path(__file__).parent.parent / "app").glob("*_figures.py")]


def test_figure_modules_import_no_dash_or_cache():
    # common, compare, curve, map, prediction, runs, selection, strip
    assert len(FIGURE_MODULES) == 8
    code = (
        "import sys; "
        + "".join(f"import trainmap.app.{name}; " for name in FIGURE_MODULES)
        + "print(sorted(m for m in ('dash', 'flask', 'flask_caching', 'trainmap.app.data', 'torch')"
        " if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_map_elements_nodes_edges_and_marks(fit):
    tmap = fit.map(4)
    elements = map_figures.map_elements(tmap)
    nodes = [e for e in elements if "source" not in e["data"]]
    edges = [e for e in elements if "source" in e["data"]]
    assert len(nodes) == 4 and len(edges) == len(tmap.edges) == 4
    by_id = {e["data"]["id"]: e for e in elements}
    # The synthetic graph: 0 -> 1 -> 3 and the detour 0 -> 2 -> 1.
    assert set(by_id) >= {"s0", "s1", "s2", "s3", "e0-1", "e0-2", "e2-1", "e1-3"}
    assert "start" in by_id["s0"]["classes"] and "end" in by_id["s3"]["classes"]
    assert "detour" in by_id["s2"]["classes"] and "detour" not in by_id["s1"]["classes"]
    # Size grows with occupancy; colour is the state's colour everywhere.
    occ = {s.state: s.occupancy for s in tmap.states}
    big, small = max(occ, key=occ.get), min(occ, key=occ.get)
    assert by_id[f"s{big}"]["data"]["size"] > by_id[f"s{small}"]["data"]["size"]
    assert by_id["s2"]["data"]["color"] == common_figures.state_color(2)
    # Edges: width by probability, a label, runs and the top features with arrows.
    edge = next(e for e in tmap.edges if (e.source, e.target) == (1, 3))
    data = by_id["e1-3"]["data"]
    # The same probability text on the edge as in the hover panel.
    assert data["label"] == common_figures.prob_text(edge.prob) == f"{edge.prob:.3f}"
    assert data["n_runs"] == edge.n_runs == 8
    # The five best-scoring features, listed by the change they show (largest first).
    top = sorted(edge.top_features[:5], key=lambda f: -abs(round(f.delta_z, 2)))
    assert [row["feature"] for row in data["features"]] == [f.feature for f in top]
    for row, feature in zip(data["features"], top):
        assert row["arrow"] == ("↑" if feature.delta_z > 0 else "↓")
        assert row["delta_z"] == round(feature.delta_z, 2)
    widths = {e["data"]["id"]: e["data"]["width"] for e in edges}
    probs = {f"e{e.source}-{e.target}": e.prob for e in tmap.edges}
    order = sorted(probs, key=probs.get)
    assert [widths[i] for i in order] == sorted(widths.values())


def test_map_positions_stable_ordered_by_epoch_and_detours_off_the_main_row(fit):
    tmap = fit.map(4)
    first = map_figures.map_positions(tmap.states)
    assert first == map_figures.map_positions(tmap.states)  # deterministic
    xs = {k: x for k, (x, _) in first.items()}
    by_epoch = sorted(tmap.states, key=lambda s: s.mean_epoch)
    assert [xs[s.state] for s in by_epoch] == sorted(xs.values())
    assert first[2][1] != 0 and first[0][1] == 0 and first[3][1] == 0
    # No two nodes share a spot.
    assert len(set(first.values())) == len(first)
    # One state: centred, no division by zero.
    assert map_figures.map_positions(fit.map(1).states) == {0: (map_figures.MAP_WIDTH / 2, 0.0)}


def test_highlight_path_marks_only_the_runs_nodes_and_edges(fit):
    tmap = fit.map(4)
    run = next(r for r, p in tmap.paths.items() if 2 not in p)  # a main-branch run
    elements = map_figures.map_elements(tmap, highlight_run=run)
    on = {e["data"]["id"] for e in elements if "onpath" in e["classes"].split()}
    assert on == {"s0", "s1", "s3", "e0-1", "e1-3"}
    # Highlighting again with another path replaces, not accumulates.
    again = map_figures.highlight_path(elements, [0, 0, 2, 2])
    assert {e["data"]["id"] for e in again if "onpath" in e["classes"]} == {"s0", "s2", "e0-2"}


def test_selection_figure_marks_selected_and_chosen_and_carries_n(fit):
    figure = selection_figures.selection_figure(fit.sweep, selected_n=4, chosen_n=2)
    names = [t.name for t in figure.data]
    assert {"BIC", "AIC", "held-out LL", "selected n", "chosen n"} <= set(names)
    bic = next(t for t in figure.data if t.name == "BIC")
    assert list(bic.x) == [1, 2, 3, 4] and list(bic.customdata) == [1, 2, 3, 4]
    assert list(bic.y) == list(fit.sweep["bic_mean"])
    star = next(t for t in figure.data if t.name == "selected n")
    assert list(star.x) == [4] and star.marker.symbol == "star"
    ring = next(t for t in figure.data if t.name == "chosen n")
    assert list(ring.x) == [2]
    band = next(t for t in figure.data if t.name == "BIC band")
    upper = np.asarray(band.y[:4])
    assert np.allclose(upper, fit.sweep["bic_mean"] + fit.sweep["bic_std"])
    # Infeasible n (NaN) are left out, not drawn as zero.
    sweep = fit.sweep.copy()
    sweep.loc[sweep["n"] == 4, ["bic_mean", "aic_mean", "heldout_ll_mean"]] = np.nan
    bic = next(t for t in selection_figures.selection_figure(sweep, 3).data if t.name == "BIC")
    assert list(bic.x) == [1, 2, 3]


def test_state_segments_and_metric_figure_shading():
    epochs = [0, 1, 2, 3, 4, 5]
    path = [0, 0, 1, 1, 1, 3]
    segments = common_figures.state_segments(epochs, path)
    assert segments == [(0.0, 1.5, 0), (1.5, 4.5, 1), (4.5, 5.0, 3)]
    frame = pd.DataFrame({"epoch": epochs, "l2": [1.0, 2, 3, 4, 5, 6]})
    fig = curve_figures.metric_figure(
        "l2", run_frame=frame, run_name="seed-0", states=(epochs, path)
    )
    rects = [s for s in fig.layout.shapes if s.type == "rect"]
    lines = [s for s in fig.layout.shapes if s.type == "line"]
    assert len(rects) == 3 and len(lines) == 2
    assert rects[1].fillcolor == common_figures.rgba(common_figures.state_color(1), 0.18)
    assert [s.x0 for s in lines] == [1.5, 4.5]
    assert fig.layout.uirevision == "curves" and fig.layout.yaxis.type == "linear"
    log = curve_figures.metric_figure("l2", run_frame=frame, log_y=True)
    assert log.layout.yaxis.type == "log" and not log.layout.shapes


def test_metric_band_and_smoothing():
    a = pd.DataFrame({"epoch": [0, 1, 2], "acc": [0.0, 0.5, 1.0]})
    b = pd.DataFrame({"epoch": [0, 1, 2], "acc": [0.2, np.nan, 0.8]})
    band = curve_figures.metric_band([a, b], "acc")
    assert band["mean"].round(6).tolist() == [0.1, 0.5, 0.9]
    assert band["count"].tolist() == [2, 1, 2]
    assert band["std"].iloc[1] == 0.0  # one value: no spread, not NaN
    fig = curve_figures.metric_figure("acc", band=band)
    assert [t.name for t in fig.data] == ["all seeds ± std", "all seeds mean"]
    assert curve_figures.smooth([1, 2, 3, 4, 5], 3).tolist() == [1.5, 2, 3, 4, 4.5]
    assert curve_figures.smooth([1, np.nan, 3], 1)[1] != curve_figures.smooth([1, np.nan, 3], 1)[1]
    assert curve_figures.metric_band([], "acc").empty


def test_runs_table_rows_broken_and_convergence():
    summaries = [
        {"run": "a", "status": "completed", "seed": 1, "task": "t", "checkpoints": 5,
         "last_epoch": 4, "last_eval_acc": 0.987654, "reason": None},
        {"run": "b", "status": "broken", "reason": "no meta.json: not a trainmap run"},
        {"run": "c", "status": "running", "seed": 2, "checkpoints": 3, "last_eval_acc": float("nan")},
    ]  # fmt: skip
    rows = runs_figures.runs_table_rows(summaries, {"a": 40, "c": None})
    assert [r["id"] for r in rows] == ["a", "b", "c"]
    assert rows[0]["final_eval_acc"] == 0.9877 and rows[0]["convergence_epoch"] == 40
    assert rows[1]["status"] == "broken" and "meta.json" in rows[1]["reason"]
    assert rows[1]["checkpoints"] == 0 and rows[1]["convergence_epoch"] is None
    assert rows[2]["final_eval_acc"] is None and rows[2]["convergence_epoch"] is None
    assert runs_figures.status_counts(rows) == {"broken": 1, "completed": 1, "running": 1}


def test_exports(fit):
    tmap = fit.map(4)
    states = map_figures.states_frame(tmap)
    assert list(states.columns) == ["run", "epoch", "state"]
    assert len(states) == sum(len(p) for p in tmap.paths.values())
    run = sorted(tmap.paths)[0]
    metrics = pd.DataFrame({"epoch": tmap.epochs[run], "step": tmap.epochs[run], "l2": 1.0})
    out = curve_figures.run_export_frame(metrics, (tmap.epochs[run], tmap.paths[run]))
    assert out["state"].tolist() == tmap.paths[run]
    assert "state" not in curve_figures.run_export_frame(metrics, None)


def test_progress_figure_keeps_zoom_across_refreshes():
    frames = {"a": pd.DataFrame({"epoch": [0, 1], "eval_acc": [0.1, 0.2]})}
    one = runs_figures.progress_figure(frames, "eval_acc")
    two = runs_figures.progress_figure({**frames, "b": frames["a"]}, "eval_acc")
    assert one.layout.uirevision == two.layout.uirevision and len(two.data) == 2


def test_keep_view_reapplies_a_users_zoom_and_forgets_it_on_reset():
    fig = runs_figures.progress_figure({"a": pd.DataFrame({"epoch": [0, 9], "acc": [0, 1]})}, "acc")
    zoomed = runs_figures.keep_view(fig, {"xaxis.range[0]": 2, "xaxis.range[1]": 5})
    assert list(zoomed.layout.xaxis.range) == [2, 5] and zoomed.layout.yaxis.range is None
    fresh = runs_figures.progress_figure({"a": pd.DataFrame({"epoch": [0], "acc": [0]})}, "acc")
    reset = runs_figures.keep_view(fresh, {"xaxis.autorange": True, "yaxis.autorange": True})
    assert reset.layout.xaxis.range is None
    assert runs_figures.keep_view(fresh, None) is fresh


def test_selection_figure_marks_infeasible_n_with_the_reason(fit):
    sweep = fit.sweep.copy()
    reason = "too few points: 60 train rows for 92 parameters"
    sweep["feasible"] = sweep["n"] != 4
    sweep["error"] = np.where(sweep["n"] == 4, reason, "")
    sweep.loc[sweep["n"] == 4, ["bic_mean", "aic_mean", "heldout_ll_mean"]] = np.nan
    assert selection_figures.infeasible_ns(sweep) == [(4, reason)]
    figure = selection_figures.selection_figure(sweep, 3)
    crosses = next(t for t in figure.data if t.name == "infeasible n")
    assert list(crosses.x) == [4] and list(crosses.text) == [reason]
    assert "%{text}" in crosses.hovertemplate
    # Axis titles on both panels, and room above the subplot titles for the toolbar.
    assert figure.layout.yaxis.title.text and figure.layout.yaxis2.title.text
    assert figure.layout.xaxis.title.text == "number of states n"
    assert figure.layout.margin.t >= 60
    assert selection_figures.infeasible_ns(fit.sweep) == []  # a sweep without failures: no crosses
    assert "infeasible n" not in [
        t.name for t in selection_figures.selection_figure(fit.sweep, 3).data
    ]


def test_runs_table_columns_hide_empty_ones_and_type_numbers():
    rows = [
        {"run": "a", "status": "completed", "reason": "", "seed": 1, "task": "",
         "checkpoints": 5, "last_epoch": 4, "final_eval_acc": 0.9877, "convergence_epoch": None},
        {"run": "b", "status": "broken", "reason": "no meta.json", "seed": None, "task": None,
         "checkpoints": 0, "last_epoch": None, "final_eval_acc": None, "convergence_epoch": None},
    ]  # fmt: skip
    columns = runs_figures.runs_table_columns(
        rows, (*runs_figures.RUNS_COLUMNS, prediction_figures.PREDICTION_COLUMN)
    )
    ids = [c["id"] for c in columns]
    assert ids == ["run", "status", "reason", "seed", "checkpoints", "last_epoch", "final_eval_acc"]
    by_id = {c["id"]: c for c in columns}
    assert by_id["final_eval_acc"]["type"] == "numeric"
    assert by_id["final_eval_acc"]["format"] == {"specifier": ".4f"}
    assert by_id["checkpoints"]["format"] == {"specifier": ".0f"}
    assert "type" not in by_id["reason"]
    # No rows at all: the header keeps run and status.
    assert [c["id"] for c in runs_figures.runs_table_columns([], runs_figures.RUNS_COLUMNS)] == [
        "run",
        "status",
    ]


def test_map_stylesheet_focus_neighbours_and_marks_that_combine(fit):
    elements = map_figures.map_elements(fit.map(4))
    # The synthetic graph: 0 -> 1 -> 3 and the detour 0 -> 2 -> 1.
    assert set(map_figures.neighbourhood(elements, "e0-2")) == {"e0-2", "s0", "s2"}
    assert set(map_figures.neighbourhood(elements, "s2")) == {"s2", "e0-2", "e2-1", "s0", "s1"}
    assert map_figures.neighbourhood(elements, "s9") == []
    plain = map_figures.map_stylesheet()
    assert map_figures.focus_stylesheet([]) == []
    focused = map_figures.focus_stylesheet(map_figures.neighbourhood(elements, "s2"), "s2")
    fade = next(rule for rule in focused if rule["selector"] == "node, edge")
    assert fade["style"]["opacity"] < 0.75 * evidence.MIN_OPACITY
    keep = focused[focused.index(fade) + 1]
    assert all(f'[id = "{i}"]' in keep["selector"] for i in ("s2", "e0-2", "e2-1", "s0", "s1"))
    assert '[id = "s3"]' not in keep["selector"]
    assert focused[-1]["selector"] == '[id = "s2"]'
    # Start, end and detour each set a different property, so all three show on one node.
    marks = {rule["selector"]: set(rule["style"]) for rule in plain}
    assert marks["node.start"] == {"border-width", "border-color"}
    assert marks["node.end"] == {"border-style", "border-width"}
    assert marks["node.detour"] == {"shape"}
    # The highlighted run's halo never touches the ring; its label keeps a white outline.
    onpath = next(rule["style"] for rule in plain if rule["selector"] == "node.onpath")
    assert not any(key.startswith("border") or key == "color" for key in onpath)
    node = next(rule["style"] for rule in plain if rule["selector"] == "node")
    assert node["text-outline-color"] == "#fff" and node["text-outline-width"] >= 3


def test_counts_and_probabilities_read_the_same_everywhere():
    assert (
        common_figures.plural(1, "run") == "1 run" and common_figures.plural(2, "run") == "2 runs"
    )
    assert common_figures.plural(0, "time") == "0 times"
    assert common_figures.prob_text(0.05) == "0.050" and common_figures.prob_text(0.1234) == "0.123"


def test_curve_hover_shows_run_value_and_state():
    epochs = [0, 1, 2, 3]
    frame = pd.DataFrame({"epoch": epochs, "l2": [1.0, 2, 3, 4]})
    fig = curve_figures.metric_figure(
        "l2", run_frame=frame, run_name="seed-0", states=([0, 1, 2], [0, 0, 2])
    )
    run = next(t for t in fig.data if t.name == "seed-0")
    assert list(run.customdata) == ["S0", "S0", "S2", "not decoded"]
    assert "seed-0" in run.hovertemplate and "l2 %{y" in run.hovertemplate
    assert "state %{customdata}" in run.hovertemplate
    assert fig.layout.xaxis.title.text == "epoch" and fig.layout.yaxis.title.text == "l2"
