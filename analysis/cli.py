"""``trainmap fit ROOT/EXPERIMENT``: fit HMMs over an experiment's runs and print the map.

Imported by ``trainer/cli.py`` for every ``trainmap`` command, so it must import
cheaply: the analysis itself (numpy, hmmlearn, joblib) is imported in ``main``.
"""

from __future__ import annotations

import argparse
import dataclasses
import math

from trainmap.analysis import settings
from trainmap.analysis.settings import FitSettings


def add_arguments(parser: argparse.ArgumentParser) -> None:
    # Defaults and choices are FitSettings' (one place, shared with the API and the dashboard).
    default = FitSettings()
    parser.add_argument("target", metavar="ROOT/EXPERIMENT", help="experiment directory")
    parser.add_argument(
        "--max-states",
        type=int,
        default=default.max_states,
        help=f"try n = 1..N (default {default.max_states})",
    )
    parser.add_argument(
        "--restarts",
        type=int,
        default=default.restarts,
        help=f"restarts per n (default {default.restarts})",
    )
    parser.add_argument("--cov", choices=settings.COVARIANCE_TYPES, default=default.cov)
    parser.add_argument(
        "--features",
        help="comma-separated metric columns (default: the 14 paper weight metrics)",
    )
    parser.add_argument(
        "--criterion",
        choices=settings.CRITERIA_NAMES,
        default=default.criterion,
        help="how n is selected (default auto: icl below 300 checkpoints per run, icl_ess "
        "from there; see docs/selection.md; bic_mean = paper)",
    )
    parser.add_argument(
        "--normalize",
        choices=settings.NORMALIZATIONS,
        default=default.normalize,
        help="z-scoring over all runs or within each run "
        f"(default {default.normalize}; per_run = paper)",
    )
    parser.add_argument("--n-states", type=int, help="use this n instead of the criterion's")
    parser.add_argument("--first-n", type=int, help="use only the first N checkpoints of a run")
    parser.add_argument(
        "--threshold", type=float, default=default.threshold, help="eval_acc of convergence"
    )
    parser.add_argument("--seed", type=int, default=default.seed, help="split and restart seed")
    parser.add_argument(
        "--workers",
        type=int,
        default=default.workers,
        help=f"parallel fits (default {default.workers})",
    )
    parser.add_argument("--backend", choices=settings.BACKENDS, default=default.backend)
    parser.add_argument("--scheduler", help="dask scheduler address, for --backend dask")
    parser.add_argument("--refit", action="store_true", help="ignore a saved fit")
    parser.add_argument(
        "--bootstrap",
        type=int,
        default=default.bootstrap,
        metavar="N",
        help="resample the runs N times to show how stable n, states and edges are "
        f"(default {default.bootstrap}; 0 = off)",
    )


def fit_settings(args: argparse.Namespace) -> FitSettings:
    """The FitSettings the parsed options ask for (every field has an option of its name)."""
    values = {
        f.name: getattr(args, f.name)
        for f in dataclasses.fields(FitSettings)
        if hasattr(args, f.name)
    }
    if values.get("features"):
        values["features"] = tuple(f.strip() for f in values["features"].split(",") if f.strip())
    return FitSettings(**values)


def _fmt(value, digits=1) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    return f"{value:.{digits}f}"


def format_selection(result) -> str:
    """How n was selected, one note per line under "selected n = ..."; the ceiling as a warning."""
    selection = getattr(result, "selection", None) or {}
    lines = []
    for note in selection.get("notes", []):
        if note == selection.get("warning"):
            lines.append(f"warning: {note}")
        else:
            lines.append(f"  {note}")
    return "\n".join(lines)


def format_sweep(result) -> str:
    """The sweep table as aligned text, the selected n marked with '*'.

    "ICL ess" is ICL counting effective checkpoints (docs/selection.md); it is
    "-" for fits saved before it existed. Without held-out runs every score is
    in-sample, and the header says so.
    """
    selection = getattr(result, "selection", None) or {}
    scored = "in-sample" if selection.get("heldout_runs") == 0 else "heldout"
    lines = [
        f"{'n':>3} {'ok':>3} {'fail':>4} {scored + ' LL (mean±std)':>24} {'best LL':>10} "
        f"{'AIC best':>10} {'BIC mean':>10} {'BIC best':>10} {'ICL':>10} {'ICL ess':>10}"
    ]
    for row in result.sweep.itertuples():
        mark = "*" if row.n == result.selected_n else " "
        ll = f"{_fmt(row.heldout_ll_mean)}±{_fmt(row.heldout_ll_std)}" if row.feasible else "failed"
        lines.append(
            f"{row.n:>2}{mark} {row.converged if row.feasible else 0:>3.0f} {row.failures:>4} "
            f"{ll:>24} {_fmt(row.heldout_ll_best):>10} {_fmt(row.aic_best):>10} "
            f"{_fmt(row.bic_mean):>10} {_fmt(row.bic_best):>10} {_fmt(row.icl_best):>10} "
            f"{_fmt(getattr(row, 'icl_ess', None)):>10}"
        )
    for row in result.sweep.itertuples():
        if not row.feasible:
            lines.append(f"  n={row.n} infeasible: {getattr(row, 'error', '') or 'failed'}")
    return "\n".join(lines)


