"""The functions the CLI and the dashboard call (the dashboard never re-implements analysis).

* :func:`fit_experiment` fits (or loads from the store) a sweep of HMMs over an
  experiment's runs and returns a :class:`analysis.result.FitResult` with a
  training map for every feasible n;
* :func:`load_fit` returns the saved fit for the same request, or None; it
  never computes;
* :func:`latest_fit` returns the fit to show for an experiment (the newest
  saved one, marked ``stale`` if the runs changed since), or None; it never
  computes;
* :func:`list_fits` lists the saved fits of an experiment;
* :func:`fit_prepared` does the work on already prepared data (synthetic
  studies, benchmarks).

This module must not import torch (tested).
"""

from __future__ import annotations

import os
import time
from collections.abc import Callable, Sequence

import numpy as np

from trainmap.analysis.bootstrap import DEFAULT_RESAMPLES, bootstrap_map
from trainmap.analysis.maps import build_map, convergence_epoch
from trainmap.analysis.model import (
    COVARIANCE_TYPES,
    CRITERIA,
    DEFAULT_CRITERION,
    MAX_STATES_CAP,
    StateSelector,
    describe_selection,
    select_n,
)
from trainmap.analysis.prepare import (
    DEFAULT_NORMALIZE,
    NORMALIZATIONS,
    Prepared,
    prepare_experiment,
    runs_needed_for_heldout,
)
from trainmap.analysis.result import FitResult

BACKENDS = ("loky", "dask", "threading", "sequential")


def _key_params(
    *,
    features,
    first_n,
    normalize,
    cov,
    max_states,
    restarts,
    seed,
    heldout,
    n_iter,
    tol,
    threshold,
    max_states_cap=MAX_STATES_CAP,
) -> dict:
    """The parameters that change the fitted models or maps (criterion and n do not)."""
    return {
        "max_states_cap": int(max_states_cap),
        "features": None if features is None else list(features),
        "first_n": first_n,
        "normalize": normalize,
        "cov": cov,
        "max_states": int(max_states),
        "restarts": int(restarts),
        "seed": int(seed),
        "heldout": float(heldout),
        "n_iter": int(n_iter),
        "tol": None if tol is None else float(tol),
        "threshold": float(threshold),
    }


def _check(params: dict, criterion: str, n_states, backend: str, scheduler, workers) -> None:
    """Reject bad parameters up front with a message a user can act on."""
    if params["normalize"] not in NORMALIZATIONS:
        raise ValueError(f"normalize must be one of {NORMALIZATIONS}, got {params['normalize']!r}")
    if params["cov"] not in COVARIANCE_TYPES:
        raise ValueError(f"cov must be one of {COVARIANCE_TYPES}, got {params['cov']!r}")
    if criterion not in CRITERIA:
        raise ValueError(f"criterion must be one of {sorted(CRITERIA)}, got {criterion!r}")
    if params["max_states"] < 1 or params["restarts"] < 1:
        raise ValueError("max_states and restarts must be at least 1")
    # A sweep extended past max_states (the ceiling guardrail) has maps up to the cap.
    most = max(params["max_states"], params["max_states_cap"])
    if n_states is not None and not 1 <= int(n_states) <= most:
        raise ValueError(f"n_states must be between 1 and {most} (max_states or its cap)")
    if not 0 <= params["heldout"] < 1:
        raise ValueError("heldout must be in [0, 1)")
    if backend not in BACKENDS:
        raise ValueError(f"backend must be one of {BACKENDS}, got {backend!r}")
    if backend == "dask" and not scheduler:
        raise ValueError("backend 'dask' needs a scheduler address (e.g. tcp://127.0.0.1:8786)")
    if int(workers) == 0:
        raise ValueError("workers must be non-zero (-1 means all cores)")


# FitResult.warnings written by _choose start with this, so that choosing again
# (another criterion on a loaded fit) replaces them.
SELECTION_WARNING = "selection: "


