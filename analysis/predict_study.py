"""Is convergence prediction better than naive guesses? Leave-one-run-out on finished runs.

    python -m analysis.predict_study ROOT/EXPERIMENT [--fractions 0.25,0.5,0.75]
    python -m analysis.predict_study ROOT/synth --synthetic 40   # write, fit, validate

For every run of the experiment's saved fit that converged (up to
:data:`MAX_RUNS` of them), in turn: hold it out of the reference runs (the
HMM itself is not refitted: that would cost a full sweep per run; the held-out
run did take part in the fit, which favours the HMM's states slightly, not the
reference runs the prediction is read from), truncate it at 25, 50 and 75% of
its length, predict with :func:`analysis.predict.predict_rows`, and compare
with two naive predictions that see the same rows:

* ``at_risk``: the Kaplan-Meier median convergence epoch of all other runs
  not converged by the truncation epoch (with its 10-90% interval), i.e. the
  same estimator as the prediction without the state information. Conditioning
  on "not converged yet" is what makes it fair: the unconditional median of
  all runs would be beaten by any method that knows the run has not converged;
* ``curve``: where the eval accuracy curve itself is heading: a least-squares
  line through its last :data:`CURVE_WINDOW` checkpoints, extended to the
  convergence threshold (no answer when the line is flat or falling).

Truncations at which the run has already converged are counted, not scored.
The errors are absolute differences in epochs from the run's true convergence
epoch; each comparison uses the cases both methods answered (a method that
declines to answer is not rewarded for it). The *verdict* is ``"better"``
when the prediction's median absolute error over all truncations is lower
than each baseline's on the shared cases, ``"not_better"`` otherwise, and
``"not_enough_runs"`` with fewer than :data:`MIN_CASES` scored cases.

The verdict is computed on demand (cheap: one forward pass per truncated
run; the runs are read once) and shown with every prediction in the CLI and
the dashboard, which memoizes it per saved fit.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import numpy as np

from trainmap.analysis.predict import (
    INTERVAL,
    PredictError,
    Reference,
    load_reference,
    predict_rows,
    run_rows,
    survival_prediction,
)

FRACTIONS = (0.25, 0.5, 0.75)
CURVE_WINDOW = 5
MIN_CASES = 10
# The dashboard validates on demand: cap the held-out runs so a 400-run
# experiment does not read every run (an even spread over the sorted names).
MAX_RUNS = 60


def curve_extrapolation(epochs, accuracy, threshold: float, window: int = CURVE_WINDOW):
    """The epoch at which a line through the last ``window`` accuracies reaches ``threshold``.

    None when there is no accuracy, fewer than two points, or the line is not rising.
    """
    if accuracy is None:
        return None
    epochs = np.asarray(epochs, dtype=float)[-window:]
    acc = np.asarray(accuracy, dtype=float)[-window:]
    ok = np.isfinite(acc)
    if ok.sum() < 2 or np.ptp(epochs[ok]) == 0:
        return None
    slope, intercept = np.polyfit(epochs[ok], acc[ok], 1)
    if slope <= 0:
        return None
    return float(max((threshold - intercept) / slope, epochs[-1]))


def _covered(truth: float, low, high) -> bool:
    return (low is None or truth >= low) and (high is None or truth <= high)


def _spread(names: Sequence[str], limit: int) -> list[str]:
    if len(names) <= limit:
        return list(names)
    picks = np.linspace(0, len(names) - 1, limit).round().astype(int)
    return [names[i] for i in sorted(set(picks))]


def cases(
    root,
    experiment: str,
    reference: Reference,
    fractions=FRACTIONS,
    max_runs=MAX_RUNS,
    load_metrics=None,
):
    """One dict per (held-out run, fraction): the truth, the prediction and the baselines.

    ``load_metrics(run)`` returns a run's metrics table (default: read it with
    ``trainer.rundir``; the dashboard passes its memoized loader).
    """
    from trainmap.trainer import rundir

    if load_metrics is None:

        def load_metrics(run):
            return rundir.load_run(root, experiment, run).metrics

    converged = sorted(r for r in reference.runs if reference.convergence.get(r) is not None)
    out = []
    for run in _spread(converged, max_runs):
        try:
            frame = load_metrics(run)
            if frame is None:  # a loader that reports a broken run as None
                continue
            X, epochs, acc, notes = run_rows(reference, frame, run)
        except (rundir.RunDirError, OSError, PredictError):
            continue
        # The fit saw the run up to its last mapped epoch: use the same rows.
        keep = epochs <= reference.epochs[run][-1]
        X, epochs = X[keep], epochs[keep]
        acc = None if acc is None else acc[keep]
        truth = float(reference.convergence[run])
        for fraction in fractions:
            k = max(1, int(round(fraction * len(X))))
            case = {"run": run, "fraction": fraction, "epoch": int(epochs[k - 1]), "truth": truth}
            prediction = predict_rows(
                reference,
                X[:k],
                epochs[:k],
                None if acc is None else acc[:k],
                run=run,
                exclude=[run],
                notes=notes,
            )
            case["converged"] = prediction.converged_at is not None
            if case["converged"]:
                out.append(case)
                continue
            case.update(
                median=prediction.median,
                low=prediction.low,
                high=prediction.high,
                basis=prediction.basis,
                n_reference=prediction.n_reference,
            )
            at_risk = [
                r for r in reference.runs if r != run and reference.times(r)[0] > case["epoch"]
            ]
            times = np.array([reference.times(r)[0] for r in at_risk])
            events = np.array([reference.times(r)[1] for r in at_risk], dtype=bool)
            base = survival_prediction(times, events)
            case.update(at_risk_median=base["median"], at_risk_low=base["low"])
            case.update(at_risk_high=base["high"])
            case["curve"] = curve_extrapolation(
                epochs[:k], None if acc is None else acc[:k], reference.threshold
            )
            out.append(case)
    return out


def _mdae(pairs) -> float | None:
    return float(np.median([abs(p - t) for p, t in pairs])) if pairs else None


def summarize(case_list: list[dict], fractions=FRACTIONS) -> dict:
    """The table rows per fraction and over all, with the verdict and a one-line message."""

    def row(selected):
        scored = [c for c in selected if not c["converged"]]
        model = [(c["median"], c["truth"]) for c in scored if c["median"] is not None]
        vs_risk = [c for c in scored if c["median"] is not None and c["at_risk_median"] is not None]
        vs_curve = [c for c in scored if c["median"] is not None and c["curve"] is not None]
        return {
            "cases": len(selected),
            "already_converged": len(selected) - len(scored),
            "scored": len(scored),
            "answered": len(model),
            "model_mdae": _mdae(model),
            "model_coverage": (
                float(np.mean([_covered(c["truth"], c["low"], c["high"]) for c in scored]))
                if scored
                else None
            ),
            "matched_by_path": sum(c["basis"] == "path" for c in scored),
            "pairs_at_risk": len(vs_risk),
            "model_mdae_vs_at_risk": _mdae([(c["median"], c["truth"]) for c in vs_risk]),
            "at_risk_mdae": _mdae([(c["at_risk_median"], c["truth"]) for c in vs_risk]),
            "at_risk_coverage": (
                float(
                    np.mean(
                        [_covered(c["truth"], c["at_risk_low"], c["at_risk_high"]) for c in scored]
                    )
                )
                if scored
                else None
            ),
            "pairs_curve": len(vs_curve),
            "model_mdae_vs_curve": _mdae([(c["median"], c["truth"]) for c in vs_curve]),
            "curve_mdae": _mdae([(c["curve"], c["truth"]) for c in vs_curve]),
        }

    rows = {f"{f:.0%}": row([c for c in case_list if c["fraction"] == f]) for f in fractions}
    overall = row(case_list)
    level = f"{INTERVAL[1] - INTERVAL[0]:.0%}"
    if overall["answered"] < MIN_CASES:
        verdict = "not_enough_runs"
        message = (
            f"not enough runs to tell: {overall['answered']} point predictions to score, "
            f"need >= {MIN_CASES} ({overall['scored'] - overall['answered']} of "
            f"{overall['scored']} truncations got none: too few of their reference runs "
            "converged)"
        )
    else:
        beats_risk = (
            overall["model_mdae_vs_at_risk"] is not None
            and overall["model_mdae_vs_at_risk"] < overall["at_risk_mdae"]
        )
        beats_curve = overall["pairs_curve"] == 0 or (
            overall["model_mdae_vs_curve"] < overall["curve_mdae"]
        )
        verdict = "better" if beats_risk and beats_curve else "not_better"
        curve = (
            f"{overall['curve_mdae']:.0f} (eval_acc extrapolation, {overall['pairs_curve']} "
            f"cases; prediction {overall['model_mdae_vs_curve']:.0f} on those)"
            if overall["pairs_curve"]
            else "no answer from eval_acc extrapolation"
        )
        message = (
            f"{'beats' if verdict == 'better' else 'does NOT beat'} the naive baselines "
            f"(leave-one-run-out, {overall['answered']} predictions at 25/50/75% of "
            f"{len({c['run'] for c in case_list})} runs): median abs error "
            f"{overall['model_mdae_vs_at_risk']:.0f} epochs vs {overall['at_risk_mdae']:.0f} "
            f"(median of runs not converged yet), {curve}; {level} interval covered "
            f"{overall['model_coverage']:.0%}"
        )
    return {"fractions": rows, "overall": overall, "verdict": verdict, "message": message}


def validate(
    root,
    experiment: str,
    *,
    n=None,
    reference=None,
    fractions=FRACTIONS,
    max_runs=MAX_RUNS,
    load_metrics=None,
):
    """Leave-one-run-out validation of :mod:`analysis.predict` on the saved fit.

    Returns :func:`summarize`'s dict (``fractions``, ``overall``, ``verdict``,
    ``message``) plus ``fit_key``, ``n`` and the individual ``cases``.
    """
    reference = reference or load_reference(root, experiment, n=n)
    found = cases(root, experiment, reference, fractions, max_runs, load_metrics)
    result = summarize(found, fractions)
    result.update(fit_key=reference.fit_key, n=reference.n, cases=found)
    return result


def format_table(result: dict) -> str:
    """The validation as a Markdown table (what docs/predict.md shows)."""

    def f(value, pct=False):
        if value is None:
            return "-"
        return f"{value:.0%}" if pct else f"{value:.1f}"

    lines = [
        "| truncated at | scored (converged already) | prediction MdAE | at-risk median MdAE "
        "| curve MdAE (cases) | prediction on those | 80% coverage | at-risk coverage "
        "| matched by path |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for name, row in [*result["fractions"].items(), ("all", result["overall"])]:
        lines.append(
            f"| {name} | {row['scored']} ({row['already_converged']}) "
            f"| {f(row['model_mdae_vs_at_risk'])} | {f(row['at_risk_mdae'])} "
            f"| {f(row['curve_mdae'])} ({row['pairs_curve']}) | {f(row['model_mdae_vs_curve'])} "
            f"| {f(row['model_coverage'], True)} | {f(row['at_risk_coverage'], True)} "
            f"| {row['matched_by_path']} |"
        )
    return "\n".join(lines)


def main(argv=None) -> int:
    from pathlib import Path

    parser = argparse.ArgumentParser(prog="python -m analysis.predict_study", description=__doc__)
    parser.add_argument("target", metavar="ROOT/EXPERIMENT")
    parser.add_argument("--n", type=int, help="map with this many states (default: the fit's)")
    parser.add_argument("--fractions", default="0.25,0.5,0.75")
    parser.add_argument("--max-runs", type=int, default=MAX_RUNS)
    parser.add_argument(
        "--synthetic",
        type=int,
        metavar="N_RUNS",
        help="first write N_RUNS synthetic runs (200 checkpoints, seed 0, default branches) "
        "to ROOT/EXPERIMENT and fit them with trainmap fit's defaults",
    )
    args = parser.parse_args(argv)
    target = Path(args.target)
    if args.synthetic:
        import warnings

        from trainmap.analysis.api import fit_experiment
        from trainmap.analysis.synthetic import write_synthetic_experiment

        write_synthetic_experiment(
            target.parent, target.name, n_runs=args.synthetic, n_checkpoints=200, seed=0
        )
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            fit_experiment(target.parent, target.name, workers=2)
    fractions = tuple(float(x) for x in args.fractions.split(","))
    try:
        result = validate(
            target.parent, target.name, n=args.n, fractions=fractions, max_runs=args.max_runs
        )
    except PredictError as error:
        print(f"error: {error}", file=sys.stderr)
        return 2
    print(f"{target.name}: fit {result['fit_key']}, n = {result['n']}")
    print(format_table(result))
    print(f"verdict: {result['verdict']}: {result['message']}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
