"""Training map: the fitted HMM's states and transitions as a graph.

The Cytoscape component is part of the page's static layout and callbacks
only replace its ``elements`` (dash-cytoscape misbehaves when the component
itself is created by a callback). Positions are preset (``map_figures.map_positions``)
so the map looks the same on every load. Hovering an edge shows the features
driving that transition; hovering a node shows the state's feature profile.
Choosing a run highlights its decoded path and makes it the run of the
Metric curves page; clicking a point of the small selection plot changes n.

Below the map, the runs × epochs strip (``strip_figures.strip_figure``) shows every
run's decoded states in one picture, sorted by convergence epoch; clicking a
row highlights that run here and, through the URL, on every page. It sits on
this page rather than its own because it reads together with the map: the
same colours, names and n, and a run picked in either shows in both. Nodes are
captioned automatically (``analysis.captions``) and a state can be named in
the small form under the map; names are written through the analysis API to
the fit's folder (the root comes from the server, never from the browser).
"""

from __future__ import annotations

import dash
import dash_cytoscape as cyto
from dash import Input, Output, State, callback, dcc, html, no_update

from trainmap.analysis.glossary import TERMS
from trainmap.app import common_figures, components, data, map_figures

dash.register_page(
    __name__, path="/map", name="Training map", title="trainmap: training map", order=2
)


# Marks, then captions under the nodes; hovering appends focus rules last.
STYLESHEET = map_figures.map_stylesheet() + map_figures.caption_stylesheet()


def _rename_form() -> html.Div:
    """State dropdown + name + save: names shown on the map, strip, curves and CSVs."""
    return html.Div(
        [
            components.label(
                "name a state",
                dcc.Dropdown(id="map-rename-state", placeholder="state", className="control small"),
            ),
            components.label(
                "name",
                dcc.Input(
                    id="map-rename-name",
                    type="text",
                    maxLength=40,
                    placeholder="e.g. memorising (empty: no name)",
                    debounce=False,
                    className="control",
                ),
            ),
            html.Button("Save name", id="map-rename-save"),
            html.Span(id="map-rename-message", className="muted"),
            # Bumped after every saved name so the map and the strip redraw.
            dcc.Store(id="map-names", data=0),
        ],
        className="controls",
        id="map-rename",
    )


def layout(experiment=None, n=None, run=None, metric=None, **query):
    root = data.current_root()
    requested = experiment
    experiment = data.default_experiment(root, experiment)
    return html.Div(
        [
            components.query_store("map", {**query, "experiment": experiment, "metric": metric}),
            components.missing_notice(root, requested, experiment, run),
            dcc.Store(id="map-n-request", data=n),
            dcc.Store(id="map-run-request", data=run),
            html.Div(
                [
                    components.label(
                        "experiment", components.experiment_dropdown("map", root, experiment)
                    ),
                    components.label(
                        "states n",
                        dcc.Dropdown(id="map-n", clearable=False, className="control small"),
                    ),
                    components.label(
                        "highlight run",
                        dcc.Dropdown(id="map-run", placeholder="none", className="control"),
                    ),
                    html.Button("Download states CSV", id="map-download-button"),
                    dcc.Download(id="map-download"),
                ],
                className="controls",
            ),
            html.Div(
                [
                    # The spinner covers the map only while its elements load
                    # (not on hover restyles) and leaves it mounted and visible.
                    dcc.Loading(
                        html.Div(
                            cyto.Cytoscape(
                                id="map-graph",
                                elements=[],
                                layout={"name": "preset", "fit": True, "padding": 40},
                                stylesheet=STYLESHEET,
                                style={"width": "100%", "height": "520px"},
                                minZoom=0.2,
                                maxZoom=4,
                            ),
                            className="map-canvas",
                        ),
                        target_components={"map-graph": "elements"},
                        overlay_style={"visibility": "visible", "opacity": 0.6},
                        delay_show=300,
                        parent_className="map-canvas-wrap",
                        # An empty root shows its message only, not an empty canvas.
                        parent_style={"display": "none"} if experiment is None else None,
                    ),
                    html.Div(
                        [
                            # Messages go here, beside the map, not above it: a
                            # block appearing above would move the map without
                            # Cytoscape noticing, and hovering would miss.
                            html.Div(id="map-message"),
                            html.H4("Hover an edge or a node"),
                            html.Div(id="map-hover-edge", className="hover-box"),
                            html.Div(id="map-hover-node", className="hover-box"),
                            html.Div(
                                [
                                    html.P("Legend", className="legend-title"),
                                    html.P("green ring: start state; double ring: end state"),
                                    html.P("rounded square: detour state"),
                                    html.P("orange halo: the highlighted run's states"),
                                    html.P(
                                        "node size: occupancy; edge label and width: "
                                        "probability per checkpoint"
                                    ),
                                    html.P("faded: found in few bootstrap resamples of the runs"),
                                    html.P(
                                        "z: standard deviations from the mean (hover a "
                                        "feature for its definition)",
                                        title=TERMS["z"],
                                    ),
                                ],
                                className="legend",
                            ),
                        ],
                        className="map-side",
                    ),
                ],
                className="map-row",
            ),
            _rename_form(),
            dcc.Loading(
                [
                    dcc.Graph(
                        id="map-strip", config={"displaylogo": False}, style={"display": "none"}
                    ),
                    html.Div(id="map-evidence", className="evidence"),
                    dcc.Graph(id="map-selection", config={"displaylogo": False}),
                ],
                delay_show=300,
            ),
        ]
    )


