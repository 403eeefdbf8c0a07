"""Pure builders of the Training map page: Cytoscape elements, stylesheets and the states table.

No Dash and no cache: elements and stylesheets are plain data (as in
dash-cytoscape's demos), tested without a browser.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd

from trainmap.analysis.result import aligned_paths
from trainmap.app import evidence
from trainmap.app.common_figures import finite, prob_text, state_color

# Canvas of the map's preset layout, in Cytoscape model units; the graph is
# fitted to the viewport afterwards, so only the proportions matter.
MAP_WIDTH = 900.0
MAP_ROW = 130.0


def map_positions(states: Sequence) -> dict[int, tuple[float, float]]:
    """Preset positions: x by mean epoch, y spreading branches apart.

    States are placed left to right by the mean epoch of their checkpoints.
    Non-detour states try the middle row first, detours try the rows above and
    below first; a state moves to the next free row while another state within
    ``MAP_WIDTH / 8`` horizontally already occupies its row. The result depends
    only on the states, so the map is stable across reloads and testable.
    """
    if not states:
        return {}
    epochs = np.array([finite(s.mean_epoch) or 0.0 for s in states], dtype=float)
    lo, hi = float(epochs.min()), float(epochs.max())
    span = hi - lo
    min_dx = MAP_WIDTH / 8
    placed: list[tuple[float, int]] = []  # (x, row)
    positions = {}
    for index in np.argsort(epochs, kind="stable"):
        state = states[int(index)]
        x = MAP_WIDTH / 2 if span <= 0 else (epochs[index] - lo) / span * MAP_WIDTH
        order = [1, -1, 2, -2, 3, -3, 0] if state.is_detour else [0, -1, 1, -2, 2, -3, 3]
        row = next(
            (r for r in order if all(abs(x - px) >= min_dx or pr != r for px, pr in placed)),
            order[len(placed) % len(order)],
        )
        placed.append((x, row))
        positions[int(state.state)] = (round(float(x), 1), round(row * MAP_ROW, 1))
    return positions


def _node_size(occupancy: float) -> float:
    # Area (not radius) proportional to occupancy reads right; keep a minimum.
    return round(28 + 90 * math.sqrt(max(occupancy, 0.0)), 1)


def _edge_width(prob: float) -> float:
    return round(1.5 + 10 * max(min(prob, 1.0), 0.0), 2)


def feature_rows(features: Iterable, limit: int = 5) -> list[dict]:
    """Top features of an edge as rows: name, arrow (up/down by the sign of the
    change) and the change in z units."""
    rows = []
    for feature in list(features)[:limit]:
        get = feature.get if isinstance(feature, Mapping) else lambda k, f=feature: getattr(f, k)
        delta = float(get("delta_z"))
        rows.append(
            {
                "feature": get("feature"),
                "arrow": "↑" if delta > 0 else ("↓" if delta < 0 else "→"),
                "delta_z": round(delta, 2),
                "score": round(float(get("score")), 4),
            }
        )
    # The strongest features are chosen by score, then listed by the change the
    # table shows, largest first.
    return sorted(rows, key=lambda row: -abs(row["delta_z"]))


def profile_rows(profile: Mapping[str, float], limit: int = 8) -> list[dict]:
    """A state's feature profile, largest |z| first."""
    items = sorted(profile.items(), key=lambda kv: -abs(kv[1]))[:limit]
    return [{"feature": k, "z": round(float(v), 2)} for k, v in items]


