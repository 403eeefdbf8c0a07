"""Pure builders of the Compare page: a comparison (plain data) in, elements and figures out.

The comparison is ``analysis.compare.Comparison.to_dict()``. Nothing here
imports Dash or the cache (as in every ``app/*_figures.py``), so every function is
tested without a server or a browser.

Colours: a matched phase ``M<g>`` is drawn with ``common_figures.state_color(g)`` in
every experiment's map, so the same colour means the same phase across maps.
Groups follow the first experiment's state order, so its map keeps the
colours of its own Training map page.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np
import plotly.graph_objects as go

from trainmap.analysis.compare_cli import detour_count_words
from trainmap.app import evidence
from trainmap.app.common_figures import state_color
from trainmap.app.map_figures import map_stylesheet

# Experiments on the convergence chart (not phases): greys and a blue, so
# they are not mistaken for the phase colours of the maps.
EXPERIMENT_COLORS = ("#1f2933", "#0072B2", "#7B8794", "#D55E00")


def experiment_color(index: int) -> str:
    return EXPERIMENT_COLORS[index % len(EXPERIMENT_COLORS)]


def compare_stylesheet() -> list[dict]:
    """The Training map's stylesheet with labels large enough for a half-width map."""
    return map_stylesheet() + [
        {"selector": "node", "style": {"font-size": 30, "text-outline-width": 3}},
        {"selector": "node.unmatched", "style": {"text-valign": "bottom", "text-margin-y": 6}},
        {"selector": "edge", "style": {"font-size": 22}},
    ]


def node_label(state: Mapping, experiment: str, group: Mapping) -> str:
    """``M1`` for a matched phase; ``M1 (only <experiment>)`` for a state without a counterpart."""
    return state["label"] if group["matched"] else f"{state['label']} (only {experiment})"


def matched_elements(elements: Sequence[Mapping], comparison: Mapping, index: int) -> list[dict]:
    """Map elements (``map_figures.map_elements``) of experiment ``index``, in matched phases.

    Nodes take their group's colour and label (their own state number stays in
    ``state_label``), a sentence on the match (``match_text``) and the class
    ``unmatched`` when no other experiment has them; edges take their source
    group's colour, as on the Training map.
    """
    unit = comparison["quality"]["unit"]
    side = comparison["experiments"][index]
    name = side["name"]
    states = {s["state"]: s for s in side["states"]}
    groups = {g["group"]: g for g in comparison["groups"]}
    out = []
    for element in elements:
        data = dict(element["data"])
        classes = element.get("classes", "").split()
        if "source" in data:  # an edge
            source = states[int(data["source"][1:])]
            target = states[int(data["target"][1:])]
            data.update(
                color=state_color(source["group"]),
                source_label=source["label"],
                target_label=target["label"],
            )
        else:
            state = states[int(data["state"])]
            group = groups[state["group"]]
            data.update(
                color=state_color(state["group"]),
                label=node_label(state, name, group),
                state_label=f"S{state['state']}",
                group=state["group"],
                matched=bool(group["matched"]),
                match_text=match_words(group, name, unit),
            )
            if not group["matched"]:
                classes.append("unmatched")
        out.append({**element, "data": data, "classes": " ".join(classes)})
    return out


def match_words(group: Mapping, experiment: str, unit: str) -> str:
    """How a state of ``experiment`` matches the other experiments, in one sentence."""
    others = [
        f"{name} S{state}"
        for name, state in group["states"].items()
        if state is not None and name != experiment
    ]
    if not others:
        return f"No counterpart: {_distance_text(group, unit)}."
    how = "The same phase as" if group["grade"] == "same" else "Similar to"
    return f"{how} {', '.join(others)} ({group['distance']:.2f} {unit} apart)."


def _distance_text(group: Mapping, unit: str) -> str:
    if group["matched"]:
        return f"{group['distance']:.2f} {unit}"
    nearest = ", ".join(f"{d:.2f} to {name}'s nearest" for name, d in group["nearest"].items())
    return f"no counterpart ({nearest})" if nearest else "no counterpart"


def match_rows(comparison: Mapping) -> list[dict]:
    """One row per phase: label, colour, each experiment's state, distance, status."""
    names = [e["name"] for e in comparison["experiments"]]
    unit = comparison["quality"]["unit"]
    rows = []
    for group in comparison["groups"]:
        present = [n for n in names if group["states"][n] is not None]
        rows.append(
            {
                "label": group["label"],
                "color": state_color(group["group"]),
                "states": {
                    n: (f"S{group['states'][n]}" if group["states"][n] is not None else "—")
                    for n in names
                },
                "distance": _distance_text(group, unit),
                "status": "matched" if group["matched"] else f"only in {present[0]}",
                # "same": as close as one state fitted twice; "similar": nearer to
                # each other than to the other states of their own experiments.
                "match": group.get("grade") or f"only in {present[0]}",
            }
        )
    return rows


def _n_words(side: Mapping) -> str:
    counts, total = side.get("n_bootstrap") or {}, side.get("n_resamples") or 0
    text = f"{side['n_states']}"
    if counts and total:
        share = counts.get(side["n_states"], counts.get(str(side["n_states"]), 0)) / total
        spread = ", ".join(
            f"{n}: {c}" for n, c in sorted(counts.items(), key=lambda kv: int(kv[0]))
        )
        return f"{text} (bootstrap over runs, {total} resamples: {spread}; this n in {share:.0%})"
    return f"{text} (no bootstrap of n saved with this fit)"


