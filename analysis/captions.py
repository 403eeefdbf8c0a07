"""Words for states: an automatic caption per state, and the names users give them.

A state's caption says when runs are in it and what sets it apart, e.g.
``epochs 40–120 · L2 ↑, SV variance ↑``: the epoch range is the 10th to 90th
percentile of the epochs of all checkpoints decoded as the state (robust to one
run lingering), and the features are the ones whose mean in this state differs
most from the average of the other states' means (in z units, arrows give the
sign). A user may also name a state ("memorising"); names are stored next to
the fit by :mod:`analysis.store` and checked here.

Pure and torch-free: the CLI prints these captions and the dashboard draws them.
"""

from __future__ import annotations

import unicodedata
from collections.abc import Mapping

import numpy as np

from trainmap.analysis import glossary
from trainmap.analysis.result import aligned_paths
from trainmap.trainer.errors import UserError

MAX_NAME_LENGTH = 40
# A feature must differ by at least this much (z) from the other states to be
# called distinctive; below it the caption names fewer features.
MIN_CONTRAST = 0.25


class StateNameError(UserError, ValueError):
    """A state name that cannot be stored (too long, control characters, ...)."""


def clean_state_name(name) -> str:
    """``name`` stripped and checked; "" means "no name" (back to the automatic caption).

    Raises :class:`StateNameError` for a non-string, a name longer than
    ``MAX_NAME_LENGTH`` or one holding control or format characters (newlines,
    escapes, bidi overrides), which would garble labels and CSV files.
    """
    if not isinstance(name, str):
        raise StateNameError(f"a state name must be text, got {type(name).__name__}")
    name = name.strip()
    if len(name) > MAX_NAME_LENGTH:
        raise StateNameError(
            f"a state name has at most {MAX_NAME_LENGTH} characters, this one {len(name)}"
        )
    bad = [c for c in name if unicodedata.category(c) in ("Cc", "Cf", "Cs", "Co", "Cn")]
    if bad:
        raise StateNameError(f"a state name cannot hold control characters ({bad[0]!r})")
    return name


def epoch_range(training_map, state: int, low: float = 10, high: float = 90):
    """(first, last) epoch between the given percentiles of the state's checkpoints, or None."""
    paths, epochs = aligned_paths(training_map)
    epochs = epochs.flat[paths.flat == int(state)]
    if not len(epochs):
        return None
    lo, hi = np.percentile(np.asarray(epochs, dtype=float), [low, high])
    return int(round(lo)), int(round(hi))


def distinctive_features(training_map, state: int, top: int = 3) -> list[tuple[str, float]]:
    """Up to ``top`` (feature, contrast in z) pairs, largest |contrast| first.

    The contrast is the state's mean minus the mean of the other states' means;
    with a single state there is nothing to contrast and the list is empty.
    """
    profiles = {int(s.state): s.profile for s in training_map.states}
    own = profiles.get(int(state)) or {}
    others = [p for k, p in profiles.items() if k != int(state)]
    if not others:
        return []
    contrasts = []
    for feature, value in own.items():
        rest = [p[feature] for p in others if p.get(feature) is not None]
        if value is None or not rest or not np.isfinite(value):
            continue
        contrasts.append((feature, float(value) - float(np.mean(rest))))
    contrasts.sort(key=lambda fc: -abs(fc[1]))
    return [(f, round(c, 2)) for f, c in contrasts[:top] if abs(c) >= MIN_CONTRAST]


def state_caption(training_map, state: int, top: int = 3) -> str:
    """``epochs 40–120 · L2 ↑, SV variance ↑`` (or ``not visited``)."""
    span = epoch_range(training_map, state)
    if span is None:
        return "not visited by any run"
    when = f"epoch {span[0]}" if span[0] == span[1] else f"epochs {span[0]}–{span[1]}"
    features = distinctive_features(training_map, state, top)
    if not features:
        return when
    what = ", ".join(f"{glossary.short_name(f)} {'↑' if c > 0 else '↓'}" for f, c in features)
    return f"{when} · {what}"


def state_label(state: int, name: str | None = None) -> str:
    """``S1`` or ``S1 memorising``: the id stays so a named state can still be found."""
    return f"S{int(state)} {name}" if name else f"S{int(state)}"


def state_labels(training_map, names: Mapping[int, str] | None = None) -> dict[int, dict]:
    """Per state: ``name`` (user's, "" if none), ``caption`` and ``label`` (id + name)."""
    names = names or {}
    return {
        int(s.state): {
            "name": names.get(int(s.state), ""),
            "caption": state_caption(training_map, s.state),
            "label": state_label(s.state, names.get(int(s.state))),
        }
        for s in training_map.states
    }
