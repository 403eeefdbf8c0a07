"""Runs: every run of an experiment with its status, live while runs train.

The table refreshes every few seconds but only sends new rows when the
experiment's fingerprint changed, and keeps sorting, filtering and the
selected run (rows are identified by run name, not position). The progress
plot keeps its zoom across refreshes through Plotly's ``uirevision``.
Selecting a run makes it the run of every other page. Running and
interrupted runs get a predicted convergence epoch from the saved fit
(:mod:`analysis.predict`), refreshed with the table as rows are appended: a
point with its 80% interval where the leave-one-run-out validation says
prediction beats naive baselines, the interval alone otherwise.
"""

from __future__ import annotations

import dash
import plotly.graph_objects as go
from dash import Input, Output, State, callback, dash_table, dcc, html, no_update

from trainmap.app import components, data, prediction_figures, runs_figures

dash.register_page(__name__, path="/", name="Runs", title="trainmap: runs", order=0)

REFRESH_MS = 3000
# The spinner waits this long: a cold cache shows it, the polling's quick
# refreshes of a live experiment do not make it flash every few seconds.
LOADING_DELAY_MS = 1000


def layout(experiment=None, n=None, run=None, metric=None, **query):
    root = data.current_root()
    requested = experiment
    experiment = data.default_experiment(root, experiment)
    # An empty root shows the message only, not an empty table and empty axes.
    shown = {"display": "none"} if experiment is None else {}
    return html.Div(
        [
            components.query_store(
                "runs", {**query, "experiment": experiment, "n": n, "metric": metric}
            ),
            components.missing_notice(root, requested, experiment, run),
            html.Div(
                [
                    components.label(
                        "experiment", components.experiment_dropdown("runs", root, experiment)
                    ),
                    html.Div(id="runs-counts", className="counts"),
                ],
                className="controls",
            ),
            html.Div(components.no_experiments(root) if experiment is None else None),
            html.Div(
                [
                    dcc.Loading(
                        _table(run),
                        type="default",
                        delay_show=LOADING_DELAY_MS,
                        id="runs-table-loading",
                    ),
                    html.P(
                        [
                            "Select a run to show it on the ",
                            components.nav_link("Training map", "/map", "runs"),
                            " and in ",
                            components.nav_link("Metric curves", "/curves", "runs"),
                            ".",
                        ],
                        className="hint",
                    ),
                    dcc.Loading(
                        dcc.Graph(id="runs-progress", config={"displaylogo": False}),
                        type="default",
                        delay_show=LOADING_DELAY_MS,
                    ),
                ],
                style=shown,
            ),
            dcc.Store(id="runs-fp"),
            dcc.Interval(id="runs-interval", interval=REFRESH_MS),
        ]
    )


def _table(run: str | None) -> dash_table.DataTable:
    return dash_table.DataTable(
        id="runs-table",
        columns=runs_figures.runs_table_columns(
            [], (*runs_figures.RUNS_COLUMNS, prediction_figures.PREDICTION_COLUMN)
        ),
        data=[],
        sort_action="native",
        filter_action="native",
        row_selectable="single",
        selected_row_ids=[run] if run else [],
        page_size=20,
        style_table={"overflowX": "auto"},
        style_cell={"textAlign": "left", "padding": "4px 8px"},
        # Long reasons wrap instead of pushing the other columns off screen.
        style_cell_conditional=[
            *(
                {"if": {"column_id": key}, "textAlign": "right"}
                for key in runs_figures.NUMERIC_COLUMNS
            ),
            {"if": {"column_id": "reason"}, "maxWidth": "320px", "whiteSpace": "normal"},
            {
                "if": {"column_id": prediction_figures.PREDICTION_COLUMN[0]},
                "maxWidth": "260px",
                "whiteSpace": "normal",
            },
        ],
        style_data_conditional=[
            {
                "if": {"filter_query": '{status} = "broken"'},
                "backgroundColor": "#fde2e1",
            },
            {
                "if": {"filter_query": '{status} = "running"'},
                "backgroundColor": "#e6f4ea",
            },
        ],
    )


@callback(
    Output("runs-table", "data"),
    Output("runs-table", "columns"),
    Output("runs-counts", "children"),
    Output("runs-progress", "figure"),
    Output("runs-fp", "data"),
    Input("runs-experiment", "value"),
    Input("runs-interval", "n_intervals"),
    State("runs-fp", "data"),
    State("runs-progress", "relayoutData"),
)
def refresh(experiment, _ticks, last_fp, zoom):
    root = data.current_root()
    experiment = data.valid_experiment(root, experiment)
    columns = (*runs_figures.RUNS_COLUMNS, prediction_figures.PREDICTION_COLUMN)
    if experiment is None:
        empty = runs_figures.runs_table_columns([], columns)
        return [], empty, "", runs_figures.progress_figure({}, "eval_acc"), None
    fp = data.fingerprint(root, experiment)
    if fp == last_fp:
        return no_update, no_update, no_update, no_update, no_update  # nothing changed on disk
    view = data.runs_view(root, experiment, fp)
    figure = view["figure"]
    if dash.ctx.triggered_id == "runs-interval":
        figure = runs_figures.keep_view(go.Figure(figure), zoom)  # keep the user's zoom
    rows = prediction_figures.with_predictions(
        view["rows"], data.runs_predictions(root, experiment, fp)
    )
    return rows, runs_figures.runs_table_columns(rows, columns), view["counts"], figure, fp


@callback(
    Output("app-query", "data", allow_duplicate=True),
    Input("runs-experiment", "value"),
    Input("runs-table", "selected_row_ids"),
    State("runs-query", "data"),
    State("app-query", "data"),
    prevent_initial_call="initial_duplicate",
)
def sync_query(experiment, selected, incoming, current):
    own = {"experiment": experiment}
    if selected:
        own["run"] = selected[0]
    elif dash.ctx.triggered_id == "runs-table":
        own["run"] = None  # the user cleared the selection
    return components.merge_query(incoming, current, **own)
