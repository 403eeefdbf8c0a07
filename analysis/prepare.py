"""Data preparation: from an experiment's runs to z-scored feature sequences.

docs/method.md section 2, steps 1-3. Runs are read only through ``trainer.rundir``.
The result, :class:`Prepared`, holds one array per run (rows = checkpoints in
step order, columns = features) plus what is needed to explain and undo the
scaling, and the train / held-out split of the runs.

Degenerate input is reported, never fatal for the whole experiment:

* a feature missing in every run (e.g. biases of a bias-free model) is dropped
  with a warning;
* a run whose features become non-finite (a diverged run) is truncated at its
  last finite checkpoint, with a warning naming it;
* a run left with fewer than 2 usable checkpoints, or missing a feature the
  other runs have, is excluded with the reason.
"""

from __future__ import annotations

import math
import os
import warnings
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trainmap.analysis.settings import DEFAULT_NORMALIZE, NORMALIZATIONS
from trainmap.trainer.columns import WEIGHT_COLUMNS


class PrepareError(ValueError):
    """The runs cannot be turned into HMM input (no usable runs or features)."""


@dataclass
class Prepared:
    """Feature sequences of the usable runs of one experiment, ready for the HMM."""

    run_names: list[str]  # sorted
    feature_names: list[str]
    X: list[np.ndarray]  # z-scored, (T_i, F) per run
    raw: list[np.ndarray]  # the same rows before scaling
    epochs: list[np.ndarray]
    steps: list[np.ndarray]
    accuracy: list[np.ndarray | None]  # the convergence column (eval_acc), same rows
    center: np.ndarray  # (n_runs, F) per run, or (1, F) pooled
    scale: np.ndarray  # same shape; 1 where a feature was constant
    normalize: str
    train: list[int]  # indices into run_names
    heldout: list[int]
    excluded: dict[str, str] = field(default_factory=dict)  # run -> why excluded/truncated
    warnings: list[str] = field(default_factory=list)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.X]

    def stack(self, which: Sequence[int]) -> tuple[np.ndarray, list[int]]:
        """Concatenate the runs ``which`` into hmmlearn's ``X, lengths`` form."""
        if not len(which):
            return np.empty((0, len(self.feature_names))), []
        return np.concatenate([self.X[i] for i in which]), [len(self.X[i]) for i in which]


def zscore(values: np.ndarray, axis=0) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """Z-score along ``axis`` (ddof=0); a constant column becomes 0, not NaN.

    "Constant" allows for float round-off: a standard deviation below 1e-12 times
    the column's magnitude counts as zero.
    """
    center = values.mean(axis=axis, keepdims=True)
    spread = values.std(axis=axis, keepdims=True)
    constant = spread <= 1e-12 * np.maximum(np.abs(center), 1.0)
    scale = np.where(constant, 1.0, spread)
    z = (values - center) / scale
    z = np.where(constant, 0.0, z)
    return z, center, scale


def split_runs(names: Sequence[str], heldout: float, seed: int) -> tuple[list[int], list[int]]:
    """Split runs (not rows) into train and held-out, deterministically.

    The split depends only on the sorted run names, ``heldout`` and ``seed``.
    ``round(heldout * n)`` runs are held out (at least one kept for training),
    but none when the share is less than one whole run (``heldout * n < 1``,
    e.g. fewer than 5 runs at 0.2; :func:`runs_needed_for_heldout`): one run
    that is most of the data is no held-out set, and its criteria mean little.
    """
    order = sorted(range(len(names)), key=lambda i: names[i])
    n = len(order)
    if n < 2 or heldout <= 0 or heldout * n < 1 - 1e-9:
        return order, []
    n_held = min(max(1, int(round(heldout * n))), n - 1)
    perm = np.random.default_rng(seed).permutation(n)
    held = sorted(order[i] for i in perm[:n_held])
    train = [i for i in order if i not in set(held)]
    return train, held


def runs_needed_for_heldout(heldout: float) -> int | None:
    """The fewest runs for which :func:`split_runs` holds out a run (None: never)."""
    if heldout <= 0:
        return None
    return max(2, math.ceil(1 / heldout - 1e-9))


