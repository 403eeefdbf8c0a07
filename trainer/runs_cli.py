"""``trainmap runs list ROOT``: experiments, runs, status, checkpoints, last accuracy."""

from __future__ import annotations

import argparse

from trainmap.trainer import rundir


def add_arguments(parser: argparse.ArgumentParser) -> None:
    actions = parser.add_subparsers(dest="runs_action", metavar="ACTION", required=True)
    listing = actions.add_parser("list", help="list experiments and runs under ROOT")
    listing.add_argument("root", metavar="ROOT", help="directory holding experiments")
    listing.add_argument("--experiment", help="only this experiment")


def format_listing(root, experiment: str | None = None) -> str:
    from trainmap.trainer.errors import UserError

    try:
        experiments = rundir.list_experiments(root)
        if experiment:
            rundir.check_name(experiment, "experiment")
            if experiment not in experiments:
                raise UserError(f"no experiment {experiment!r} under {root}")
            experiments = [experiment]
        listed = [(name, rundir.list_runs(root, name)) for name in experiments]
    except (rundir.RunDirError, OSError) as error:
        raise UserError(str(error)) from None
    lines = []
    for name, runs in listed:
        broken = sum(run.broken for run in runs)
        lines.append(f"{name}  ({len(runs)} runs, {broken} broken)")
        lines.append(
            f"  {'run':<20} {'status':<12} {'seed':>5} {'ckpts':>6} {'epoch':>7} {'eval_acc':>8}  note"
        )
        for run in runs:
            seed = "" if run.seed is None else str(run.seed)
            epoch = "" if run.last_epoch is None else str(run.last_epoch)
            acc = "" if run.last_eval_acc is None else f"{run.last_eval_acc:.3f}"
            lines.append(
                f"  {run.run:<20} {run.status:<12} {seed:>5} {run.checkpoints:>6} {epoch:>7} {acc:>8}  {' '.join((run.reason or '').split())}".rstrip()
            )
    if not lines:
        lines.append(f"no experiments under {root}")
    return "\n".join(lines)


def main(args: argparse.Namespace) -> int:
    print(format_listing(args.root, args.experiment))
    return 0
