"""Every data load the dashboard does, memoized by content fingerprint.

Pages import their loaders from here and only from here: flask-caching's
memoize keys include the function's module path, so one module means one key
space shared by every page, gunicorn worker and (with Redis) every process.

Each memoized function takes ``(root, experiment, fingerprint, ...)``. The
fingerprint changes whenever a run's files or a saved fit change, so an edit
(a run appending checkpoints, a new fit) makes a new key and stale entries
are simply never asked for again: no explicit invalidation anywhere.

The dashboard parses no files itself: runs come from ``trainer.rundir`` and
fits from ``analysis``. Names that come from a URL are checked here against
what actually exists under the root (``valid_*``), so nothing a user types
can reach a path outside it.
"""

from __future__ import annotations

import threading
import time
from collections import OrderedDict
from dataclasses import asdict
from pathlib import Path

import numpy as np
import pandas as pd
from flask import current_app
from flask_caching import Cache

from trainmap.app import (
    common_figures,
    compare_figures,
    curve_figures,
    evidence,
    map_figures,
    prediction_figures,
    runs_figures,
    selection_figures,
    strip_figures,
)
from trainmap.trainer import rundir

cache = Cache()

# Fits for big experiments hold every run's decoded path; unpickling one from
# the shared cache on every request would dominate latency, so each process
# also keeps the last few FitResult objects it used (keyed like the cache).
_LOCAL_FITS: OrderedDict = OrderedDict()
_LOCAL_FITS_SIZE = 3
_LOCAL_LOCK = threading.Lock()

# Set by create_app: the root a background fit (a forked process without
# Flask's app context) works in. Never taken from the browser.
BACKGROUND: dict = {}


def current_root() -> str:
    """The root of experiments this app serves (set by ``create_app``)."""
    return current_app.config["TRAINMAP_ROOT"]


# ----------------------------------------------------------- URL validation


def experiments(root: str) -> list[str]:
    try:
        return rundir.list_experiments(root)
    except (rundir.RunDirError, OSError):
        return []


def valid_experiment(root: str, name: str | None) -> str | None:
    """``name`` if it is an experiment under the root, else None (never raises)."""
    if not name:
        return None
    try:
        rundir.resolve_inside(root, name)
    except rundir.RunDirError:
        return None
    return name if name in experiments(root) else None


def default_experiment(root: str, name: str | None) -> str | None:
    """The experiment asked for if valid, else the first one (None if there are none)."""
    valid = valid_experiment(root, name)
    if valid:
        return valid
    names = experiments(root)
    return names[0] if names else None


def parse_n(value, available: list[int], default: int | None) -> int | None:
    """An n from a URL or a control: an int among ``available``, else ``default``."""
    try:
        n = int(value)
    except (TypeError, ValueError):
        return default
    return n if n in available else default


# ------------------------------------------------------------- fingerprints


def data_fingerprint(root: str, experiment: str) -> str:
    """Changes whenever any run of the experiment changes."""
    return rundir.experiment_fingerprint(root, experiment)


# A page load fires several callbacks at once, each needing the fingerprint,
# which stats two files per run (~25 ms for 400 runs). Each process reuses a
# fingerprint for this many seconds, so changes on disk show up at most this
# much later (the Runs page polls every 3 s anyway).
FINGERPRINT_TTL = 1.0
_FINGERPRINTS: dict[tuple[str, str], tuple[float, str]] = {}


def fingerprint(root: str, experiment: str) -> str:
    """Key for everything derived from runs and fits of one experiment."""
    key = (root, experiment)
    now = time.monotonic()
    cached = _FINGERPRINTS.get(key)
    if cached is not None and now - cached[0] < FINGERPRINT_TTL:
        return cached[1]
    from trainmap import analysis  # where the fits are stored is analysis's business

    value = f"{data_fingerprint(root, experiment)}-{analysis.fits_fingerprint(root, experiment)}"
    _FINGERPRINTS[key] = (now, value)
    return value


