"""Predict when a run that is still training will converge, from an experiment's saved fit.

For a run still being written (or any prefix of a finished run) this module
computes, with the experiment's saved HMM (never fitting one implicitly):

* the forward-filtered state probabilities ``p(s_t = h | z_1..t)`` at every
  checkpoint so far (:func:`analysis.explain.filtered_posterior`): they use
  only the rows written so far, so they are what an observer of a live run can
  know, unlike the Viterbi paths of the map, which look at the whole run;
* the current state: the most probable one at the last checkpoint;
* a predicted convergence epoch with an 80% prediction interval.

How the epoch is predicted (and why). The question is "given where this run
is now, when do runs like it converge?", so the answer is read off the runs
of the experiment that were once where this run is now:

1. *Reference runs* are the fit's other runs, with their decoded paths,
   epochs and convergence epochs as saved in the map. A run that had not
   converged when the fit was made is *censored* at its last epoch (we only
   know that it converges later, if ever), exactly as the detour test in
   :mod:`analysis.evidence` treats it; dropping such runs would hide the slow
   ones, and treating their last epoch as convergence would make them look fast.
2. The clock is the time since the run entered its current state ``k`` (at
   epoch ``a``; the run is at epoch ``e`` now, ``e - a`` epochs into its stay).
   The references are the runs that also entered ``k`` and, ``e - a`` epochs
   after entering it, were still in ``k`` and had not converged: runs at the
   same point of the same phase. Their time from entering ``k`` to converging,
   added to ``a``, is this run's predicted epoch. Phases last different
   lengths in different runs, so runs are aligned at the start of the phase
   rather than at the same epoch; measured in docs/predict.md, aligning at
   the same epoch (runs in ``k`` at epoch ``e``) was as good or worse on every
   experiment and fell back to coarser matches more often.
3. Level ``"path"``: those of them that reached ``k`` by the same route (the
   same set of states visited before entering it), which separates the
   branches of a forked map: two runs in the same late state, one of which
   took a detour, are at different points of their training. If fewer than
   :data:`MIN_REFERENCE` runs match, any route (``"state"``); if still too
   few, every run not converged by epoch ``e`` (``"all"``), and the result
   says so.
4. The prediction is the Kaplan-Meier median of the matched runs' convergence
   times on this clock (censored runs kept), and the interval the KM 10% and 90% quantiles:
   a *prediction* interval for this one run's epoch, which is what a user
   asks, not a confidence interval for the median (that one shrinks with more
   runs while a single run's spread does not). Where more than half (or 10%)
   of the matched runs are censored before the median (or the 90% quantile),
   that end is unknown: the median is reported as "later than" the last epoch
   seen, the upper bound as open.

Scaling. A pooled fit (the default) z-scores with one centre and scale over
all rows of the fitted runs; they are saved with the fit and applied to the
new rows unchanged, so a prefix is scaled exactly as the whole run was. A
per-run fit z-scores each run with its own mean and sd, which for a run still
training are not known yet: the prefix is z-scored on itself, so its values
shift as the run grows (a run early in training is all "early" rows, and its
z-scores spread them over every state). Predictions from per-run fits carry a
note saying so; validate them (:mod:`analysis.predict_study`) before trusting.

Whether the prediction is better than naive guesses is measured, not assumed:
:func:`analysis.predict_study.validate` holds out each finished run in turn,
truncates it, predicts, and compares with the median of the other runs and with
extrapolating the eval accuracy curve. The verdict is computed on demand (it
reads the experiment's runs once; the dashboard memoizes it per fit) and
shown with every prediction; when prediction does not beat the baselines the
CLI and the dashboard show the interval only, with a plain note.

This module must not import torch (tested).
"""

from __future__ import annotations

import os
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field

import numpy as np
import pandas as pd

from trainmap.analysis.explain import filtered_posterior
from trainmap.analysis.fitting import make_model
from trainmap.analysis.maps import convergence_epoch
from trainmap.analysis.prepare import zscore

# Fewer matched runs than this and the prediction falls back to a coarser
# match: a KM median and 10-90% quantiles of 4 runs are two of their values.
MIN_REFERENCE = 4
# Quantiles of the prediction interval: 80%, so the validation can show with a
# few dozen held-out cases whether the coverage is right.
INTERVAL = (0.1, 0.9)
LEVELS = ("path", "state", "all")


class PredictError(ValueError):
    """A prediction cannot be made; the message says why and what to do."""


