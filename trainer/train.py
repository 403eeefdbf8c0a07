"""Train a built-in task for many seeds; each seed becomes a run directory.

From the command line::

    trainmap train --task modadd --preset quick --seeds 0-7 --out runs/modadd-quick
    trainmap train --task modadd --preset quick --seeds 0-7 --out runs/modadd-quick --resume

From Python (what ``trainmap demo`` calls)::

    from trainmap.trainer.train import train_seeds
    summaries = train_seeds("modadd", preset="quick", seeds=range(8), root="runs",
                            experiment="modadd-quick", workers=2)

The file reads top to bottom in run order: :func:`train_run` is the whole
training loop of one seed (data, model, optimizer, optional resume, then one
loop over epochs with a checkpoint every ``eval_every`` epochs), and
:func:`train_seeds` hands seeds to joblib (loky processes, or a dask cluster).

Determinism: each run uses one torch thread and seeds everything it draws
from (data split, initialisation, batch order, grad_sym samples), so the same
seed and config give the same metrics, in a worker or not. At every checkpoint
the model, the optimizer state and the RNG states are saved as plain arrays
(``rundir.save_state``), so ``resume=True`` continues an interrupted run and
ends with the same rows as an uninterrupted one.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import re
import time
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import torch
from tqdm.auto import tqdm

from trainmap.trainer import rundir
from trainmap.trainer.config import TrainConfig
from trainmap.trainer.errors import UserError
from trainmap.trainer.metrics import resolve_hook_points
from trainmap.trainer.tasks import Data, Task, get_task
from trainmap.trainer.tracker import Tracker

BACKENDS = ("loky", "dask")
MAX_EPOCHS = 10**8  # far beyond any real run; a larger number is a typo


# ----------------------------------------------------------------- one seed


def train_run(
    config: TrainConfig,
    root: str | os.PathLike,
    experiment: str,
    *,
    run: str | None = None,
    resume: bool = False,
    progress: bool = True,
    position: int = 0,
    pace: float = 0.0,
) -> str:
    """Train one seed into ``root/experiment/run`` (default run name ``seed-N``); return its path.

    With ``resume=True`` an existing run continues from its last saved state
    (or starts over if it has none yet). Ctrl-C marks the run interrupted and
    keeps every completed checkpoint. ``pace`` > 0 waits until at least that
    many seconds have passed since the previous checkpoint before going on
    (the demo's live run, slowed so a person can watch it; it trains and
    writes exactly what an unpaced run would).
    """
    task = get_task(config.task)
    run = run or f"seed-{config.seed}"
    path = rundir.run_path(root, experiment, run)
    device = config.device
    threads = torch.get_num_threads()
    torch.set_num_threads(1)  # identical arithmetic in every worker: determinism
    try:
        # --- data and model, both drawn from the seed
        data: Data = task.make_data(config).to(device)
        torch.manual_seed(config.seed)
        model = task.make_model(config).to(device)
        optimizer = make_optimizer(model, config)
        batch_order = torch.Generator().manual_seed(config.seed + 1)  # shuffling only

        # --- resume from the last checkpoint's state, if asked and there is one
        start_epoch, step, keep_through_step = 1, 0, None
        # The state must be one of the run's checkpoints (load_state checks it
        # against metrics.jsonl); an unusable one stops with its reason.
        state = None
        if resume and (path / rundir.META_FILE).exists():
            state = rundir.load_state(path, check_metrics=True)
        if state is not None:
            try:
                start_epoch, step = restore_state(state, model, optimizer, batch_order)
            except (KeyError, ValueError, TypeError, RuntimeError) as error:
                reason = str(error).splitlines()[0] if str(error) else type(error).__name__
                raise rundir.RunDirError(
                    f"resume state of {experiment}/{run} does not fit this model and optimizer "
                    f"({type(error).__name__}: {reason}); remove {path / rundir.STATE_DIR} "
                    "to restart the run"
                ) from None
            start_epoch += 1  # the saved epoch is complete
            keep_through_step = step
        tracker = Tracker(
            model,
            config.hook_points or task.hook_points,
            root=root,
            experiment=experiment,
            run=run,
            config=dataclasses.asdict(config),
            task=task.name,
            seed=config.seed,
            split_heads=task.split_heads(config) if task.split_heads else None,
            resume_through_step=keep_through_step,
            overwrite=resume and state is None,  # resuming a run with no checkpoint yet: restart it
        )

        n_train = len(data.train_y)
        batch_size = config.batch_size or n_train
        bar = tqdm(
            total=config.epochs,
            initial=start_epoch - 1,
            desc=f"{experiment}/{run}",
            position=position,
            leave=False,
            disable=not progress,
            dynamic_ncols=True,
        )
        paced = time.monotonic()
        with tracker, bar:
            for epoch in range(start_epoch, config.epochs + 1):
                # --- one pass over the training set in a fresh seeded order
                model.train()
                order = torch.randperm(n_train, generator=batch_order).to(device)
                loss_sum = torch.zeros((), device=device)
                correct = torch.zeros((), device=device)
                for start in range(0, n_train, batch_size):
                    batch = order[start : start + batch_size]
                    inputs, targets = data.train_x[batch], data.train_y[batch]
                    outputs = model(inputs)
                    loss = task.loss(outputs, targets)
                    optimizer.zero_grad(set_to_none=True)
                    loss.backward()
                    optimizer.step()
                    step += 1
                    # train loss/acc are measured on the batches as they were trained
                    # on (before each update), as "mean loss over the epoch" says
                    loss_sum += loss.detach() * len(batch)
                    correct += task.correct(outputs.detach(), targets)
                bar.update(1)

                # --- checkpoint: metrics row, then the state to resume from. A
                # non-finite loss forces one now, so a divergence is caught (and
                # the run ended) at once rather than eval_every epochs later.
                exploding = not math.isfinite(float(loss_sum))
                if epoch % config.eval_every == 0 or epoch == config.epochs or exploding:
                    scalars = {
                        "train_loss": float(loss_sum) / n_train,
                        "train_acc": float(correct) / n_train,
                        **evaluate(model, task, data),
                    }
                    if task.extra_metrics is not None and not tracker.diverged:
                        scalars.update(task.extra_metrics(model, config, epoch))
                    row = tracker.log(epoch, step=step, **scalars)
                    if tracker.diverged:
                        break  # non-finite weights stay non-finite: the run ends here
                    rundir.save_state(
                        path, *state_arrays(model, optimizer, batch_order, epoch, step, config)
                    )
                    bar.set_postfix(eval_acc=f"{row['eval_acc']:.3f}", refresh=False)
                    if pace > 0:
                        time.sleep(max(0.0, pace - (time.monotonic() - paced)))
                        paced = time.monotonic()
        return str(path)
    finally:
        torch.set_num_threads(threads)


def make_optimizer(model: torch.nn.Module, config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adamw":
        return torch.optim.AdamW(
            model.parameters(),
            lr=config.lr,
            weight_decay=config.weight_decay,
            betas=(config.beta1, config.beta2),
        )
    if config.optimizer == "sgd":
        return torch.optim.SGD(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    raise UserError(f"unknown optimizer {config.optimizer!r}; valid: adamw, sgd")


@torch.no_grad()
def evaluate(model: torch.nn.Module, task: Task, data: Data) -> dict[str, float]:
    """Loss and accuracy on the held-out set, in eval mode (restored afterwards)."""
    was_training = model.training
    model.eval()
    outputs = model(data.test_x)
    model.train(was_training)
    n = len(data.test_y)
    return {
        "eval_loss": float(task.loss(outputs, data.test_y)),
        "eval_acc": float(task.correct(outputs, data.test_y)) / n,
    }


# ------------------------------------------------------------ resume state
# Plain arrays and JSON only (rundir.save_state): never pickle, never torch.save.


def state_arrays(model, optimizer, batch_order, epoch, step, config):
    arrays = {f"model.{k}": v.detach().cpu().numpy() for k, v in model.state_dict().items()}
    optimizer_state = optimizer.state_dict()
    scalars = {}
    for index, values in optimizer_state["state"].items():
        for key, value in values.items():
            if torch.is_tensor(value):
                arrays[f"optimizer.{index}.{key}"] = value.detach().cpu().numpy()
            else:
                scalars[f"{index}.{key}"] = value
    arrays["rng.torch"] = torch.get_rng_state().numpy()
    arrays["rng.batch_order"] = batch_order.get_state().numpy()
    info = {
        "epoch": epoch,
        "step": step,
        "param_groups": optimizer_state["param_groups"],
        "optimizer_scalars": scalars,
        "config": json.loads(json.dumps(dataclasses.asdict(config), default=str)),
    }
    return arrays, info


def restore_state(state, model, optimizer, batch_order) -> tuple[int, int]:
    """Load a saved state into the model, optimizer and generators; return (epoch, step)."""
    arrays, info = state
    device = next(model.parameters()).device
    model.load_state_dict(
        {
            k[len("model.") :]: torch.from_numpy(v)
            for k, v in arrays.items()
            if k.startswith("model.")
        }
    )
    per_param: dict[int, dict[str, Any]] = {}
    for name, value in arrays.items():
        if name.startswith("optimizer."):
            _, index, key = name.split(".", 2)
            per_param.setdefault(int(index), {})[key] = torch.from_numpy(value).to(device)
    for name, value in info["optimizer_scalars"].items():
        index, key = name.split(".", 1)
        per_param.setdefault(int(index), {})[key] = value
    groups = [
        {k: tuple(v) if k == "betas" else v for k, v in group.items()}
        for group in info["param_groups"]
    ]
    optimizer.load_state_dict({"state": per_param, "param_groups": groups})
    torch.set_rng_state(torch.from_numpy(arrays["rng.torch"]))
    batch_order.set_state(torch.from_numpy(arrays["rng.batch_order"]))
    return int(info["epoch"]), int(info["step"])


# ------------------------------------------------------------- many seeds


def make_configs(
    task: str,
    preset: str = "quick",
    seeds: Iterable[int] = range(8),
    **overrides: Any,
) -> list[TrainConfig]:
    """One config per seed, checked: a bad value raises UserError with one line."""
    task_obj = get_task(task)
    seeds = list(seeds)
    if not seeds:
        raise UserError("no seeds given")
    configs = [task_obj.config(preset, seed=int(seed), **overrides) for seed in seeds]
    config = configs[0]
    if config.epochs <= 0:
        raise UserError(f"epochs must be a positive integer, got {config.epochs}")
    if config.eval_every <= 0:
        raise UserError(f"eval_every must be a positive integer, got {config.eval_every}")
    if config.batch_size < 0:
        raise UserError(f"batch_size must be >= 0 (0 = full batch), got {config.batch_size}")
    if config.epochs > MAX_EPOCHS:
        raise UserError(f"epochs must be at most {MAX_EPOCHS}, got {config.epochs}")
    if not re.fullmatch(r"cpu|cuda(:\d+)?", str(config.device)):
        raise UserError(f"unknown device {config.device!r}; valid: cpu, cuda, cuda:N")
    if config.device.startswith("cuda") and not torch.cuda.is_available():
        raise UserError(f"device {config.device!r} requested but CUDA is not available")
    # hook points are checked on a throwaway model, before any run directory exists
    resolve_hook_points(task_obj.make_model(config), config.hook_points or task_obj.hook_points)
    return configs


def train_seeds(
    task: str,
    preset: str = "quick",
    seeds: Iterable[int] = range(8),
    root: str | os.PathLike = "runs",
    experiment: str | None = None,
    *,
    workers: int = 2,
    backend: str = "loky",
    scheduler: str | None = None,
    epochs: int | None = None,
    eval_every: int | None = None,
    hook_points: list[str] | None = None,
    device: str = "cpu",
    resume: bool = False,
    progress: bool = True,
    **overrides: Any,
) -> list[rundir.RunSummary]:
    """Train ``seeds`` of ``task`` into ``root/experiment/seed-N``; return their summaries.

    Completed runs with the same config are reused, not retrained (so running
    this twice costs nothing the second time). Interrupted or failed runs are
    continued from their last checkpoint with ``resume=True``; without it they
    raise UserError. ``backend="dask"`` sends the seeds to the dask.distributed
    scheduler at ``scheduler`` (the root must be on a filesystem the workers
    share); ``workers`` is then set by the cluster. Extra keyword arguments
    override config fields (e.g. ``lr=3e-3``).
    """
    if backend not in BACKENDS:
        raise UserError(f"unknown backend {backend!r}; valid backends: {', '.join(BACKENDS)}")
    if backend == "dask" and not scheduler:
        raise UserError("the dask backend needs --scheduler ADDRESS (e.g. tcp://host:8786)")
    if workers < 1:
        raise UserError(f"workers must be >= 1, got {workers}")
    experiment = experiment or f"{task}-{preset}"
    rundir.check_name(experiment, "experiment")
    configs = make_configs(
        task,
        preset,
        seeds,
        epochs=epochs,
        eval_every=eval_every,
        hook_points=hook_points,
        device=device,
        **overrides,
    )
    root = Path(root).resolve()
    make_folder(root, "root")
    make_folder(root / experiment, "experiment folder")

    # --- decide per seed: reuse a finished run, resume one, or start one
    jobs, paths = [], []
    for config in configs:
        path = rundir.run_path(root, experiment, f"seed-{config.seed}")
        paths.append(path)
        action = _plan(path, config, resume)
        if action != "done":
            jobs.append((config, action == "resume"))

    # --- run the jobs: loky processes here, or a dask cluster
    overall = tqdm(total=len(configs), initial=len(configs) - len(jobs), desc="seeds",
                   disable=not progress, dynamic_ncols=True)  # fmt: skip
    try:
        with overall:
            for _ in _run_jobs(jobs, root, experiment, workers, backend, scheduler, progress):
                overall.update(1)
    except KeyboardInterrupt:
        _mark_interrupted(paths)
        raise
    return [rundir.summarize_run(path, experiment) for path in paths]


def make_folder(path: Path, what: str) -> None:
    """``mkdir -p`` with a one-line UserError (a file in the way, no permission, ...)."""
    if path.exists() and not path.is_dir():
        raise UserError(f"{what} {path} is not a directory")
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as error:
        raise UserError(f"cannot create {what} {path}: {error.strerror}") from None


def _plan(path: Path, config: TrainConfig, resume: bool) -> str:
    """'new', 'resume' or 'done' for one run, or UserError when it cannot proceed."""
    if not (path / rundir.META_FILE).exists():
        return "new"
    summary = rundir.summarize_run(path)
    if summary.broken:
        raise UserError(f"run {path} is broken ({summary.reason}); remove it or use another --out")
    stored = {k: v for k, v in summary.meta.get("config", {}).items() if k != "device"}
    wanted = json.loads(json.dumps(dataclasses.asdict(config), default=str))
    wanted.pop("device")
    if stored != wanted:
        changed = sorted(k for k in set(stored) | set(wanted) if stored.get(k) != wanted.get(k))
        raise UserError(
            f"run {path} exists with a different config ({', '.join(changed)}); "
            "use another --out or remove it"
        )
    if summary.status in ("completed", "diverged"):
        return "done"
    if summary.status == "running":
        writer = summary.meta.get("writer", {})
        raise UserError(f"run {path} is being written by process {writer.get('pid')} right now")
    if not resume:
        raise UserError(f"run {path} exists and is {summary.status}; pass --resume to continue it")
    return "resume"


def _run_jobs(jobs, root, experiment, workers, backend, scheduler, progress):
    """Yield as each job finishes; in-process for one worker, else through joblib."""
    if not jobs:
        return
    if backend == "loky" and (workers == 1 or len(jobs) == 1):
        for config, resume in jobs:
            yield train_run(config, root, experiment, resume=resume, progress=progress, position=1)
        return

    import joblib

    calls = [
        joblib.delayed(train_run)(
            config,
            str(root),
            experiment,
            resume=resume,
            # per-seed bars only where a terminal sees them (not in dask worker logs)
            progress=progress and backend == "loky",
            position=1 + index % workers,
        )
        for index, (config, resume) in enumerate(jobs)
    ]
    if backend == "loky":
        yield from joblib.Parallel(
            n_jobs=min(workers, len(jobs)), backend="loky", return_as="generator_unordered"
        )(calls)
        return

    from dask.distributed import Client

    try:
        client = Client(scheduler, timeout="10s")
    except OSError as error:
        raise UserError(f"cannot reach the dask scheduler at {scheduler}: {error}") from None
    with client, joblib.parallel_config(backend="dask"):
        yield from joblib.Parallel(n_jobs=-1, return_as="generator_unordered")(calls)


def _mark_interrupted(paths: list[Path], grace: float = 5.0) -> None:
    """After Ctrl-C: runs left 'running' by a worker that died are marked interrupted.

    Workers that got the Ctrl-C too mark their own runs; a worker still shutting
    down gets ``grace`` seconds to do so before we look.
    """
    deadline = time.monotonic() + grace
    for path in paths:
        try:
            meta = rundir.read_meta(path)
            while rundir.effective_status(meta)[0] == "running" and time.monotonic() < deadline:
                time.sleep(0.1)
                meta = rundir.read_meta(path)
        except rundir.RunDirError:
            continue
        if meta["status"] == "running" and rundir.effective_status(meta)[0] == "interrupted":
            rundir.RunWriter.reopen(path).finish("interrupted", "interrupted by the user (Ctrl-C)")


MAX_SEED = 2**32 - 1  # numpy's and torch's generators both take seeds up to here
MAX_SEEDS = 100_000


def parse_seeds(text: str) -> list[int]:
    """'0-7' -> [0..7]; '1,3,5' and '0-3,8' work too."""
    seeds: list[int] = []
    try:
        for part in text.split(","):
            if "-" in part.strip()[1:]:
                first, last = (int(v) for v in part.split("-", 1))
                if first < 0 or last > MAX_SEED or last - first >= MAX_SEEDS:
                    raise UserError(
                        f"seeds {text!r}: each seed must be in 0..{MAX_SEED}, "
                        f"at most {MAX_SEEDS} seeds"
                    )
                seeds.extend(range(first, last + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise UserError(f"cannot read seeds {text!r}; use e.g. 0-7 or 0,2,5") from None
    if not seeds or any(seed < 0 for seed in seeds):
        raise UserError(f"seeds must be non-negative integers, got {text!r}")
    if any(seed > MAX_SEED for seed in seeds) or len(seeds) > MAX_SEEDS:
        raise UserError(
            f"seeds {text!r}: each seed must be in 0..{MAX_SEED}, at most {MAX_SEEDS} seeds"
        )
    return seeds


__all__ = ["train_run", "train_seeds", "make_configs", "parse_seeds"]