def _choose(
    result: FitResult,
    criterion: str,
    n_states,
    *,
    max_states: int | None = None,
    cap: int | None = None,
    heldout_runs: int | None = None,
    runs_needed: int | None = None,
) -> FitResult:
    """Set the selected n for this request (a loaded fit may have been saved for another).

    Also fills ``result.selection`` (how n was chosen, in words and numbers)
    and, when the criterion's n is the largest feasible one, a warning. Values
    not given come from the saved selection or parameters of the fit.
    """
    before, params = result.selection or {}, result.params
    max_states = int(max_states or before.get("max_states") or params.get("max_states") or 8)
    cap = int(cap or before.get("cap") or params.get("max_states_cap") or MAX_STATES_CAP)
    if heldout_runs is None:
        heldout_runs = before.get("heldout_runs")
    if runs_needed is None:
        runs_needed = runs_needed_for_heldout(float(params.get("heldout", 0.2)))
    used, note = criterion, ""
    column = CRITERIA[criterion][0]
    if column not in result.sweep or not result.sweep[column].notna().any():
        # A fit saved before the residual autocorrelation was recorded.
        used = "icl" if criterion == "auto" else criterion.removesuffix("_ess")
        note = f"{criterion} needs a refit (this fit predates it): selected by {used}"
    if n_states is not None:
        if int(n_states) not in result.maps:
            raise ValueError(
                f"n_states={n_states} is infeasible for this experiment; "
                f"feasible: {sorted(result.maps)}"
            )
        result.selected_n = int(n_states)
    else:
        result.selected_n = select_n(result.sweep, used)
    selection = describe_selection(
        result.sweep,
        used,
        result.selected_n,
        max_states=max_states,
        cap=cap,
        given=n_states is not None,
        heldout_runs=heldout_runs,
        n_runs=len(result.runs),
        runs_needed=runs_needed,
    )
    if note:
        selection["notes"].insert(0, note)
        selection["message"] = f"{selection['message']}; {note}"
    result.selection = selection
    result.warnings = [w for w in result.warnings if not w.startswith(SELECTION_WARNING)]
    if selection["at_ceiling"]:
        result.warnings.append(SELECTION_WARNING + selection["warning"])
    result.params = {**result.params, "criterion": criterion, "n_states": n_states}
    return result


# ------------------------------------------------------------------ bootstrap

# Restarts per n inside each bootstrap resample (at most the main fit's). Fewer
# restarts can only add spread to the resamples, so stability errs low; on the
# demo's shape a resample costs 0.24 CPU s with 3 against 0.35 with the CLI's 5
# (bench/hmm.py).
BOOTSTRAP_RESTARTS = 3


def _bootstrap(result: FitResult, prepared: Prepared, models: dict, **kwargs) -> dict:
    """The bootstrap of ``result``'s selected map (:func:`analysis.bootstrap.bootstrap_map`)."""
    n = result.selected_n
    training_map = result.map(n)
    # Convergence as the map's detour test sees it: censored runs at their last epoch.
    epoch = [training_map.convergence_epoch.get(run) for run in prepared.run_names]
    times = [e[-1] if c is None else c for c, e in zip(epoch, prepared.epochs)]
    events = [c is not None for c in epoch]
    return bootstrap_map(
        prepared.X,
        prepared.train,
        prepared.heldout,
        np.asarray(models[n]["means"]),
        [(e.source, e.target) for e in training_map.edges],
        convergence=(np.asarray(times, dtype=float), np.asarray(events, dtype=bool)),
        n=n,
        n_given=result.params.get("n_states") is not None,
        max_n=int(result.sweep["n"].max()),
        criterion=kwargs.pop("criterion"),
        covariance_type=kwargs.pop("cov"),
        restarts=min(int(kwargs.pop("restarts")), BOOTSTRAP_RESTARTS),
        **kwargs,
    )


