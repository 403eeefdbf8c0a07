"""``trainmap predict ROOT/EXPERIMENT/RUN``: where a run is now and when it will converge.

Imported by ``trainer/cli.py`` for every ``trainmap`` command, so it must import
cheaply: the analysis (numpy, pandas, hmmlearn) is imported in ``main``.
"""

from __future__ import annotations

import argparse

LAST_CHECKPOINTS = 5


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("target", metavar="ROOT/EXPERIMENT/RUN", help="run directory")
    parser.add_argument("--n", type=int, help="map with this many states (default: the fit's)")
    parser.add_argument("--upto", type=int, help="use only the first N checkpoints of the run")
    parser.add_argument(
        "--no-validation",
        action="store_true",
        help="skip the leave-one-run-out check of the prediction (reads every run)",
    )


def format_prediction(prediction, validation, last: int = LAST_CHECKPOINTS) -> str:
    """The CLI's report: state now, recent filtered probabilities, prediction, verdict."""
    from trainmap.analysis.predict import confident, verdict_words

    p = prediction
    lines = [
        f"run {p.experiment}/{p.run}: {len(p.epochs)} checkpoints, last epoch {p.epoch}; "
        f"fit {p.fit_key}, n = {p.n}",
        f"current state: S{p.state} (filtered probability {p.state_prob:.2f}), "
        f"in it since epoch {p.entered:.0f}",
        "filtered state probabilities p(state | rows so far), last checkpoints:",
        "  epoch " + " ".join(f"{f'S{k}':>6}" for k in range(p.n)),
    ]
    for epoch, row in zip(p.epochs[-last:], p.filtered[-last:]):
        lines.append(f"  {epoch:>5} " + " ".join(f"{v:>6.2f}" for v in row))
    if p.converged_at is not None or p.basis is None or p.median is None:
        lines.append(f"convergence: {p.text()}")
    elif confident(validation):
        lines.append(f"predicted convergence epoch {p.text()}")
    else:
        lines.append(
            f"predicted convergence: between epochs {p.low:.0f} and "
            f"{'open' if p.high is None else f'{p.high:.0f}'} (80% interval; no point estimate: "
            f"prediction has not been shown to beat the naive baselines), {p.where()}"
        )
    for note in p.notes:
        lines.append(f"note: {note}")
    lines.append(verdict_words(validation))
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    from pathlib import Path

    from trainmap.analysis import predict, predict_study
    from trainmap.trainer import rundir
    from trainmap.trainer.errors import UserError

    target = Path(args.target)
    root, experiment, run = target.parent.parent, target.parent.name, target.name
    if not run or not experiment or not target.is_dir():
        raise UserError(f"{args.target} is not a run directory (expected ROOT/EXPERIMENT/RUN)")
    try:
        reference = predict.load_reference(root, experiment, n=args.n)
        prediction = predict.predict_run(
            root, experiment, run, n=args.n, upto=args.upto, reference=reference
        )
        validation = (
            None
            if args.no_validation
            else predict_study.validate(root, experiment, reference=reference)
        )
    except (predict.PredictError, rundir.RunDirError) as error:
        raise UserError(str(error)) from None
    print(format_prediction(prediction, validation))
    return 0