@dataclass
class Reference:
    """What a prediction needs from a saved fit: the model, scaling and reference runs."""

    experiment: str
    fit_key: str
    created_at: str
    stale: bool  # runs changed since the fit (e.g. still training)
    n: int
    cov: str
    normalize: str
    feature_names: list[str]
    center: np.ndarray | None  # (1, F) for pooled fits, None for per-run
    scale: np.ndarray | None
    threshold: float
    arrays: dict  # startprob, transmat, means, covars (canonical state order)
    runs: list[str]
    epochs: Mapping[str, np.ndarray]  # run -> integer array (a RunArrays when loaded)
    paths: Mapping[str, np.ndarray]
    convergence: dict[str, int | None]
    first_n: int | None = None

    def model(self):
        return make_model(self.arrays, self.cov)

    def times(self, run: str) -> tuple[float, bool]:
        """(convergence epoch, True) or (last epoch seen, False) if censored."""
        conv = self.convergence.get(run)
        return (float(conv), True) if conv is not None else (float(self.epochs[run][-1]), False)


@dataclass
class Prediction:
    """A run's state so far and when it is predicted to converge (see the module docstring)."""

    experiment: str
    run: str
    fit_key: str
    n: int
    epochs: list[int]  # the checkpoints used
    filtered: np.ndarray  # (T, n): p(state | rows so far) at every checkpoint
    path: list[int]  # Viterbi path of the rows so far
    state: int  # most probable state now
    state_prob: float
    epoch: int  # epoch of the last checkpoint
    converged_at: int | None  # the run already reached the threshold here
    median: float | None = None  # KM median of the matched runs (None: not reached)
    low: float | None = None  # 10% quantile
    high: float | None = None  # 90% quantile (None: not reached, open)
    floor: float | None = None  # last epoch seen among the matched runs
    entered: float | None = None  # epoch this run entered its current state
    n_reference: int = 0
    n_converged_reference: int = 0
    basis: str | None = None  # "path", "state" or "all"
    notes: list[str] = field(default_factory=list)

    def summary(self) -> dict:
        """Plain values for JSON, the dashboard's cache and tests."""
        return {
            "experiment": self.experiment,
            "run": self.run,
            "fit_key": self.fit_key,
            "n": self.n,
            "epoch": self.epoch,
            "checkpoints": len(self.epochs),
            "epochs": list(self.epochs),
            "path": list(self.path),
            "state": self.state,
            "state_prob": self.state_prob,
            "converged_at": self.converged_at,
            "entered": self.entered,
            "median": self.median,
            "low": self.low,
            "high": self.high,
            "floor": self.floor,
            "n_reference": self.n_reference,
            "n_converged_reference": self.n_converged_reference,
            "basis": self.basis,
            "notes": list(self.notes),
            "text": self.text(),
        }

    def text(self) -> str:
        """The prediction in one sentence (no verdict: see :func:`verdict_words`)."""
        if self.converged_at is not None:
            return f"already converged at epoch {self.converged_at}"
        if self.basis is None:
            return f"no prediction: {self.notes[-1] if self.notes else 'no reference runs'}"
        where = self.where()
        if self.median is None:
            return f"later than epoch {_num(self.floor)}: most runs never converged, {where}"
        return f"~{_num(self.median)}, 80% interval {_num(self.low)}–{_open(self.high)}, {where}"

    def where(self) -> str:
        """Which reference runs the prediction rests on, in words."""
        runs = f"{self.n_reference} run{'s' * (self.n_reference != 1)}"
        if self.basis == "all":
            return f"from {runs} of any state not converged by epoch {self.epoch}"
        stay = (
            f"stayed in it, unconverged, at least {self.epoch - self.entered:.0f} epochs, "
            f"as this run has since epoch {self.entered:.0f}"
        )
        if self.basis == "path":
            return f"from {runs} that reached S{self.state} by the same route and {stay}"
        return f"from {runs} that reached S{self.state} by any route and {stay}"


def _num(value) -> str:
    return "?" if value is None else f"{value:.0f}"


def _open(value) -> str:
    return "open" if value is None else f"{value:.0f}"


# ------------------------------------------------------------------ survival


