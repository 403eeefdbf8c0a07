"""``trainmap train``: train a built-in task across seeds into ROOT/EXPERIMENT.

This module imports no torch at import time (``trainmap --help`` stays fast);
:func:`main` imports the training code when it runs.
"""

from __future__ import annotations

import argparse

from trainmap.trainer.errors import UserError

TASKS_HELP = "modadd, modadd_ln, parity, digits"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("--task", default="modadd", help=f"built-in task: {TASKS_HELP}")
    parser.add_argument("--preset", default="quick", help="paper, quick or tiny (default quick)")
    parser.add_argument("--seeds", default="0-7", help="seeds, e.g. 0-7 or 0,3,5 (default 0-7)")
    parser.add_argument("--epochs", type=int, help="override the preset's number of epochs")
    parser.add_argument("--eval-every", type=int, help="epochs between checkpoints")
    parser.add_argument(
        "--hook-points",
        help="comma-separated module names (globs allowed); default: the task's",
    )
    parser.add_argument(
        "--out",
        required=True,
        metavar="ROOT/EXPERIMENT",
        help="where runs go: one run directory per seed, ROOT/EXPERIMENT/seed-N",
    )
    parser.add_argument("--workers", type=int, default=2, help="parallel seeds (default 2)")
    parser.add_argument("--device", default="cpu", help="cpu (default) or cuda")
    parser.add_argument(
        "--resume", action="store_true", help="continue interrupted runs from their last state"
    )
    parser.add_argument("--backend", default="loky", choices=["loky", "dask"])
    parser.add_argument("--scheduler", metavar="ADDRESS", help="dask scheduler, e.g. tcp://h:8786")
    parser.add_argument("--no-progress", action="store_true", help="no progress bars")


def split_out(out: str) -> tuple[str, str]:
    """'ROOT/EXPERIMENT' -> (ROOT, EXPERIMENT); the experiment is the last component."""
    parts = out.rstrip("/").rsplit("/", 1)
    if len(parts) != 2 or not parts[0] or not parts[1]:
        raise UserError(f"--out must be ROOT/EXPERIMENT (e.g. runs/modadd-quick), got {out!r}")
    return parts[0], parts[1]


def main(args: argparse.Namespace) -> int:
    root, experiment = split_out(args.out)
    if args.epochs is not None and args.epochs <= 0:
        raise UserError(f"--epochs must be a positive integer, got {args.epochs}")
    if args.eval_every is not None and args.eval_every <= 0:
        raise UserError(f"--eval-every must be a positive integer, got {args.eval_every}")
    if args.backend != "dask" and args.scheduler:
        raise UserError("--scheduler is only used with --backend dask")

    from trainmap.trainer import rundir
    from trainmap.trainer.train import MAX_EPOCHS, parse_seeds, train_seeds

    for flag, value in (("--epochs", args.epochs), ("--eval-every", args.eval_every)):
        if value is not None and value > MAX_EPOCHS:
            raise UserError(f"{flag} must be at most {MAX_EPOCHS}, got {value}")

    try:
        rundir.check_name(experiment, "experiment")
    except rundir.RunDirError as error:
        raise UserError(str(error)) from None
    hook_points = None
    if args.hook_points:
        hook_points = [name.strip() for name in args.hook_points.split(",") if name.strip()]
    summaries = train_seeds(
        args.task,
        preset=args.preset,
        seeds=parse_seeds(args.seeds),
        root=root,
        experiment=experiment,
        workers=args.workers,
        backend=args.backend,
        scheduler=args.scheduler,
        epochs=args.epochs,
        eval_every=args.eval_every,
        hook_points=hook_points,
        device=args.device,
        resume=args.resume,
        progress=not args.no_progress,
    )
    for summary in summaries:
        acc = "" if summary.last_eval_acc is None else f"eval_acc {summary.last_eval_acc:.3f}"
        print(
            f"{summary.experiment}/{summary.run}: {summary.status}, "
            f"{summary.checkpoints} checkpoints, {acc}".rstrip(", ")
        )
    return 0 if all(s.status in ("completed", "diverged") for s in summaries) else 1
