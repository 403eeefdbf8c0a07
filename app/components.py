"""Small Dash building blocks shared by the pages (controls, messages).

Unlike the ``app/*_figures.py`` builders these return Dash components; they hold no data logic.
"""

from __future__ import annotations

from urllib.parse import urlencode

from dash import dcc, html

from trainmap.app import data


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


# Every view setting a URL carries: experiment, n, run and metric (every page),
# the curves' options (all seeds, log y, smoothing) and the compared experiments.
QUERY_KEYS = (
    "experiment",
    "n",
    "run",
    "metric",
    "seeds",
    "log",
    "smooth",
    "experiments",
    "match",
)


def query_store(prefix: str, query: dict) -> dcc.Store:
    """The URL query this page was opened with; the page's own controls override it."""
    clean = {k: v for k, v in query.items() if k in QUERY_KEYS}
    return dcc.Store(id=f"{prefix}-query", data=clean)


def page_href(path: str, query: dict | None, **own) -> str:
    """A link to another page keeping the view's query (same keys and order as the URL sync)."""
    merged = {**(query or {}), **own}
    params = {k: merged[k] for k in QUERY_KEYS if merged.get(k) not in (None, "")}
    return path + ("?" + urlencode(params) if params else "")


def nav_link(text: str, path: str, where: str) -> dcc.Link:
    """An in-page link that keeps the view's query: main.py's URL sync rewrites its href."""
    return dcc.Link(text, href=path, id={"type": "app-nav", "path": path, "from": where})


def merge_query(incoming: dict | None, current: dict | None, **own) -> dict:
    """The view's query: what the page was opened with, what other pages set
    since, then this page's own controls."""
    return {**(incoming or {}), **(current or {}), **own}


def missing_notice(
    root: str, requested: str | None = None, experiment: str | None = None, run: str | None = None
) -> html.Div:
    """Say when a link asked for an experiment or run that is not there.

    The page then shows ``experiment`` (the first one) and no run instead of
    failing, but the reader must know it is not what the link pointed at.
    """
    items = []
    if requested and data.valid_experiment(root, requested) is None:
        shown = data.default_experiment(root, None)
        instead = f"; showing {shown} instead" if shown else ""
        items.append(html.P(f"No experiment named “{requested}” under {root}{instead}."))
    elif run and experiment and run not in data.run_names(root, experiment):
        items.append(html.P(f"No run named “{run}” in {experiment}; no run is chosen."))
    return html.Div(items, id="missing-notice", className="notice warning" if items else None)


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
            html.P(
                [
                    "or use ",
                    # The URL sync fills in the rest of the view when it next runs.
                    dcc.Link(
                        "Model selection",
                        href=page_href("/selection", None, experiment=experiment),
                        id={"type": "app-nav", "path": "/selection", "from": "fit-missing"},
                    ),
                    " to fit it here.",
                ]
            ),
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
