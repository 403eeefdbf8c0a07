"""Compare: two or more experiments side by side, their states matched.

``/compare?experiments=A,B`` shows each experiment's training map with
matched phases in the same colour and label (``M0, M1, ...``), how well the
states match, the convergence epochs of every run with the test of the
difference, and the transitions one experiment makes and another does not.
The method is ``analysis.compare`` (docs/compare.md).

As on the Training map, the Cytoscape components are part of the static
layout (one slot per experiment, up to ``MAX_MAPS``) and callbacks only set
their ``elements``; unused slots are hidden.
"""

from __future__ import annotations

import dash
import dash_cytoscape as cyto
from dash import Input, Output, State, callback, clientside_callback, dcc, html

from trainmap.app import compare_figures, components, data

dash.register_page(__name__, path="/compare", name="Compare", title="trainmap: compare", order=4)

MAX_MAPS = 4
SHOWN = {"flex": "1 1 0", "minWidth": "320px"}
HIDDEN = {"display": "none"}


def _slot(i: int) -> html.Div:
    return html.Div(
        [
            html.H4(id=f"compare-title-{i}", style={"margin": "4px 0"}),
            html.Div(
                cyto.Cytoscape(
                    id=f"compare-graph-{i}",
                    elements=[],
                    layout={"name": "preset", "fit": True, "padding": 30},
                    stylesheet=compare_figures.compare_stylesheet(),
                    style={"width": "100%", "height": "380px"},
                    minZoom=0.2,
                    maxZoom=4,
                ),
                className="map-canvas",
            ),
            html.Div(
                html.P("Hover a state or a transition.", className="muted"),
                id=f"compare-hover-{i}",
                className="hover-box",
            ),
            dcc.Store(id=f"compare-resized-{i}"),
        ],
        id=f"compare-slot-{i}",
        style=SHOWN if i < 2 else HIDDEN,
    )


MATCH_OPTIONS = [
    {"label": "auto", "value": "auto"},
    {"label": "levels (one scale over all runs)", "value": "levels"},
    {"label": "shapes (each experiment's own z units)", "value": "shapes"},
]


def layout(experiments=None, match=None, experiment=None, n=None, run=None, metric=None, **_):
    root = data.current_root()
    chosen = data.valid_experiments(root, experiments)
    if not experiments:  # nothing asked: the first two experiments, if there are two
        chosen = data.experiments(root)[:2]
    query = {"experiment": experiment, "n": n, "run": run, "metric": metric}
    return html.Div(
        [
            components.query_store("compare", query),
            html.Div(
                [
                    components.label(
                        "experiments to compare",
                        dcc.Dropdown(
                            id="compare-experiments",
                            options=[{"label": e, "value": e} for e in data.experiments(root)],
                            value=chosen,
                            multi=True,
                            placeholder="choose two or more experiments",
                            className="control",
                            style={"minWidth": "420px"},
                        ),
                    ),
                    components.label(
                        "match states on",
                        dcc.RadioItems(
                            id="compare-match",
                            options=MATCH_OPTIONS,
                            value=match if match in ("levels", "shapes") else "auto",
                            inline=True,
                            inputStyle={"marginRight": "4px"},
                            labelStyle={"marginRight": "12px"},
                        ),
                    ),
                ],
                className="controls",
            ),
            html.Div(id="compare-message"),
            html.Div(
                [_slot(i) for i in range(MAX_MAPS)],
                style={"display": "flex", "gap": "12px", "flexWrap": "wrap"},
            ),
            html.P(
                "Same colour and label = the same phase, matched across experiments by its "
                "state means; '(only A)' = a state with no counterpart. Marks as on the "
                "Training map: green ring start, double ring end, rounded square detour.",
                className="muted",
            ),
            html.Div(
                [
                    html.H4("How well the states match"),
                    html.P(id="compare-quality-text"),
                    html.Table(id="compare-quality", className="features"),
                ],
                className="evidence",
            ),
            html.Div(
                [
                    html.H4("Per experiment"),
                    html.Table(id="compare-summary", className="features"),
                ],
                className="evidence",
            ),
            html.Div(
                [
                    html.H4("Convergence"),
                    dcc.Graph(id="compare-convergence", config={"displaylogo": False}),
                    html.Ul(id="compare-convergence-text"),
                ],
                className="evidence",
            ),
            html.Div(
                [
                    html.H4("Transitions in one experiment but not another"),
                    html.Ul(id="compare-transitions"),
                ],
                className="evidence",
            ),
        ]
    )


