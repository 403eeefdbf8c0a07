"""How stable a training map is: resample the runs, refit, compare (a bootstrap over runs).

docs/method.md section 4, "Uncertainty". A map is fitted to one set of seeds; another
set of seeds of the same experiment could have given another number of states,
other states or other edges. The bootstrap estimates how likely that is by
treating the runs as the sample: every resample draws the runs with
replacement and goes through the same sweep and selection as the main fit
(:class:`analysis.model.StateSelector`, so any change to the selection applies
here too). Each resample's map is the one its own selection picks (or, when the user
gave the main fit's n, the map with that n). From the resamples we report

* the distribution of the selected n;
* for each state of the main fit's map (the reference map), the share of
  resamples whose map has a matching state (states matched one-to-one by
  their means with :func:`scipy.optimize.linear_sum_assignment`, see
  :func:`match_states`): a state that only the main fit's n has, or that
  another set of runs would place elsewhere, scores low;
* for each edge j -> k of the reference map, the share of resamples whose
  decoded paths go from the state matching j to the state matching k;
* for each state, the share of resamples in which the detour test
  (:func:`analysis.evidence.detour_tests`) flags its matching state.

Choices, and why:

* Runs are resampled within the main fit's train and held-out sets
  (a stratified bootstrap): a run drawn twice never lands on both sides of the
  split, which would score a model on its own training data, and every
  resample has as many train and held-out runs as the main fit.
* The features keep the main fit's scaling. Re-scaling each resample would
  move every state's mean with the resample, and means are what states are
  matched by.
* The sweep of a resample stops at ``n + span`` (``span=2`` by default; never
  above the largest n the main fit tried) and is never extended past it: the
  largest n cost the most, and resamples selecting that ceiling are counted in
  ``message``.
* Every restart starts from k-means, as in the main fit, never from the
  reference model: a start at the reference would keep EM in the reference's
  basin and overstate stability. ``restarts`` may be fewer than the main
  fit's to save time; fewer restarts can only add spread, so the reported
  stability errs low rather than high.
* Fewer than :data:`MIN_RUNS` runs: the bootstrap is skipped with a message.

Torch-free, like the rest of ``analysis``.
"""

from __future__ import annotations

import sys
import time
from collections.abc import Sequence

import numpy as np

from trainmap.analysis.settings import DEFAULT_RESAMPLES

# The fewest runs whose default 20% held-out split holds two runs
# (round(0.2 * 8) = 2). With one held-out run, every resample scores its models
# on that same run, so the part of the selection's variation that comes from
# the held-out runs is not resampled at all. With 8 runs there are
# C(11, 6) * C(3, 2) = 1386 distinct resamples, far more than the 50 drawn.
MIN_RUNS = 8
DEFAULT_SPAN = 2


def not_enough_runs(n_runs: int) -> str:
    return f"not enough runs to tell: {n_runs} runs, need >= {MIN_RUNS}"


def match_thresholds(reference_means: np.ndarray) -> np.ndarray:
    """Per reference state, the largest distance at which a state still matches it.

    Half the distance from the state to its nearest other reference state: a
    mean within it is nearer to this state than to any other (triangle
    inequality), so a match cannot be a neighbour in disguise. The threshold
    is in the units of the features (z units) and scales with how far apart
    the reference states are, so it means the same on any experiment. With one
    state there is no neighbour and the state always matches.
    """
    means = np.asarray(reference_means, dtype=float)
    if len(means) < 2:
        return np.full(len(means), np.inf)
    distances = np.linalg.norm(means[:, None, :] - means[None, :, :], axis=-1)
    np.fill_diagonal(distances, np.inf)
    return 0.5 * distances.min(axis=1)


def match_states(reference_means: np.ndarray, means: np.ndarray) -> np.ndarray:
    """For each reference state, the index of its matching state in ``means``, or -1.

    States are paired one-to-one by minimum total Euclidean distance between
    means (``linear_sum_assignment``); a pair farther apart than
    :func:`match_thresholds` allows counts as no match.
    """
    from scipy.optimize import linear_sum_assignment

    reference = np.asarray(reference_means, dtype=float)
    means = np.asarray(means, dtype=float)
    match = np.full(len(reference), -1, dtype=int)
    if not len(reference) or not len(means):
        return match
    cost = np.linalg.norm(reference[:, None, :] - means[None, :, :], axis=-1)
    rows, cols = linear_sum_assignment(cost)
    limit = match_thresholds(reference)
    for r, c in zip(rows, cols):
        if cost[r, c] <= limit[r]:
            match[r] = c
    return match


