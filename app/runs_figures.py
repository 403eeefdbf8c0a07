"""Pure builders of the Runs page: the runs table and the live progress plot (no Dash)."""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence

import pandas as pd
import plotly.graph_objects as go

from trainmap.app.common_figures import finite

RUNS_COLUMNS = (
    ("run", "run"),
    ("status", "status"),
    ("reason", "reason"),
    ("seed", "seed"),
    ("task", "task"),
    ("checkpoints", "checkpoints"),
    ("last_epoch", "last epoch"),
    ("final_eval_acc", "final eval acc"),
    ("convergence_epoch", "convergence epoch"),
)


def runs_table_rows(
    summaries: Iterable[Mapping], convergence: Mapping[str, int | None] | None = None
) -> list[dict]:
    """One table row per run; ``summaries`` are RunSummary-like mappings.

    ``convergence`` maps run name to the epoch the fit says it converged (None
    when it never did); runs the fit did not use get an empty cell. Every row
    has an ``id`` (the run name) so the table keeps its selection across
    refreshes even when rows are re-sorted.
    """
    convergence = convergence or {}
    rows = []
    for summary in summaries:
        name = summary["run"]
        acc = finite(summary.get("last_eval_acc"))
        conv = convergence.get(name)
        rows.append(
            {
                "id": name,
                "run": name,
                "status": summary["status"],
                "reason": summary.get("reason") or "",
                "seed": summary.get("seed"),
                "task": summary.get("task") or "",
                "checkpoints": int(summary.get("checkpoints") or 0),
                "last_epoch": summary.get("last_epoch"),
                "final_eval_acc": round(acc, 4) if acc is not None else None,
                "convergence_epoch": int(conv) if conv is not None else None,
            }
        )
    return rows


# Right-aligned numbers with one precision per column (accuracy to 4 places).
NUMERIC_COLUMNS = {
    "seed": 0,
    "checkpoints": 0,
    "last_epoch": 0,
    "final_eval_acc": 4,
    "convergence_epoch": 0,
}


def runs_table_columns(rows: Sequence[Mapping], columns: Sequence[tuple[str, str]]) -> list[dict]:
    """DataTable columns for ``rows``: numbers typed and formatted, and columns
    empty in every row (no task, no reason, no prediction) left out. The run and
    status columns always stay, so an empty experiment still has a header."""
    out = []
    for key, title in columns:
        if key not in ("run", "status") and not any(row.get(key) not in (None, "") for row in rows):
            continue
        column = {"name": title, "id": key}
        if key in NUMERIC_COLUMNS:
            digits = NUMERIC_COLUMNS[key]
            column.update(type="numeric", format={"specifier": f".{digits}f"})
        out.append(column)
    return out


def status_counts(rows: Iterable[Mapping]) -> dict[str, int]:
    counts: dict[str, int] = {}
    for row in rows:
        counts[row["status"]] = counts.get(row["status"], 0) + 1
    return dict(sorted(counts.items()))


def progress_figure(frames: Mapping[str, pd.DataFrame], metric: str) -> go.Figure:
    """One line per run of ``metric`` vs epoch (the runs page's live view).

    ``uirevision`` is fixed so a live refresh keeps the user's zoom and the
    legend items they hid.
    """
    fig = go.Figure()
    for name, frame in frames.items():
        if metric in frame:
            fig.add_trace(
                go.Scattergl(
                    x=frame["epoch"].to_numpy(),
                    y=frame[metric].to_numpy(),
                    mode="lines",
                    name=name,
                    line={"width": 1},
                )
            )
    fig.update_layout(
        height=320,
        margin={"l": 50, "r": 20, "t": 30, "b": 40},
        xaxis_title="epoch",
        yaxis_title=metric,
        template="plotly_white",
        uirevision="runs-progress",
        showlegend=len(frames) <= 20,
    )
    return fig


def keep_view(fig: go.Figure, relayout: Mapping | None) -> go.Figure:
    """Re-apply the axis ranges a user zoomed to (Dash's ``relayoutData``).

    ``uirevision`` alone did not keep a drag-zoom across figure updates in our
    browser tests (Dash 4, plotly.js 3), so live-refreshed figures carry the
    user's ranges explicitly; a double-click (autorange) clears them.
    """
    if not relayout:
        return fig
    for axis in ("xaxis", "yaxis"):
        if relayout.get(f"{axis}.autorange"):
            continue
        low, high = relayout.get(f"{axis}.range[0]"), relayout.get(f"{axis}.range[1]")
        if low is None and isinstance(relayout.get(f"{axis}.range"), (list, tuple)):
            low, high = relayout[f"{axis}.range"]
        if low is not None and high is not None:
            fig.update_layout({axis: {"range": [low, high], "autorange": False}})
    return fig
