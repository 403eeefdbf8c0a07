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
from collections.abc import Callable

import numpy as np

from trainmap.analysis.bootstrap import bootstrap_map
from trainmap.analysis.maps import build_map, convergence_epoch
from trainmap.analysis.model import (
    CRITERIA,
    MAX_STATES_CAP,
    StateSelector,
    describe_selection,
    select_n,
)
from trainmap.analysis.prepare import Prepared, prepare_experiment, runs_needed_for_heldout
from trainmap.analysis.result import FitResult
from trainmap.analysis.settings import FitSettings, settings_from

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


def _bootstrap(
    result: FitResult, prepared: Prepared, models: dict, settings: FitSettings, n_resamples: int
) -> dict:
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
        criterion=settings.criterion,
        covariance_type=settings.cov,
        restarts=min(int(settings.restarts), BOOTSTRAP_RESTARTS),
        n_iter=settings.n_iter,
        tol=settings.tol,
        n_resamples=n_resamples,
        seed=settings.seed,
        workers=settings.workers,
        backend=settings.backend,
        scheduler=settings.scheduler,
    )


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
    settings: FitSettings | None = None,
    *,
    experiment: str = "",
    fingerprint: str = "",
    progress: Callable[[float], None] | None = None,
    params: dict | None = None,
    **changes,
) -> tuple[FitResult, dict[int, dict]]:
    """Sweep, select and map already prepared runs; return the result and canonical arrays.

    ``settings`` (a :class:`FitSettings`) with keyword ``changes`` (its field
    names, e.g. ``max_states=5``) say what to fit; the preparation fields
    (features, normalize, first_n) were already applied to ``prepared``, and
    ``heldout`` is the share the runs were split with (for the message when too
    few runs left none held out). When the criterion picks ``max_states``, the
    sweep is extended one n at a time up to ``max_states_cap`` (see
    StateSelector's ``extend_to``). ``bootstrap`` resamples of the runs measure
    how stable the selected n, the states and the edges are
    (``result.bootstrap``; 0 = off, the default here because studies and
    benchmarks fit many experiments; :func:`fit_experiment` asks for
    ``DEFAULT_RESAMPLES``); see :mod:`analysis.bootstrap`.
    """
    if settings is None:
        settings = FitSettings(bootstrap=0)
    s = settings_from(settings, changes).validate()
    X, lengths = prepared.stack(prepared.train)
    X_held, lengths_held = prepared.stack(prepared.heldout)
    selector = StateSelector(
        max_states=s.max_states,
        restarts=s.restarts,
        covariance_type=s.cov,
        criterion=s.criterion,
        n_iter=s.n_iter,
        tol=s.tol,
        workers=s.workers,
        backend=s.backend,
        scheduler=s.scheduler,
        random_state=s.seed,
        progress=progress,
        extend_to=s.max_states_cap,
    ).fit(X, lengths, X_held, lengths_held)
    convergence = {
        name: convergence_epoch(epochs, acc, s.threshold)
        for name, epochs, acc in zip(prepared.run_names, prepared.epochs, prepared.accuracy)
    }
    maps, canonical = {}, {}
    for n, arrays in selector.models_.items():
        maps[n], canonical[n] = build_map(
            arrays,
            s.cov,
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
        s.criterion,
        s.n_states,
        max_states=s.max_states,
        cap=s.max_states_cap,
        heldout_runs=len(prepared.heldout),
        runs_needed=runs_needed_for_heldout(s.heldout),
    )
    # Uncertainty by resampling runs, after (and apart from) the selection above.
    if s.bootstrap:
        result.bootstrap = _bootstrap(result, prepared, canonical, s, s.bootstrap)
    return result, canonical


