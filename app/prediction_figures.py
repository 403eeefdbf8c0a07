"""Pure builders of convergence predictions, shown on the Runs and Metric curves pages (no Dash).

``summary`` is ``analysis.predict.Prediction.summary()`` (plain values) and
``validation`` the leave-one-run-out verdict of ``analysis.predict_study``: a
point prediction is shown only when the validation says prediction beats the
naive baselines; otherwise the interval alone, with a plain note.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

from trainmap.app.common_figures import plural, rgba
from trainmap.app.curve_figures import phase_shapes

PREDICTION_COLUMN = ("predicted_convergence", "predicted convergence")
PREDICTION_COLOR = "#D55E00"


def _epoch_text(value) -> str:
    return "?" if value is None else f"{value:.0f}"


def prediction_confident(validation: Mapping | None) -> bool:
    return bool(validation) and validation.get("verdict") == "better"


def prediction_cell(summary: Mapping | None, validation: Mapping | None) -> str:
    """A Runs table cell: "~240 (180–320), 9 runs", or the interval only when unvalidated."""
    if not summary:
        return ""
    if summary.get("error"):
        return f"no prediction: {summary['error']}"
    if summary["converged_at"] is not None:
        return f"converged at {summary['converged_at']}"
    if summary["basis"] is None:
        return "not enough runs to tell"
    runs = plural(summary["n_reference"], "run")
    if summary["median"] is None:
        return f"after {_epoch_text(summary['floor'])}, {runs}"
    high = "open" if summary["high"] is None else _epoch_text(summary["high"])
    interval = f"{_epoch_text(summary['low'])}–{high}"
    if prediction_confident(validation):
        return f"~{_epoch_text(summary['median'])} ({interval}), {runs}"
    return f"{interval}, {runs} (interval only: not better than baselines)"


def with_predictions(rows: Sequence[Mapping], cells: Mapping[str, str]) -> list[dict]:
    """Table rows with the predicted-convergence cell filled for the runs in ``cells``."""
    key = PREDICTION_COLUMN[0]
    return [{**row, key: cells.get(row["run"], "")} for row in rows]


def prediction_words(summary: Mapping | None, validation: Mapping | None) -> str:
    """The prediction under the curves chart, with what it rests on and the verdict."""
    if not summary:
        return ""
    if summary.get("error"):
        return f"No prediction: {summary['error']}"
    head = (
        f"Now in S{summary['state']} of the {summary['n']}-state map "
        f"(p = {summary['state_prob']:.2f}) at epoch {summary['epoch']}. "
    )
    verdict = (validation or {}).get("message", "prediction not validated")
    if summary["converged_at"] is not None or summary["basis"] is None:
        return head + f"Convergence: {summary['text']}."
    if summary["median"] is None or prediction_confident(validation):
        return head + f"Predicted convergence epoch {summary['text']}. Validation: {verdict}."
    high = "open" if summary["high"] is None else _epoch_text(summary["high"])
    return head + (
        f"Convergence expected between epochs {_epoch_text(summary['low'])} and {high} "
        f"(80% interval of {plural(summary['n_reference'], 'run')}). "
        "No point estimate: prediction "
        f"{verdict}."
    )


def add_prediction(
    figure: Mapping,
    summary: Mapping | None,
    validation: Mapping | None,
    shade_states: bool = False,
) -> dict:
    """A copy of a plain metric figure with the predicted convergence drawn on it.

    A shaded vertical band over the 80% interval (to the last epoch any reference
    run was seen when its upper end is open) and, only when the validation says
    prediction beats the baselines, a line at the median; both labelled. Nothing
    is drawn for a run that converged or has no prediction. ``shade_states``
    also shades the run's states so far (for a run the fit has not decoded).
    """
    figure = dict(figure)
    if not summary or summary.get("error"):
        return figure
    layout = dict(figure.get("layout") or {})
    shapes = list(layout.get("shapes") or [])
    annotations = list(layout.get("annotations") or [])
    if shade_states and summary.get("path"):
        shapes.extend(phase_shapes(summary["epochs"], summary["path"]))
    layout["shapes"] = shapes
    figure["layout"] = layout
    if summary["converged_at"] is not None or summary["basis"] is None:
        return figure
    low = summary["low"] if summary["low"] is not None else summary["epoch"]
    high = summary["high"] if summary["high"] is not None else summary["floor"]
    open_end = summary["high"] is None
    shapes.append(
        {
            "type": "rect",
            "xref": "x",
            "yref": "paper",
            "x0": low,
            "x1": high,
            "y0": 0,
            "y1": 1,
            "fillcolor": rgba(PREDICTION_COLOR, 0.12),
            "line": {"width": 1, "color": rgba(PREDICTION_COLOR, 0.5), "dash": "dash"},
            "layer": "below",
            "name": "predicted convergence interval",
        }
    )
    label = f"predicted convergence: {_epoch_text(low)}–{'open' if open_end else _epoch_text(high)}"
    if summary["median"] is not None and prediction_confident(validation):
        shapes.append(
            {
                "type": "line",
                "xref": "x",
                "yref": "paper",
                "x0": summary["median"],
                "x1": summary["median"],
                "y0": 0,
                "y1": 1,
                "line": {"color": PREDICTION_COLOR, "width": 2},
                "name": "predicted convergence epoch",
            }
        )
        label = f"predicted convergence ~{_epoch_text(summary['median'])} ({label.split(': ')[1]})"
    else:
        label += " (interval only)"
    annotations.append(
        {
            "x": (low + high) / 2,
            "xref": "x",
            "y": 1.0,
            "yref": "paper",
            "yanchor": "bottom",
            "text": f"{label}, {plural(summary['n_reference'], 'run')}",
            "showarrow": False,
            "font": {"color": PREDICTION_COLOR, "size": 11},
            "name": "prediction",
        }
    )
    layout["shapes"] = shapes
    layout["annotations"] = annotations
    figure["layout"] = layout
    return figure
