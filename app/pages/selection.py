"""Model selection: BIC, AIC and held-out log-likelihood against n.

Clicking a point chooses that n; the choice goes into the URL, so the
training map and the metric curves follow it. An experiment without a saved
fit shows the exact ``trainmap fit`` command and a "Fit now" button that runs
the fit in a background process with a progress bar.
"""

from __future__ import annotations

from urllib.parse import urlencode

import dash
from dash import Input, Output, State, callback, dcc, html

from app import components, data, evidence

try:  # "Fit now" runs in a background process managed through diskcache
    import diskcache  # noqa: F401

    CAN_FIT_HERE = True
except ImportError:
    CAN_FIT_HERE = False

dash.register_page(
    __name__, path="/selection", name="Model selection", title="trainmap: model selection", order=1
)


def layout(experiment=None, n=None, run=None, metric=None, **_):
    root = data.current_root()
    experiment = data.default_experiment(root, experiment)
    return html.Div(
        [
            components.query_store(
                "selection", {"experiment": experiment, "run": run, "metric": metric}
            ),
            dcc.Store(id="selection-n", data=n),
            dcc.Store(id="selection-fitted", data=0),
            html.Div(
                components.label(
                    "experiment", components.experiment_dropdown("selection", root, experiment)
                ),
                className="controls",
            ),
            html.Div(id="selection-info"),
            dcc.Graph(id="selection-graph", config={"displaylogo": False}),
            html.Div(
                [
                    html.P(id="selection-missing"),
                    html.Pre(id="selection-command", className="command"),
                    html.Div(
                        [
                            html.Button("Fit now", id="selection-fit"),
                            html.Progress(id="selection-progress", value="0", max="1"),
                            html.Span(id="selection-fit-status", className="muted"),
                        ],
                        style={} if CAN_FIT_HERE else {"display": "none"},
                    ),
                ],
                id="selection-nofit",
                className="notice",
                style={"display": "none"},
            ),
        ]
    )


@callback(
    Output("selection-graph", "figure"),
    Output("selection-graph", "style"),
    Output("selection-info", "children"),
    Output("selection-nofit", "style"),
    Output("selection-missing", "children"),
    Output("selection-command", "children"),
    Output("selection-n", "data"),
    Input("selection-experiment", "value"),
    Input("selection-graph", "clickData"),
    Input("selection-fitted", "data"),
    State("selection-n", "data"),
)
def render(experiment, click, _fitted, chosen):
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    hidden, shown = {"display": "none"}, {}
    if experiment is None:
        return {}, hidden, components.no_experiments(root), hidden, "", "", None
    fp = data.fingerprint(root, experiment)
    overview = data.fit_overview(root, experiment, fp)
    if overview is None:
        missing = f"Experiment {experiment} has no saved fit yet. Fit it from a shell with:"
        command = data.fit_command(root, experiment)
        return {}, hidden, None, shown, missing, command, None
    ns, selected = overview["ns"], overview["selected_n"]
    chosen = data.parse_n(chosen, ns, selected)
    if dash.ctx.triggered_id == "selection-graph" and click:
        chosen = data.parse_n(click["points"][0].get("x"), ns, chosen)
    params = overview["params"]
    info = html.Div(
        [
            components.fit_warnings(root, experiment, overview),
            html.P(
                [
                    f"Selected by {params.get('criterion', 'the criterion')}: n = {selected}. ",
                    html.Strong(f"Showing n = {chosen}", id="selection-chosen"),
                    " (click a point to choose another). ",
                    dcc.Link(
                        "Open the training map",
                        href="/map?" + urlencode({"experiment": experiment, "n": chosen}),
                        id="selection-map-link",
                    ),
                ]
            ),
            html.P(
                evidence.n_distribution_words(overview.get("bootstrap"), selected),
                id="selection-uncertainty",
            ),
            html.P(
                f"{len(overview['runs'])} runs, features: {', '.join(overview['feature_names'])}",
                className="muted",
            ),
        ]
    )
    figure = data.selection_view(root, experiment, fp, chosen)
    return figure, shown, info, hidden, "", "", chosen


@callback(
    Output("app-query", "data", allow_duplicate=True),
    Input("selection-experiment", "value"),
    Input("selection-n", "data"),
    State("selection-query", "data"),
    State("app-query", "data"),
    prevent_initial_call="initial_duplicate",
)
def sync_query(experiment, n, incoming, current):
    own = {"experiment": experiment}
    if n is not None:
        own["n"] = n
    return components.merge_query(incoming, current, **own)


def _progress_reporter(set_progress):
    """analysis reports the fraction of fits done (0..1); show it as a percentage."""

    def report(fraction: float):
        percent = int(round(100 * float(fraction)))
        set_progress((str(percent), "100", f"{percent}% of the fits done"))

    return report


def fit_now(set_progress, clicks, experiment):
    """Fit the experiment with the default parameters, in a separate process.

    The root comes from the server (``data.BACKGROUND``), never from the browser;
    the experiment name is checked against what exists under it.
    """
    import analysis  # only needed here; keeps page import cheap

    root = data.BACKGROUND["root"]
    experiment = data.valid_experiment(root, experiment)
    if experiment is None:
        return dash.no_update
    set_progress(("0", "100", "preparing the runs..."))
    params = data.BACKGROUND.get("fit_params", {})
    analysis.fit_experiment(root, experiment, progress=_progress_reporter(set_progress), **params)
    return clicks  # a new value makes render() reload: the fit is on disk now


if CAN_FIT_HERE:
    callback(
        Output("selection-fitted", "data"),
        Input("selection-fit", "n_clicks"),
        State("selection-experiment", "value"),
        background=True,
        running=[(Output("selection-fit", "disabled"), True, False)],
        progress=[
            Output("selection-progress", "value"),
            Output("selection-progress", "max"),
            Output("selection-fit-status", "children"),
        ],
        prevent_initial_call=True,
    )(fit_now)