@callback(
    Output("map-n", "options"),
    Output("map-n", "value"),
    Output("map-run", "options"),
    Output("map-run", "value"),
    Output("map-message", "children"),
    Output("map-selection", "figure"),
    Output("map-selection", "style"),
    Input("map-experiment", "value"),
    Input("map-selection", "clickData"),
    State("map-n", "value"),
    State("map-n-request", "data"),
    State("map-run", "value"),
    State("map-run-request", "data"),
)
def choose(experiment, click, current_n, requested_n, current_run, requested_run):
    """The n and run choices for an experiment; a click on the sweep picks n."""
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    hidden = {"display": "none"}
    if experiment is None:
        return [], None, [], None, components.no_experiments(root), {}, hidden
    fp = data.fingerprint(root, experiment)
    overview = data.fit_overview(root, experiment, fp)
    if overview is None:
        message = components.fit_missing(root, experiment)
        return [], None, [], None, message, {}, hidden
    ns = overview["ns"]
    n = current_n if current_n in ns else data.parse_n(requested_n, ns, overview["selected_n"])
    if dash.ctx.triggered_id == "map-selection" and click:
        n = data.parse_n(click["points"][0].get("x"), ns, n)
    runs = overview["runs"]
    run = current_run if current_run in runs else (requested_run if requested_run in runs else None)
    figure = data.selection_view(root, experiment, fp, n, height=360)
    message = components.fit_warnings(root, experiment, overview)
    if requested_run and run is None and requested_run in data.run_names(root, experiment):
        # The run exists but the fit did not use it (broken, or newer than the fit).
        reason = overview["excluded_runs"].get(requested_run) or "it is newer than the fit"
        note = html.P(
            f"Run {requested_run} is not on this map: {reason}.",
            className="warning",
            id="map-run-missing",
        )
        message = [note, message]
    return (
        [
            {"label": f"{k}" + (" (selected)" if k == overview["selected_n"] else ""), "value": k}
            for k in ns
        ],
        n,
        [{"label": r, "value": r} for r in runs],
        run,
        message,
        figure,
        {},
    )


@callback(
    Output("map-graph", "elements"),
    Input("map-experiment", "value"),
    Input("map-n", "value"),
    Input("map-run", "value"),
    Input("map-names", "data"),
)
def show_map(experiment, n, run, _names):
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    if experiment is None or n is None:
        return []
    fp = data.fingerprint(root, experiment)
    elements = data.map_view(root, experiment, fp, int(n))
    if elements is None:
        return []
    labels = data.state_labels(root, experiment, fp, int(n))
    if labels:
        elements = map_figures.label_states(elements, labels)
    if run:
        states = data.run_states(root, experiment, fp, int(n), run)
        if states is not None:
            elements = map_figures.highlight_path(elements, states[1])
    return elements


@callback(
    Output("map-evidence", "children"),
    Input("map-experiment", "value"),
    Input("map-n", "value"),
)
def show_evidence(experiment, n):
    """How far the map shown can be trusted: n, detours, regression, in words."""
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    if experiment is None or n is None:
        return None
    words = data.evidence_view(root, experiment, data.fingerprint(root, experiment), int(n))
    if words is None:
        return None
    detours = [
        html.Li(
            d["text"], className="detour" if d["is_detour"] else None, id=f"evidence-s{d['state']}"
        )
        for d in words["detours"]
    ]
    return [
        html.H4("Evidence"),
        html.P(words["selection"], className="warning", id="evidence-selection")
        if words["selection"]
        else None,
        html.P(words["n"], id="evidence-n"),
        html.P(words["regression"], id="evidence-regression"),
        html.P(
            "States visited by some runs but not all (detour test):"
            if detours
            else "Every state is visited by all runs or by none: no detour to test."
        ),
        html.Ul(detours, id="evidence-detours") if detours else None,
    ]