def prepare_frames(
    frames: Mapping[str, pd.DataFrame],
    *,
    features: Sequence[str] | None = None,
    first_n: int | None = None,
    normalize: str = DEFAULT_NORMALIZE,
    heldout: float = 0.2,
    seed: int = 0,
    accuracy_column: str = "eval_acc",
    excluded: Mapping[str, str] | None = None,
) -> Prepared:
    """Prepare metrics tables (run name -> DataFrame with epoch, step, metrics).

    Parameters
    ----------
    features : columns to model; default the 14 paper features that exist.
    first_n : keep only the first N checkpoints (by step) of every run.
    normalize : "per_run" (z-score each run on its own, as the paper) or "pooled"
        (one mean and sd per feature over all rows of all usable runs).
    heldout, seed : fraction of runs held out for model selection, and the seed
        of that split.
    accuracy_column : the column whose threshold defines convergence.
    excluded : runs already known to be unusable (e.g. broken directories).
    """
    if normalize not in NORMALIZATIONS:
        raise PrepareError(f"normalize must be one of {NORMALIZATIONS}, got {normalize!r}")
    if first_n is not None and first_n < 2:
        raise PrepareError(f"first_n must be at least 2, got {first_n}")
    notes: list[str] = []
    excluded = dict(excluded or {})

    def present(name: str) -> bool:
        return any(name in f.columns and f[name].notna().any() for f in frames.values())

    wanted = list(WEIGHT_COLUMNS if features is None else features)
    if len(set(wanted)) != len(wanted):
        raise PrepareError(f"features listed twice: {wanted}")
    chosen = [f for f in wanted if present(f)]
    missing = [f for f in wanted if f not in chosen]
    if missing:
        notes.append(f"dropped features missing in every run: {', '.join(missing)}")
    if not chosen:
        raise PrepareError(f"none of the features {wanted} has a value in any run")

    kept: dict[str, pd.DataFrame] = {}
    for name in sorted(frames):
        frame = frames[name]
        absent = [f for f in chosen if f not in frame.columns or frame[f].isna().all()]
        if absent:
            excluded[name] = f"excluded: no values for {', '.join(absent)}"
            continue
        frame = frame.sort_values("step", kind="stable")
        if first_n is not None:
            frame = frame.iloc[:first_n]
        values = frame[chosen].to_numpy(dtype=float)
        finite = np.isfinite(values).all(axis=1)
        if not finite.all():
            # Truncate at the last finite checkpoint before the first bad one:
            # what follows a divergence is not training dynamics.
            stop = int(np.argmin(finite))
            if stop < len(frame):
                last = int(frame["epoch"].iloc[stop - 1]) if stop else None
                excluded[name] = (
                    f"truncated at epoch {last} (last finite checkpoint; "
                    f"{len(frame) - stop} later checkpoints non-finite)"
                    if stop >= 2
                    else "excluded: fewer than 2 finite checkpoints"
                )
            frame = frame.iloc[:stop]
        if len(frame) < 2:
            excluded.setdefault(name, "excluded: fewer than 2 checkpoints")
            if not excluded[name].startswith("excluded"):
                excluded[name] = "excluded: fewer than 2 finite checkpoints"
            continue
        kept[name] = frame
    truncated = sorted(k for k, v in excluded.items() if v.startswith("truncated"))
    if truncated:
        notes.append(f"diverged runs truncated at their last finite checkpoint: {truncated}")
    dropped = sorted(k for k, v in excluded.items() if not v.startswith("truncated"))
    if dropped:
        notes.append(f"runs excluded: {', '.join(f'{k} ({excluded[k]})' for k in dropped)}")
    if not kept:
        raise PrepareError("no usable runs (every run is broken, empty or non-finite)")

    names = sorted(kept)
    raw = [kept[n][chosen].to_numpy(dtype=float) for n in names]
    if normalize == "per_run":
        parts = [zscore(r) for r in raw]
        X = [p[0] for p in parts]
        center = np.concatenate([p[1] for p in parts])
        scale = np.concatenate([p[2] for p in parts])
    else:
        z, center, scale = zscore(np.concatenate(raw))
        X = np.split(z, np.cumsum([len(r) for r in raw])[:-1])
    accuracy = [
        kept[n][accuracy_column].to_numpy(dtype=float) if accuracy_column in kept[n] else None
        for n in names
    ]
    train, held = split_runs(names, heldout, seed)
    if not held:
        needed = runs_needed_for_heldout(heldout)
        why = (
            f"{len(names)} usable runs; a held-out share of {heldout:g} needs at least "
            f"{needed} runs"
            if needed
            else "heldout=0"
        )
        notes.append(
            f"no held-out runs ({why}): the number of states is selected on the training "
            "runs themselves (in-sample BIC/ICL); held-out scores are not available"
        )
    for note in notes:
        warnings.warn(note, stacklevel=3)
    return Prepared(
        run_names=names,
        feature_names=chosen,
        X=[np.ascontiguousarray(x) for x in X],
        raw=raw,
        epochs=[kept[n]["epoch"].to_numpy(dtype=np.int64) for n in names],
        steps=[kept[n]["step"].to_numpy(dtype=np.int64) for n in names],
        accuracy=accuracy,
        center=center,
        scale=scale,
        normalize=normalize,
        train=train,
        heldout=held,
        excluded=excluded,
        warnings=notes,
    )


def prepare_experiment(root: str | os.PathLike, experiment: str, **kwargs) -> Prepared:
    """Load ``root/experiment`` through ``trainer.rundir`` and prepare it.

    Broken run directories are excluded with their reason. Keyword arguments are
    those of :func:`prepare_frames`.
    """
    from trainmap.trainer import rundir

    runs, broken = rundir.load_experiment(root, experiment)
    excluded = {b.run: f"excluded: broken run directory ({b.reason})" for b in broken}
    if not runs:
        why = "; ".join(f"{b.run}: {b.reason}" for b in broken[:3]) or "no run directories"
        raise PrepareError(f"no usable runs in experiment {experiment} ({why})")
    frames = {run.name: run.metrics for run in runs}
    return prepare_frames(frames, excluded=excluded, **kwargs)