def _check_bootstrap(bootstrap) -> None:
    if int(bootstrap) < 0:
        raise ValueError(f"bootstrap must be 0 (off) or a number of resamples, got {bootstrap}")


def _saved_bootstrap(root, experiment, key: str, result: FitResult) -> dict:
    """The saved bootstrap for this result's criterion, n and way of choosing n ({} if none).

    One is saved in the fit itself (for the request that made the fit); those
    computed later, e.g. for another n, are saved beside it and win.
    """
    from trainmap.analysis import store

    request = {
        "criterion": result.params.get("criterion"),
        "n": result.selected_n,
        "n_given": result.params.get("n_states") is not None,
    }
    found = store.find_bootstrap(root, experiment, key, request)
    if found is not None:
        return found
    if result.bootstrap and store.bootstrap_key(result.bootstrap) == store.bootstrap_key(request):
        return result.bootstrap
    return {}


def fit_prepared(
    prepared: Prepared,
    *,
    experiment: str = "",
    fingerprint: str = "",
    max_states: int = 8,
    restarts: int = 5,
    cov: str = "diag",
    criterion: str = DEFAULT_CRITERION,
    n_states: int | None = None,
    n_iter: int = 100,
    tol: float | None = None,
    threshold: float = 0.9,
    workers: int = 2,
    backend: str = "loky",
    scheduler: str | None = None,
    progress: Callable[[float], None] | None = None,
    seed: int = 0,
    params: dict | None = None,
    max_states_cap: int = MAX_STATES_CAP,
    heldout: float = 0.2,
    bootstrap: int = 0,
) -> tuple[FitResult, dict[int, dict]]:
    """Sweep, select and map already prepared runs; return the result and canonical arrays.

    When the criterion picks ``max_states``, the sweep is extended one n at a
    time up to ``max_states_cap`` (see StateSelector's ``extend_to``);
    ``heldout`` is the share the runs were split with (for the message when
    too few runs left none held out). ``bootstrap`` resamples of the runs
    measure how stable the selected n, the states and the edges are
    (``result.bootstrap``; 0 = off, the default here because studies and
    benchmarks fit many experiments; :func:`fit_experiment` asks for
    ``DEFAULT_RESAMPLES``); see :mod:`analysis.bootstrap`.
    """
    _check_bootstrap(bootstrap)
    X, lengths = prepared.stack(prepared.train)
    X_held, lengths_held = prepared.stack(prepared.heldout)
    selector = StateSelector(
        max_states=max_states,
        restarts=restarts,
        covariance_type=cov,
        criterion=criterion,
        n_iter=n_iter,
        tol=tol,
        workers=workers,
        backend=backend,
        scheduler=scheduler,
        random_state=seed,
        progress=progress,
        extend_to=max_states_cap,
    ).fit(X, lengths, X_held, lengths_held)
    convergence = {
        name: convergence_epoch(epochs, acc, threshold)
        for name, epochs, acc in zip(prepared.run_names, prepared.epochs, prepared.accuracy)
    }
    maps, canonical = {}, {}
    for n, arrays in selector.models_.items():
        maps[n], canonical[n] = build_map(
            arrays,
            cov,
            prepared.run_names,
            prepared.X,
            prepared.epochs,
            prepared.feature_names,
            convergence,
        )
    result = FitResult(
        experiment=experiment,
        fingerprint=fingerprint,
        params=dict(params or {}),
        feature_names=list(prepared.feature_names),
        runs=list(prepared.run_names),
        excluded_runs=dict(prepared.excluded),
        sweep=selector.sweep_,
        selected_n=selector.n_components_,
        maps=maps,
        warnings=list(prepared.warnings),
    )
    result = _choose(
        result,
        criterion,
        n_states,
        max_states=max_states,
        cap=max_states_cap,
        heldout_runs=len(prepared.heldout),
        runs_needed=runs_needed_for_heldout(heldout),
    )
    # Uncertainty by resampling runs, after (and apart from) the selection above.
    if bootstrap:
        result.bootstrap = _bootstrap(
            result,
            prepared,
            canonical,
            n_resamples=bootstrap,
            restarts=restarts,
            cov=cov,
            criterion=criterion,
            n_iter=n_iter,
            tol=tol,
            seed=seed,
            workers=workers,
            backend=backend,
            scheduler=scheduler,
        )
    return result, canonical


