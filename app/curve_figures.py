"""Pure builders of the Metric curves page: curves with shaded phases, bands, exports (no Dash)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import numpy as np
import pandas as pd
import plotly.graph_objects as go

from trainmap.analysis.result import aligned_paths
from trainmap.app.common_figures import (
    epoch_columns,
    rgba,
    state_color,
    state_label,
    state_segments,
)
from trainmap.trainer.columns import INDEX_COLUMNS


def smooth(values: Sequence[float], window: int) -> np.ndarray:
    """Centered moving average ignoring NaN; ``window <= 1`` returns a copy."""
    series = pd.Series(np.asarray(values, dtype=float))
    if window <= 1:
        return series.to_numpy(copy=True)
    return series.rolling(int(window), center=True, min_periods=1).mean().to_numpy()


def metric_figure(
    metric: str,
    run_frame: pd.DataFrame | None = None,
    run_name: str | None = None,
    band: pd.DataFrame | None = None,
    states: tuple[Sequence[int], Sequence[int]] | None = None,
    log_y: bool = False,
    smoothing: int = 1,
    uirevision: str = "curves",
) -> go.Figure:
    """A metric against epoch.

    ``run_frame`` (columns ``epoch`` and ``metric``) draws one run;
    ``band`` (columns ``epoch``, ``mean``, ``std``, ``count``) draws the mean of
    all seeds with a +-std band; ``states`` = (epochs, decoded path) of the run
    shades the background by state (same colours as the map) and marks each
    transition with a dotted line. ``uirevision`` keeps zoom across updates.
    """
    fig = go.Figure()
    if band is not None and len(band):
        x = band["epoch"].to_numpy(dtype=float)
        mean = smooth(band["mean"], smoothing)
        std = np.nan_to_num(smooth(band["std"], smoothing))
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([x, x[::-1]]),
                y=np.concatenate([mean + std, (mean - std)[::-1]]),
                fill="toself",
                fillcolor="rgba(90,90,90,0.15)",
                line={"width": 0},
                hoverinfo="skip",
                name="all seeds ± std",
            )
        )
        fig.add_trace(
            go.Scatter(
                x=x,
                y=mean,
                mode="lines",
                line={"color": "#555", "width": 2},
                name="all seeds mean",
                customdata=band["count"].to_numpy(),
                hovertemplate="epoch %{x}<br>mean %{y:.4g}<br>%{customdata} runs<extra></extra>",
            )
        )
    if run_frame is not None and len(run_frame) and metric in run_frame:
        epochs = run_frame["epoch"].to_numpy()
        name = run_name or "run"
        # Hover: the run, its value and the state it was decoded in at that epoch.
        decoded = {}
        if states is not None:
            decoded = {float(e): f"S{int(k)}" for e, k in zip(states[0], states[1])}
        state_text = [decoded.get(float(e), "not decoded") for e in epochs]
        fig.add_trace(
            go.Scatter(
                x=epochs,
                y=smooth(run_frame[metric], smoothing),
                mode="lines",
                line={"color": "#111", "width": 2},
                name=name,
                customdata=state_text,
                hovertemplate=(
                    f"{name}<br>{metric} %{{y:.4g}}<br>state %{{customdata}}<extra></extra>"
                ),
            )
        )
    shapes = []
    if states is not None:
        shapes = phase_shapes(*states)
        segments = state_segments(*states)
        # Invisible legend entries so each state's colour is named.
        for state in sorted({s for _, _, s in segments}):
            fig.add_trace(
                go.Scatter(
                    x=[None],
                    y=[None],
                    mode="markers",
                    marker={"size": 12, "symbol": "square", "color": state_color(state)},
                    name=f"state S{state}",
                )
            )
    fig.update_layout(
        shapes=shapes,
        xaxis_title="epoch",
        yaxis_title=metric,
        yaxis_type="log" if log_y else "linear",
        height=460,
        margin={"l": 60, "r": 20, "t": 30, "b": 50},
        template="plotly_white",
        hovermode="x unified",
        uirevision=uirevision,
        legend={"orientation": "h", "y": -0.2},
    )
    return fig


def metric_band(frames: Iterable[pd.DataFrame], metric: str) -> pd.DataFrame:
    """Mean, std and count of ``metric`` per epoch over runs (NaN ignored)."""
    parts = [f[["epoch", metric]] for f in frames if metric in f and len(f)]
    if not parts:
        return pd.DataFrame(columns=["epoch", "mean", "std", "count"])
    grouped = pd.concat(parts, ignore_index=True).groupby("epoch")[metric]
    out = grouped.agg(["mean", "std", "count"]).reset_index()
    out["std"] = out["std"].fillna(0.0)
    return out


def metric_columns(columns: Iterable[str]) -> list[str]:
    """Metric columns a user can plot: everything but the index columns."""
    return [c for c in columns if c not in INDEX_COLUMNS]


def run_export_frame(
    metrics: pd.DataFrame, states: tuple[Sequence[int], Sequence[int]] | None
) -> pd.DataFrame:
    """One run's metrics with its decoded state per checkpoint (NaN where none)."""
    out = metrics.copy()
    if states is not None:
        epochs, path = states
        decoded = pd.Series(list(path), index=list(epochs), dtype="Int64")
        decoded = decoded[~decoded.index.duplicated(keep="last")]
        out["state"] = out["epoch"].map(decoded)
    return out