def _detour_words(side: Mapping) -> str:
    detours = [s for s in side["states"] if s["is_detour"]]
    if not detours:
        return detour_count_words(side)
    parts = []
    for s in detours:
        d = s["detour"]
        delay = d.get("delay")
        delay_text = "delay undefined" if delay is None else f"{delay:+.0f} epochs"
        parts.append(
            f"{s['label']} (S{s['state']}): {delay_text}, "
            f"{evidence.interval_words(d.get('delay_ci'))}, {evidence.p_words(d.get('p_adjusted'))}"
        )
    return "; ".join(parts)


def experiment_rows(comparison: Mapping) -> list[dict]:
    """Per experiment: states (with the bootstrap of n), runs, convergence, detours, dissimilarity."""
    rows = []
    for side in comparison["experiments"]:
        median = side["km_median"]
        rows.append(
            {
                "experiment": side["name"],
                "states": _n_words(side),
                "runs": f"{len(side['runs'])} ({side['n_censored']} never converged)",
                "median": "not reached" if median is None else f"{median:.0f}",
                "detours": _detour_words(side),
                "dissimilarity": f"{side['dissimilarity']:.3f}",
            }
        )
    return rows


def transition_items(comparison: Mapping) -> list[str]:
    """One sentence per transition some experiments make and others do not."""
    items = []
    for t in comparison["transitions"]:
        present = ", ".join(f"{name} ({k} run{'s' * (k != 1)})" for name, k in t["present"].items())
        items.append(
            f"{t['source']} → {t['target']}: in {present}; {'; '.join(t['absent'].values())}"
        )
    return items


def _jitter(n: int, seed: int) -> np.ndarray:
    """Small vertical offsets so runs at the same epoch do not hide each other."""
    return np.random.default_rng(seed).uniform(-0.18, 0.18, size=n)


def convergence_figure(comparison: Mapping, height: int = 300) -> go.Figure:
    """Convergence epoch per run, one strip per experiment.

    Converged runs are filled dots at their convergence epoch; runs that never
    reached the threshold are open triangles at their last epoch (they
    converge later than that, if ever); a tall bar marks each experiment's
    Kaplan-Meier median. The title carries the test against the first
    experiment.
    """
    fig = go.Figure()
    names = [e["name"] for e in comparison["experiments"]]
    for i, side in enumerate(comparison["experiments"]):
        color = experiment_color(i)
        runs = side["runs"]
        offsets = _jitter(len(runs), seed=i)
        converged = [j for j, r in enumerate(runs) if side["convergence"][r] is not None]
        censored = [j for j, r in enumerate(runs) if side["convergence"][r] is None]
        fig.add_trace(
            go.Scatter(
                x=[side["convergence"][runs[j]] for j in converged],
                y=[i + offsets[j] for j in converged],
                mode="markers",
                marker={"color": color, "size": 9, "opacity": 0.8},
                name=f"{side['name']}: converged",
                customdata=[runs[j] for j in converged],
                hovertemplate="%{customdata}: converged at epoch %{x}<extra></extra>",
            )
        )
        if censored:
            fig.add_trace(
                go.Scatter(
                    x=[side["last_epoch"][runs[j]] for j in censored],
                    y=[i + offsets[j] for j in censored],
                    mode="markers",
                    marker={
                        "color": color,
                        "size": 11,
                        "symbol": "triangle-right-open",
                        "line": {"width": 2},
                    },
                    name=f"{side['name']}: never converged (at last epoch)",
                    customdata=[runs[j] for j in censored],
                    hovertemplate=(
                        "%{customdata}: never converged; last epoch %{x}<extra></extra>"
                    ),
                )
            )
        if side["km_median"] is not None:
            fig.add_trace(
                go.Scatter(
                    x=[side["km_median"]],
                    y=[i],
                    mode="markers",
                    marker={
                        "symbol": "line-ns",
                        "size": 34,
                        "line": {"width": 3, "color": color},
                    },
                    name=f"{side['name']}: median (Kaplan-Meier)",
                    hovertemplate=f"{side['name']} median: epoch %{{x}}<extra></extra>",
                )
            )
    fig.update_layout(
        title={"text": convergence_title(comparison), "font": {"size": 13}},
        height=height + 40 * max(0, len(names) - 2),
        margin={"l": 10, "r": 10, "t": 50, "b": 40},
        xaxis={"title": {"text": "convergence epoch (eval accuracy reaches the threshold)"}},
        yaxis={
            "tickmode": "array",
            "tickvals": list(range(len(names))),
            "ticktext": names,
            "range": [-0.6, len(names) - 0.4],
            "automargin": True,
        },
        legend={"orientation": "h", "y": -0.3},
        plot_bgcolor="#fff",
    )
    fig.update_xaxes(gridcolor="#e4e7eb")
    return fig


def convergence_title(comparison: Mapping) -> str:
    """The tests in a few words (the full sentences are beside the chart)."""
    parts = []
    for test in comparison["convergence"]:
        if test["verdict"] == "not_enough_runs":
            parts.append(f"{test['b']} vs {test['a']}: not enough runs to tell")
            continue
        diff = test["difference"]
        diff_text = "median difference undefined" if diff is None else f"median {diff:+.0f} epochs"
        parts.append(
            f"{test['b']} vs {test['a']}: {diff_text} "
            f"({evidence.interval_words(test['interval'])}), "
            f"{test['test']} {evidence.p_words(test['p_adjusted'])}"
        )
    return "<br>".join(parts)