def resample_indices(
    train: Sequence[int], heldout: Sequence[int], seed: int, index: int
) -> tuple[np.ndarray, np.ndarray]:
    """Resample ``index``: train and held-out runs each drawn with replacement from their own set."""
    rng = np.random.default_rng([seed, index])
    train_draw = rng.choice(np.asarray(train, dtype=int), size=len(train), replace=True)
    held_draw = (
        rng.choice(np.asarray(heldout, dtype=int), size=len(heldout), replace=True)
        if len(heldout)
        else np.empty(0, dtype=int)
    )
    return train_draw, held_draw


def _stack(X_runs, which):
    if not len(which):
        return np.empty((0, X_runs[0].shape[1])), []
    return np.concatenate([X_runs[i] for i in which]), [len(X_runs[i]) for i in which]


def _one_resample(
    index, X_runs, train, heldout, reference_means, *, n, n_given, seed, selector, convergence
):
    """Fit one resample; return its selected n and what its map has of the reference map.

    The resample's map is the one its own selection picks, or the ``n``-state
    one when the main fit's n was given by the user (the same procedure as the
    main fit). ``found`` tells for each reference state whether the map has a
    matching state; ``transitions`` are the transitions j -> k (j != k) of
    the map's decoded paths of the resampled runs, in reference labels,
    between matched states only; ``detours`` the reference states whose
    matching state the detour test flags on the resampled runs (when
    ``convergence`` = (times, events) per run is given).
    """
    from threadpoolctl import threadpool_limits

    from trainmap.analysis.evidence import detour_tests
    from trainmap.analysis.fitting import make_model
    from trainmap.analysis.model import StateSelector

    train_draw, held_draw = resample_indices(train, heldout, seed, index)
    X, lengths = _stack(X_runs, train_draw)
    X_held, lengths_held = _stack(X_runs, held_draw)
    out = {"index": index, "selected_n": None, "found": [], "transitions": [], "detours": []}
    out["error"] = ""
    try:
        fitted = StateSelector(
            **selector,
            workers=1,
            backend="sequential",
            # A different seed per resample: the same k-means starts on every
            # resample would correlate the resamples' local optima.
            random_state=1000 * (seed + 1) + index,
        ).fit(X, lengths, X_held, lengths_held)
    except ValueError as error:  # every fit failed: counts as finding nothing
        out["error"] = str(error)
        return out
    out["selected_n"] = int(fitted.n_components_)
    used = n if n_given else out["selected_n"]
    arrays = fitted.models_.get(used)
    if arrays is None:
        out["error"] = f"no feasible fit with n={used}"
        return out
    match = match_states(reference_means, arrays["means"])
    out["found"] = (match >= 0).tolist()
    label = np.full(used, -1, dtype=int)  # resample state -> reference label
    label[match[match >= 0]] = np.flatnonzero(match >= 0)
    model = make_model(arrays, selector["covariance_type"])
    draws = np.concatenate([train_draw, held_draw])
    with threadpool_limits(1):
        paths = {run: model.decode(X_runs[run], algorithm="viterbi")[1] for run in set(draws)}
    transitions = set()
    for raw in paths.values():
        path = label[raw]
        moves = (path[:-1] != path[1:]) & (path[:-1] >= 0) & (path[1:] >= 0)
        transitions.update(zip(path[:-1][moves].tolist(), path[1:][moves].tolist()))
    out["transitions"] = sorted(transitions)
    if convergence is not None:
        # The detour test on the resample, as the main map runs it on all runs
        # (a run drawn twice counts twice). Its delay interval is not needed
        # for the verdict, so it gets a single resample of its own.
        times, events = (np.asarray(v)[draws] for v in convergence)
        visits = np.array([np.bincount(paths[run], minlength=used) > 0 for run in draws])
        verdicts = detour_tests(visits, times, events, n_resamples=1)
        out["detours"] = sorted(
            int(label[c])
            for c in range(used)
            if label[c] >= 0 and verdicts[c]["verdict"] == "detour"
        )
    return out