def _feature_cell(row: dict) -> list:
    """A feature's display name (glossary) and its column id, small, to match the CLI."""
    if not row.get("name") or row["name"] == row["feature"]:
        return [row["feature"]]
    return [row["name"], " ", html.Span(row["feature"], className="muted")]


EDGE_PROMPT = "Edge: hover one to see the features driving it."
NODE_PROMPT = "State: hover one to see its feature profile."


@callback(
    Output("map-hover-edge", "children"),
    Output("map-hover-node", "children"),
    Output("map-graph", "stylesheet"),
    Input("map-graph", "mouseoverEdgeData"),
    Input("map-graph", "mouseoverNodeData"),
    Input("map-graph", "elements"),
)
def hover(edge, node, elements):
    """One panel at a time: the element hovered last, highlighted with its
    neighbours; a new map (another n or experiment) clears both."""
    trigger = dash.ctx.triggered_id and dash.ctx.triggered[0]["prop_id"].split(".")[-1]
    ids = {e["data"]["id"] for e in elements or []}
    if trigger == "mouseoverEdgeData" and edge and edge.get("id") in ids:
        focus = map_figures.neighbourhood(elements, edge["id"])
        return (
            edge_panel(edge),
            html.P(NODE_PROMPT, className="muted"),
            STYLESHEET + map_figures.focus_stylesheet(focus, edge["id"]),
        )
    if trigger == "mouseoverNodeData" and node and node.get("id") in ids:
        focus = map_figures.neighbourhood(elements, node["id"])
        return (
            html.P(EDGE_PROMPT, className="muted"),
            node_panel(node),
            STYLESHEET + map_figures.focus_stylesheet(focus, node["id"]),
        )
    return (
        html.P(EDGE_PROMPT, className="muted"),
        html.P(NODE_PROMPT, className="muted"),
        STYLESHEET,
    )


def edge_panel(edge: dict) -> list:
    conv = edge.get("mean_convergence_epoch")
    rows = [
        html.Tr(
            [
                html.Td(_feature_cell(f), title=f.get("title")),
                html.Td(f["arrow"], className="arrow"),
                html.Td(f"{f['delta_z']:+.2f} z", className="num"),
            ]
        )
        for f in edge.get("features", [])
    ]
    source, target = edge["source"].upper(), edge["target"].upper()
    runs = common_figures.plural(edge["n_runs"], "run")
    return [
        html.H5(f"{source} → {target}  (p = {common_figures.prob_text(edge['prob'])})"),
        html.P(
            f"p is the chance, per checkpoint, that a run in {source} is in {target} "
            "at the next checkpoint.",
            className="muted",
            id="map-edge-prob",
        ),
        html.P(
            f"{runs} {'takes' if edge['n_runs'] == 1 else 'take'} it "
            f"({common_figures.plural(edge['n_transitions'], 'time')}); "
            f"their mean convergence epoch: {f'{conv:.1f}' if conv is not None else 'n/a'}"
        ),
        html.P(edge.get("stability_text", ""), className="muted", id="map-edge-stability"),
        html.Table(
            [html.Thead(html.Tr([html.Th("feature"), html.Th(""), html.Th("change")]))]
            + [html.Tbody(rows or [html.Tr(html.Td("no feature scores"))])],
            className="features",
            id="map-edge-features",
        ),
    ]


def node_panel(node: dict) -> list:
    marks = [
        name
        for name, on in (
            ("start", node.get("start_runs")),
            ("end", node.get("end_runs")),
            ("detour", node.get("is_detour")),
        )
        if on
    ]
    rows = [
        html.Tr(
            [
                html.Td(_feature_cell(p), title=p.get("title")),
                html.Td(f"{p['z']:+.2f} z", className="num"),
            ]
        )
        for p in node["profile"]
    ]
    return [
        html.H5(
            node["label"].split("\n")[0] + (f" ({', '.join(marks)})" if marks else ""),
            style={"color": node["color"]},
        ),
        html.P(node.get("caption", ""), id="map-node-caption"),
        html.P(
            f"occupancy {node['occupancy']:.1%}, mean epoch {node['mean_epoch']}, "
            f"visited by {common_figures.plural(node['visited_runs'], 'run')}"
        ),
        html.P(node.get("detour_text", ""), id="map-node-detour"),
        html.P(node.get("stability_text", ""), className="muted", id="map-node-stability"),
        html.Table(
            [
                html.Thead(html.Tr([html.Th("feature"), html.Th("mean (z)")])),
                html.Tbody(rows),
            ],
            className="features",
            id="map-node-profile",
        ),
    ]


