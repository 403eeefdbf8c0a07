"""Pure builder of the Training map page's strip: every run's state path as one heatmap (no Dash)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from trainmap.app.common_figures import state_color, state_label, state_segments

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
        text = [[state_label(labels, v) if np.isfinite(v) else "" for v in row] for row in z]
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
                        "name": f"detour {state_label(labels, state)}",
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
                name=state_label(labels, state)
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
