"""Training map: the fitted HMM's states and transitions as a graph.

The Cytoscape component is part of the page's static layout and callbacks
only replace its ``elements`` (dash-cytoscape misbehaves when the component
itself is created by a callback). Positions are preset (``figures.map_positions``)
so the map looks the same on every load. Hovering an edge shows the features
driving that transition; hovering a node shows the state's feature profile.
Choosing a run highlights its decoded path and makes it the run of the
Metric curves page; clicking a point of the small selection plot changes n.
"""

from __future__ import annotations

import dash
import dash_cytoscape as cyto
from dash import Input, Output, State, callback, dcc, html, no_update

from app import components, data, figures

dash.register_page(
    __name__, path="/map", name="Training map", title="trainmap: training map", order=2
)


def layout(experiment=None, n=None, run=None, metric=None, **_):
    root = data.current_root()
    experiment = data.default_experiment(root, experiment)
    return html.Div(
        [
            components.query_store("map", {"experiment": experiment, "metric": metric}),
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
                    html.Div(
                        cyto.Cytoscape(
                            id="map-graph",
                            elements=[],
                            layout={"name": "preset", "fit": True, "padding": 40},
                            stylesheet=figures.map_stylesheet(),
                            style={"width": "100%", "height": "520px"},
                            minZoom=0.2,
                            maxZoom=4,
                        ),
                        className="map-canvas",
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
                                    html.P("dashed square: detour state"),
                                    html.P("node size: occupancy; edge width: probability"),
                                    html.P("faded: found in few bootstrap resamples of the runs"),
                                ],
                                className="legend",
                            ),
                        ],
                        className="map-side",
                    ),
                ],
                className="map-row",
            ),
            html.Div(id="map-evidence", className="evidence"),
            dcc.Graph(id="map-selection", config={"displaylogo": False}),
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
    figure = data.selection_view(root, experiment, fp, n, height=300)
    message = components.fit_warnings(root, experiment, overview)
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
)
def show_map(experiment, n, run):
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    if experiment is None or n is None:
        return []
    fp = data.fingerprint(root, experiment)
    elements = data.map_view(root, experiment, fp, int(n))
    if elements is None:
        return []
    if run:
        states = data.run_states(root, experiment, fp, int(n), run)
        if states is not None:
            elements = figures.highlight_path(elements, states[1])
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


@callback(Output("map-hover-edge", "children"), Input("map-graph", "mouseoverEdgeData"))
def hover_edge(edge):
    if not edge:
        return html.P("Edge: hover one to see the features driving it.", className="muted")
    conv = edge.get("mean_convergence_epoch")
    rows = [
        html.Tr(
            [
                html.Td(f["feature"]),
                html.Td(f["arrow"], className="arrow"),
                html.Td(f"{f['delta_z']:+.2f} z"),
            ]
        )
        for f in edge.get("features", [])
    ]
    return [
        html.H5(f"{edge['source'].upper()} → {edge['target'].upper()}  (p = {edge['prob']:.3f})"),
        html.P(
            f"{edge['n_runs']} runs take it ({edge['n_transitions']} times); "
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


@callback(Output("map-hover-node", "children"), Input("map-graph", "mouseoverNodeData"))
def hover_node(node):
    if not node:
        return html.P("State: hover one to see its feature profile.", className="muted")
    marks = [
        name
        for name, on in (
            ("start", node.get("start_runs")),
            ("end", node.get("end_runs")),
            ("detour", node.get("is_detour")),
        )
        if on
    ]
    rows = [html.Tr([html.Td(p["feature"]), html.Td(f"{p['z']:+.2f} z")]) for p in node["profile"]]
    return [
        html.H5(
            f"{node['label']}" + (f" ({', '.join(marks)})" if marks else ""),
            style={"color": node["color"]},
        ),
        html.P(
            f"occupancy {node['occupancy']:.1%}, mean epoch {node['mean_epoch']}, "
            f"visited by {node['visited_runs']} runs"
        ),
        html.P(node.get("detour_text", ""), id="map-node-detour"),
        html.P(node.get("stability_text", ""), className="muted", id="map-node-stability"),
        html.Table(
            [html.Tbody(rows)],
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
    frame = data.states_table(root, experiment, data.fingerprint(root, experiment), int(n))
    if frame is None:
        return no_update
    return dcc.send_data_frame(frame.to_csv, f"{experiment}-states-n{n}.csv", index=False)