def map_elements(
    training_map, highlight_run: str | None = None, bootstrap: Mapping | None = None
) -> list[dict]:
    """Cytoscape elements for a TrainingMap: one node per state, one edge per
    observed transition j -> k, with preset positions.

    Node data: id ``s<k>``, label, colour, size, occupancy, mean epoch, runs
    visiting, profile rows. Classes ``start`` / ``end`` / ``detour`` mark start
    states (some run starts there), end states and detours. Edge data: id
    ``e<j>-<k>``, probability label, width, number of runs, mean convergence
    epoch and the top features. With ``highlight_run``, the nodes and edges on
    that run's decoded path get the class ``onpath``.

    ``bootstrap`` (``FitResult.bootstrap``) applies when it was computed for
    this n: each node and edge then carries the share of resamples in which it
    was found, as words and as its opacity. Every node carries its detour test
    in words (``detour_text``).
    """
    positions = map_positions(training_map.states)
    if not bootstrap or int(bootstrap.get("n", -1)) != int(training_map.n_states):
        bootstrap = {}
    resamples = bootstrap.get("n_resamples")
    elements = []
    for state in training_map.states:
        k = int(state.state)
        classes = []
        if state.start_runs > 0:
            classes.append("start")
        if state.end_runs > 0:
            classes.append("end")
        if state.is_detour:
            classes.append("detour")
        x, y = positions[k]
        share = evidence.stability_share(bootstrap.get("state_stability"), k)
        elements.append(
            {
                "data": {
                    "id": f"s{k}",
                    "state": k,
                    "label": f"S{k}",
                    "color": state_color(k),
                    "size": _node_size(state.occupancy),
                    "occupancy": round(float(state.occupancy), 4),
                    "mean_epoch": round(float(state.mean_epoch), 1),
                    "visited_runs": int(state.visited_runs),
                    "start_runs": int(state.start_runs),
                    "end_runs": int(state.end_runs),
                    "is_detour": bool(state.is_detour),
                    "detour_text": evidence.detour_words(f"S{k}", getattr(state, "detour", {})),
                    "stability_text": evidence.stability_words(share, resamples),
                    "opacity": evidence.opacity(share),
                    "profile": profile_rows(state.profile),
                },
                "position": {"x": x, "y": y},
                "classes": " ".join(classes),
            }
        )
    for edge in training_map.edges:
        j, k = int(edge.source), int(edge.target)
        conv = finite(edge.mean_convergence_epoch)
        share = evidence.stability_share(bootstrap.get("edge_stability"), f"{j}->{k}")
        elements.append(
            {
                "data": {
                    "id": f"e{j}-{k}",
                    "source": f"s{j}",
                    "target": f"s{k}",
                    "prob": round(float(edge.prob), 4),
                    "label": prob_text(edge.prob),
                    "width": _edge_width(edge.prob),
                    "color": state_color(j),
                    "n_runs": int(edge.n_runs),
                    "n_transitions": int(edge.n_transitions),
                    "mean_convergence_epoch": round(conv, 1) if conv is not None else None,
                    "features": feature_rows(edge.top_features),
                    "stability_text": evidence.stability_words(share, resamples),
                    # edges were drawn at 0.75 before stability existed
                    "opacity": round(0.75 * evidence.opacity(share), 3),
                },
                "classes": "",
            }
        )
    if highlight_run and highlight_run in training_map.paths:
        elements = highlight_path(elements, training_map.paths[highlight_run])
    return elements


def highlight_path(elements: list[dict], path: Sequence[int] | None) -> list[dict]:
    """A copy of ``elements`` where the nodes and edges of ``path`` have class ``onpath``."""
    path = np.asarray([] if path is None else path, dtype=np.int64)
    moves = np.flatnonzero(path[1:] != path[:-1])  # 10 000 checkpoints, a handful of moves
    on_nodes = {f"s{s}" for s in np.unique(path).tolist()}
    on_edges = {f"e{a}-{b}" for a, b in zip(path[moves].tolist(), path[moves + 1].tolist())}
    out = []
    for element in elements:
        classes = [c for c in element.get("classes", "").split() if c != "onpath"]
        if element["data"]["id"] in on_nodes or element["data"]["id"] in on_edges:
            classes.append("onpath")
        out.append({**element, "classes": " ".join(classes)})
    return out


def map_stylesheet() -> list[dict]:
    """Cytoscape stylesheet (plain data): colours and sizes come from element data."""
    return [
        {
            "selector": "node",
            "style": {
                "background-color": "data(color)",
                "width": "data(size)",
                "height": "data(size)",
                "label": "data(label)",
                "color": "#111",
                "font-size": 14,
                "text-valign": "center",
                "text-outline-color": "#fff",
                "text-outline-width": 3,
                "border-width": 2,
                "border-color": "#555",
                "opacity": "data(opacity)",
            },
        },
        # Start states get a thick green ring, end states a double ring and
        # detours a rounded-square shape: a ring's colour, a ring's style and
        # the node's shape are separate properties, so the three marks combine
        # on one node and none hides another.
        {"selector": "node.start", "style": {"border-width": 5, "border-color": "#009E73"}},
        {"selector": "node.end", "style": {"border-style": "double", "border-width": 7}},
        {"selector": "node.detour", "style": {"shape": "round-rectangle"}},
        {
            "selector": "edge",
            "style": {
                "width": "data(width)",
                "line-color": "data(color)",
                "target-arrow-color": "data(color)",
                "target-arrow-shape": "triangle",
                "curve-style": "bezier",
                "opacity": "data(opacity)",
                "label": "data(label)",
                "font-size": 14,
                "text-background-color": "#fff",
                "text-background-opacity": 0.8,
                "text-background-padding": 2,
            },
        },
        {"selector": "edge.onpath", "style": {"line-color": "#D55E00", "opacity": 1}},
        # The chosen run's states: a halo behind the node (never on its ring),
        # and a dark label on a white outline, readable on any state colour.
        {
            "selector": "node.onpath",
            "style": {
                "underlay-color": "#D55E00",
                "underlay-opacity": 0.35,
                "underlay-padding": 10,
                "underlay-shape": "ellipse",
                "font-weight": "bold",
                "font-size": 18,
            },
        },
        {"selector": "edge:selected", "style": {"line-color": "#333"}},
    ]