def _p(value) -> str:
    return "-" if value is None else f"{value:.2g}"


def _epochs(value) -> str:
    return "unbounded" if value is None else f"{value:+.0f}"


def format_detour(detour: dict) -> str | None:
    """One line on a state's detour test, or None when there is nothing to say."""
    verdict = detour.get("verdict")
    if verdict in (None, "all_runs", "no_runs"):
        return None  # old fit, or nothing to compare: the visit count says it all
    if verdict == "not_enough_runs":
        return f"detour test: {detour['message']}"
    lo, hi = detour.get("delay_ci") or (None, None)
    delay = "median not reached" if detour["delay"] is None else f"{detour['delay']:+.0f} epochs"
    return (
        f"detour test: {'DETOUR' if verdict == 'detour' else 'no detour'} "
        f"({detour['test']} p {_p(detour['p_value'])}, adjusted {_p(detour['p_adjusted'])}; "
        f"delay {delay}, 95% interval [{_epochs(lo)}, {_epochs(hi)}]; "
        f"{detour['n_visiting']} runs visit it, {detour['n_other']} do not)"
    )


def format_regression(reg: dict, censored: int) -> str:
    """The convergence-on-occupancy regression in one line, never a saturated R² as a result."""
    head = "convergence ~ occupancy: "
    cens = f"{censored} censored run{'s' * (censored != 1)} left out"
    if "saturated" not in reg:  # saved before the regression was checked
        return head + f"R² {_fmt(reg.get('r2'), 3)} in-sample only (refit for leave-one-out R²)"
    if reg["saturated"]:
        return head + (
            f"saturated: {reg['n_params']} parameters for {reg['n_runs']} runs, "
            f"need >= {reg['n_params'] + 1} runs (no R² to show); {cens}"
        )
    if reg.get("r2") is None:
        return head + reg["message"]
    loo = "undefined" if reg.get("r2_loo") is None else f"{reg['r2_loo']:.3f}"
    return head + (
        f"R² {reg['r2']:.3f} in-sample, {loo} leave-one-out "
        f"(adjusted {_fmt(reg.get('r2_adjusted'), 3)}), F-test p {_p(reg.get('p_value'))}; "
        f"{reg['n_params']} parameters (reference state {reg['reference_state']}) for "
        f"{reg['n_runs']} converged runs; {cens}"
    )


def format_map(
    training_map, bootstrap: dict | None = None, names: dict[int, str] | None = None
) -> str:
    """A text summary of a training map: nodes (with captions and the names users
    gave them), detour tests, edges, regression.

    ``bootstrap`` (``FitResult.bootstrap``) adds the stability of each state and
    edge when it is about this map's n.
    """
    from trainmap.analysis.captions import state_caption

    m = training_map
    names = names or {}
    lines = [f"states ({m.n_states}):"]
    for s in m.states:
        flags = []
        if s.start_runs:
            flags.append(f"start of {s.start_runs} runs")
        if s.end_runs:
            flags.append(f"end of {s.end_runs} runs")
        if s.is_detour:
            flags.append("DETOUR")
        lines.append(
            f"  state {s.state}: occupancy {s.occupancy:.2f}, self {s.self_prob:.3f}, "
            f"visited by {s.visited_runs} runs, mean epoch {_fmt(s.mean_epoch)}"
            + (f" [{', '.join(flags)}]" if flags else "")
        )
        named = f"{names[s.state]!r}: " if names.get(s.state) else ""
        lines.append(f"      {named}{state_caption(m, s.state)}")
        detour = format_detour(s.detour)
        if detour:
            lines.append(f"      {detour}")
    lines.append(f"edges ({len(m.edges)}):")
    for e in m.edges:
        conv = _fmt(e.mean_convergence_epoch)
        features = ", ".join(
            f"{f.feature} {'↑' if f.delta_z > 0 else '↓'}{abs(f.delta_z):.2f}z"
            for f in e.top_features
        )
        lines.append(
            f"  {e.source} -> {e.target}: p={e.prob:.3f}, {e.n_runs} runs, "
            f"mean convergence epoch {conv}; drivers: {features}"
        )
    detours = [s.state for s in m.states if s.is_detour]
    tested = [s for s in m.states if s.detour.get("p_adjusted") is not None]
    notes = []
    if tested:
        notes.append(
            f"{len(tested)} state{'s' * (len(tested) != 1)} tested; a detour needs "
            f"Holm-adjusted p < {tested[0].detour['alpha']:g} and later convergence"
        )
    untold = sum(s.detour.get("verdict") == "not_enough_runs" for s in m.states)
    if untold:
        notes.append(f"{untold} state{'s' * (untold != 1)} with too few runs to tell")
    how = f" ({'; '.join(notes)})" if notes else ""
    lines.append(f"detour states: {detours if detours else 'none'}{how}")
    censored = sum(v is None for v in m.convergence_epoch.values())
    lines.append(format_regression(m.regression, censored))
    lines.append(f"trajectory dissimilarity (mean pairwise TV): {m.dissimilarity:.3f}")
    lines += _stability_lines(m, bootstrap or {})
    return "\n".join(lines)


