"""Synthetic experiments with a known state path, for tests, selection studies and benchmarks.

Real training runs never tell us their "true" latent states, so we cannot check
whether a fitted HMM found the right number of states or the right paths. This
module generates runs where we *do* know the answer, with the nuisances that make
real metric sequences hard to model:

* several regimes (latent states), each with its own mean per feature;
* per-run offsets and scales (one seed's weights are simply larger than another's);
* autocorrelated AR(1) noise (metrics wander, they are not white noise);
* smooth linear ramps between regimes (phase changes take a few epochs);
* runs that fork onto different branches of a state graph, one branch taking a
  detour through an extra state and converging later;
* an ``eval_acc`` column that rises to >= 0.9 at a branch-dependent epoch.

Two entry points:

* :func:`make_synthetic` returns everything in memory (raw feature arrays, true
  paths, convergence epochs) for selection studies and benchmarks;
* :func:`write_synthetic_experiment` writes the same runs as a real experiment
  through :class:`trainer.rundir.RunWriter` (the 14 paper features plus
  train/eval loss and accuracy) and returns the truth.

A run's data depend only on ``seed`` and the run's index, not on ``n_runs``: the
first 12 runs of a 40-run experiment equal a 12-run experiment with the same seed.
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trainmap.trainer.columns import BIAS_COLUMNS, WEIGHT_COLUMNS

# Plausible magnitudes of the WEIGHT_COLUMNS, in order, so the written files look like real
# metrics: observed value = base + unit * latent, the latent in "standard deviation" units.
_BASE = np.array([120.0, 12.0, 9.0, 1.5, 4.0, 0.4, 0.8, 0.3, 0.0, 0.0, 0.01, 0.0, 0.0, 0.02])
_UNIT = np.array([15.0, 1.5, 0.5, 0.3, 0.6, 0.05, 0.1, 0.05, 1e-3, 1e-3, 2e-3, 2e-3, 2e-3, 4e-3])


def default_branches(n_states: int) -> list[list[int]]:
    """The state graph used when none is given.

    Every run starts in state 0 and ends in state ``n_states - 1``. With three or
    more states the map forks: a main branch ``0, 1, ..., K-3, K-1`` and a detour
    branch ``0, K-2, 1, ..., K-3, K-1`` that visits an extra state and therefore
    converges later (a detour state in the sense of docs/method.md section 4).
    For 4 states: ``[[0, 1, 3], [0, 2, 1, 3]]``.
    """
    if n_states < 1:
        raise ValueError(f"n_states must be >= 1, got {n_states}")
    if n_states <= 2:
        return [list(range(n_states))]
    main = [*range(n_states - 2), n_states - 1]
    detour = [0, n_states - 2, *range(1, n_states - 2), n_states - 1]
    return [main, detour]


@dataclass
class SyntheticExperiment:
    """In-memory synthetic runs and their truth (one list entry per run)."""

    run_names: list[str]
    feature_names: list[str]
    X: list[np.ndarray]  # raw features per run, shape (T, F); NaN after a divergence
    paths: list[np.ndarray]  # true state per checkpoint (the state a ramp is closer to)
    epochs: list[np.ndarray]
    steps: list[np.ndarray]
    scalars: list[dict[str, np.ndarray]]  # train/eval loss and accuracy per run
    branch: list[int]  # index into ``branches`` per run
    branches: list[list[int]]
    convergence_epoch: list[int | None]  # first epoch with eval_acc >= 0.9, None if never
    diverged_at: list[int | None]  # first checkpoint index with NaN features, if any
    n_states: int
    means: np.ndarray  # (n_states, F) latent means in noise-sd units
    dwell: np.ndarray  # (n_states,) typical dwell time per state, fraction of the run
    params: dict = field(default_factory=dict)

    @property
    def lengths(self) -> list[int]:
        return [len(x) for x in self.X]

    def frame(self, i: int) -> pd.DataFrame:
        """Run ``i`` as the metrics table a run directory would hold."""
        data = {"epoch": self.epochs[i], "step": self.steps[i]}
        data.update({name: self.X[i][:, j] for j, name in enumerate(self.feature_names)})
        data.update(self.scalars[i])
        return pd.DataFrame(data)


def _state_means(rng: np.random.Generator, n_states: int, n_features: int, separation: float):
    """Random well-separated state means (latent units), one row per state."""
    means = rng.normal(0.0, 1.0, size=(n_states, n_features))
    # Successive states differ by a common direction plus noise, like training
    # metrics that mostly move together (norms shrink, sparsity grows, ...).
    trend = rng.normal(0.0, 1.0, size=n_features)
    means += np.arange(n_states)[:, None] * 0.5 * trend[None, :]
    means -= means.mean(axis=0, keepdims=True)
    scale = separation / np.sqrt(n_features)
    return means * scale / max(means.std(), 1e-12)


def _segments(rng, branch, n_checkpoints, dwell, jitter):
    """Start index of each segment of ``branch`` (the last state takes the rest)."""
    durations = np.array([dwell[s] for s in branch[:-1]], dtype=float)
    durations *= np.exp(rng.normal(0.0, jitter, size=len(durations)))
    total = durations.sum()
    if total > 0.85:  # leave at least 15% of the run for the final state
        durations *= 0.85 / total
    starts = np.concatenate([[0.0], np.cumsum(durations)]) * n_checkpoints
    return np.round(starts).astype(int)


def _generate_run(index, *, seed, n_checkpoints, means, branch, dwell, params):
    """One run's raw features, true path and scalar columns (a dict of arrays)."""
    from scipy.signal import lfilter

    rng = np.random.default_rng([seed, 1 + index])  # depends on the run only, not n_runs
    n_states, n_features = means.shape
    T = n_checkpoints
    starts = _segments(rng, branch, T, dwell, params["dwell_jitter"])

    # Latent mean per checkpoint: piecewise constant with linear ramps of
    # ``ramp`` checkpoints centred on each change point.
    mean_t = np.empty((T, n_features))
    path = np.empty(T, dtype=np.int16)
    bounds = [*starts[1:], T]
    for seg, state in enumerate(branch):
        lo, hi = starts[seg], bounds[seg]
        mean_t[lo:hi] = means[state]
        path[lo:hi] = state  # the truth switches at the midpoint of the ramp
    half = params["ramp"] // 2
    for seg in range(1, len(branch)):
        c = starts[seg]
        lo, hi = max(c - half, 0), min(c + half, T)
        if hi - lo < 2:
            continue
        w = np.linspace(0.0, 1.0, hi - lo)[:, None]
        mean_t[lo:hi] = (1 - w) * means[branch[seg - 1]] + w * means[branch[seg]]
    # Slow drift within the run (real metrics never sit perfectly still).
    if params["drift"]:
        direction = rng.normal(0.0, 1.0, size=n_features)
        mean_t += params["drift"] * np.linspace(-1, 1, T)[:, None] * direction[None, :]

    # AR(1) noise with stationary standard deviation ``noise``.
    phi = params["ar"]
    innovations = rng.normal(0.0, params["noise"] * np.sqrt(1 - phi**2), size=(T, n_features))
    noise = lfilter([1.0], [1.0, -phi], innovations, axis=0)

    offset = rng.normal(0.0, params["run_offset"], size=n_features)
    scale = np.exp(rng.normal(0.0, params["run_scale"], size=n_features))
    latent = offset + scale * (mean_t + noise)
    X = _BASE[:n_features] + _UNIT[:n_features] * latent

    epochs = np.arange(T, dtype=np.int64) * params["epochs_per_checkpoint"]
    steps = epochs * params["steps_per_epoch"]

    # Accuracy: eval_acc crosses 0.9 around the entry into the final state, so
    # the convergence epoch depends on the branch; train_acc rises earlier.
    entry = starts[-1] if len(branch) > 1 else T // 3
    width = max(T / 60, 1.0)
    t = np.arange(T)
    eval_acc = 0.01 + 0.97 / (1 + np.exp(-((t - entry) / width + 2.5)))
    eval_acc = np.clip(eval_acc + rng.normal(0, 0.004, T), 0.0, 1.0)
    train_entry = starts[1] if len(branch) > 1 else T // 6
    train_acc = np.clip(0.02 + 0.98 / (1 + np.exp(-(t - train_entry) / width)), 0, 1)
    scalars = {
        "train_loss": -np.log(np.clip(train_acc, 1e-3, 1)) + rng.normal(0, 0.01, T) ** 2,
        "eval_loss": -np.log(np.clip(eval_acc, 1e-3, 1)) + rng.normal(0, 0.01, T) ** 2,
        "train_acc": train_acc,
        "eval_acc": eval_acc,
    }
    return X, path, epochs, steps, scalars


