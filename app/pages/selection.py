"""Model selection: BIC, AIC and held-out log-likelihood against n.

Clicking a point chooses that n; the choice goes into the URL, so the
training map and the metric curves follow it. An experiment without a saved
fit shows the exact ``trainmap fit`` command and a "Fit now" button that runs
the fit in a background process with a progress bar.
"""

from __future__ import annotations

import dash
from dash import Input, Output, State, callback, dcc, html

from trainmap.app import common_figures, components, data, evidence, selection_figures
from trainmap.trainer.errors import UserError

try:  # "Fit now" runs in a background process managed through diskcache
    import diskcache  # noqa: F401

    CAN_FIT_HERE = True
except ImportError:
    CAN_FIT_HERE = False

dash.register_page(
    __name__, path="/selection", name="Model selection", title="trainmap: model selection", order=1
)


def layout(experiment=None, n=None, run=None, metric=None, **query):
    root = data.current_root()
    requested = experiment
    experiment = data.default_experiment(root, experiment)
    return html.Div(
        [
            components.query_store(
                "selection", {**query, "experiment": experiment, "run": run, "metric": metric}
            ),
            dcc.Store(id="selection-n", data=n),
            dcc.Store(id="selection-fitted", data=0),
            html.Div(
                components.label(
                    "experiment", components.experiment_dropdown("selection", root, experiment)
                ),
                className="controls",
            ),
            components.missing_notice(root, requested, experiment, run),
            dcc.Loading(
                [
                    html.Div(id="selection-info"),
                    dcc.Graph(id="selection-graph", config={"displaylogo": False}),
                ],
                type="default",
                delay_show=300,
            ),
            html.Div(
                [
                    html.P(id="selection-missing"),
                    html.Pre(id="selection-command", className="command"),
                    html.Div(
                        [
                            html.Button("Fit now", id="selection-fit"),
                            html.Progress(id="selection-progress", value="0", max="1"),
                            html.Span(id="selection-fit-status", className="muted"),
                            # The analysis's own message when the fit fails, and what to do.
                            html.Div(id="selection-fit-error"),
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
    State("app-query", "data"),
)
def render(experiment, click, _fitted, chosen, query):
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
    bad = selection_figures.infeasible_ns(overview["sweep"])
    info = html.Div(
        [
            components.fit_warnings(root, experiment, overview),
            html.P(
                [
                    f"Selected by {params.get('criterion', 'the criterion')}: n = {selected}. ",
                    html.Strong(f"Showing n = {chosen}", id="selection-chosen"),
                    " (click a point to choose another). ",
                    # Keeps the whole view (run, metric, ...), not only n; the
                    # app-nav id lets main.py's URL sync update it later too.
                    dcc.Link(
                        "Open the training map",
                        href=components.page_href("/map", query, experiment=experiment, n=chosen),
                        id={"type": "app-nav", "path": "/map", "from": "selection"},
                        className="selection-map-link",
                    ),
                ]
            ),
            html.P(
                "Not fitted: "
                + "; ".join(f"n = {k} ({reason})" for k, reason in bad)
                + ". Marked × on the chart.",
                id="selection-infeasible",
                className="muted",
            )
            if bad
            else None,
            html.P(
                evidence.n_distribution_words(overview.get("bootstrap"), selected),
                id="selection-uncertainty",
            ),
            html.P(
                f"{common_figures.plural(len(overview['runs']), 'run')}, "
                f"features: {', '.join(overview['feature_names'])}",
                className="muted",
            ),
        ]
    )
    figure = data.selection_view(root, experiment, fp, chosen, height=440)
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


def fit_failed(root: str, experiment: str, error: Exception) -> html.Div:
    """The analysis's message for a failed fit, and what a user can change."""
    return html.Div(
        [
            html.P(f"The fit failed: {error}", className="warning", id="selection-fit-message"),
            html.P(
                "What to do: train longer runs (more checkpoints per run) or more seeds, "
                "model fewer features (--features) or fewer states (--max-states). "
                "From a shell, to see every detail:"
            ),
            html.Pre(data.fit_command(root, experiment), className="command"),
        ],
        className="error-box",
    )


def fit_now(set_progress, clicks, experiment):
    """Fit the experiment with the default parameters, in a separate process.

    The root comes from the server (``data.BACKGROUND``), never from the browser;
    the experiment name is checked against what exists under it. A fit the data
    cannot support (analysis raises ValueError, e.g. "too few points") or a
    user error comes back as a message, not as a failed request.
    """
    from trainmap import analysis  # only needed here; keeps page import cheap

    root = data.BACKGROUND["root"]
    experiment = data.valid_experiment(root, experiment)
    if experiment is None:
        return dash.no_update, html.P("This experiment no longer exists.", className="warning")
    set_progress(("0", "100", "preparing the runs..."))
    settings = data.BACKGROUND.get("fit_settings")  # analysis.settings.FitSettings
    try:
        analysis.fit_experiment(
            root, experiment, settings, progress=_progress_reporter(set_progress)
        )
    except (ValueError, UserError) as error:
        set_progress(("0", "100", "fit failed"))
        return dash.no_update, fit_failed(root, experiment, error)
    # A new value makes render() reload: the fit is on disk now.
    return clicks, None


if CAN_FIT_HERE:
    callback(
        Output("selection-fitted", "data"),
        Output("selection-fit-error", "children"),
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