@callback(
    Output("app-query", "data", allow_duplicate=True),
    Input("map-experiment", "value"),
    Input("map-n", "value"),
    Input("map-run", "value"),
    State("map-query", "data"),
    State("app-query", "data"),
    prevent_initial_call="initial_duplicate",
)
def sync_query(experiment, n, run, incoming, current):
    own = {"experiment": experiment}
    if n is not None:
        own["n"] = n
    if run is not None or dash.ctx.triggered_id == "map-run":
        own["run"] = run
    return components.merge_query(incoming, current, **own)


@callback(
    Output("map-download", "data"),
    Input("map-download-button", "n_clicks"),
    State("map-experiment", "value"),
    State("map-n", "value"),
    prevent_initial_call=True,
)
def download_states(_clicks, experiment, n):
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    if experiment is None or n is None:
        return no_update
    fp = data.fingerprint(root, experiment)
    frame = data.states_table(root, experiment, fp, int(n))
    if frame is None:
        return no_update
    frame = common_figures.with_state_names(frame, data.state_labels(root, experiment, fp, int(n)))
    return dcc.send_data_frame(frame.to_csv, f"{experiment}-states-n{n}.csv", index=False)


# ------------------------------------------------------- strip and state names


@callback(
    Output("map-strip", "figure"),
    Output("map-strip", "style"),
    Input("map-experiment", "value"),
    Input("map-n", "value"),
    Input("map-run", "value"),
    Input("map-names", "data"),
)
def show_strip(experiment, n, run, _names):
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    if experiment is None or n is None:
        return {}, {"display": "none"}
    figure = data.strip_view(root, experiment, data.fingerprint(root, experiment), int(n), run)
    if figure is None:
        return {}, {"display": "none"}
    return figure, {}


@callback(
    Output("map-run", "value", allow_duplicate=True),
    Input("map-strip", "clickData"),
    State("map-run", "options"),
    prevent_initial_call=True,
)
def pick_run_from_strip(click, options):
    """A click on a row of the strip (a cell or a mark) selects that run."""
    if not click or not click.get("points"):
        return no_update
    run = click["points"][0].get("y")
    return run if run in {o["value"] for o in options or []} else no_update


@callback(
    Output("map-rename-state", "options"),
    Output("map-rename-state", "value"),
    Input("map-experiment", "value"),
    Input("map-n", "value"),
    Input("map-names", "data"),
    State("map-rename-state", "value"),
)
def rename_choices(experiment, n, _names, current):
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    if experiment is None or n is None:
        return [], None
    labels = data.state_labels(root, experiment, data.fingerprint(root, experiment), int(n))
    if not labels:
        return [], None
    options = [
        {"label": entry["label"], "value": k, "title": entry["caption"]}
        for k, entry in sorted(labels.items())
    ]
    return options, current if current in labels else None


@callback(
    Output("map-rename-name", "value"),
    Input("map-rename-state", "value"),
    State("map-experiment", "value"),
    State("map-n", "value"),
    prevent_initial_call=True,
)
def current_name(state, experiment, n):
    """Start from the chosen state's current name, so a save without typing keeps it."""
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    if experiment is None or n is None or state is None:
        return ""
    labels = data.state_labels(root, experiment, data.fingerprint(root, experiment), int(n))
    return ((labels or {}).get(int(state)) or {}).get("name", "")


@callback(
    Output("map-rename-message", "children"),
    Output("map-names", "data"),
    Input("map-rename-save", "n_clicks"),
    Input("map-rename-name", "n_submit"),
    State("map-experiment", "value"),
    State("map-n", "value"),
    State("map-rename-state", "value"),
    State("map-rename-name", "value"),
    State("map-names", "data"),
    prevent_initial_call=True,
)
def save_name(_clicks, _submit, experiment, n, state, name, version):
    from trainmap.analysis.captions import StateNameError

    root = data.current_root()  # from the server: the browser only names the state
    experiment = data.valid_experiment(root, experiment)
    if experiment is None or n is None or state is None:
        return "Choose a state first.", no_update
    try:
        n, state = int(n), int(state)
        name = data.rename_state(root, experiment, n, state, name or "")
    except (TypeError, ValueError) as error:  # StateNameError is a ValueError
        reason = error if isinstance(error, StateNameError) else "not a state of this map"
        return f"Not saved: {reason}", no_update
    saved = f"S{state} is now named {name!r}." if name else f"S{state} has no name now."
    return saved, (version or 0) + 1