# ---------------------------------------------------------------- runs


def run_summaries(root: str, experiment: str, fp: str) -> list[dict]:
    """Every run (broken ones included, with the reason) as plain dicts.

    Like ``rundir.list_runs``. Each summary comes from the run's columnar cache
    (rundir parses only rows appended since), which costs less than a memoized
    entry per run would: 400 of them made a cold runs table write 1200 files.
    """
    exp_path = rundir.experiment_path(root, experiment)
    rows = []
    for child in sorted(exp_path.iterdir()):
        if not child.is_dir() or child.name.startswith("."):
            continue
        rows.append(_run_summary(root, experiment, child.name))
    return rows


def _run_summary(root: str, experiment: str, run: str) -> dict:
    try:
        path = rundir.resolve_inside(root, experiment, run)
    except rundir.RunDirError as error:  # e.g. a symlink that leads outside the root
        summary = rundir.RunSummary(experiment, run, Path(root), rundir.BROKEN, reason=str(error))
    else:
        summary = rundir.summarize_run(path, experiment)
    row = asdict(summary)
    row.pop("meta", None)
    row["path"] = str(row["path"])
    return row


def run_names(root: str, experiment: str, fp: str | None = None) -> list[str]:
    """Names of the run directories of an experiment (a listing, no file is read).

    Pages that need one run's data use this rather than ``run_summaries``:
    summarizing reads every run's metrics, which for hundreds of long runs
    takes minutes on a cold cache. A broken run is found out when it is loaded
    (``load_run_metrics`` returns None).
    """
    try:
        exp_path = rundir.experiment_path(root, experiment)
        return sorted(
            child.name
            for child in exp_path.iterdir()
            if child.is_dir() and not child.name.startswith(".")
        )
    except (rundir.RunDirError, OSError):
        return []


def valid_run(root: str, experiment: str, fp: str, name: str | None) -> str | None:
    """``name`` if it is a readable run of the experiment, else None (never raises)."""
    if not name or name not in run_names(root, experiment):
        return None
    return name if load_run_metrics(root, experiment, name) is not None else None


@cache.memoize()
def run_metrics(root: str, experiment: str, run: str, run_fp: str) -> pd.DataFrame | None:
    """One run's metrics table, or None if the run is broken (never raises)."""
    try:
        return rundir.load_run(root, experiment, run).metrics
    except (rundir.RunDirError, OSError):
        return None


def load_run_metrics(root: str, experiment: str, run: str) -> pd.DataFrame | None:
    """``run_metrics`` keyed by this run's own fingerprint (cheap: two stats)."""
    try:
        path = rundir.run_path(root, experiment, run)
    except rundir.RunDirError:
        return None
    return run_metrics(root, experiment, run, rundir.run_fingerprint(path))


@cache.memoize()
def metric_names(root: str, experiment: str, fp: str, sample: int = 5) -> list[str]:
    """Metric columns, in first-seen order over the first ``sample`` readable runs.

    Runs of one experiment log the same columns, so a few runs tell; reading
    all of them would make the first view of a 400-run experiment take minutes.
    """
    names: dict[str, None] = {}
    readable = 0
    for run in run_names(root, experiment, fp):  # broken runs do not count towards the sample
        frame = load_run_metrics(root, experiment, run)
        if frame is not None:
            names.update(dict.fromkeys(curve_figures.metric_columns(frame.columns)))
            readable += 1
            if readable == sample:
                break
    return list(names)


def load_run_columns(root: str, experiment: str, run: str, columns: list[str]):
    """Only ``columns`` of one run (with epoch and step), or None if it is broken.

    Not memoized: rundir reads them from the run's columnar cache in a fraction
    of a millisecond, less than a round trip to this cache would cost.
    """
    try:
        return rundir.load_run(root, experiment, run, columns=columns).metrics
    except (rundir.RunDirError, OSError):
        return None


