"""Track trainmap's weight statistics from your own PyTorch training loop.

::

    from trainmap.trainer import Tracker

    with Tracker(model, hook_points=["encoder.*", "head"], run_dir="runs/my-exp/seed-0",
                 config={"lr": 1e-3}, seed=0) as tracker:
        for epoch in range(1, epochs + 1):
            ...  # train
            tracker.log(epoch, step=step, train_loss=loss, eval_acc=acc)

Each ``log`` call appends one checkpoint row (the 14 weight statistics at model
level and per hook point, plus whatever scalars you pass) to
``run_dir/metrics.jsonl`` through :mod:`trainer.rundir`. Leaving the ``with``
block marks the run completed; an exception marks it failed, Ctrl-C
interrupted. Non-finite weights make that row's weight columns NaN and flag the
run as diverged at that epoch; logging continues, nothing raises.

With ``background=True`` the weight statistics are computed off the training
loop's critical path: ``log`` copies the weights (``WeightMetrics.snapshot``,
tens of microseconds on the paper model) and a single worker thread computes
and appends the rows, in ``log`` order, with the same numbers as synchronous
logging. ``diverged`` is still known when ``log`` returns (the finiteness check
runs on the copy right away). If the process is killed, every row already
written stays readable; only checkpoints still being computed are lost (at
most two checkpoints). Leaving the ``with`` block waits for them.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path
from typing import Any

from torch import nn

from trainmap.trainer import rundir
from trainmap.trainer.metrics import WeightMetrics


class Tracker:
    """Append one row of weight statistics per :meth:`log` call to a run directory.

    Give the run either as ``run_dir`` (``ROOT/EXPERIMENT/RUN``) or as ``root``,
    ``experiment`` and ``run``. ``hook_points`` are names from
    ``model.named_modules()`` (globs allowed, ``None`` = every module with its
    own parameters); an unknown name raises :class:`trainer.metrics.HookPointError`
    here, listing close matches. ``resume_through_step`` reopens an existing run
    and drops rows after that step (see ``rundir.RunWriter.reopen``).
    """

    def __init__(
        self,
        model: nn.Module,
        hook_points: Iterable[str] | None = None,
        run_dir: str | os.PathLike | None = None,
        *,
        root: str | os.PathLike | None = None,
        experiment: str | None = None,
        run: str | None = None,
        config: Mapping[str, Any] | None = None,
        task: str = "custom",
        seed: int | None = None,
        split_heads: Mapping[str, int | tuple[int, int]] | None = None,
        include_gains: bool = False,
        overwrite: bool = False,
        resume_through_step: int | None = None,
        background: bool = False,
    ):
        if run_dir is not None:
            path = Path(run_dir)
            root, experiment, run = path.parent.parent, path.parent.name, path.name
        if root is None or experiment is None or run is None:
            raise ValueError("give run_dir=ROOT/EXPERIMENT/RUN, or root, experiment and run")
        # Resolve hook points before touching the disk: a typo creates no run.
        self.weights = WeightMetrics(
            model, hook_points, split_heads=split_heads, include_gains=include_gains
        )
        self.model = model
        self.hook_points = self.weights.hook_points
        if resume_through_step is not None:
            self.writer = rundir.RunWriter.reopen(
                rundir.run_path(root, experiment, run), keep_through_step=resume_through_step
            )
        else:
            self.writer = rundir.RunWriter.create(
                root,
                experiment,
                run,
                task=task,
                seed=seed,
                config=config,
                hook_points=self.hook_points,
                overwrite=overwrite,
            )
        self.path = self.writer.path
        self.diverged = self.writer.meta.get("diverged_at_epoch") is not None
        # One worker: rows reach the file in log order.
        self._worker = (
            ThreadPoolExecutor(max_workers=1, thread_name_prefix="trainmap-metrics")
            if background
            else None
        )
        self._pending: list[Future] = []

    def log(self, epoch: int, step: int | None = None, **scalars: Any) -> dict[str, Any]:
        """Compute the weight statistics now and append them with ``scalars`` as one row.

        ``step`` defaults to ``epoch``. Scalars may be floats, ints, numpy or
        0-d torch values; non-finite ones are stored as null. Returns the row
        (in the background, without the weight columns, which are still to come).
        """
        index = {"epoch": int(epoch), "step": int(epoch if step is None else step)}
        values = {name: _scalar(value) for name, value in scalars.items()}
        if self._worker is None:
            return self._write_row(index, values, None)
        snapshot = self.weights.snapshot()
        if not self.weights.is_finite(snapshot):
            self.diverged = True
        self.after_logged(self._write_row, index, values, snapshot)
        return {**index, **values}

    def _write_row(self, index: dict, values: dict, snapshot: list | None) -> dict[str, Any]:
        weight_columns, finite = self.weights.compute(snapshot)
        if not finite:
            self.writer.mark_diverged(index["epoch"])
            self.diverged = True
        row = {**index, **weight_columns, **values}
        self.writer.append(row)
        return row

    MAX_PENDING = 4
    """Background jobs queued at most; ``log`` waits beyond that (bounded memory)."""

    def after_logged(self, fn: Callable[..., Any], *args: Any) -> None:
        """Call ``fn(*args)`` once every row logged so far is written.

        Right away when logging is synchronous; in the background after the
        pending rows, in order. The training loop saves its resume state this
        way, so a state is never on disk before its metrics row (which
        ``rundir.load_state`` relies on). An error in a background job is
        raised here, at the next call, or when the tracker finishes.
        """
        if self._worker is None:
            fn(*args)
            return
        self._collect(keep=self.MAX_PENDING - 1)
        self._pending.append(self._worker.submit(fn, *args))

    def _collect(self, keep: int = 0) -> None:
        """Wait until at most ``keep`` jobs are pending; raise the first error."""
        while len(self._pending) > keep or (self._pending and self._pending[0].done()):
            self._pending.pop(0).result()

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        self._drain()
        self.writer.finish(status, error)

    def _drain(self) -> None:
        """Wait for the background jobs, then stop the worker; raise the first error."""
        if self._worker is None:
            return
        try:
            self._collect()
        finally:
            self._worker.shutdown(wait=True, cancel_futures=False)
            self._worker = None
            self._pending = []

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        try:
            self._drain()
        except Exception as error:  # noqa: BLE001 - a failed background row fails the run
            if exc_type is None:
                exc_type, exc = type(error), error
            self.writer.__exit__(exc_type, exc, tb)
            raise
        self.writer.__exit__(exc_type, exc, tb)


def _scalar(value: Any) -> Any:
    if hasattr(value, "detach"):  # a torch tensor: take its value without keeping the graph
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else float("nan")
    return value
