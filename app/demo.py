"""``trainmap demo``: train a quick preset across seeds, fit the HMM, serve the dashboard.

Re-running reuses finished runs and the saved fit, so the second start is quick.
``TRAINMAP_DEMO_PRESET=tiny`` selects a preset of a few seconds per seed (used by
the end-to-end test); the default is the task's ``quick`` preset.
"""

from __future__ import annotations

import argparse
import os
import time

DEFAULT_TASK = "modadd"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        default=os.environ.get("TRAINMAP_ROOT", "trainmap-runs"),
        help="where runs are written (default: $TRAINMAP_ROOT or ./trainmap-runs)",
    )
    parser.add_argument(
        "--task", default=DEFAULT_TASK, help=f"built-in task (default {DEFAULT_TASK})"
    )
    parser.add_argument(
        "--preset",
        default=os.environ.get("TRAINMAP_DEMO_PRESET", "quick"),
        help="preset of the task (default: $TRAINMAP_DEMO_PRESET or quick)",
    )
    parser.add_argument("--seeds", default="0-7", help="seeds to train, e.g. 0-7 (default)")
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--max-states", type=int, default=6, help="largest HMM to try")
    parser.add_argument("--restarts", type=int, default=3, help="HMM restarts per size")
    parser.add_argument(
        "--n-states", type=int, default=None, help="use this many states instead of the selected n"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8050)
    parser.add_argument("--no-serve", action="store_true", help="train and fit, then exit")


def main(args: argparse.Namespace) -> int:
    # Imported here so `trainmap --help` stays fast.
    from analysis import fit_experiment
    from trainer.errors import UserError
    from trainer.train import parse_seeds, train_seeds

    experiment = f"{args.task}-{args.preset}"
    seeds = parse_seeds(args.seeds)
    # everything checkable is checked before minutes of training
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if not args.no_serve:
        from app.cli import check_address

        check_address(args.host, args.port)
    started = time.time()
    print(
        f"[1/3] training {args.task} ({args.preset} preset), seeds {args.seeds}, into {args.root}/{experiment}"
    )
    summaries = train_seeds(
        args.task,
        preset=args.preset,
        seeds=seeds,
        root=args.root,
        experiment=experiment,
        workers=args.workers,
        resume=True,  # a demo stopped with Ctrl-C continues where it was
    )
    for summary in summaries:
        acc = "n/a" if summary.last_eval_acc is None else f"{summary.last_eval_acc:.3f}"
        print(
            f"      {summary.run}: {summary.status}, {summary.checkpoints} checkpoints, eval acc {acc}"
        )
    print(f"      training done in {time.time() - started:.0f} s")

    fit_started = time.time()
    print(f"[2/3] fitting HMMs with 1..{args.max_states} states, {args.restarts} restarts each")
    try:
        fit = fit_experiment(
            args.root,
            experiment,
            max_states=args.max_states,
            restarts=args.restarts,
            n_states=args.n_states,
            workers=args.workers,
        )
    except ValueError as error:  # analysis explains bad input in the message
        raise UserError(str(error)) from None
    training_map = fit.map()
    print(
        f"      selected {fit.selected_n} states, {len(training_map.edges)} transitions "
        f"(fit {time.time() - fit_started:.0f} s, total {time.time() - started:.0f} s)"
    )
    if args.no_serve:
        return 0

    from app.main import serve

    url = f"http://{args.host}:{args.port}/?experiment={experiment}"
    print(f"[3/3] serving the dashboard: {url}  (Ctrl-C to stop)", flush=True)
    serve(args.root, host=args.host, port=args.port)
    return 0
