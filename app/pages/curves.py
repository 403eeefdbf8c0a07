"""Metric curves with phases: any metric against epoch, shaded by decoded state.

One run's curve, the mean +- std band of all seeds, or both; the background
is shaded by the chosen run's decoded states under the n-state map (same
colours as the map's nodes) and each transition is a dotted line. With no run
chosen and "all seeds" on, the shading is the most common state per epoch over
all runs (``curve_figures.modal_states``): the phases of the mean curve, without
picking a run; the strip on the Training map shows every run's own states.
Legends use the states' names and captions (``analysis.captions``). The run
chosen on the Runs page or the Training map arrives here through the URL.

For a run still training (running or interrupted) and not converged yet, the
predicted convergence (:mod:`analysis.predict`) is drawn on the chart: a band
over its 80% interval, and a line at the predicted epoch only where the
leave-one-run-out validation says prediction beats naive baselines. The page
polls like the Runs page and redraws when the experiment's files change, so
the run's curve and its prediction follow the rows as they are written.
"""

from __future__ import annotations

import dash
from dash import Input, Output, State, callback, dcc, html, no_update

from trainmap.app import common_figures, components, curve_figures, data, prediction_figures

dash.register_page(
    __name__, path="/curves", name="Metric curves", title="trainmap: metric curves", order=3
)

REFRESH_MS = 3000
# The spinner waits this long: a cold cache shows it, the polling's quick
# refreshes of a live experiment do not make it flash every few seconds.
LOADING_DELAY_MS = 1000


def layout(experiment=None, n=None, run=None, metric=None, seeds=None, log=None, smooth=None, **_):
    root = data.current_root()
    requested = experiment
    experiment = data.default_experiment(root, experiment)
    options, smoothing = view_options(seeds, log, smooth)
    return html.Div(
        [
            components.query_store("curves", {"experiment": experiment}),
            components.missing_notice(root, requested, experiment, run),
            dcc.Store(id="curves-request", data={"n": n, "run": run, "metric": metric}),
            html.Div(
                [
                    components.label(
                        "experiment", components.experiment_dropdown("curves", root, experiment)
                    ),
                    components.label(
                        "metric",
                        # Searchable, grouped by hook point, definitions as tooltips.
                        dcc.Dropdown(
                            id="curves-metric",
                            clearable=False,
                            searchable=True,
                            placeholder="type to search metrics",
                            className="control metric",
                        ),
                    ),
                    components.label(
                        "run",
                        dcc.Dropdown(id="curves-run", placeholder="none", className="control"),
                    ),
                    components.label(
                        "states n",
                        dcc.Dropdown(id="curves-n", clearable=False, className="control small"),
                    ),
                ],
                className="controls",
            ),
            html.Div(
                [
                    dcc.Checklist(
                        id="curves-options",
                        options=[
                            {"label": " all seeds (mean ± std)", "value": "band"},
                            {"label": " log y", "value": "log"},
                        ],
                        value=options,
                        inline=True,
                    ),
                    components.label(
                        "smoothing (checkpoints)",
                        dcc.Slider(
                            id="curves-smoothing",
                            min=1,
                            max=51,
                            step=2,
                            value=smoothing,
                            marks={1: "off", 11: "11", 25: "25", 51: "51"},
                        ),
                    ),
                    html.Button("Download run CSV", id="curves-download-button"),
                    dcc.Download(id="curves-download"),
                ],
                className="controls",
            ),
            html.Div(id="curves-message"),
            html.P(id="curves-prediction", className="hint"),
            dcc.Loading(
                dcc.Graph(
                    id="curves-graph",
                    # PNG export from the modebar (Plotly's toImage) at a useful size.
                    config={
                        "displaylogo": False,
                        "toImageButtonOptions": {"format": "png", "filename": "trainmap-curve"},
                    },
                ),
                delay_show=LOADING_DELAY_MS,
                # An empty root shows its message only, not empty axes.
                parent_style={"display": "none"} if experiment is None else None,
            ),
            dcc.Store(id="curves-fp"),
            dcc.Interval(id="curves-interval", interval=REFRESH_MS),
        ]
    )


def view_options(seeds, log, smooth) -> tuple[list[str], int]:
    """The checklist's values and the smoothing from the URL (``seeds=0``,
    ``log=1``, ``smooth=11``); missing or invalid values give the defaults."""
    options = [] if str(seeds) == "0" else ["band"]
    if str(log) == "1":
        options.append("log")
    try:
        smoothing = int(smooth)
    except (TypeError, ValueError):
        smoothing = 1
    smoothing = smoothing if 1 <= smoothing <= 51 and smoothing % 2 == 1 else 1
    return options, smoothing