def _prepare(n_runs, n_checkpoints, seed, n_states, branches, branch_probs, separation, n_features):
    if n_runs < 1 or n_checkpoints < 2:
        raise ValueError("need n_runs >= 1 and n_checkpoints >= 2")
    branches = [list(b) for b in (branches or default_branches(n_states))]
    if any(not b or max(b) >= n_states or min(b) < 0 for b in branches):
        raise ValueError(f"branches must use states 0..{n_states - 1}: {branches}")
    rng = np.random.default_rng(seed)
    means = _state_means(rng, n_states, n_features, separation)
    # Dwell time per state as a fraction of the run (the final state takes the rest).
    dwell = rng.uniform(0.15, 0.3, size=n_states)
    # Branch per run: balanced and shuffled, so every branch has runs when n_runs
    # >= number of branches; ``branch_probs`` overrides with random draws.
    if branch_probs is None:
        branch = rng.permutation(np.arange(n_runs) % len(branches))
    else:
        branch = rng.choice(len(branches), size=n_runs, p=branch_probs)
    return branches, means, dwell, [int(b) for b in branch]


def _convergence(epochs, eval_acc, threshold=0.9):
    hits = np.flatnonzero(eval_acc >= threshold)
    return int(epochs[hits[0]]) if len(hits) else None