def fit_experiment(
    root: str | os.PathLike,
    experiment: str,
    *,
    features: Sequence[str] | None = None,
    max_states: int = 8,
    restarts: int = 5,
    cov: str = "diag",
    criterion: str = DEFAULT_CRITERION,
    normalize: str = DEFAULT_NORMALIZE,
    n_states: int | None = None,
    workers: int = 2,
    backend: str = "loky",
    scheduler: str | None = None,
    progress: Callable[[float], None] | None = None,
    seed: int = 0,
    first_n: int | None = None,
    heldout: float = 0.2,
    n_iter: int = 100,
    tol: float | None = None,
    threshold: float = 0.9,
    refit: bool = False,
    max_states_cap: int = MAX_STATES_CAP,
    bootstrap: int = DEFAULT_RESAMPLES,
) -> FitResult:
    """Fit HMMs over the runs of ``root/experiment`` (or load the saved fit).

    Parameters
    ----------
    root, experiment : where the runs are (``ROOT/EXPERIMENT/RUN``).
    features : metric columns to model (default: the 14 paper features present).
    max_states : sweep n = 1..max_states.
    max_states_cap : when the criterion picks max_states itself, the sweep goes
        on one n at a time up to this many states (docs/selection.md, "Ceiling").
    restarts : random restarts per n; the best (held-out log-likelihood) is kept.
    cov : "diag" or "full" covariance.
    criterion : how n is selected: "icl_ess" (default), "bic_ess", "icl",
        "bic_best", "bic_mean" (the paper), "aic_best" or "heldout_ll"; see
        docs/selection.md for which works.
    normalize : "pooled" or "per_run" z-scoring (the paper: per_run).
    n_states : use this n instead of the criterion's choice (must be feasible).
    workers : parallel fits (joblib ``n_jobs``; -1 = all cores).
    backend : "loky" (local processes), "dask" (needs ``scheduler``),
        "threading" or "sequential".
    scheduler : dask.distributed scheduler address, e.g. "tcp://10.0.0.5:8786".
    progress : called with the fraction of fits done (0..1), e.g. by the
        dashboard's background job; 1.0 is reported also for a loaded fit.
    seed : seed of the train/held-out split and of the restarts.
    first_n : use only the first N checkpoints of every run.
    heldout : fraction of runs held out for selection (split by run, not row).
    n_iter, tol : EM iterations and tolerance per fit (``tol=None``: stop when an
        iteration gains less than 1e-4 nats per train checkpoint).
    threshold : eval_acc that counts as converged (for convergence epochs).
    refit : ignore a saved fit and compute again.
    bootstrap : resamples of the runs that measure how stable the selected n,
        each state and each edge are (``result.bootstrap``, see
        :mod:`analysis.bootstrap`); 0 = off. It does not change the sweep or
        the maps, so it is not part of the saved fit's key: a saved fit
        without a current bootstrap gets one computed and saved with it.

    The criterion and ``n_states`` only choose among the saved maps, so
    changing them never refits. Raises ValueError (with a message for the user)
    for bad parameters, unusable runs or a sweep in which every fit failed.
    """
    from trainmap.analysis import store
    from trainmap.trainer import rundir

    key_params = _key_params(
        features=features,
        first_n=first_n,
        normalize=normalize,
        cov=cov,
        max_states=max_states,
        restarts=restarts,
        seed=seed,
        heldout=heldout,
        n_iter=n_iter,
        tol=tol,
        threshold=threshold,
        max_states_cap=max_states_cap,
    )
    _check(key_params, criterion, n_states, backend, scheduler, workers)
    _check_bootstrap(bootstrap)
    # The fingerprint is taken before reading: if a run changes during the fit,
    # the saved fit is keyed by the old state and the next request refits.
    runs_fingerprint = rundir.experiment_fingerprint(root, experiment)
    # What both the sweep and the bootstrap over runs are fitted with.
    settings = dict(
        restarts=restarts,
        cov=cov,
        criterion=criterion,
        n_iter=n_iter,
        tol=tol,
        seed=seed,
        workers=workers,
        backend=backend,
        scheduler=scheduler,
    )

    def prepare() -> Prepared:
        return prepare_experiment(
            root,
            experiment,
            features=features,
            first_n=first_n,
            normalize=normalize,
            heldout=heldout,
            seed=seed,
        )

    key = store.fit_key(runs_fingerprint, key_params)
    if not refit:
        found = store.find_fit(root, experiment, key)
        if found is not None:
            if progress is not None:
                progress(1.0)
            result = _choose(found[0], criterion, n_states)
            result.loaded = True
            # The bootstrap depends on the n and the criterion, which a request
            # may change without refitting: compute it if none is saved for them.
            result.bootstrap = _saved_bootstrap(root, experiment, key, result)
            saved = result.bootstrap.get("n_resamples")
            if bootstrap and saved not in (bootstrap, 0):  # 0: too few runs, any count
                result.bootstrap = _bootstrap(
                    result, prepare(), found[1], n_resamples=bootstrap, **settings
                )
                store.save_bootstrap(root, experiment, key, result.bootstrap)
            return result
    started = time.perf_counter()
    prepared = prepare()
    result, canonical = fit_prepared(
        prepared,
        experiment=experiment,
        fingerprint=key,
        max_states=max_states,
        n_states=n_states,
        threshold=threshold,
        progress=progress,
        params=key_params,
        **settings,
        max_states_cap=max_states_cap,
        heldout=heldout,
        bootstrap=bootstrap,
    )
    extra = {
        "runs_fingerprint": runs_fingerprint,
        "seconds": time.perf_counter() - started,
        "scaling": {
            "normalize": prepared.normalize,
            "center": prepared.center.tolist() if normalize == "pooled" else None,
            "scale": prepared.scale.tolist() if normalize == "pooled" else None,
        },
        "split": {
            "train": [prepared.run_names[i] for i in prepared.train],
            "heldout": [prepared.run_names[i] for i in prepared.heldout],
        },
    }
    scaling = {"center": prepared.center, "scale": prepared.scale}
    store.save_fit(root, experiment, result, {**canonical, 0: scaling}, extra)
    return result


