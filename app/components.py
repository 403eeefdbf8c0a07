"""Small Dash building blocks shared by the pages (controls, messages).

Unlike ``app.figures`` these return Dash components; they hold no data logic.
"""

from __future__ import annotations

from dash import dcc, html

from app import data


def experiment_dropdown(prefix: str, root: str, selected: str | None) -> dcc.Dropdown:
    names = data.experiments(root)
    return dcc.Dropdown(
        id=f"{prefix}-experiment",
        options=[{"label": name, "value": name} for name in names],
        value=selected,
        clearable=False,
        placeholder="no experiments under the root yet",
        className="control experiment",
    )


def query_store(prefix: str, query: dict) -> dcc.Store:
    """The URL query this page was opened with; the page's own controls override it."""
    clean = {
        k: v
        for k, v in query.items()
        if k in ("experiment", "n", "run", "metric", "experiments", "match")
    }
    return dcc.Store(id=f"{prefix}-query", data=clean)


def merge_query(incoming: dict | None, current: dict | None, **own) -> dict:
    """The view's query: what the page was opened with, what other pages set
    since, then this page's own controls."""
    return {**(incoming or {}), **(current or {}), **own}


def no_experiments(root: str) -> html.Div:
    return html.Div(
        [
            html.P(f"No experiments under {root} yet."),
            html.P(["Train some: ", html.Code("trainmap train --help")]),
        ],
        className="notice",
    )


def fit_missing(root: str, experiment: str) -> html.Div:
    return html.Div(
        [
            html.P(f"Experiment {experiment} has no saved fit yet. Fit it with:"),
            html.Pre(data.fit_command(root, experiment), className="command"),
            html.P(["or use ", dcc.Link("Model selection", href="/selection"), " to fit it here."]),
        ],
        className="notice",
    )


def label(text: str, control) -> html.Label:
    return html.Label([html.Span(text, className="label-text"), control], className="field")


def fit_warnings(root: str, experiment: str, overview: dict) -> html.Div | None:
    """Say when the fit shown is older than the runs, and what analysis warned about."""
    items = []
    if overview.get("stale"):
        items.append(
            html.P(
                [
                    "The runs changed since this fit (still training?). Refit with ",
                    html.Code(data.fit_command(root, experiment)),
                ],
                id="fit-stale",
            )
        )
    selection = (overview.get("selection") or {}).get("message")
    if selection:  # e.g. n at the largest tried: shown wherever n is
        items.append(html.P(selection, id="fit-selection-warning", className="warning"))
    items += [
        html.P(text, className="muted")
        for text in overview.get("warnings", [])
        if text != selection
    ]
    return html.Div(items, className="notice") if items else None