def make_synthetic(
    n_runs: int = 12,
    n_checkpoints: int = 200,
    seed: int = 0,
    *,
    n_states: int = 4,
    n_features: int = 14,
    branches: Sequence[Sequence[int]] | None = None,
    branch_probs: Sequence[float] | None = None,
    separation: float = 6.0,
    noise: float = 1.0,
    ar: float = 0.7,
    ramp: int = 8,
    drift: float = 0.3,
    run_offset: float = 0.5,
    run_scale: float = 0.2,
    dwell_jitter: float = 0.15,
    n_diverged: int = 0,
    epochs_per_checkpoint: int = 1,
    steps_per_epoch: int = 10,
) -> SyntheticExperiment:
    """Generate synthetic runs in memory.

    Parameters
    ----------
    n_runs, n_checkpoints : number of runs and checkpoints per run.
    seed : everything is a deterministic function of the seed (and run index).
    n_states : number of true regimes.
    n_features : how many of the 14 paper features to generate (first ones).
    branches : state sequences runs may follow (default :func:`default_branches`).
    branch_probs : draw branches at random with these probabilities (default:
        balanced assignment).
    separation : typical Euclidean distance between state means, in noise sds.
    noise, ar : stationary sd and lag-1 autocorrelation of the AR(1) noise.
    ramp : checkpoints over which the mean moves linearly between regimes.
    drift : size of a slow linear drift per run (latent units, end to end = 2x).
    run_offset, run_scale : sd of per-run offsets and log-scales per feature.
    dwell_jitter : sd of the log of per-run dwell-time factors.
    n_diverged : the last ``n_diverged`` runs get NaN features from 70% of the run
        on (like a run whose weights became non-finite).
    """
    params = dict(
        n_runs=n_runs,
        n_checkpoints=n_checkpoints,
        seed=seed,
        n_states=n_states,
        n_features=n_features,
        separation=separation,
        noise=noise,
        ar=ar,
        ramp=ramp,
        drift=drift,
        run_offset=run_offset,
        run_scale=run_scale,
        dwell_jitter=dwell_jitter,
        n_diverged=n_diverged,
        epochs_per_checkpoint=epochs_per_checkpoint,
        steps_per_epoch=steps_per_epoch,
    )
    branches, means, dwell, branch = _prepare(
        n_runs, n_checkpoints, seed, n_states, branches, branch_probs, separation, n_features
    )
    width = len(str(n_runs - 1))
    out = SyntheticExperiment(
        run_names=[f"seed-{i:0{width}d}" for i in range(n_runs)],
        feature_names=list(WEIGHT_COLUMNS[:n_features]),
        X=[],
        paths=[],
        epochs=[],
        steps=[],
        scalars=[],
        branch=branch,
        branches=branches,
        convergence_epoch=[],
        diverged_at=[],
        n_states=n_states,
        means=means,
        dwell=dwell,
        params=params,
    )
    for i in range(n_runs):
        X, path, epochs, steps, scalars = _generate_run(
            i,
            seed=seed,
            n_checkpoints=n_checkpoints,
            means=means,
            branch=branches[branch[i]],
            dwell=dwell,
            params=params,
        )
        diverged = None
        if i >= n_runs - n_diverged:
            diverged = int(0.7 * n_checkpoints)
            X[diverged:] = np.nan
        out.X.append(X)
        out.paths.append(path)
        out.epochs.append(epochs)
        out.steps.append(steps)
        out.scalars.append(scalars)
        out.convergence_epoch.append(_convergence(epochs, scalars["eval_acc"]))
        out.diverged_at.append(diverged)
    return out