@cache.memoize()
def metric_band(root: str, experiment: str, fp: str, metric: str) -> pd.DataFrame:
    """Mean +- std of one metric per epoch over all readable runs (only that column is read)."""
    runs = run_names(root, experiment, fp)
    frames = (load_run_columns(root, experiment, run, [metric]) for run in runs)
    return curve_figures.metric_band((f for f in frames if f is not None), metric)


# ----------------------------------------------------------------- fits


@cache.memoize()
def _fit_result_shared(root: str, experiment: str, fp: str):
    from trainmap import analysis  # the app draws fits, analysis computes and stores them

    return analysis.latest_fit(root, experiment)  # stale if the runs changed since


def fit_result(root: str, experiment: str, fp: str):
    """The experiment's saved FitResult, or None if it has not been fitted."""
    key = (root, experiment, fp)
    with _LOCAL_LOCK:
        if key in _LOCAL_FITS:
            _LOCAL_FITS.move_to_end(key)
            return _LOCAL_FITS[key]
    fit = _fit_result_shared(root, experiment, fp)
    with _LOCAL_LOCK:
        _LOCAL_FITS[key] = fit
        while len(_LOCAL_FITS) > _LOCAL_FITS_SIZE:
            _LOCAL_FITS.popitem(last=False)
    return fit


@cache.memoize()
def fit_overview(root: str, experiment: str, fp: str) -> dict | None:
    """The small part of a fit every page needs: the sweep, n's and convergence."""
    fit = fit_result(root, experiment, fp)
    if fit is None:
        return None
    selected = fit.map(fit.selected_n)
    return {
        "sweep": fit.sweep,
        "selected_n": int(fit.selected_n),
        "ns": sorted(int(n) for n in fit.maps),
        "runs": list(fit.runs),
        "excluded_runs": dict(fit.excluded_runs),
        "feature_names": list(fit.feature_names),
        "params": dict(fit.params),
        "convergence": dict(selected.convergence_epoch),
        "stale": bool(fit.stale),
        "warnings": list(getattr(fit, "warnings", [])),
        "bootstrap": dict(getattr(fit, "bootstrap", None) or {}),
        "selection": dict(getattr(fit, "selection", None) or {}),
    }


@cache.memoize()
def map_view(root: str, experiment: str, fp: str, n: int) -> list[dict] | None:
    """Cytoscape elements of the map with ``n`` states (None if there is none)."""
    fit = fit_result(root, experiment, fp)
    if fit is None or n not in fit.maps:
        return None
    return map_figures.map_elements(fit.maps[n], bootstrap=getattr(fit, "bootstrap", None))


@cache.memoize()
def evidence_view(root: str, experiment: str, fp: str, n: int) -> dict | None:
    """The evidence behind the map with ``n`` states, in words (None if there is none).

    ``n``: how sure the choice of n is; ``selection``: the selection's warning;
    ``regression``: convergence on occupancy in and out of sample; ``detours``:
    one sentence per state that some but not all runs visit.
    """
    fit = fit_result(root, experiment, fp)
    if fit is None or n not in fit.maps:
        return None
    tmap = fit.maps[n]
    bootstrap = getattr(fit, "bootstrap", None) or {}
    return {
        "n": evidence.n_distribution_words(bootstrap, fit.selected_n),
        "selection": evidence.selection_words(getattr(fit, "selection", None)),
        "regression": evidence.regression_words(tmap.regression),
        "detours": [
            {
                "state": int(s.state),
                "is_detour": bool(s.is_detour),
                "text": evidence.detour_words(f"S{s.state}", getattr(s, "detour", {})),
            }
            for s in tmap.states
            if 0 < s.visited_runs < len(tmap.paths)
        ],
    }


@cache.memoize()
def run_states(
    root: str, experiment: str, fp: str, n: int, run: str
) -> tuple[list[int], list[int]] | None:
    """(epochs, decoded states) of one run under the ``n``-state map, or None."""
    fit = fit_result(root, experiment, fp)
    if fit is None or n not in fit.maps or run not in fit.maps[n].paths:
        return None
    tmap = fit.maps[n]
    return np.asarray(tmap.epochs[run]).tolist(), np.asarray(tmap.paths[run]).tolist()