def km_quantiles(times, events, quantiles: Sequence[float]) -> list[float | None]:
    """Kaplan-Meier quantiles of the event time: the first time the estimated
    share not yet converged drops to ``1 - q`` or below; None where it never does
    (too many runs censored first). Same conventions as
    :func:`analysis.evidence.km_median` (``q = 0.5`` gives the same value).
    """
    times = np.asarray(times, dtype=float)
    events = np.asarray(events, dtype=bool)
    if len(times) == 0:
        return [None for _ in quantiles]
    grid = np.unique(times)
    at_risk = (times[None, :] >= grid[:, None]).sum(axis=1)
    d = (events[None, :] & (times[None, :] == grid[:, None])).sum(axis=1)
    survival = np.cumprod(1.0 - d / at_risk)
    out = []
    for q in quantiles:
        reached = np.flatnonzero(survival <= 1.0 - q + 1e-12)
        out.append(float(grid[reached[0]]) if len(reached) else None)
    return out


def survival_prediction(times, events) -> dict:
    """Median, 10% and 90% KM quantiles and the last epoch seen, of reference runs."""
    low, median, high = km_quantiles(times, events, (INTERVAL[0], 0.5, INTERVAL[1]))
    times = np.asarray(times, dtype=float)
    return {
        "median": median,
        "low": low,
        "high": high,
        "floor": float(times.max()) if len(times) else None,
        "n": int(len(times)),
        "n_converged": int(np.sum(events)),
    }


# ------------------------------------------------------------------ the fit


def _choose_saved(root, experiment) -> dict:
    from trainmap.analysis import api

    saved = api.list_fits(root, experiment)
    if not saved:
        raise PredictError(
            f"experiment {experiment} has no saved fit; fit it first: "
            f"trainmap fit {os.path.join(str(root), experiment)}"
        )
    # A current fit if there is one; otherwise (runs still training change the
    # experiment's fingerprint with every row) the newest.
    current = [fit for fit in saved if fit["current"]]
    return (current or saved)[0]


def load_reference(root, experiment, *, n: int | None = None, key: str | None = None) -> Reference:
    """The saved fit a prediction uses (a current one first, else the newest).

    Raises :class:`PredictError` with the ``trainmap fit`` command when the
    experiment has no saved fit. ``key`` picks a saved fit by its key.
    """
    from trainmap.analysis import store

    if key is None:
        chosen = _choose_saved(root, experiment)
        key, stale, created = chosen["key"], not chosen["current"], chosen["created_at"]
    else:
        stale, created = False, ""
    loaded = store.load_fit_folder(store.fits_dir(root, experiment) / key)
    if loaded is None:
        raise PredictError(
            f"the saved fit {key} of {experiment} is unreadable or from an older trainmap; "
            f"refit: trainmap fit {os.path.join(str(root), experiment)} --refit"
        )
    result, payload, models = loaded
    n = result.selected_n if n is None else int(n)
    if n not in result.maps or n not in models:
        raise PredictError(f"the saved fit has no map with n={n}; feasible: {sorted(result.maps)}")
    tmap = result.maps[n]
    params = result.params
    scaling = payload.get("scaling") or {}
    normalize = scaling.get("normalize", params.get("normalize", "pooled"))
    center = scale = None
    if normalize == "pooled":
        center = np.asarray(models[0]["center"], dtype=float).reshape(1, -1)
        scale = np.asarray(models[0]["scale"], dtype=float).reshape(1, -1)
    return Reference(
        experiment=experiment,
        fit_key=key,
        created_at=created or payload.get("created_at", ""),
        stale=stale,
        n=n,
        cov=params.get("cov", "diag"),
        normalize=normalize,
        feature_names=list(result.feature_names),
        center=center,
        scale=scale,
        threshold=float(params.get("threshold", 0.9)),
        arrays={k: np.asarray(v, dtype=float) for k, v in models[n].items()},
        runs=list(tmap.paths),
        epochs=tmap.epochs,  # RunArrays: run -> read-only integer array
        paths=tmap.paths,
        convergence=dict(tmap.convergence_epoch),
        first_n=params.get("first_n"),
    )


# ------------------------------------------------------------------ prediction