def _match_table(comparison: dict) -> list:
    names = [e["name"] for e in comparison["experiments"]]
    head = html.Thead(
        html.Tr(
            [html.Th("phase")]
            + [html.Th(n) for n in names]
            + [html.Th("match"), html.Th("distance")]
        )
    )
    body = []
    for row in compare_figures.match_rows(comparison):
        swatch = html.Span(
            "●", style={"color": row["color"], "fontSize": "18px", "marginRight": "4px"}
        )
        body.append(
            html.Tr(
                [html.Td([swatch, row["label"]])]
                + [html.Td(row["states"][n]) for n in names]
                + [html.Td(row["match"]), html.Td(row["distance"])],
                className=None if row["status"] == "matched" else "muted",
            )
        )
    return [head, html.Tbody(body)]


def _summary_table(comparison: dict) -> list:
    columns = (
        ("experiment", "experiment"),
        ("states", "states (n)"),
        ("runs", "runs"),
        ("median", "median convergence epoch"),
        ("detours", "detour states (delay, interval, p)"),
        ("dissimilarity", "trajectory dissimilarity"),
    )
    rows = compare_figures.experiment_rows(comparison)
    return [
        html.Thead(html.Tr([html.Th(title) for _, title in columns])),
        html.Tbody([html.Tr([html.Td(row[key]) for key, _ in columns]) for row in rows]),
    ]


def _message(chosen: list[str], view: dict | None):
    items = []
    if len(chosen) < 2:
        items.append(html.P("Choose two or more experiments to compare."))
    if len(chosen) > MAX_MAPS:
        items.append(html.P(f"Only the first {MAX_MAPS} maps are drawn.", className="muted"))
    if view and view.get("error"):
        items.append(html.Pre(view["error"], className="command"))
    if view and view.get("comparison"):
        items += [html.P(w, className="muted") for w in view["comparison"]["warnings"]]
    return html.Div(items, className="notice") if items else None


def _title(comparison: dict | None, shown: list[str], i: int) -> str:
    if comparison and i < len(comparison["experiments"]):
        side = comparison["experiments"][i]
        return f"{side['name']}: {side['n_states']} states, {len(side['runs'])} runs"
    return shown[i] if i < len(shown) else ""


@callback(
    [Output(f"compare-graph-{i}", "elements") for i in range(MAX_MAPS)]
    + [Output(f"compare-slot-{i}", "style") for i in range(MAX_MAPS)]
    + [Output(f"compare-title-{i}", "children") for i in range(MAX_MAPS)]
    + [
        Output("compare-message", "children"),
        Output("compare-quality-text", "children"),
        Output("compare-quality", "children"),
        Output("compare-summary", "children"),
        Output("compare-convergence", "figure"),
        Output("compare-convergence", "style"),
        Output("compare-convergence-text", "children"),
        Output("compare-transitions", "children"),
    ],
    Input("compare-experiments", "value"),
    Input("compare-match", "value"),
)
def show(experiments, match_on):
    root = data.current_root()
    chosen = data.valid_experiments(root, experiments)
    fps = tuple(data.fingerprint(root, e) for e in chosen)
    unfitted = [e for e, fp in zip(chosen, fps) if data.fit_overview(root, e, fp) is None]
    view = None
    if len(chosen) >= 2 and not unfitted:
        match_on = match_on if match_on in ("levels", "shapes") else "auto"
        view = data.compare_view(root, tuple(chosen), fps, match_on)
    comparison = (view or {}).get("comparison")
    elements = list((view or {}).get("elements") or [])
    shown = chosen[:MAX_MAPS]
    graphs = [elements[i] if i < len(elements) else [] for i in range(MAX_MAPS)]
    styles = [SHOWN if i < max(len(shown), 2) else HIDDEN for i in range(MAX_MAPS)]
    titles = [_title(comparison, shown, i) for i in range(MAX_MAPS)]
    message = _message(chosen, view)
    if unfitted:
        message = html.Div([components.fit_missing(root, e) for e in unfitted])
    if not comparison:
        empty = [None, None, None, {}, {"display": "none"}, None, None]
        return graphs + styles + titles + [message] + empty
    return (
        graphs
        + styles
        + titles
        + [
            message,
            comparison["quality"]["message"],
            _match_table(comparison),
            _summary_table(comparison),
            view["figure"],
            {},
            [html.Li(t["message"]) for t in comparison["convergence"]],
            [html.Li(t) for t in compare_figures.transition_items(comparison)]
            or [html.Li("None: every experiment makes the same transitions between phases.")],
        ]
    )


