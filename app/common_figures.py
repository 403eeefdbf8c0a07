"""What the page builders share: state colours, number words and phase labels.

State ``k`` is drawn with ``state_color(k)`` everywhere (map nodes, shaded
phases on the metric curves, the strip, the CSV legend), so a reader can match a
node to a stretch of a curve by colour alone. ``labels`` arguments are
``analysis.captions.state_labels``: per state its user name ("" if none),
automatic caption and label ("S1" or "S1 memorising").

Like every ``app/*_figures.py`` module: pure (data in, figures or plain data
out), never imports Dash or the cache, so each function is tested as a plain
function without a server or a browser.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import numpy as np
import pandas as pd

# Colour-blind friendly (Okabe-Ito, then Tableau) so up to ~12 states stay distinct.
PALETTE = (
    "#0072B2",
    "#E69F00",
    "#009E73",
    "#CC79A7",
    "#56B4E9",
    "#D55E00",
    "#F0E442",
    "#000000",
    "#8C564B",
    "#7F7F7F",
    "#BCBD22",
    "#17BECF",
)


def state_color(state: int) -> str:
    return PALETTE[int(state) % len(PALETTE)]


def rgba(hex_color: str, alpha: float) -> str:
    r, g, b = (int(hex_color[i : i + 2], 16) for i in (1, 3, 5))
    return f"rgba({r},{g},{b},{alpha})"


def finite(value) -> float | None:
    """A float for display, or None for missing / NaN values."""
    if value is None:
        return None
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def prob_text(prob: float) -> str:
    """A transition probability as the map's edges and the hover panel show it."""
    return f"{float(prob):.3f}"


def plural(count: int, word: str, many: str | None = None) -> str:
    """``1 run``, ``2 runs`` (``many`` for irregular plurals)."""
    return f"{count} {word if count == 1 else (many or word + 's')}"


def state_segments(epochs: Sequence[int], path: Sequence[int]) -> list[tuple[float, float, int]]:
    """Contiguous stretches of one decoded state: (start epoch, end epoch, state).

    A stretch ends halfway to the next checkpoint, so shaded stretches touch and
    the boundary sits where the transition happened.
    """
    epochs = np.asarray(epochs, dtype=float)
    path = np.asarray(path, dtype=int)
    if len(path) == 0:
        return []
    change = np.flatnonzero(path[1:] != path[:-1]) + 1
    starts = np.concatenate([[0], change])
    ends = np.concatenate([change, [len(path)]])
    segments = []
    for a, b in zip(starts, ends):
        left = epochs[a] if a == 0 else (epochs[a - 1] + epochs[a]) / 2
        right = epochs[b - 1] if b == len(path) else (epochs[b - 1] + epochs[b]) / 2
        segments.append((float(left), float(right), int(path[a])))
    return segments


def epoch_columns(epochs) -> tuple[np.ndarray, np.ndarray]:
    """(sorted distinct epochs, position of each entry's epoch among them).

    ``np.unique(epochs, return_inverse=True)``, but it counts instead of sorting
    when the epochs span a range not much larger than their number (the usual
    case: 4 M checkpoints over 10 000 epochs), which is several times faster.
    """
    epochs = np.asarray(epochs, dtype=np.int64)
    if len(epochs) == 0:
        return epochs, np.empty(0, dtype=np.intp)
    low = int(epochs.min())
    span = int(epochs.max()) - low + 1
    if span > 4 * len(epochs) + 1024:  # sparse: the dense table would be mostly empty
        columns, inverse = np.unique(epochs, return_inverse=True)
        return columns, inverse.reshape(-1)
    present = np.zeros(span, dtype=bool)
    present[epochs - low] = True
    position = np.cumsum(present) - 1
    return np.flatnonzero(present) + low, position[epochs - low]


def state_label(labels: Mapping | None, state: int) -> str:
    entry = (labels or {}).get(int(state))
    return entry["label"] if entry else f"S{int(state)}"


def with_state_names(frame: pd.DataFrame, labels: Mapping | None) -> pd.DataFrame:
    """An export with ``state_name`` (the user's name, "" if none) and ``state_caption``."""
    out = frame.copy()
    if "state" not in out:
        return out
    labels = labels or {}

    def lookup(key):
        return lambda s: "" if pd.isna(s) else (labels.get(int(s)) or {}).get(key, "")

    out["state_name"] = out["state"].map(lookup("name"))
    out["state_caption"] = out["state"].map(lookup("caption"))
    return out