def load_fit(
    root: str | os.PathLike,
    experiment: str,
    *,
    features: Sequence[str] | None = None,
    max_states: int = 8,
    restarts: int = 5,
    cov: str = "diag",
    criterion: str = DEFAULT_CRITERION,
    normalize: str = DEFAULT_NORMALIZE,
    n_states: int | None = None,
    seed: int = 0,
    first_n: int | None = None,
    heldout: float = 0.2,
    n_iter: int = 100,
    tol: float | None = None,
    threshold: float = 0.9,
    max_states_cap: int = MAX_STATES_CAP,
    **_ignored,
) -> FitResult | None:
    """The saved fit for exactly this request and the runs as they are now, or None.

    Takes the same parameters as :func:`fit_experiment` (execution-only ones such
    as ``workers`` or ``backend`` are accepted and ignored). Never computes: a
    changed run, or parameters never fitted, give None.
    """
    from trainmap.analysis import store
    from trainmap.trainer import rundir

    key_params = _key_params(
        features=features,
        first_n=first_n,
        normalize=normalize,
        cov=cov,
        max_states=max_states,
        restarts=restarts,
        seed=seed,
        heldout=heldout,
        n_iter=n_iter,
        tol=tol,
        threshold=threshold,
        max_states_cap=max_states_cap,
    )
    key = store.fit_key(rundir.experiment_fingerprint(root, experiment), key_params)
    found = store.find_fit(root, experiment, key)
    if found is None:
        return None
    result = _choose(found[0], criterion, n_states)
    result.loaded = True
    result.bootstrap = _saved_bootstrap(root, experiment, key, result)
    return result