def phase_shapes(epochs: Sequence[int], path: Sequence[int]) -> list[dict]:
    """A run's phases as background stretches, a dotted line at each transition.

    Used by :func:`metric_figure` for decoded runs and for a run the fit has
    not decoded yet (its states so far).
    """
    segments = state_segments(epochs, path)
    shapes = [
        {
            "type": "rect",
            "xref": "x",
            "yref": "paper",
            "x0": left,
            "x1": right,
            "y0": 0,
            "y1": 1,
            "fillcolor": rgba(state_color(state), 0.18),
            "line": {"width": 0},
            "layer": "below",
            "name": f"S{state}",
        }
        for left, right, state in segments
    ]
    for (_, right, a), (_, _, b) in zip(segments[:-1], segments[1:]):
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": right,
                "x1": right,
                "y0": 0,
                "y1": 1,
                "line": {"color": "#333", "width": 1, "dash": "dot"},
                "name": f"S{a}->S{b}",
            }
        )
    return shapes


def modal_states(training_map) -> tuple[list[int], list[int]]:
    """(epochs, most common decoded state at each epoch over all runs).

    The phases of "all seeds": at every epoch any run was checkpointed, the state
    most runs are in (ties go to the lower state id, i.e. the earlier phase).
    One count table of epoch x state over every checkpoint (4 M at 400 runs x
    10 000), not a loop.
    """
    paths, epochs = aligned_paths(training_map)
    columns, column = epoch_columns(epochs.flat)
    if len(columns) == 0:
        return [], []
    states = paths.flat.astype(np.int64)
    n = int(states.max()) + 1
    counts = np.bincount(column * n + states, minlength=len(columns) * n)
    # argmax takes the first maximum: ties go to the lower state
    return columns.tolist(), counts.reshape(len(columns), n).argmax(axis=1).tolist()


# A shaded stretch at least this share of the x range shows its state's name.
PHASE_LABEL_MIN_WIDTH = 0.12


def name_phases(figure: Mapping, labels: Mapping | None, all_seeds: bool = False) -> dict:
    """A copy of a metric figure (plain dict) whose phase legend and shapes use state names.

    ``all_seeds``: the shading is the most common state per epoch
    (:func:`modal_states`), and the legend says so.
    """
    figure = dict(figure)
    traces = []
    for trace in figure.get("data") or []:
        name = str(trace.get("name") or "")
        if name.startswith("state S") and name[7:].isdigit():
            state = int(name[7:])
            # The label only: captions make the legend overflow; map and strip show them.
            trace = {**trace, "name": state_label(labels, state)}
        traces.append(trace)
    figure["data"] = traces
    layout = dict(figure.get("layout") or {})
    rects = [s for s in layout.get("shapes") or [] if s.get("type") == "rect"]
    span = max((s["x1"] for s in rects), default=0) - min((s["x0"] for s in rects), default=0)
    shapes = []
    for shape in layout.get("shapes") or []:
        name = str(shape.get("name") or "")
        if name.startswith("S") and name[1:].isdigit():
            shape = {**shape, "name": state_label(labels, int(name[1:]))}
            # The phase's name written in its stretch, where there is room for it.
            if span > 0 and (shape["x1"] - shape["x0"]) >= PHASE_LABEL_MIN_WIDTH * span:
                shape["label"] = {
                    "text": shape["name"],
                    "textposition": "top left",
                    "font": {"size": 11, "color": "#333"},
                }
        shapes.append(shape)
    layout["shapes"] = shapes
    if all_seeds and shapes:
        layout["legend"] = {
            **(layout.get("legend") or {}),
            "title": {"text": "shading: most common state per epoch over all runs · "},
        }
    figure["layout"] = layout
    return figure


def metric_options(columns: Iterable[str]) -> list[dict]:
    """Dropdown options for metrics, grouped by hook point (model-level first).

    Each group opens with a disabled header option; each metric shows its
    column and display name, carries its definition as a tooltip (``title``)
    and is searchable by column, name and hook point.
    """
    from trainmap.analysis import glossary

    options = []
    for hook, group in glossary.grouped(columns):
        header = f"— {hook} —" if hook else "— all hook points (model level) —"
        options.append({"label": header, "value": f"__group__{hook}", "disabled": True})
        for column in group:
            metric = column.rpartition("/")[2]
            known = metric in glossary.ENTRIES
            options.append(
                {
                    "label": f"{column} · {glossary.ENTRIES[metric].name}" if known else column,
                    "value": column,
                    "title": glossary.tooltip(column),
                    "search": f"{column} {glossary.describe(column).name}",
                }
            )
    return options