def run_rows(reference: Reference, frame: pd.DataFrame, run: str = "run"):
    """(scaled rows, epochs, accuracy, notes) of a metrics table under the fit.

    Raises PredictError for a run without checkpoints or lacking a fitted feature.
    Rows after the first non-finite value are dropped (a diverged run), as the
    fit did.
    """
    if frame is None or len(frame) == 0:
        raise PredictError(
            f"run {run} has no checkpoint yet: a prediction needs at least one written row"
        )
    missing = [
        f for f in reference.feature_names if f not in frame.columns or frame[f].isna().all()
    ]
    if missing:
        raise PredictError(
            f"run {run} lacks feature{'s' * (len(missing) != 1)} {', '.join(missing)} that the "
            f"fit of {reference.experiment} models; it cannot be placed on this map"
        )
    notes = []
    frame = frame.sort_values("step", kind="stable")
    if reference.first_n is not None and len(frame) > reference.first_n:
        frame = frame.iloc[: reference.first_n]
        notes.append(f"the fit used the first {reference.first_n} checkpoints; so does this")
    raw = frame[reference.feature_names].to_numpy(dtype=float)
    finite = np.isfinite(raw).all(axis=1)
    if not finite.all():
        stop = int(np.argmin(finite))
        if stop == 0:
            raise PredictError(f"run {run}: its first checkpoint has non-finite features")
        notes.append(f"non-finite features from epoch {int(frame['epoch'].iloc[stop])}: cut there")
        frame, raw = frame.iloc[:stop], raw[:stop]
    if reference.normalize == "pooled":
        X = (raw - reference.center) / reference.scale
    else:
        X = zscore(raw)[0]
        notes.append(
            "per-run fit: the rows so far are z-scored on themselves, which shifts them as the "
            "run grows; prefer a pooled fit for prediction"
        )
    acc = frame["eval_acc"].to_numpy(dtype=float) if "eval_acc" in frame else None
    if acc is None:
        notes.append("no eval_acc column: cannot tell whether the run has converged")
    return X, frame["epoch"].to_numpy(dtype=np.int64), acc, notes


def entry_of(path: Sequence[int], epochs: Sequence[int], state: int) -> tuple[float, frozenset]:
    """When a run's path so far entered ``state`` for its current stay, and what it had visited.

    The stay is the final stretch of ``state`` at the end of the path; when the
    path does not end in ``state`` (the filtered state can run one checkpoint
    ahead of the Viterbi path), the run entered it at its last checkpoint.
    Returns (entry epoch, states visited up to and including the entry).
    """
    path = np.asarray(path)
    idx = len(path) - 1
    if path[idx] == state:
        while idx > 0 and path[idx - 1] == state:
            idx -= 1
    return float(epochs[idx]), frozenset(path[:idx].tolist()) | {int(state)}


def reference_stays(
    reference: Reference, state: int, elapsed: float, exclude: Sequence[str] = ()
) -> list[tuple[str, float, frozenset]]:
    """Reference runs that entered ``state`` and were still in it, unconverged, ``elapsed``
    epochs later: (run, entry epoch, states visited up to the entry), first entry only.
    """
    out = []
    for run in reference.runs:
        if run in exclude:
            continue
        path, epochs = reference.paths[run], reference.epochs[run]
        hits = np.flatnonzero(path == state)
        if not len(hits):
            continue
        first = int(hits[0])
        entry = float(epochs[first])
        if reference.times(run)[0] - entry <= elapsed:  # converged (or unobserved) by then
            continue
        now = max(int(np.searchsorted(epochs, entry + elapsed, side="right")) - 1, 0)
        if path[now] != state:  # had left the state by then
            continue
        out.append((run, entry, frozenset(path[: first + 1].tolist())))
    return out


def match_reference(
    reference: Reference,
    epoch: float,
    state: int,
    entry: float,
    visited: frozenset,
    exclude: Sequence[str] = (),
    min_reference: int = MIN_REFERENCE,
) -> tuple[str | None, list[float], list[bool], int]:
    """Reference runs for a run in ``state`` since ``entry``, now at ``epoch``.

    Returns ``(level, times, events, n_at_risk)``: the finest of :data:`LEVELS`
    with at least ``min_reference`` runs (None when even all runs at risk are
    fewer), and the matched runs' convergence times on this run's clock. For
    ``"path"`` and ``"state"`` a reference's time is ``entry`` plus how long it
    took from entering the state to converging (or to its last epoch, censored),
    so all of them are later than ``epoch``; for ``"all"`` it is its own
    convergence epoch, among the runs not converged by ``epoch``.
    """
    elapsed = epoch - entry
    stays = reference_stays(reference, state, elapsed, exclude)

    def shifted(group):
        pairs = [reference.times(run) for run, _, _ in group]
        entries = [e for _, e, _ in group]
        return [entry + t - e for (t, _), e in zip(pairs, entries)], [ev for _, ev in pairs]

    at_risk = [r for r in reference.runs if r not in exclude and reference.times(r)[0] > epoch]
    candidates = {
        "path": shifted([s for s in stays if s[2] == visited]),
        "state": shifted(stays),
        "all": (
            [reference.times(r)[0] for r in at_risk],
            [reference.times(r)[1] for r in at_risk],
        ),
    }
    for level in LEVELS:
        times, events = candidates[level]
        if len(times) >= min_reference:
            return level, times, events, len(at_risk)
    return None, [], [], len(at_risk)


