"""Pure builders of the Model selection page: the criteria per n and the sweep table (no Dash)."""

from __future__ import annotations

import numpy as np
import pandas as pd
import plotly.graph_objects as go
from plotly.subplots import make_subplots

from trainmap.app.common_figures import rgba


def selection_figure(
    sweep: pd.DataFrame, selected_n: int, chosen_n: int | None = None, height: int = 380
) -> go.Figure:
    """BIC and AIC (left, lower is better) and held-out log-likelihood (right,
    higher is better) against the number of states, each mean +- std over
    restarts as a band. The n the criterion selected is marked with a star, the
    n the user chose (if different) with a ring. Every point carries its n in
    ``customdata`` so a click tells the callback which n was chosen.
    """
    fig = make_subplots(
        rows=1,
        cols=2,
        subplot_titles=("information criteria (lower is better)", "held-out log-likelihood"),
        horizontal_spacing=0.12,
    )
    frame = sweep.sort_values("n")
    n = frame["n"].astype(int).to_numpy()
    panels = (
        (1, "bic", "BIC", "#0072B2"),
        (1, "aic", "AIC", "#E69F00"),
        (2, "heldout_ll", "held-out LL", "#009E73"),
    )
    for col, key, label, color in panels:
        mean_col, std_col = f"{key}_mean", f"{key}_std"
        if mean_col not in frame:
            continue
        mean = frame[mean_col].to_numpy(dtype=float)
        std = frame[std_col].to_numpy(dtype=float) if std_col in frame else np.zeros_like(mean)
        std = np.nan_to_num(std)
        ok = np.isfinite(mean)
        if not ok.any():
            continue
        # The band is one closed polygon: upper edge left to right, lower edge back.
        fig.add_trace(
            go.Scatter(
                x=np.concatenate([n[ok], n[ok][::-1]]),
                y=np.concatenate([(mean + std)[ok], (mean - std)[ok][::-1]]),
                fill="toself",
                fillcolor=rgba(color, 0.18),
                line={"width": 0},
                hoverinfo="skip",
                showlegend=False,
                name=f"{label} band",
            ),
            row=1,
            col=col,
        )
        fig.add_trace(
            go.Scatter(
                x=n[ok],
                y=mean[ok],
                customdata=n[ok],
                mode="lines+markers",
                marker={"size": 10, "color": color},
                line={"color": color},
                name=label,
                hovertemplate=f"n=%{{x}}<br>{label} %{{y:.4g}}<extra>click to choose n</extra>",
            ),
            row=1,
            col=col,
        )
        for mark_n, symbol, size, name in (
            (selected_n, "star", 20, "selected"),
            (chosen_n, "circle-open", 24, "chosen"),
        ):
            if mark_n is None or (name == "chosen" and mark_n == selected_n):
                continue
            hit = ok & (n == int(mark_n))
            if hit.any():
                fig.add_trace(
                    go.Scatter(
                        x=n[hit],
                        y=mean[hit],
                        customdata=n[hit],
                        mode="markers",
                        marker={
                            "symbol": symbol,
                            "size": size,
                            "color": "#D55E00",
                            "line": {"width": 2, "color": "#D55E00"},
                        },
                        name=f"{name} n",
                        showlegend=key == "bic",
                        hovertemplate=f"{name} n=%{{x}}<extra></extra>",
                    ),
                    row=1,
                    col=col,
                )
    # ICL (BIC plus an entropy penalty) and its effective-sample version, whose
    # penalty counts autocorrelated checkpoints as fewer observations (the
    # default criterion; docs/selection.md).
    for column, label, color in (
        ("icl_best", "ICL (best restart)", "#CC79A7"),
        ("icl_ess", "ICL, effective sample", "#56B4E9"),
    ):
        if column not in frame or not np.isfinite(frame[column].to_numpy(dtype=float)).any():
            continue
        fig.add_trace(
            go.Scatter(
                x=n,
                y=frame[column].to_numpy(dtype=float),
                customdata=n,
                mode="lines+markers",
                marker={"size": 7, "color": color},
                line={"color": color, "dash": "dot"},
                name=label,
                hovertemplate=f"n=%{{x}}<br>{label} %{{y:.4g}}<extra>click to choose n</extra>",
            ),
            row=1,
            col=1,
        )
    # Infeasible n (every restart failed, e.g. too few points for the
    # parameters) get a grey cross on the criteria's panel with the reason on
    # hover, so a gap in the curves is never a silent one.
    bad = infeasible_ns(sweep)
    if bad:
        finite = frame.get("bic_mean", pd.Series(dtype=float)).to_numpy(dtype=float)
        finite = finite[np.isfinite(finite)]
        y = float(finite.min()) if len(finite) else 0.0
        fig.add_trace(
            go.Scatter(
                x=[n for n, _ in bad],
                y=[y] * len(bad),
                text=[reason for _, reason in bad],
                mode="markers",
                marker={"symbol": "x-thin-open", "size": 14, "color": "#7F7F7F"},
                name="infeasible n",
                hovertemplate="n=%{x} infeasible<br>%{text}<extra></extra>",
            ),
            row=1,
            col=1,
        )
    fig.update_xaxes(title_text="number of states n", dtick=1)
    fig.update_yaxes(title_text="criterion (lower is better)", row=1, col=1)
    fig.update_yaxes(title_text="log-likelihood (higher is better)", row=1, col=2)
    fig.update_layout(
        height=height,
        # Room above the subplot titles for Plotly's toolbar (it never covers them).
        margin={"l": 60, "r": 20, "t": 70, "b": 90},
        # Below the axis titles (anchored by its top edge), markers at one size.
        legend={"orientation": "h", "y": -0.2, "yanchor": "top", "itemsizing": "constant"},
        clickmode="event",
        hovermode="closest",
        template="plotly_white",
        # Keep the user's zoom when the figure is rebuilt for another chosen n.
        uirevision="selection",
    )
    return fig


def infeasible_ns(sweep: pd.DataFrame) -> list[tuple[int, str]]:
    """(n, reason) for every n of the sweep no restart could fit."""
    if "feasible" not in sweep:
        return []
    out = []
    for row in sweep.sort_values("n").itertuples():
        if not bool(row.feasible):
            reason = str(getattr(row, "error", "") or "") or "every restart failed"
            out.append((int(row.n), reason))
    return out


def sweep_table(sweep: pd.DataFrame) -> list[dict]:
    """The sweep as JSON-safe records (NaN -> None) for a table or CSV."""
    frame = sweep.astype(object).where(pd.notna(sweep), None)
    return frame.to_dict("records")
