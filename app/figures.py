"""Pure builders: data in, Plotly figures and Cytoscape elements out.

Nothing here imports Dash or the cache, so every function can be tested as a
plain function without a server or a browser. Pages call these from thin
callbacks after loading data through ``app.data``.

Colours: state ``k`` is drawn with ``state_color(k)`` everywhere (map nodes,
shaded phases on the metric curves, the CSV legend), so a reader can match a
node to a stretch of a curve by colour alone.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from trainmap.app import evidence
from trainmap.trainer.columns import INDEX_COLUMNS

# Colour-blind friendly (Okabe-Ito, then Tableau) so up to ~12 states stay distinct.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
    "#8C564B",
    "#7F7F7F",
    "#BCBD22",
    "#17BECF",
)

# Canvas of the map's preset layout, in Cytoscape model units; the graph is
# fitted to the viewport afterwards, so only the proportions matter.
MAP_WIDTH = 900.0
MAP_ROW = 130.0


def state_color(state: int) -> str:
    return PALETTE[int(state) % len(PALETTE)]


def _rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def _finite(value) -> float | None:
    """A float for display, or None for missing / NaN values."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


# ----------------------------------------------------------------- runs table

RUNS_COLUMNS = (
    ("run", "run"),
    ("status", "status"),
    ("reason", "reason"),
    ("seed", "seed"),
    ("task", "task"),
    ("checkpoints", "checkpoints"),
    ("last_epoch", "last epoch"),
    ("final_eval_acc", "final eval acc"),
    ("convergence_epoch", "convergence epoch"),
)


def runs_table_rows(
    summaries: Iterable[Mapping], convergence: Mapping[str, int | None] | None = None
) -> list[dict]:
    """One table row per run; ``summaries`` are RunSummary-like mappings.

    ``convergence`` maps run name to the epoch the fit says it converged (None
    when it never did); runs the fit did not use get an empty cell. Every row
    has an ``id`` (the run name) so the table keeps its selection across
    refreshes even when rows are re-sorted.
    """
    convergence = convergence or {}
    rows = []
    for summary in summaries:
        name = summary["run"]
        acc = _finite(summary.get("last_eval_acc"))
        conv = convergence.get(name)
        rows.append(
            {
                "id": name,
                "run": name,
                "status": summary["status"],
                "reason": summary.get("reason") or "",
                "seed": summary.get("seed"),
                "task": summary.get("task") or "",
                "checkpoints": int(summary.get("checkpoints") or 0),
                "last_epoch": summary.get("last_epoch"),
                "final_eval_acc": round(acc, 4) if acc is not None else None,
                "convergence_epoch": int(conv) if conv is not None else None,
            }
        )
    return rows


# Right-aligned numbers with one precision per column (accuracy to 4 places).
NUMERIC_COLUMNS = {
    "seed": 0,
    "checkpoints": 0,
    "last_epoch": 0,
    "final_eval_acc": 4,
    "convergence_epoch": 0,
}


def runs_table_columns(rows: Sequence[Mapping], columns: Sequence[tuple[str, str]]) -> list[dict]:
    """DataTable columns for ``rows``: numbers typed and formatted, and columns
    empty in every row (no task, no reason, no prediction) left out. The run and
    status columns always stay, so an empty experiment still has a header."""
    out = []
    for key, title in columns:
        if key not in ("run", "status") and not any(row.get(key) not in (None, "") for row in rows):
            continue
        column = {"name": title, "id": key}
        if key in NUMERIC_COLUMNS:
            digits = NUMERIC_COLUMNS[key]
            column.update(type="numeric", format={"specifier": f".{digits}f"})
        out.append(column)
    return out