@callback(
    Output("app-query", "data", allow_duplicate=True),
    Input("compare-experiments", "value"),
    Input("compare-match", "value"),
    State("compare-query", "data"),
    State("app-query", "data"),
    prevent_initial_call="initial_duplicate",
)
def sync_query(experiments, match_on, incoming, current):
    root = data.current_root()
    chosen = data.valid_experiments(root, experiments)
    return components.merge_query(
        incoming,
        current,
        experiments=",".join(chosen) or None,
        match=match_on if match_on in ("levels", "shapes") else None,  # auto is the default
    )


def hover_text(node: dict | None, edge: dict | None, triggered: str | None):
    """What the hover box under a map says about the node or edge hovered last."""
    if triggered == "mouseoverEdgeData" and edge:
        conv = edge.get("mean_convergence_epoch")
        return [
            html.H5(
                f"{edge['source_label']} → {edge['target_label']} "
                f"({edge['source'].upper()} → {edge['target'].upper()}, p = {edge['prob']:.3f} "
                "per checkpoint)"
            ),
            html.P(
                f"{edge['n_runs']} run{'s' * (edge['n_runs'] != 1)} take it; their mean "
                f"convergence epoch {'n/a' if conv is None else f'{conv:.1f}'}"
            ),
        ]
    if node:
        return [
            html.H5(f"{node['label']} = {node['state_label']}", style={"color": node["color"]}),
            html.P(
                f"occupancy {node['occupancy']:.1%}, mean epoch {node['mean_epoch']}, "
                f"visited by {node['visited_runs']} runs"
            ),
            html.P(node.get("match_text", "")),
            html.P(node.get("detour_text", "")),
        ]
    return html.P("Hover a state or a transition.", className="muted")


def _hover_callback(i: int) -> None:
    @callback(
        Output(f"compare-hover-{i}", "children"),
        Input(f"compare-graph-{i}", "mouseoverNodeData"),
        Input(f"compare-graph-{i}", "mouseoverEdgeData"),
        prevent_initial_call=True,
    )
    def hover(node, edge):
        triggered = (
            dash.ctx.triggered[0]["prop_id"].rsplit(".", 1)[-1] if dash.ctx.triggered else None
        )
        return hover_text(node, edge, triggered)


for _i in range(MAX_MAPS):
    _hover_callback(_i)


# A map whose slot was hidden (display: none) was laid out at zero size;
# Cytoscape does not notice when the slot appears, so tell it, then refit.
_RESIZE_JS = """
function(elements, style) {
    const id = dash_clientside.callback_context.outputs_list.id.replace("resized", "graph");
    setTimeout(() => {
        const el = document.getElementById(id);
        if (el && el._cyreg && el._cyreg.cy) {
            el._cyreg.cy.resize();
            el._cyreg.cy.fit(undefined, 30);
        }
    }, 50);
    return Date.now();
}
"""

for _i in range(MAX_MAPS):
    clientside_callback(
        _RESIZE_JS,
        Output(f"compare-resized-{_i}", "data"),
        Input(f"compare-graph-{_i}", "elements"),
        Input(f"compare-slot-{_i}", "style"),
    )