def list_fits(root: str | os.PathLike, experiment: str) -> list[dict]:
    """Saved fits of an experiment, newest first.

    Each is a dict with ``key``, ``created_at``, ``params``, ``selected_n`` (by
    the criterion it was fitted with), ``feasible_n``, ``n_runs``, ``path`` and
    ``current`` (True if the runs have not changed since the fit).
    """
    from trainmap.analysis import store
    from trainmap.trainer import rundir

    now = rundir.experiment_fingerprint(root, experiment)
    fits = store.list_saved(root, experiment)
    for fit in fits:
        fit["current"] = fit.pop("runs_fingerprint") == now
    return fits


def latest_fit(root: str | os.PathLike, experiment: str) -> FitResult | None:
    """The fit to show for ``root/experiment``, or None if it has no saved fit; never computes.

    The newest saved fit whose runs are unchanged, loaded with the parameters it
    was made with (``trainmap fit`` options included); failing that the newest
    readable saved fit with ``stale=True``: the runs changed since (e.g. still
    training), so the dashboard and ``trainmap compare`` can say so.
    """
    from trainmap.analysis import store

    saved = list_fits(root, experiment)
    for candidate in saved:
        if candidate["current"]:
            fit = load_fit(root, experiment, **candidate["params"])
            if fit is not None:
                return fit
    for candidate in saved:
        found = store.find_fit(root, experiment, candidate["key"])
        if found is not None:
            fit = found[0]
            fit.loaded = fit.stale = True
            return fit
    return None


def model_arrays(root, experiment, result: FitResult, n: int | None = None) -> dict | None:
    """Canonical model arrays (startprob, transmat, means, covars) of a saved fit."""
    from trainmap.analysis import store

    found = store.read_fit(store.fits_dir(root, experiment) / result.fingerprint)
    if found is None:
        return None
    n = result.selected_n if n is None else int(n)
    arrays = found[1].get(n)
    return None if arrays is None else {k: np.asarray(v) for k, v in arrays.items()}


def state_names(root: str | os.PathLike, experiment: str, fit_key: str, n: int) -> dict[int, str]:
    """The names users gave the states of the ``n``-state map of a saved fit ({} if none)."""
    from trainmap.analysis import store

    return store.read_state_names(root, experiment, fit_key).get(int(n), {})


def rename_state(
    root: str | os.PathLike, experiment: str, fit_key: str, n: int, state: int, name: str
) -> str:
    """Name state ``state`` of the ``n``-state map of a saved fit; "" removes the name.

    The name is checked (``analysis.captions.clean_state_name``: at most 40
    characters, no control characters) and stored next to the fit. Returns the
    cleaned name. Raises ``StateNameError`` for a bad name or an unknown fit, n or state.
    """
    from trainmap.analysis import store
    from trainmap.analysis.captions import StateNameError, clean_state_name

    name = clean_state_name(name)
    fit = next((f for f in store.list_saved(root, experiment) if f["key"] == fit_key), None)
    if fit is None:
        raise StateNameError(f"experiment {experiment} has no saved fit {fit_key}")
    if int(n) not in fit["feasible_n"]:
        raise StateNameError(f"the fit has no {n}-state map; it has n = {fit['feasible_n']}")
    if not 0 <= int(state) < int(n):
        raise StateNameError(f"the {n}-state map has states 0..{int(n) - 1}, not {state}")
    store.write_state_name(root, experiment, fit_key, int(n), int(state), name)
    return name