@cache.memoize()
def states_table(root: str, experiment: str, fp: str, n: int) -> pd.DataFrame | None:
    fit = fit_result(root, experiment, fp)
    if fit is None or n not in fit.maps:
        return None
    return map_figures.states_frame(fit.maps[n])


@cache.memoize()
def state_labels(root: str, experiment: str, fp: str, n: int) -> dict[int, dict] | None:
    """Per state of the ``n``-state map: user name, automatic caption, label (or None).

    Names live in the fit's folder, so renaming changes ``fp`` and every view
    keyed by it is rebuilt with the new name.
    """
    from trainmap import analysis
    from trainmap.analysis import captions

    fit = fit_result(root, experiment, fp)
    if fit is None or n not in fit.maps:
        return None
    names = analysis.state_names(root, experiment, fit.fingerprint, n)
    return captions.state_labels(fit.maps[n], names)


def rename_state(root: str, experiment: str, n: int, state: int, name: str) -> str:
    """Name a state of the fit the pages show (through the analysis API); the cleaned name.

    Raises ``analysis.captions.StateNameError`` with a message for the user.
    """
    from trainmap import analysis
    from trainmap.analysis.captions import StateNameError

    fit = fit_result(root, experiment, fingerprint(root, experiment))
    if fit is None:
        raise StateNameError(f"experiment {experiment} has no saved fit")
    name = analysis.rename_state(root, experiment, fit.fingerprint, n, state, name)
    _FINGERPRINTS.pop((root, experiment), None)  # show the new name at once
    return name


@cache.memoize()
def modal_states(root: str, experiment: str, fp: str, n: int) -> tuple[list, list] | None:
    """(epochs, most common state per epoch over all runs) under the ``n``-state map."""
    fit = fit_result(root, experiment, fp)
    if fit is None or n not in fit.maps:
        return None
    return curve_figures.modal_states(fit.maps[n])


@cache.memoize()
def strip_view(root: str, experiment: str, fp: str, n: int, run: str | None) -> dict | None:
    """The runs × epochs strip of the ``n``-state map, ``run`` framed (None if no map)."""
    fit = fit_result(root, experiment, fp)
    if fit is None or n not in fit.maps:
        return None
    labels = state_labels(root, experiment, fp, n)
    return strip_figures.strip_figure(fit.maps[n], labels, selected_run=run).to_plotly_json()


# ------------------------------------------------------------------ views
# Building a Plotly figure (trace validation) costs tens of milliseconds, more
# than loading its data from the cache, so the figures the pages show are
# memoized too, as plain dicts, under the same fingerprints.