def fit_experiment(
    root: str | os.PathLike,
    experiment: str,
    settings: FitSettings | None = None,
    *,
    progress: Callable[[float], None] | None = None,
    refit: bool = False,
    **changes,
) -> FitResult:
    """Fit HMMs over the runs of ``root/experiment`` (or load the saved fit).

    What to fit is a :class:`analysis.settings.FitSettings` (default: its
    defaults), changed by keyword arguments with its field names, e.g.
    ``fit_experiment("runs", "modadd", max_states=6)``:

    Parameters
    ----------
    root, experiment : where the runs are (``ROOT/EXPERIMENT/RUN``).
    features : metric columns to model (default: the 14 paper features present).
    max_states : sweep n = 1..max_states.
    max_states_cap : when the criterion picks max_states itself, the sweep goes
        on one n at a time up to this many states (docs/selection.md, "Ceiling").
    restarts : random restarts per n; the best (held-out log-likelihood) is kept.
    cov : "diag" or "full" covariance.
    criterion : how n is selected: "auto" (default: icl on short runs, icl_ess
        on long ones), "icl_ess", "bic_ess", "icl", "bic_best", "bic_mean" (the
        paper), "aic_best" or "heldout_ll"; see docs/selection.md for which works.
    normalize : "pooled" or "per_run" z-scoring (the paper: per_run).
    n_states : use this n instead of the criterion's choice (must be feasible).
    workers : parallel fits (joblib ``n_jobs``; -1 = all cores).
    backend : "loky" (local processes), "dask" (needs ``scheduler``),
        "threading" or "sequential".
    scheduler : dask.distributed scheduler address, e.g. "tcp://10.0.0.5:8786".
    seed : seed of the train/held-out split and of the restarts.
    first_n : use only the first N checkpoints of every run.
    heldout : fraction of runs held out for selection (split by run, not row).
    n_iter, tol : EM iterations and tolerance per fit (``tol=None``: stop when an
        iteration gains less than 1e-4 nats per train checkpoint).
    threshold : eval_acc that counts as converged (for convergence epochs).
    bootstrap : resamples of the runs that measure how stable the selected n,
        each state and each edge are (``result.bootstrap``, see
        :mod:`analysis.bootstrap`); 0 = off. It does not change the sweep or
        the maps, so it is not part of the saved fit's key: a saved fit
        without a current bootstrap gets one computed and saved with it.
    progress : called with the fraction of fits done (0..1), e.g. by the
        dashboard's background job; 1.0 is reported also for a loaded fit.
    refit : ignore a saved fit and compute again.

    The criterion and ``n_states`` only choose among the saved maps, so
    changing them never refits. Raises ValueError (with a message for the user)
    for bad settings (:meth:`FitSettings.validate`), unusable runs or a sweep in
    which every fit failed; TypeError for a name that is not a setting.
    """
    from trainmap.analysis import store
    from trainmap.trainer import rundir

    s = settings_from(settings, changes).validate()
    key_params = s.key_params()
    # The fingerprint is taken before reading: if a run changes during the fit,
    # the saved fit is keyed by the old state and the next request refits.
    runs_fingerprint = rundir.experiment_fingerprint(root, experiment)

    def prepare() -> Prepared:
        return prepare_experiment(
            root,
            experiment,
            features=s.features,
            first_n=s.first_n,
            normalize=s.normalize,
            heldout=s.heldout,
            seed=s.seed,
        )

    key = store.fit_key(runs_fingerprint, key_params)
    if not refit:
        found = store.find_fit(root, experiment, key)
        if found is not None:
            if progress is not None:
                progress(1.0)
            result = _choose(found[0], s.criterion, s.n_states)
            result.loaded = True
            # The bootstrap depends on the n and the criterion, which a request
            # may change without refitting: compute it if none is saved for them.
            result.bootstrap = _saved_bootstrap(root, experiment, key, result)
            saved = result.bootstrap.get("n_resamples")
            if s.bootstrap and saved not in (s.bootstrap, 0):  # 0: too few runs, any count
                result.bootstrap = _bootstrap(result, prepare(), found[1], s, s.bootstrap)
                store.save_bootstrap(root, experiment, key, result.bootstrap)
            return result
    started = time.perf_counter()
    prepared = prepare()
    result, canonical = fit_prepared(
        prepared, s, experiment=experiment, fingerprint=key, progress=progress, params=key_params
    )
    extra = {
        "runs_fingerprint": runs_fingerprint,
        "seconds": time.perf_counter() - started,
        "scaling": {
            "normalize": prepared.normalize,
            "center": prepared.center.tolist() if s.normalize == "pooled" else None,
            "scale": prepared.scale.tolist() if s.normalize == "pooled" else None,
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
    settings: FitSettings | None = None,
    **changes,
) -> FitResult | None:
    """The saved fit for exactly these settings and the runs as they are now, or None.

    Takes the same settings as :func:`fit_experiment`; names that are not
    settings (e.g. in a saved fit's ``params``) are ignored. Never computes: a
    changed run, or settings never fitted, give None.
    """
    from trainmap.analysis import store
    from trainmap.trainer import rundir

    s = settings_from(settings, changes, ignore_unknown=True)
    key = store.fit_key(rundir.experiment_fingerprint(root, experiment), s.key_params())
    return _load_saved(root, experiment, key, s)


def _load_saved(root, experiment, key: str, s: FitSettings) -> FitResult | None:
    """The saved fit ``key`` with n chosen as ``s`` asks and its bootstrap, or None."""
    from trainmap.analysis import store

    found = store.find_fit(root, experiment, key)
    if found is None:
        return None
    result = _choose(found[0], s.criterion, s.n_states)
    result.loaded = True
    result.bootstrap = _saved_bootstrap(root, experiment, key, result)
    return result


def list_fits(root: str | os.PathLike, experiment: str) -> list[dict]:
    """Saved fits of an experiment, newest first.

    Each is a dict with ``key``, ``created_at``, ``params``, ``selected_n`` (by
    the criterion it was fitted with), ``feasible_n``, ``n_runs``, ``path`` and
    ``current`` (True if the runs have not changed since the fit).

    A run the fit never saw that is still being written does not make the fit
    outdated: such a run is what predictions are for (``analysis.predict``), and
    fitting it half-trained is not what a refit should do. Once it has finished
    (or stopped), a refit would include it, so the fit is no longer current.
    """
    from trainmap.analysis import store
    from trainmap.trainer import rundir

    now = rundir.experiment_fingerprint(root, experiment)
    fits = store.list_saved(root, experiment)
    for fit in fits:
        saved = fit.pop("runs_fingerprint")
        fit["current"] = saved == now or saved == _fingerprint_without_new_running_runs(
            root, experiment, fit
        )
    return fits


def _fingerprint_without_new_running_runs(root, experiment, fit: dict) -> str | None:
    from trainmap.analysis import store
    from trainmap.trainer import rundir

    seen = store.run_names_at_fit(fit)
    if seen is None:
        return None
    new = set(rundir.run_folder_names(root, experiment)) - set(seen)
    if not new or any(rundir.run_status(root, experiment, run) != "running" for run in new):
        return None
    return rundir.experiment_fingerprint(root, experiment, ignore=new)


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
        if candidate["current"]:  # by its key: a new run still training leaves it current
            settings = settings_from(None, candidate["params"], ignore_unknown=True)
            fit = _load_saved(root, experiment, candidate["key"], settings)
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