# ------------------------------------------------------------------ writing


def write_synthetic_experiment(
    root: str | os.PathLike,
    experiment: str,
    n_runs: int = 12,
    n_checkpoints: int = 200,
    seed: int = 0,
    *,
    biases: bool = True,
    overwrite: bool = False,
    **kwargs,
) -> SyntheticExperiment:
    """Write synthetic runs to ``root/experiment`` and return the truth.

    Each run gets the 14 paper feature columns (without ``mean_b, median_b,
    var_b`` when ``biases`` is False, as for a model without biases) plus
    ``train_loss, eval_loss, train_acc, eval_acc``; ``task`` is ``"synthetic"``.
    Diverged runs (``n_diverged``) are written with null features after the
    divergence and marked diverged. Other keyword arguments go to
    :func:`make_synthetic`. The returned object holds paths, branches and
    convergence epochs but not the feature arrays (``X`` is empty) so that large
    experiments do not have to fit in memory.
    """
    from trainmap.trainer import rundir

    n_features = kwargs.pop("n_features", 14)
    # Generate the truth for all runs run by run so memory stays at one run.
    truth = make_synthetic(
        n_runs=n_runs, n_checkpoints=2, seed=seed, n_features=n_features, **kwargs
    )
    params = {**truth.params, "n_checkpoints": n_checkpoints, "biases": biases}
    truth.params = params
    for name in ("X", "paths", "epochs", "steps", "scalars", "convergence_epoch", "diverged_at"):
        setattr(truth, name, [])
    drop = set() if biases else set(BIAS_COLUMNS)
    for i, run in enumerate(truth.run_names):
        X, path, epochs, steps, scalars = _generate_run(
            i,
            seed=seed,
            n_checkpoints=n_checkpoints,
            means=truth.means,
            branch=truth.branches[truth.branch[i]],
            dwell=truth.dwell,
            params=params,
        )
        diverged = i >= n_runs - params["n_diverged"]
        diverged_at = int(0.7 * n_checkpoints) if diverged else None
        if diverged:
            X[diverged_at:] = np.nan
        data = {"epoch": epochs, "step": steps}
        data.update(
            (name, X[:, j]) for j, name in enumerate(truth.feature_names) if name not in drop
        )
        data.update(scalars)
        frame = pd.DataFrame(data)
        writer = rundir.RunWriter.create(
            root,
            experiment,
            run,
            task="synthetic",
            seed=seed * 100_000 + i,
            config={"synthetic": {k: v for k, v in params.items() if k != "n_runs"}, "run": i},
            hook_points=["model"],
            overwrite=overwrite,
        )
        writer.append_frame(frame)
        if diverged:
            writer.mark_diverged(int(epochs[diverged_at]))
        writer.finish("completed")
        truth.paths.append(path)
        truth.epochs.append(epochs)
        truth.steps.append(steps)
        truth.convergence_epoch.append(_convergence(epochs, scalars["eval_acc"]))
        truth.diverged_at.append(diverged_at)
    if not biases:
        truth.feature_names = [f for f in truth.feature_names if f not in drop]
    return truth