def predict_rows(
    reference: Reference,
    X: np.ndarray,
    epochs: np.ndarray,
    accuracy: np.ndarray | None,
    *,
    run: str = "run",
    exclude: Sequence[str] = (),
    notes: Sequence[str] = (),
    min_reference: int = MIN_REFERENCE,
) -> Prediction:
    """Predict from already scaled rows (see :func:`run_rows`); ``exclude`` the run itself."""
    model = reference.model()
    filtered = filtered_posterior(model, X)
    path = model.decode(X, algorithm="viterbi")[1]
    state = int(np.argmax(filtered[-1]))
    epoch = int(epochs[-1])
    prediction = Prediction(
        experiment=reference.experiment,
        run=run,
        fit_key=reference.fit_key,
        n=reference.n,
        epochs=[int(e) for e in epochs],
        filtered=filtered,
        path=[int(s) for s in path],
        state=state,
        state_prob=float(filtered[-1, state]),
        epoch=epoch,
        converged_at=convergence_epoch(epochs, accuracy, reference.threshold),
        notes=list(notes),
    )
    if reference.stale:
        prediction.notes.append(
            f"the fit ({reference.created_at}) predates the latest rows of some runs; runs not "
            "converged then count as censored there"
        )
    entry, visited = entry_of(prediction.path, epochs, state)
    prediction.entered = entry
    if prediction.converged_at is not None:
        return prediction
    level, times, events, n_at_risk = match_reference(
        reference, epoch, state, entry, visited, exclude=exclude, min_reference=min_reference
    )
    if level is None:
        prediction.notes.append(
            f"not enough runs to tell: {n_at_risk} reference run"
            f"{'s' * (n_at_risk != 1)} not converged by epoch {epoch}, need >= {min_reference}"
        )
        return prediction
    if level == "all":
        prediction.notes.append(
            f"fewer than {min_reference} runs stayed in S{state} as long as this run: "
            "the prediction uses every run not converged by now"
        )
    survival = survival_prediction(times, events)
    prediction.median = survival["median"]
    prediction.low = survival["low"]
    prediction.high = survival["high"]
    prediction.floor = survival["floor"]
    prediction.n_reference = survival["n"]
    prediction.n_converged_reference = survival["n_converged"]
    prediction.basis = level
    return prediction


def predict_frame(
    reference: Reference, frame: pd.DataFrame, run: str = "run", exclude: Sequence[str] = ()
) -> Prediction:
    """Predict for a metrics table (any prefix of a run)."""
    X, epochs, acc, notes = run_rows(reference, frame, run)
    return predict_rows(reference, X, epochs, acc, run=run, exclude=exclude, notes=notes)


def predict_run(
    root,
    experiment: str,
    run: str,
    *,
    n: int | None = None,
    upto: int | None = None,
    reference: Reference | None = None,
) -> Prediction:
    """Predict for ``root/experiment/run`` as written so far (``upto``: its first N rows).

    The run itself never serves as a reference run. Raises :class:`PredictError`
    (no saved fit, no checkpoint, missing features) or ``trainer.rundir.RunDirError``
    (no such run, broken files).
    """
    from trainmap.trainer import rundir

    if upto is not None and int(upto) < 1:
        raise PredictError(f"upto must be at least 1 checkpoint, got {upto}")
    loaded = rundir.load_run(root, experiment, run)  # checks the names and the files first
    reference = reference or load_reference(root, experiment, n=n)
    frame = loaded.metrics
    if upto is not None:
        frame = frame.sort_values("step", kind="stable").iloc[: int(upto)]
    return predict_frame(reference, frame, run=run, exclude=[run])


# ------------------------------------------------------------------ words


def verdict_words(validation: dict | None) -> str:
    """One line on whether prediction beat the naive baselines for this fit."""
    if not validation:
        return "validation: not run"
    return f"validation: {validation['message']}"


def confident(validation: dict | None) -> bool:
    """Show a point prediction only when the validation says it beats the baselines."""
    return bool(validation) and validation.get("verdict") == "better"