def focus_stylesheet(focus: Sequence[str], hovered: str | None = None) -> list[dict]:
    """Rules to append last to the map's stylesheet while an element is hovered:
    ``focus`` (the element and its neighbours, ids) keep their own opacity,
    everything else fades; the ``hovered`` element's label turns bold."""
    if not focus:
        return []
    ids = ", ".join(f'[id = "{element_id}"]' for element_id in focus)
    sheet = [
        # Below the faintest unstable element (0.75 x 0.25), so fading reads as fading.
        {"selector": "node, edge", "style": {"opacity": 0.08}},
        {"selector": ids, "style": {"opacity": "data(opacity)", "z-index": 10}},
    ]
    if hovered:
        sheet.append({"selector": f'[id = "{hovered}"]', "style": {"font-weight": "bold"}})
    return sheet


def neighbourhood(elements: Sequence[Mapping], element_id: str) -> list[str]:
    """Ids of an element and its neighbours: a node with its edges and the
    nodes at their other ends; an edge with its two nodes."""
    by_id = {e["data"]["id"]: e["data"] for e in elements}
    item = by_id.get(element_id)
    if item is None:
        return []
    if "source" in item:
        return [element_id, item["source"], item["target"]]
    out = [element_id]
    for data in by_id.values():
        if "source" in data and element_id in (data["source"], data["target"]):
            out += [data["id"], data["source"], data["target"]]
    return list(dict.fromkeys(out))


def states_frame(training_map) -> pd.DataFrame:
    """Long table of decoded states: run, epoch, state (for CSV download), runs sorted."""
    paths, epochs = aligned_paths(training_map)
    if not len(paths):
        return pd.DataFrame(columns=["run", "epoch", "state"])
    run = pd.Categorical.from_codes(
        np.repeat(np.arange(len(paths)), paths.lengths()), categories=paths.names
    )
    frame = pd.DataFrame(
        {
            "run": run,
            "epoch": epochs.flat.astype(np.int64),
            "state": paths.flat.astype(np.int64),
        }
    )
    frame["run"] = frame["run"].astype(str)
    # a stable sort by run keeps each run's checkpoints in order
    return frame.sort_values("run", kind="stable", ignore_index=True)


def _explained(rows: Iterable[Mapping]) -> list[dict]:
    """Feature rows with the glossary's display name and one-line definition added."""
    from trainmap.analysis import glossary

    return [
        {
            **row,
            "name": glossary.describe(row["feature"]).name,
            "title": glossary.tooltip(row["feature"]),
        }
        for row in rows
    ]


def label_states(elements: list[dict], labels: Mapping[int, Mapping]) -> list[dict]:
    """A copy of map elements with each node labelled by name and caption.

    Node data gains ``name``, ``caption`` and a two-line ``label`` ("S1
    memorising" over "epochs 40–120 · L2 ↑"); node profile and edge feature
    rows gain the glossary's ``name`` and ``title`` (definition, for tooltips).
    """
    out = []
    for element in elements:
        data = dict(element["data"])
        if "source" in data:
            data["features"] = _explained(data.get("features", []))
        elif "state" in data and int(data["state"]) in labels:
            entry = labels[int(data["state"])]
            data["name"] = entry["name"]
            data["caption"] = entry["caption"]
            data["label"] = f"{entry['label']}\n{entry['caption']}"
            data["profile"] = _explained(data.get("profile", []))
        out.append({**element, "data": data})
    return out


def caption_stylesheet() -> list[dict]:
    """Node labels of two lines (label, caption) set under the node, so the caption
    never covers the node's colour or its start/end/detour marks."""
    return [
        {
            "selector": "node[caption]",
            "style": {
                "text-wrap": "wrap",
                "text-max-width": 170,
                "text-valign": "bottom",
                "text-margin-y": 4,
                "font-size": 12,
            },
        }
    ]