@callback(
    Output("curves-metric", "options"),
    Output("curves-metric", "value"),
    Output("curves-run", "options"),
    Output("curves-run", "value"),
    Output("curves-n", "options"),
    Output("curves-n", "value"),
    Output("curves-message", "children"),
    Input("curves-experiment", "value"),
    State("curves-request", "data"),
)
def choices(experiment, request):
    """Metric, run and n choices for an experiment, starting from the URL's."""
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    if experiment is None:
        return [], None, [], None, [], None, components.no_experiments(root)
    fp = data.fingerprint(root, experiment)
    request = request or {}
    metrics = data.metric_names(root, experiment, fp)
    metric = request.get("metric")
    if metric not in metrics:
        metric = "eval_acc" if "eval_acc" in metrics else (metrics[0] if metrics else None)
    runs = data.run_names(root, experiment, fp)
    run = data.valid_run(root, experiment, fp, request.get("run"))
    overview = data.fit_overview(root, experiment, fp)
    ns = overview["ns"] if overview else []
    n = data.parse_n(request.get("n"), ns, overview["selected_n"] if overview else None)
    message = None if overview else components.fit_missing(root, experiment)
    if request.get("run") in runs and run is None:  # there, but its metrics cannot be read
        message = [
            html.P(
                f"Run {request['run']} cannot be read (see the Runs page); showing all seeds only.",
                className="warning",
                id="curves-run-missing",
            ),
            message,
        ]
    return (
        curve_figures.metric_options(metrics),
        metric,
        [{"label": r, "value": r} for r in runs],
        run,
        [{"label": str(k), "value": k} for k in ns],
        n,
        message,
    )


@callback(
    Output("curves-graph", "figure"),
    Output("curves-prediction", "children"),
    Output("curves-fp", "data"),
    Input("curves-experiment", "value"),
    Input("curves-metric", "value"),
    Input("curves-run", "value"),
    Input("curves-n", "value"),
    Input("curves-options", "value"),
    Input("curves-smoothing", "value"),
    Input("curves-interval", "n_intervals"),
    State("curves-fp", "data"),
)
def draw(experiment, metric, run, n, options, smoothing, _ticks, last_fp):
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    if experiment is None or metric is None:
        return curve_figures.metric_figure(metric or ""), "", None
    fp = data.fingerprint(root, experiment)
    if dash.ctx.triggered_id == "curves-interval" and fp == last_fp:
        return no_update, no_update, no_update  # nothing changed on disk
    if metric not in data.metric_names(root, experiment, fp):
        return curve_figures.metric_figure(metric), "", fp
    run = data.valid_run(root, experiment, fp, run)
    options = options or []
    n = int(n) if n is not None else None
    figure = data.curves_view(
        root,
        experiment,
        fp,
        metric,
        run,
        n,
        "band" in options,
        "log" in options,
        int(smoothing or 1),
    )
    view = data.prediction_view(root, experiment, fp, run) if run else None
    if view is None:
        return figure, "", fp
    prediction, validation = view["prediction"], view["validation"]
    # A run the fit has not decoded (it started after the fit) is shaded by its
    # states so far, when the chart shows the same map the prediction uses.
    shade = n == prediction.get("n") and data.run_states(root, experiment, fp, n, run) is None
    figure = prediction_figures.add_prediction(figure, prediction, validation, shade_states=shade)
    return figure, prediction_figures.prediction_words(prediction, validation), fp


@callback(
    Output("app-query", "data", allow_duplicate=True),
    Input("curves-experiment", "value"),
    Input("curves-metric", "value"),
    Input("curves-run", "value"),
    Input("curves-n", "value"),
    Input("curves-options", "value"),
    Input("curves-smoothing", "value"),
    State("curves-query", "data"),
    State("app-query", "data"),
    prevent_initial_call="initial_duplicate",
)
def sync_query(experiment, metric, run, n, options, smoothing, incoming, current):
    options = options or []
    # Only settings that differ from the defaults go into the URL.
    own = {
        "experiment": experiment,
        "seeds": None if "band" in options else "0",
        "log": "1" if "log" in options else None,
        "smooth": smoothing if smoothing and int(smoothing) > 1 else None,
    }
    for key, value in (("metric", metric), ("n", n)):
        if value is not None:
            own[key] = value
    if run is not None or dash.ctx.triggered_id == "curves-run":
        own["run"] = run
    return components.merge_query(incoming, current, **own)


@callback(
    Output("curves-download", "data"),
    Input("curves-download-button", "n_clicks"),
    State("curves-experiment", "value"),
    State("curves-run", "value"),
    State("curves-n", "value"),
    prevent_initial_call=True,
)
def download_run(_clicks, experiment, run, n):
    """The chosen run's metrics with its decoded state per checkpoint."""
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    if experiment is None:
        return no_update
    fp = data.fingerprint(root, experiment)
    run = data.valid_run(root, experiment, fp, run)
    frame = data.load_run_metrics(root, experiment, run) if run else None
    if frame is None:
        return no_update
    states = data.run_states(root, experiment, fp, int(n), run) if n is not None else None
    out = curve_figures.run_export_frame(frame, states)
    if n is not None:
        out = common_figures.with_state_names(out, data.state_labels(root, experiment, fp, int(n)))
    return dcc.send_data_frame(out.to_csv, f"{experiment}-{run}-metrics.csv", index=False)