def status_counts(rows: Iterable[Mapping]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return dict(sorted(counts.items()))


# ------------------------------------------------------------ model selection


def selection_figure(
    sweep: pd.DataFrame, selected_n: int, chosen_n: int | None = None, height: int = 380
) -> go.Figure:
    """BIC and AIC (left, lower is better) and held-out log-likelihood (right,
    higher is better) against the number of states, each mean +- std over
    restarts as a band. The n the criterion selected is marked with a star, the
    n the user chose (if different) with a ring. Every point carries its n in
    ``customdata`` so a click tells the callback which n was chosen.
    """
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("information criteria (lower is better)", "held-out log-likelihood"),
        horizontal_spacing=0.12,
    )
    frame = sweep.sort_values("n")
    n = frame["n"].astype(int).to_numpy()
    panels = (
        (1, "bic", "BIC", "#0072B2"),
        (1, "aic", "AIC", "#E69F00"),
        (2, "heldout_ll", "held-out LL", "#009E73"),
    )
    for col, key, label, color in panels:
        mean_col, std_col = f"{key}_mean", f"{key}_std"
        if mean_col not in frame:
            continue
        mean = frame[mean_col].to_numpy(dtype=float)
        std = frame[std_col].to_numpy(dtype=float) if std_col in frame else np.zeros_like(mean)
        std = np.nan_to_num(std)
        ok = np.isfinite(mean)
        if not ok.any():
            continue
        # The band is one closed polygon: upper edge left to right, lower edge back.
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([n[ok], n[ok][::-1]]),
                y=np.concatenate([(mean + std)[ok], (mean - std)[ok][::-1]]),
                fill="toself",
                fillcolor=_rgba(color, 0.18),
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                name=f"{label} band",
            ),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=n[ok],
                y=mean[ok],
                customdata=n[ok],
                mode="lines+markers",
                marker={"size": 10, "color": color},
                line={"color": color},
                name=label,
                hovertemplate=f"n=%{{x}}<br>{label} %{{y:.4g}}<extra>click to choose n</extra>",
            ),
            row=1,
            col=col,
        )
        for mark_n, symbol, size, name in (
            (selected_n, "star", 20, "selected"),
            (chosen_n, "circle-open", 24, "chosen"),
        ):
            if mark_n is None or (name == "chosen" and mark_n == selected_n):
                continue
            hit = ok & (n == int(mark_n))
            if hit.any():
                fig.add_trace(
                    go.Scatter(
                        x=n[hit],
                        y=mean[hit],
                        customdata=n[hit],
                        mode="markers",
                        marker={
                            "symbol": symbol,
                            "size": size,
                            "color": "#D55E00",
                            "line": {"width": 2, "color": "#D55E00"},
                        },
                        name=f"{name} n",
                        showlegend=key == "bic",
                        hovertemplate=f"{name} n=%{{x}}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
    # ICL (BIC plus an entropy penalty) and its effective-sample version, whose
    # penalty counts autocorrelated checkpoints as fewer observations (the
    # default criterion; docs/selection.md).
    for column, label, color in (
        ("icl_best", "ICL (best restart)", "#CC79A7"),
        ("icl_ess", "ICL, effective sample", "#56B4E9"),
    ):
        if column not in frame or not np.isfinite(frame[column].to_numpy(dtype=float)).any():
            continue
        fig.add_trace(
            go.Scatter(
                x=n,
                y=frame[column].to_numpy(dtype=float),
                customdata=n,
                mode="lines+markers",
                marker={"size": 7, "color": color},
                line={"color": color, "dash": "dot"},
                name=label,
                hovertemplate=f"n=%{{x}}<br>{label} %{{y:.4g}}<extra>click to choose n</extra>",
            ),
            row=1,
            col=1,
        )
    # Infeasible n (every restart failed, e.g. too few points for the
    # parameters) get a grey cross on the criteria's panel with the reason on
    # hover, so a gap in the curves is never a silent one.
    bad = infeasible_ns(sweep)
    if bad:
        finite = frame.get("bic_mean", pd.Series(dtype=float)).to_numpy(dtype=float)
        finite = finite[np.isfinite(finite)]
        y = float(finite.min()) if len(finite) else 0.0
        fig.add_trace(
            go.Scatter(
                x=[n for n, _ in bad],
                y=[y] * len(bad),
                text=[reason for _, reason in bad],
                mode="markers",
                marker={"symbol": "x-thin-open", "size": 14, "color": "#7F7F7F"},
                name="infeasible n",
                hovertemplate="n=%{x} infeasible<br>%{text}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    fig.update_xaxes(title_text="number of states n", dtick=1)
    fig.update_yaxes(title_text="criterion (lower is better)", row=1, col=1)
    fig.update_yaxes(title_text="log-likelihood (higher is better)", row=1, col=2)
    fig.update_layout(
        height=height,
        # Room above the subplot titles for Plotly's toolbar (it never covers them).
        margin={"l": 60, "r": 20, "t": 70, "b": 90},
        # Below the axis titles (anchored by its top edge), markers at one size.
        legend={"orientation": "h", "y": -0.2, "yanchor": "top", "itemsizing": "constant"},
        clickmode="event",
        hovermode="closest",
        template="plotly_white",
        # Keep the user's zoom when the figure is rebuilt for another chosen n.
        uirevision="selection",
    )
    return fig


def infeasible_ns(sweep: pd.DataFrame) -> list[tuple[int, str]]:
    """(n, reason) for every n of the sweep no restart could fit."""
    if "feasible" not in sweep:
        return []
    out = []
    for row in sweep.sort_values("n").itertuples():
        if not bool(row.feasible):
            reason = str(getattr(row, "error", "") or "") or "every restart failed"
            out.append((int(row.n), reason))
    return out


def sweep_table(sweep: pd.DataFrame) -> list[dict]:
    """The sweep as JSON-safe records (NaN -> None) for a table or CSV."""
    frame = sweep.astype(object).where(pd.notna(sweep), None)
    return frame.to_dict("records")


# --------------------------------------------------------------- training map


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
    epochs = np.array([_finite(s.mean_epoch) or 0.0 for s in states], dtype=float)
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
        conv = _finite(edge.mean_convergence_epoch)
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
    path = list(path or [])
    on_nodes = {f"s{int(s)}" for s in path}
    on_edges = {f"e{int(a)}-{int(b)}" for a, b in zip(path[:-1], path[1:]) if a != b}
    out = []
    for element in elements:
        classes = [c for c in element.get("classes", "").split() if c != "onpath"]
        if element["data"]["id"] in on_nodes or element["data"]["id"] in on_edges:
            classes.append("onpath")
        out.append({**element, "classes": " ".join(classes)})
    return out


def prob_text(prob: float) -> str:
    """A transition probability as the map's edges and the hover panel show it."""
    return f"{float(prob):.3f}"


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 run``, ``2 runs`` (``many`` for irregular plurals)."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


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


# -------------------------------------------------------------- metric curves


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Centered moving average ignoring NaN; ``window <= 1`` returns a copy."""
    series = pd.Series(np.asarray(values, dtype=float))
    if window <= 1:
        return series.to_numpy(copy=True)
    return series.rolling(int(window), center=True, min_periods=1).mean().to_numpy()


def state_segments(epochs: Sequence[int], path: Sequence[int]) -> list[tuple[float, float, int]]:
    """Contiguous stretches of one decoded state: (start epoch, end epoch, state).

    A stretch ends halfway to the next checkpoint, so shaded stretches touch and
    the boundary sits where the transition happened.
    """
    epochs = np.asarray(epochs, dtype=float)
    path = np.asarray(path, dtype=int)
    if len(path) == 0:
        return []
    change = np.flatnonzero(path[1:] != path[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(path)]])
    segments = []
    for a, b in zip(starts, ends):
        left = epochs[a] if a == 0 else (epochs[a - 1] + epochs[a]) / 2
        right = epochs[b - 1] if b == len(path) else (epochs[b - 1] + epochs[b]) / 2
        segments.append((float(left), float(right), int(path[a])))
    return segments


def metric_figure(
    metric: str,
    run_frame: pd.DataFrame | None = None,
    run_name: str | None = None,
    band: pd.DataFrame | None = None,
    states: tuple[Sequence[int], Sequence[int]] | None = None,
    log_y: bool = False,
    smoothing: int = 1,
    uirevision: str = "curves",
) -> go.Figure:
    """A metric against epoch.

    ``run_frame`` (columns ``epoch`` and ``metric``) draws one run;
    ``band`` (columns ``epoch``, ``mean``, ``std``, ``count``) draws the mean of
    all seeds with a +-std band; ``states`` = (epochs, decoded path) of the run
    shades the background by state (same colours as the map) and marks each
    transition with a dotted line. ``uirevision`` keeps zoom across updates.
    """
    fig = go.Figure()
    if band is not None and len(band):
        x = band["epoch"].to_numpy(dtype=float)
        mean = smooth(band["mean"], smoothing)
        std = np.nan_to_num(smooth(band["std"], smoothing))
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([mean + std, (mean - std)[::-1]]),
                fill="toself",
                fillcolor="rgba(90,90,90,0.15)",
                line={"width": 0},
                hoverinfo="skip",
                name="all seeds ± std",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=mean,
                mode="lines",
                line={"color": "#555", "width": 2},
                name="all seeds mean",
                customdata=band["count"].to_numpy(),
                hovertemplate="epoch %{x}<br>mean %{y:.4g}<br>%{customdata} runs<extra></extra>",
            )
        )
    if run_frame is not None and len(run_frame) and metric in run_frame:
        epochs = run_frame["epoch"].to_numpy()
        name = run_name or "run"
        # Hover: the run, its value and the state it was decoded in at that epoch.
        decoded = {}
        if states is not None:
            decoded = {float(e): f"S{int(k)}" for e, k in zip(states[0], states[1])}
        state_text = [decoded.get(float(e), "not decoded") for e in epochs]
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=smooth(run_frame[metric], smoothing),
                mode="lines",
                line={"color": "#111", "width": 2},
                name=name,
                customdata=state_text,
                hovertemplate=(
                    f"{name}<br>{metric} %{{y:.4g}}<br>state %{{customdata}}<extra></extra>"
                ),
            )
        )
    shapes = []
    if states is not None:
        shapes = phase_shapes(*states)
        segments = state_segments(*states)
        # Invisible legend entries so each state's colour is named.
        for state in sorted({s for _, _, s in segments}):
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    marker={"size": 12, "symbol": "square", "color": state_color(state)},
                    name=f"state S{state}",
                )
            )
    fig.update_layout(
        shapes=shapes,
        xaxis_title="epoch",
        yaxis_title=metric,
        yaxis_type="log" if log_y else "linear",
        height=460,
        margin={"l": 60, "r": 20, "t": 30, "b": 50},
        template="plotly_white",
        hovermode="x unified",
        uirevision=uirevision,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def metric_band(frames: Iterable[pd.DataFrame], metric: str) -> pd.DataFrame:
    """Mean, std and count of ``metric`` per epoch over runs (NaN ignored)."""
    parts = [f[["epoch", metric]] for f in frames if metric in f and len(f)]
    if not parts:
        return pd.DataFrame(columns=["epoch", "mean", "std", "count"])
    grouped = pd.concat(parts, ignore_index=True).groupby("epoch")[metric]
    out = grouped.agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def metric_columns(columns: Iterable[str]) -> list[str]:
    """Metric columns a user can plot: everything but the index columns."""
    return [c for c in columns if c not in INDEX_COLUMNS]


def progress_figure(frames: Mapping[str, pd.DataFrame], metric: str) -> go.Figure:
    """One line per run of ``metric`` vs epoch (the runs page's live view).

    ``uirevision`` is fixed so a live refresh keeps the user's zoom and the
    legend items they hid.
    """
    fig = go.Figure()
    for name, frame in frames.items():
        if metric in frame:
            fig.add_trace(
                go.Scattergl(
                    x=frame["epoch"].to_numpy(),
                    y=frame[metric].to_numpy(),
                    mode="lines",
                    name=name,
                    line={"width": 1},
                )
            )
    fig.update_layout(
        height=320,
        margin={"l": 50, "r": 20, "t": 30, "b": 40},
        xaxis_title="epoch",
        yaxis_title=metric,
        template="plotly_white",
        uirevision="runs-progress",
        showlegend=len(frames) <= 20,
    )
    return fig


def keep_view(fig: go.Figure, relayout: Mapping | None) -> go.Figure:
    """Re-apply the axis ranges a user zoomed to (Dash's ``relayoutData``).

    ``uirevision`` alone did not keep a drag-zoom across figure updates in our
    browser tests (Dash 4, plotly.js 3), so live-refreshed figures carry the
    user's ranges explicitly; a double-click (autorange) clears them.
    """
    if not relayout:
        return fig
    for axis in ("xaxis", "yaxis"):
        if relayout.get(f"{axis}.autorange"):
            continue
        low, high = relayout.get(f"{axis}.range[0]"), relayout.get(f"{axis}.range[1]")
        if low is None and isinstance(relayout.get(f"{axis}.range"), (list, tuple)):
            low, high = relayout[f"{axis}.range"]
        if low is not None and high is not None:
            fig.update_layout({axis: {"range": [low, high], "autorange": False}})
    return fig


# ------------------------------------------------------------------- exports


def states_frame(training_map) -> pd.DataFrame:
    """Long table of decoded states: run, epoch, state (for CSV download)."""
    parts = [
        pd.DataFrame({"run": run, "epoch": training_map.epochs[run], "state": path})
        for run, path in sorted(training_map.paths.items())
    ]
    if not parts:
        return pd.DataFrame(columns=["run", "epoch", "state"])
    return pd.concat(parts, ignore_index=True)


def run_export_frame(
    metrics: pd.DataFrame, states: tuple[Sequence[int], Sequence[int]] | None
) -> pd.DataFrame:
    """One run's metrics with its decoded state per checkpoint (NaN where none)."""
    out = metrics.copy()
    if states is not None:
        epochs, path = states
        decoded = pd.Series(list(path), index=list(epochs), dtype="Int64")
        decoded = decoded[~decoded.index.duplicated(keep="last")]
        out["state"] = out["epoch"].map(decoded)
    return out


# ---------------------------------------------------------------- prediction
# ``summary`` is ``analysis.predict.Prediction.summary()`` (plain values) and
# ``validation`` the leave-one-run-out verdict of ``analysis.predict_study``:
# a point prediction is shown only when the validation says prediction beats
# the naive baselines; otherwise the interval alone, with a plain note.

PREDICTION_COLUMN = ("predicted_convergence", "predicted convergence")
PREDICTION_COLOR = "#D55E00"


def _epoch_text(value) -> str:
    return "?" if value is None else f"{value:.0f}"


def prediction_confident(validation: Mapping | None) -> bool:
    return bool(validation) and validation.get("verdict") == "better"


def prediction_cell(summary: Mapping | None, validation: Mapping | None) -> str:
    """A Runs table cell: "~240 (180–320), 9 runs", or the interval only when unvalidated."""
    if not summary:
        return ""
    if summary.get("error"):
        return f"no prediction: {summary['error']}"
    if summary["converged_at"] is not None:
        return f"converged at {summary['converged_at']}"
    if summary["basis"] is None:
        return "not enough runs to tell"
    runs = plural(summary["n_reference"], "run")
    if summary["median"] is None:
        return f"after {_epoch_text(summary['floor'])}, {runs}"
    high = "open" if summary["high"] is None else _epoch_text(summary["high"])
    interval = f"{_epoch_text(summary['low'])}–{high}"
    if prediction_confident(validation):
        return f"~{_epoch_text(summary['median'])} ({interval}), {runs}"
    return f"{interval}, {runs} (interval only: not better than baselines)"


def with_predictions(rows: Sequence[Mapping], cells: Mapping[str, str]) -> list[dict]:
    """Table rows with the predicted-convergence cell filled for the runs in ``cells``."""
    key = PREDICTION_COLUMN[0]
    return [{**row, key: cells.get(row["run"], "")} for row in rows]


def prediction_words(summary: Mapping | None, validation: Mapping | None) -> str:
    """The prediction under the curves chart, with what it rests on and the verdict."""
    if not summary:
        return ""
    if summary.get("error"):
        return f"No prediction: {summary['error']}"
    head = (
        f"Now in S{summary['state']} of the {summary['n']}-state map "
        f"(p = {summary['state_prob']:.2f}) at epoch {summary['epoch']}. "
    )
    verdict = (validation or {}).get("message", "prediction not validated")
    if summary["converged_at"] is not None or summary["basis"] is None:
        return head + f"Convergence: {summary['text']}."
    if summary["median"] is None or prediction_confident(validation):
        return head + f"Predicted convergence epoch {summary['text']}. Validation: {verdict}."
    high = "open" if summary["high"] is None else _epoch_text(summary["high"])
    return head + (
        f"Convergence expected between epochs {_epoch_text(summary['low'])} and {high} "
        f"(80% interval of {plural(summary['n_reference'], 'run')}). "
        "No point estimate: prediction "
        f"{verdict}."
    )


def phase_shapes(epochs: Sequence[int], path: Sequence[int]) -> list[dict]:
    """A run's phases as background stretches, a dotted line at each transition.

    Used by :func:`metric_figure` for decoded runs and for a run the fit has
    not decoded yet (its states so far).
    """
    segments = state_segments(epochs, path)
    shapes = [
        {
            "type": "rect",
            "xref": "x",
            "yref": "paper",
            "x0": left,
            "x1": right,
            "y0": 0,
            "y1": 1,
            "fillcolor": _rgba(state_color(state), 0.18),
            "line": {"width": 0},
            "layer": "below",
            "name": f"S{state}",
        }
        for left, right, state in segments
    ]
    for (_, right, a), (_, _, b) in zip(segments[:-1], segments[1:]):
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": right,
                "x1": right,
                "y0": 0,
                "y1": 1,
                "line": {"color": "#333", "width": 1, "dash": "dot"},
                "name": f"S{a}->S{b}",
            }
        )
    return shapes


def add_prediction(
    figure: Mapping,
    summary: Mapping | None,
    validation: Mapping | None,
    shade_states: bool = False,
) -> dict:
    """A copy of a plain metric figure with the predicted convergence drawn on it.

    A shaded vertical band over the 80% interval (to the last epoch any reference
    run was seen when its upper end is open) and, only when the validation says
    prediction beats the baselines, a line at the median; both labelled. Nothing
    is drawn for a run that converged or has no prediction. ``shade_states``
    also shades the run's states so far (for a run the fit has not decoded).
    """
    figure = dict(figure)
    if not summary or summary.get("error"):
        return figure
    layout = dict(figure.get("layout") or {})
    shapes = list(layout.get("shapes") or [])
    annotations = list(layout.get("annotations") or [])
    if shade_states and summary.get("path"):
        shapes.extend(phase_shapes(summary["epochs"], summary["path"]))
    layout["shapes"] = shapes
    figure["layout"] = layout
    if summary["converged_at"] is not None or summary["basis"] is None:
        return figure
    low = summary["low"] if summary["low"] is not None else summary["epoch"]
    high = summary["high"] if summary["high"] is not None else summary["floor"]
    open_end = summary["high"] is None
    shapes.append(
        {
            "type": "rect",
            "xref": "x",
            "yref": "paper",
            "x0": low,
            "x1": high,
            "y0": 0,
            "y1": 1,
            "fillcolor": _rgba(PREDICTION_COLOR, 0.12),
            "line": {"width": 1, "color": _rgba(PREDICTION_COLOR, 0.5), "dash": "dash"},
            "layer": "below",
            "name": "predicted convergence interval",
        }
    )
    label = f"predicted convergence: {_epoch_text(low)}–{'open' if open_end else _epoch_text(high)}"
    if summary["median"] is not None and prediction_confident(validation):
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": summary["median"],
                "x1": summary["median"],
                "y0": 0,
                "y1": 1,
                "line": {"color": PREDICTION_COLOR, "width": 2},
                "name": "predicted convergence epoch",
            }
        )
        label = f"predicted convergence ~{_epoch_text(summary['median'])} ({label.split(': ')[1]})"
    else:
        label += " (interval only)"
    annotations.append(
        {
            "x": (low + high) / 2,
            "xref": "x",
            "y": 1.0,
            "yref": "paper",
            "yanchor": "bottom",
            "text": f"{label}, {plural(summary['n_reference'], 'run')}",
            "showarrow": False,
            "font": {"color": PREDICTION_COLOR, "size": 11},
            "name": "prediction",
        }
    )
    layout["shapes"] = shapes
    layout["annotations"] = annotations
    figure["layout"] = layout
    return figure


# ------------------------------------------------------- named phases, strip
# ``labels`` below is ``analysis.captions.state_labels``: per state its user
# name ("" if none), automatic caption and label ("S1" or "S1 memorising").


def _label(labels: Mapping | None, state: int) -> str:
    entry = (labels or {}).get(int(state))
    return entry["label"] if entry else f"S{int(state)}"


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


def modal_states(training_map) -> tuple[list[int], list[int]]:
    """(epochs, most common decoded state at each epoch over all runs).

    The phases of "all seeds": at every epoch any run was checkpointed, the state
    most runs are in (ties go to the lower state id, i.e. the earlier phase).
    """
    counts: dict[int, dict[int, int]] = {}
    for run, path in training_map.paths.items():
        for epoch, state in zip(training_map.epochs[run], path):
            per = counts.setdefault(int(epoch), {})
            per[int(state)] = per.get(int(state), 0) + 1
    epochs = sorted(counts)
    states = [min(counts[e], key=lambda k, c=counts[e]: (-c[k], k)) for e in epochs]
    return epochs, states


# A shaded stretch at least this share of the x range shows its state's name.
PHASE_LABEL_MIN_WIDTH = 0.12


def name_phases(figure: Mapping, labels: Mapping | None, all_seeds: bool = False) -> dict:
    """A copy of a metric figure (plain dict) whose phase legend and shapes use state names.

    ``all_seeds``: the shading is the most common state per epoch
    (:func:`modal_states`), and the legend says so.
    """
    figure = dict(figure)
    traces = []
    for trace in figure.get("data") or []:
        name = str(trace.get("name") or "")
        if name.startswith("state S") and name[7:].isdigit():
            state = int(name[7:])
            # The label only: captions make the legend overflow; map and strip show them.
            trace = {**trace, "name": _label(labels, state)}
        traces.append(trace)
    figure["data"] = traces
    layout = dict(figure.get("layout") or {})
    rects = [s for s in layout.get("shapes") or [] if s.get("type") == "rect"]
    span = max((s["x1"] for s in rects), default=0) - min((s["x0"] for s in rects), default=0)
    shapes = []
    for shape in layout.get("shapes") or []:
        name = str(shape.get("name") or "")
        if name.startswith("S") and name[1:].isdigit():
            shape = {**shape, "name": _label(labels, int(name[1:]))}
            # The phase's name written in its stretch, where there is room for it.
            if span > 0 and (shape["x1"] - shape["x0"]) >= PHASE_LABEL_MIN_WIDTH * span:
                shape["label"] = {
                    "text": shape["name"],
                    "textposition": "top left",
                    "font": {"size": 11, "color": "#333"},
                }
        shapes.append(shape)
    layout["shapes"] = shapes
    if all_seeds and shapes:
        layout["legend"] = {
            **(layout.get("legend") or {}),
            "title": {"text": "shading: most common state per epoch over all runs · "},
        }
    figure["layout"] = layout
    return figure


def with_state_names(frame: pd.DataFrame, labels: Mapping | None) -> pd.DataFrame:
    """An export with ``state_name`` (the user's name, "" if none) and ``state_caption``."""
    out = frame.copy()
    if "state" not in out:
        return out
    labels = labels or {}

    def lookup(key):
        return lambda s: "" if pd.isna(s) else (labels.get(int(s)) or {}).get(key, "")

    out["state_name"] = out["state"].map(lookup("name"))
    out["state_caption"] = out["state"].map(lookup("caption"))
    return out


STRIP_ROW_PX = 22
STRIP_MAX_HEIGHT = 900
# Past these sizes the strip drops per-cell hover labels (hover says "S<k>") and
# per-row tick labels (they would overlap); the marks stay.
STRIP_MAX_TEXT_CELLS = 40_000
STRIP_MAX_TICKS = 60


def strip_order(training_map) -> list[str]:
    """Runs by convergence epoch (earliest first), never-converged runs last, by name."""
    conv = training_map.convergence_epoch
    return sorted(
        training_map.paths,
        key=lambda r: (conv.get(r) is None, conv.get(r) if conv.get(r) is not None else 0, r),
    )


def strip_figure(
    training_map, labels: Mapping | None = None, selected_run: str | None = None
) -> go.Figure:
    """The runs × epochs strip: one row per run, each checkpoint coloured by its state.

    Rows are sorted by convergence epoch (earliest on top); a black tick marks
    each run's convergence epoch, a cross and "(never converged)" in the row
    label mark runs that never converged. Stretches in a detour state are
    outlined in black. ``selected_run`` gets an orange frame. Every cell and
    mark carries its run as ``y`` (a category), so a click names the run.
    """
    runs = strip_order(training_map)
    conv = training_map.convergence_epoch
    n = int(training_map.n_states)
    epochs = sorted({int(e) for r in runs for e in training_map.epochs[r]})
    column = {e: i for i, e in enumerate(epochs)}
    z = np.full((len(runs), len(epochs)), np.nan)
    for i, run in enumerate(runs):
        for epoch, state in zip(training_map.epochs[run], training_map.paths[run]):
            z[i, column[int(epoch)]] = int(state)
    if z.size <= STRIP_MAX_TEXT_CELLS:
        text = [[_label(labels, v) if np.isfinite(v) else "" for v in row] for row in z]
        hover = "%{y}<br>epoch %{x}<br>%{text}<extra></extra>"
    else:
        text, hover = None, "%{y}<br>epoch %{x}<br>S%{z}<extra></extra>"
    # A discrete colour scale: state k covers [k - 0.5, k + 0.5] of [-0.5, n - 0.5].
    scale = []
    for k in range(n):
        scale += [[k / n, state_color(k)], [(k + 1) / n, state_color(k)]]
    fig = go.Figure(
        go.Heatmap(
            x=epochs,
            y=runs,
            z=z,
            text=text,
            zmin=-0.5,
            zmax=n - 0.5,
            colorscale=scale,
            showscale=False,
            xgap=0,
            ygap=1,
            hovertemplate=hover,
            name="states",
        )
    )
    converged = [r for r in runs if conv.get(r) is not None]
    fig.add_trace(
        go.Scatter(
            x=[conv[r] for r in converged],
            y=converged,
            mode="markers",
            marker={"symbol": "line-ns", "size": 16, "line": {"width": 3, "color": "#000"}},
            name="convergence epoch",
            hovertemplate="%{y}<br>converged at epoch %{x}<extra></extra>",
        )
    )
    never = [r for r in runs if conv.get(r) is None]
    if never:
        last = max(epochs) if epochs else 0
        fig.add_trace(
            go.Scatter(
                x=[last] * len(never),
                y=never,
                mode="markers",
                marker={"symbol": "x-thin", "size": 12, "line": {"width": 2, "color": "#000"}},
                name="never converged",
                hovertemplate="%{y}<br>never converged<extra></extra>",
            )
        )
    detours = {int(s.state) for s in training_map.states if s.is_detour}
    shapes = []
    half = (np.diff(epochs).min() / 2) if len(epochs) > 1 else 0.5
    for i, run in enumerate(runs):
        for left, right, state in state_segments(training_map.epochs[run], training_map.paths[run]):
            if state in detours:
                shapes.append(
                    {
                        "type": "rect",
                        "xref": "x",
                        "yref": "y",
                        "x0": left - half if left == training_map.epochs[run][0] else left,
                        "x1": right + half if right == training_map.epochs[run][-1] else right,
                        "y0": i - 0.5,
                        "y1": i + 0.5,
                        "line": {"color": "#000", "width": 2},
                        "name": f"detour {_label(labels, state)}",
                    }
                )
        if run == selected_run:
            shapes.append(
                {
                    "type": "rect",
                    "xref": "paper",
                    "yref": "y",
                    "x0": 0,
                    "x1": 1,
                    "y0": i - 0.5,
                    "y1": i + 0.5,
                    "line": {"color": "#D55E00", "width": 3},
                    "name": "selected run",
                }
            )
    # Legend: one square per state (named), and the detour outline if any.
    for state in range(n):
        entry = (labels or {}).get(state) or {}
        fig.add_trace(
            go.Scatter(
                x=[None],
                y=[None],
                mode="markers",
                marker={"size": 12, "symbol": "square", "color": state_color(state)},
                name=_label(labels, state)
                + (" (detour)" if state in detours else "")
                + (f" · {entry['caption']}" if entry.get("caption") else ""),
            )
        )
    ticktext = [f"{r} (never converged)" if conv.get(r) is None else r for r in runs]
    fig.update_layout(
        shapes=shapes,
        # The legend (states with captions, marks) gets its own band at the bottom
        # of the figure, never over the last rows.
        height=min(STRIP_MAX_HEIGHT, 200 + STRIP_ROW_PX * len(runs)),
        margin={"l": 10, "r": 20, "t": 40, "b": 110},
        template="plotly_white",
        title={"text": "Runs × epochs: decoded state per checkpoint (click a row)", "x": 0},
        xaxis={"title": "epoch"},
        yaxis={
            "title": "run (by convergence epoch)",
            "autorange": "reversed",
            "type": "category",
            "tickvals": runs if len(runs) <= STRIP_MAX_TICKS else None,
            "ticktext": ticktext if len(runs) <= STRIP_MAX_TICKS else None,
            "showticklabels": len(runs) <= STRIP_MAX_TICKS,
            "automargin": True,
        },
        legend={"orientation": "h", "yref": "container", "y": 0, "yanchor": "bottom", "x": 0},
        clickmode="event",
        hovermode="closest",
        uirevision="strip",
    )
    return fig


def metric_options(columns: Iterable[str]) -> list[dict]:
    """Dropdown options for metrics, grouped by hook point (model-level first).

    Each group opens with a disabled header option; each metric shows its
    column and display name, carries its definition as a tooltip (``title``)
    and is searchable by column, name and hook point.
    """
    from trainmap.analysis import glossary

    options = []
    for hook, group in glossary.grouped(columns):
        header = f"— {hook} —" if hook else "— all hook points (model level) —"
        options.append({"label": header, "value": f"__group__{hook}", "disabled": True})
        for column in group:
            metric = column.rpartition("/")[2]
            known = metric in glossary.ENTRIES
            options.append(
                {
                    "label": f"{column} · {glossary.ENTRIES[metric].name}" if known else column,
                    "value": column,
                    "title": glossary.tooltip(column),
                    "search": f"{column} {glossary.describe(column).name}",
                }
            )
    return options
