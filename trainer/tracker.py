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
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
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

    def log(self, epoch: int, step: int | None = None, **scalars: Any) -> dict[str, Any]:
        """Compute the weight statistics now and append them with ``scalars`` as one row.

        ``step`` defaults to ``epoch``. Scalars may be floats, ints, numpy or
        0-d torch values; non-finite ones are stored as null. Returns the row.
        """
        weight_columns, finite = self.weights.compute()
        if not finite:
            self.writer.mark_diverged(epoch)
            self.diverged = True
        row: dict[str, Any] = {"epoch": int(epoch), "step": int(epoch if step is None else step)}
        row.update(weight_columns)
        row.update({name: _scalar(value) for name, value in scalars.items()})
        self.writer.append(row)
        return row

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        self.writer.finish(status, error)

    def __enter__(self) -> Tracker:
        return self

    def __exit__(self, exc_type, exc, tb) -> None:
        self.writer.__exit__(exc_type, exc, tb)


def _scalar(value: Any) -> Any:
    if hasattr(value, "detach"):  # a torch tensor: take its value without keeping the graph
        value = value.detach().cpu()
        return value.item() if value.numel() == 1 else float("nan")
    return value