@cache.memoize()
def runs_view(root: str, experiment: str, fp: str, max_curves: int = 40) -> dict:
    """Table rows, status counts and the progress plot of the Runs page."""
    summaries = run_summaries(root, experiment, fp)
    overview = fit_overview(root, experiment, fp)
    rows = runs_figures.runs_table_rows(summaries, overview["convergence"] if overview else None)
    counts = ", ".join(f"{k}: {v}" for k, v in runs_figures.status_counts(rows).items())
    readable = [r["run"] for r in rows if r["status"] != rundir.BROKEN]
    # The progress plot reads one metric of each run; past max_curves runs it
    # shows the first ones only, so a page for hundreds of runs still opens quickly.
    columns = metric_names(root, experiment, fp)
    metric = "eval_acc" if "eval_acc" in columns else next(iter(columns), "eval_acc")
    frames = {}
    for run in readable[:max_curves]:
        frame = load_run_columns(root, experiment, run, [metric])
        if frame is not None:
            frames[run] = frame
    thinned = {
        run: f[["epoch", metric]].iloc[:: max(1, len(f) // 400)]
        for run, f in frames.items()
        if metric in f
    }
    figure = runs_figures.progress_figure(thinned, metric)
    if len(readable) > max_curves:
        figure.update_layout(title=f"{metric}: first {max_curves} of {len(readable)} runs")
    return {
        "rows": rows,
        "counts": f"{common_figures.plural(len(rows), 'run')} ({counts})",
        "figure": figure.to_plotly_json(),
    }


@cache.memoize()
def selection_view(root: str, experiment: str, fp: str, chosen: int, height: int = 380):
    overview = fit_overview(root, experiment, fp)
    if overview is None:
        return None
    figure = selection_figures.selection_figure(
        overview["sweep"], overview["selected_n"], chosen, height
    )
    return figure.to_plotly_json()


@cache.memoize()
def curves_view(
    root: str,
    experiment: str,
    fp: str,
    metric: str,
    run: str | None,
    n: int | None,
    band: bool,
    log_y: bool,
    smoothing: int,
) -> dict:
    """The Metric curves figure; ``run`` and ``metric`` must be validated already."""
    run_frame = load_run_metrics(root, experiment, run) if run else None
    states = run_states(root, experiment, fp, int(n), run) if run and n is not None else None
    # Without a chosen run, "all seeds" is shaded by the most common state per epoch.
    all_seeds = states is None and band and n is not None
    if all_seeds:
        states = modal_states(root, experiment, fp, int(n))
    figure = curve_figures.metric_figure(
        metric,
        run_frame=run_frame,
        run_name=run,
        band=metric_band(root, experiment, fp, metric) if band else None,
        states=states,
        log_y=log_y,
        smoothing=smoothing,
        # Keep zoom while smoothing or log changes; reset it for another metric.
        uirevision=f"{experiment}/{metric}",
    )
    labels = state_labels(root, experiment, fp, int(n)) if n is not None else None
    return curve_figures.name_phases(figure.to_plotly_json(), labels, all_seeds=bool(all_seeds))


def fit_command(root: str, experiment: str) -> str:
    """The exact CLI command that fits an experiment (as the Fit now button does)."""
    options = BACKGROUND["fit_settings"].cli_options() if "fit_settings" in BACKGROUND else ""
    return f"trainmap fit {Path(root) / experiment} {options}".rstrip()


# ---------------------------------------------------------------- compare


def valid_experiments(root: str, value) -> list[str]:
    """Experiments to compare, from a URL (``A,B``) or a multi-select.

    Names that are not experiments under the root are dropped; order is kept
    and repeats removed. Never raises.
    """
    if isinstance(value, str):
        value = value.split(",")
    names = []
    for name in value or []:
        name = valid_experiment(root, str(name).strip())
        if name and name not in names:
            names.append(name)
    return names


@cache.memoize()
def compare_view(root: str, experiments: tuple, fps: tuple, match_on: str = "auto") -> dict:
    """The Compare page's data for ``experiments`` (each with a saved fit).

    ``fps`` are the experiments' fingerprints (the cache key); ``match_on`` is
    "auto", "levels" or "shapes" (``analysis.compare.compare_fits``). Returns
    ``{"error": message}`` when they cannot be compared (e.g. no shared
    feature), else ``comparison`` (``analysis.compare.Comparison.to_dict()``),
    ``elements`` (per experiment, the map in matched phases) and ``figure``
    (the convergence chart).
    """
    from trainmap.analysis.compare import CompareError, compare_experiments

    try:
        comparison = compare_experiments(
            [(root, e) for e in experiments], match_on=match_on
        ).to_dict()
    except CompareError as error:
        return {"error": str(error)}
    elements = []
    for i, (experiment, fp) in enumerate(zip(experiments, fps)):
        side = comparison["experiments"][i]
        fit = fit_result(root, experiment, fp)
        # The page's fit and the comparison's are chosen alike; if a refit
        # landed in between they differ, and the next fingerprint redraws.
        if fit is None or fit.fingerprint != side["fit_key"] or side["n_states"] not in fit.maps:
            elements.append([])
            continue
        tmap = fit.maps[side["n_states"]]
        elements.append(
            compare_figures.matched_elements(map_figures.map_elements(tmap), comparison, i)
        )
    return {
        "comparison": comparison,
        "elements": elements,
        "figure": compare_figures.convergence_figure(comparison).to_plotly_json(),
    }


# ------------------------------------------------------------ predictions
# A run still training changes the experiment's fingerprint with every row, but
# not its saved fit: the fit's reference data and the validation of prediction
# are keyed by the fits part of the fingerprint only, so they are read once per
# fit, and each run's prediction by that run's own fingerprint.

PREDICTED_STATUSES = ("running", "interrupted")


def _fits_part(fp: str) -> str:
    """The saved-fits half of a ``fingerprint`` (``DATA-FITS``, both hex)."""
    return fp.rsplit("-", 1)[-1]


@cache.memoize()
def prediction_reference(root: str, experiment: str, fits_fp: str):
    """What predictions need from the saved fit (``analysis.predict.Reference``), or None."""
    from trainmap.analysis import predict

    try:
        return predict.load_reference(root, experiment)
    except predict.PredictError:
        return None


@cache.memoize()
def prediction_validation(root: str, experiment: str, fits_fp: str) -> dict | None:
    """Leave-one-run-out validation of prediction on the saved fit (verdict and message)."""
    from trainmap.analysis import predict_study

    reference = prediction_reference(root, experiment, fits_fp)
    if reference is None:
        return None
    result = predict_study.validate(
        root,
        experiment,
        reference=reference,
        load_metrics=lambda run: load_run_metrics(root, experiment, run),  # cached reads
    )
    result.pop("cases", None)
    return result


@cache.memoize()
def run_prediction(root: str, experiment: str, run: str, run_fp: str, fits_fp: str):
    """``Prediction.summary()`` of one run as written now, ``{"error": ...}``, or None (no fit)."""
    from trainmap.analysis import predict

    reference = prediction_reference(root, experiment, fits_fp)
    if reference is None:
        return None
    frame = load_run_metrics(root, experiment, run)
    if frame is None:
        return {"error": "the run's files are broken"}
    try:
        summary = predict.predict_frame(reference, frame, run, exclude=[run]).summary()
    except predict.PredictError as error:
        return {"error": str(error)}
    return summary


def run_status(root: str, experiment: str, run: str) -> str | None:
    """A run's effective status (running, interrupted, ...), or None if it does not exist."""
    try:
        path = rundir.run_path(root, experiment, run)
    except rundir.RunDirError:
        return None
    return rundir.summarize_run(path, experiment).status


def prediction_view(root: str, experiment: str, fp: str, run: str) -> dict | None:
    """A run's prediction with the validation verdict, for a run still training; else None.

    Without a saved fit the prediction is ``{"error": ...}`` naming the command to run.
    """
    if run_status(root, experiment, run) not in PREDICTED_STATUSES:
        return None
    fits_fp = _fits_part(fp)
    summary = run_prediction(
        root,
        experiment,
        run,
        rundir.run_fingerprint(rundir.run_path(root, experiment, run)),
        fits_fp,
    )
    if summary is None:  # the experiment has never been fitted
        error = f"no saved fit; run {fit_command(root, experiment)}"
        return {"prediction": {"error": error}, "validation": None}
    return {"prediction": summary, "validation": prediction_validation(root, experiment, fits_fp)}


@cache.memoize()
def runs_predictions(root: str, experiment: str, fp: str) -> dict[str, str]:
    """The Runs page's "predicted convergence" cell of every running or interrupted run."""
    out = {}
    for summary in run_summaries(root, experiment, fp):
        if summary["status"] in PREDICTED_STATUSES:
            view = prediction_view(root, experiment, fp, summary["run"])
            if view is not None:
                out[summary["run"]] = prediction_figures.prediction_cell(
                    view["prediction"], view["validation"]
                )
    return out