def _stability_lines(training_map, bootstrap: dict) -> list[str]:
    """Per state and edge: the share of bootstrap resamples that found it (and flag it a detour)."""
    if not bootstrap.get("n_resamples") or bootstrap.get("n") != training_map.n_states:
        return []

    def shares(values: dict) -> str:
        # "j→k", not "j->k": the map's edge lines are the ones with "->"
        return ", ".join(f"{k.replace('->', '→')} {_fmt(v, 2)}" for k, v in values.items())

    lines = [
        f"stability over {bootstrap['n_resamples']} resamples of the runs "
        "(share of resamples that find it):",
        "  states: " + shares(bootstrap.get("state_stability", {})),
        "  edges: " + (shares(bootstrap.get("edge_stability", {})) or "none"),
    ]
    # Detour shares only where there is something to say: a state flagged in
    # this map, or one that some resamples flag.
    flagged = {
        k: v
        for k, v in bootstrap.get("detour_stability", {}).items()
        if v or training_map.states[int(k)].is_detour
    }
    if flagged:
        lines.append("  flagged a detour: " + shares(flagged))
    return lines


def format_bootstrap(bootstrap: dict) -> str:
    """The selected n over bootstrap resamples, e.g. "n over 50 resamples: 3 ×31, 4 ×19"."""
    if not bootstrap:
        return ""
    if not bootstrap.get("n_resamples"):
        return f"bootstrap: {bootstrap.get('message', 'not run')}"
    counts = ", ".join(f"{n} ×{c}" for n, c in bootstrap["selected_n_counts"].items())
    lo, hi = bootstrap["n_range"]
    line = (
        f"n over {bootstrap['n_resamples']} resamples: {counts or 'no fit'} "
        f"(n = {lo}..{hi} tried, {bootstrap['restarts']} restarts, {bootstrap['seconds']:.1f} s)"
    )
    return line + (f"\n  {bootstrap['message']}" if bootstrap.get("message") else "")


def main(args: argparse.Namespace) -> int:
    import warnings
    from pathlib import Path

    from trainmap.analysis import api
    from trainmap.trainer import rundir
    from trainmap.trainer.errors import UserError

    target = Path(args.target)
    root, experiment = target.parent, target.name
    if not experiment or not target.is_dir():
        raise UserError(f"{args.target} is not an experiment directory (expected ROOT/EXPERIMENT)")
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            result = api.fit_experiment(root, experiment, fit_settings(args), refit=args.refit)
    except (ValueError, rundir.RunDirError) as error:
        raise UserError(str(error)) from None
    for warning in caught:
        if issubclass(warning.category, UserWarning):
            print(f"warning: {warning.message}")
    params = result.params
    print(
        f"experiment {experiment}: {len(result.runs)} runs, {len(result.feature_names)} features "
        f"({', '.join(result.feature_names)}), normalize={params['normalize']}, cov={params['cov']}"
        + (" [loaded saved fit]" if result.loaded else "")
    )
    for run, why in sorted(result.excluded_runs.items()):
        print(f"  {run}: {why}")
    print(format_sweep(result))
    how = "given" if params.get("n_states") is not None else f"by {params['criterion']}"
    print(f"selected n = {result.selected_n} ({how})")
    if format_selection(result):
        print(format_selection(result))
    if result.bootstrap:
        print(format_bootstrap(result.bootstrap))
    names = api.state_names(root, experiment, result.fingerprint, result.selected_n)
    print(format_map(result.map(), bootstrap=result.bootstrap, names=names))
    print("(features and terms explained: trainmap glossary)")
    return 0