def bootstrap_map(
    X_runs: Sequence[np.ndarray],
    train: Sequence[int],
    heldout: Sequence[int],
    reference_means: np.ndarray,
    reference_edges: Sequence[tuple[int, int]],
    *,
    convergence: tuple[Sequence[float], Sequence[bool]] | None = None,
    n: int,
    n_given: bool = False,
    max_n: int,
    criterion: str,
    restarts: int,
    covariance_type: str = "diag",
    n_iter: int = 100,
    tol: float | None = None,
    n_resamples: int = DEFAULT_RESAMPLES,
    span: int = DEFAULT_SPAN,
    seed: int = 0,
    workers: int = 2,
    backend: str = "loky",
    scheduler: str | None = None,
    progress_bar: bool | None = None,
) -> dict:
    """Resample runs, refit and report the stability of n, states and edges.

    Parameters
    ----------
    X_runs : one (T_i, F) array per run, scaled as in the main fit.
    train, heldout : the main fit's split (indices into ``X_runs``).
    reference_means : (n, F) state means of the main fit's map, in its labels.
    reference_edges : the map's edges (source, target).
    convergence : per run, (convergence epoch or last epoch if censored,
        converged?), for ``detour_stability``; None leaves it empty.
    n : the main fit's selected n; ``n_given``: the user gave it (then every
        resample's map has n states too, else the resample's selection picks).
    max_n : the largest n the main fit tried.
    criterion, restarts, covariance_type, n_iter, tol : as in the main fit
        (``restarts`` may be fewer, see the module docstring).
    n_resamples : number of resamples; ``span`` : resamples sweep n = 1..n+span.
    seed : resample r draws runs with ``default_rng([seed, r])``.
    workers, backend, scheduler : parallelism over resamples, as in
        :func:`analysis.model.run_sweep` ("loky", "dask" with a scheduler
        address, "threading", "sequential").

    Returns the ``FitResult.bootstrap`` dict: n_resamples, seconds, restarts, n_range,
    selected_n_counts, n, criterion, n_given, state_stability, edge_stability,
    detour_stability, message.
    """
    import joblib
    from tqdm.auto import tqdm

    n_runs = len(train) + len(heldout)
    hi = int(min(max_n, n + span))
    out = {
        "n_resamples": 0,
        "seconds": 0.0,
        "restarts": int(restarts),
        "n_range": [1, hi],
        "selected_n_counts": {},
        "n": int(n),
        "criterion": criterion,
        "n_given": bool(n_given),
        "state_stability": {},
        "edge_stability": {},
        "detour_stability": {},
        "message": "",
    }
    if n_runs < MIN_RUNS:
        out["message"] = not_enough_runs(n_runs)
        return out
    if n_resamples < 1:
        raise ValueError(f"n_resamples must be at least 1, got {n_resamples}")
    started = time.perf_counter()
    selector = dict(
        max_states=hi,
        restarts=int(restarts),
        covariance_type=covariance_type,
        criterion=criterion,
        n_iter=n_iter,
        tol=tol,
    )
    reference_means = np.asarray(reference_means, dtype=float)
    job = joblib.delayed(_one_resample)
    X_runs = [np.asarray(x, dtype=float) for x in X_runs]
    calls = [
        job(
            b,
            X_runs,
            list(train),
            list(heldout),
            reference_means,
            n=n,
            n_given=n_given,
            seed=seed,
            selector=selector,
            convergence=convergence,
        )
        for b in range(n_resamples)
    ]
    client = None
    if backend == "dask":
        if not scheduler:
            raise ValueError("backend 'dask' needs a scheduler address (e.g. tcp://host:8786)")
        from dask.distributed import Client

        client = Client(scheduler)
    if progress_bar is None:  # a bar only where someone watches (a terminal)
        progress_bar = sys.stderr.isatty()
    bar = tqdm(total=n_resamples, desc="bootstrap", unit="resample", disable=not progress_bar)
    results = []
    try:
        with joblib.parallel_config(backend=backend):
            parallel = joblib.Parallel(n_jobs=workers, return_as="generator_unordered")
            for done in parallel(calls):
                results.append(done)
                bar.update(1)
    finally:
        bar.close()
        if client is not None:
            client.close()
    results.sort(key=lambda r: r["index"])

    selected = [r["selected_n"] for r in results if r["selected_n"] is not None]
    counts = {str(k): selected.count(k) for k in sorted(set(selected))}
    found, flagged = np.zeros(n), np.zeros(n)
    taken = {edge: 0 for edge in map(tuple, reference_edges)}
    for r in results:
        if r["found"]:
            found += np.asarray(r["found"], dtype=float)
        flagged[r["detours"]] += 1
        seen = set(map(tuple, r["transitions"]))
        for edge in taken:
            taken[edge] += edge in seen
    notes = []
    failed = sum(bool(r["error"]) for r in results)
    if failed:
        notes.append(
            f"{failed} of {n_resamples} resamples had no usable fit: "
            "counted as finding no state and no edge"
        )
    at_top = sum(s == hi for s in selected)
    if at_top and hi > 1:
        notes.append(
            f"{at_top} of {n_resamples} resamples selected n = {hi}, the largest tried in "
            "the bootstrap: their n may be larger"
        )
    out.update(
        n_resamples=int(n_resamples),
        seconds=time.perf_counter() - started,
        selected_n_counts=counts,
        state_stability={str(k): float(found[k] / n_resamples) for k in range(n)},
        edge_stability={f"{j}->{k}": float(c / n_resamples) for (j, k), c in taken.items()},
        detour_stability={}
        if convergence is None
        else {str(k): float(flagged[k] / n_resamples) for k in range(n)},
        message="; ".join(notes),
    )
    return out
