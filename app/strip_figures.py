"""Pure builder of the Training map page's strip: every run's state path as one heatmap (no Dash)."""

from __future__ import annotations

from collections.abc import Mapping

import numpy as np
import plotly.graph_objects as go

from trainmap.analysis.result import aligned_paths
from trainmap.app.common_figures import epoch_columns, state_color, state_label

STRIP_ROW_PX = 22
STRIP_MAX_HEIGHT = 900
# Past these sizes the strip drops per-cell hover labels (hover says "S<k>") and
# per-row tick labels (they would overlap); the marks stay.
STRIP_MAX_TEXT_CELLS = 40_000
STRIP_MAX_TICKS = 60
# About a screen's width: past this many distinct epochs the strip shows bins of
# consecutive checkpoints, each cell the most common state of its run in the bin
# (400 runs x 10 000 checkpoints sent whole took 200 ms a request, and no screen
# shows 10 000 columns anyway).
STRIP_MAX_COLUMNS = 1000


def strip_order(training_map) -> list[str]:
    """Runs by convergence epoch (earliest first), never-converged runs last, by name."""
    conv = training_map.convergence_epoch
    return sorted(
        training_map.paths,
        key=lambda r: (conv.get(r) is None, conv.get(r) if conv.get(r) is not None else 0, r),
    )


def strip_cells(training_map, runs: list[str], max_columns: int):
    """(x, z, per_column, n_epochs) of the strip: ``z[i, j]``, the state of
    ``runs[i]`` in column ``j`` at epoch ``x[j]``; ``n_epochs`` distinct epochs in all.

    Each column is one epoch (``per_column`` 1) while there are at most
    ``max_columns`` distinct epochs; past that, ``per_column`` consecutive
    epochs make one column, at ``x`` their midpoint, holding the most common
    state of the run's checkpoints in it (ties: the lower state). NaN where a
    run has no checkpoint. Counted for every checkpoint at once, not per run.
    """
    paths, epochs = aligned_paths(training_map)
    columns, column = epoch_columns(epochs.flat)
    per_column = max(1, -(-len(columns) // max_columns))  # ceil
    n_columns = -(-len(columns) // per_column)
    first = columns[::per_column]
    last = columns[np.minimum(np.arange(n_columns) * per_column + per_column, len(columns)) - 1]
    x = first if per_column == 1 else (first + last) / 2
    n = max(int(training_map.n_states), int(paths.flat.max()) + 1 if len(paths.flat) else 0)
    row_of = {run: i for i, run in enumerate(runs)}
    rows = np.repeat([row_of.get(run, -1) for run in paths.names], paths.lengths())
    shown = rows >= 0  # runs not asked for are left out
    cell = (rows[shown] * n_columns + column[shown] // per_column) * n + paths.flat[shown]
    counts = np.bincount(cell, minlength=len(runs) * n_columns * n).reshape(len(runs), n_columns, n)
    # float32: NaN marks a cell without checkpoints, at half the bytes of float64
    # (Plotly sends arrays as base64 binary: 2.1 MB for 400 x 1000 cells)
    z = counts.argmax(axis=2).astype(np.float32)  # argmax: the first (lower) state on ties
    z[counts.sum(axis=2) == 0] = np.nan
    return x.tolist(), z, per_column, len(columns)


def cell_segments(row: np.ndarray) -> list[tuple[int, int, int]]:
    """Stretches of equal state in one strip row: (first column, last column, state)."""
    filled = np.where(np.isfinite(row), row, -1).astype(int)
    change = np.flatnonzero(filled[1:] != filled[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(row)]]) - 1
    return [(int(a), int(b), int(filled[a])) for a, b in zip(starts, ends) if filled[a] >= 0]


def strip_figure(
    training_map,
    labels: Mapping | None = None,
    selected_run: str | None = None,
    max_columns: int | None = None,
) -> go.Figure:
    """The runs × epochs strip: one row per run, each checkpoint coloured by its state.

    Rows are sorted by convergence epoch (earliest on top); a black tick marks
    each run's convergence epoch, a cross and "(never converged)" in the row
    label mark runs that never converged. Stretches in a detour state are
    outlined in black. ``selected_run`` gets an orange frame. Every cell and
    mark carries its run as ``y`` (a category), so a click names the run.
    Past ``max_columns`` epochs (default ``STRIP_MAX_COLUMNS``) a column holds
    several checkpoints (:func:`strip_cells`), and the title and hover say by how much.
    """
    runs = strip_order(training_map)
    conv = training_map.convergence_epoch
    n = int(training_map.n_states)
    epochs, z, per_column, n_epochs = strip_cells(
        training_map, runs, max_columns or STRIP_MAX_COLUMNS
    )
    thinned = per_column > 1
    where = (
        f"about epoch %{{x:.0f}} (most common state of {per_column} checkpoint epochs)"
        if thinned
        else "epoch %{x}"
    )
    if z.size <= STRIP_MAX_TEXT_CELLS:
        text = [[state_label(labels, v) if np.isfinite(v) else "" for v in row] for row in z]
        hover = f"%{{y}}<br>{where}<br>%{{text}}<extra></extra>"
    else:
        text, hover = None, f"%{{y}}<br>{where}<br>S%{{z}}<extra></extra>"
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
    # Cell edges: halfway between columns, half a column beyond the first and last.
    centres = np.asarray(epochs, dtype=float)
    half = (np.diff(centres).min() / 2) if len(centres) > 1 else 0.5
    edges = np.concatenate(
        [centres[:1] - half, (centres[1:] + centres[:-1]) / 2, centres[-1:] + half]
    )
    for i, run in enumerate(runs):
        for left, right, state in cell_segments(z[i]) if detours and len(centres) else ():
            if state in detours:
                shapes.append(
                    {
                        "type": "rect",
                        "xref": "x",
                        "yref": "y",
                        "x0": float(edges[left]),
                        "x1": float(edges[right + 1]),
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
        title={"text": strip_title(n_epochs, len(epochs), per_column), "x": 0},
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


def strip_title(n_epochs: int, n_columns: int, per_column: int) -> str:
    if per_column == 1:
        return "Runs × epochs: decoded state per checkpoint (click a row)"
    return (
        f"Runs × epochs: each column the most common state of {per_column} checkpoint epochs"
        f" ({n_epochs} epochs thinned to {n_columns} columns; click a row)"
    )
