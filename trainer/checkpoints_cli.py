"""``trainmap import-checkpoints``: a run directory from a folder of saved checkpoints.

Imports no torch at import time; :func:`main` imports :mod:`trainer.checkpoints`.
"""

from __future__ import annotations

import argparse
import sys

from trainmap.trainer.errors import UserError


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument("directory", metavar="DIR", help="folder of checkpoints (state dicts)")
    parser.add_argument(
        "--out", required=True, metavar="ROOT/EXPERIMENT/RUN", help="the run directory to write"
    )
    source = parser.add_mutually_exclusive_group(required=True)
    source.add_argument(
        "--model",
        metavar="MODULE:FACTORY",
        help="function building the model the checkpoints load into (file.py:FACTORY works too)",
    )
    source.add_argument("--task", help="a built-in task's model instead (with --preset, --seed)")
    parser.add_argument("--preset", default="quick", help="with --task: its preset (default quick)")
    parser.add_argument("--seed", type=int, default=0, help="with --task: the seed (default 0)")
    parser.add_argument(
        "--hook-points", help="comma-separated module names (globs allowed); default: all"
    )
    parser.add_argument(
        "--metrics",
        metavar="MODULE:FUNCTION",
        help="task metrics: FUNCTION(model, epoch, step) -> {column: value} per checkpoint",
    )
    parser.add_argument(
        "--pattern",
        metavar="REGEX",
        help="where the order is in a name: a regex with (?P<step>\\d+) and/or (?P<epoch>\\d+)",
    )
    parser.add_argument("--device", default="cpu", help="cpu (default), cuda or cuda:N")
    parser.add_argument("--overwrite", action="store_true", help="replace an existing run")


def split_run(out: str) -> str:
    parts = out.rstrip("/").split("/")
    if len(parts) < 3 or not all(parts[-3:]):
        raise UserError(f"--out must be ROOT/EXPERIMENT/RUN (e.g. runs/old/seed-0), got {out!r}")
    return out.rstrip("/")


def main(args: argparse.Namespace) -> int:
    out = split_run(args.out)
    if args.task is None and (args.preset != "quick" or args.seed != 0):
        raise UserError("--preset and --seed go with --task")
    import re

    import torch

    from trainmap.trainer import checkpoints

    if not re.fullmatch(r"cpu|cuda(:\d+)?", args.device):
        raise UserError(f"unknown device {args.device!r}; valid: cpu, cuda, cuda:N")
    if args.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {args.device!r} requested but CUDA is not available")
    hook_points = None
    if args.hook_points:
        hook_points = [name.strip() for name in args.hook_points.split(",") if name.strip()]
    options = {}
    if args.task is not None:
        factory, task_hooks, split_heads, task_metrics, config = checkpoints.task_import(
            args.task, args.preset, args.seed, device=args.device
        )
        options = dict(split_heads=split_heads, config=config, task=args.task, seed=args.seed)
        hook_points = hook_points or task_hooks
    else:
        factory, task_metrics = checkpoints.load_function(args.model), None
    if args.metrics:
        task_metrics = checkpoints.load_function(args.metrics)

    def report_skip(name: str, reason: str) -> None:
        print(f"skipped {name}: {reason}", file=sys.stderr)

    result = checkpoints.import_checkpoints(
        args.directory,
        factory,
        out,
        hook_points,
        task_metrics=task_metrics,
        pattern=args.pattern,
        device=args.device,
        overwrite=args.overwrite,
        on_skip=report_skip,
        **options,
    )
    first, last = result.imported[0], result.imported[-1]
    print(
        f"{result.path}: {len(result.imported)} checkpoints imported (steps {first.step} to "
        f"{last.step}), {len(result.skipped)} skipped"
    )
    return 0 if not result.skipped else 1
