"""When a framework callback writes a checkpoint row, and what goes into it.

The framework adapters (``lightning_hooks``, ``hf``) only translate their hooks
into four calls: :meth:`CheckpointRecorder.start` when training starts (or
resumes), :meth:`~CheckpointRecorder.step_done` and
:meth:`~CheckpointRecorder.epoch_done` as training advances,
:meth:`~CheckpointRecorder.observe` for the scalars the framework logged, and
:meth:`~CheckpointRecorder.flush` / :meth:`~CheckpointRecorder.finish`. Rows go
through :class:`~trainmap.trainer.tracker.Tracker`, the one writer of rows.

A checkpoint that falls due is written at the latest moment that still precedes
the framework's own checkpoint save and the next optimizer step: so the
framework's evaluation of that step is in the row, and a run resumed from the
framework's checkpoint at step S keeps exactly the rows through S and appends
the rest (``RunWriter.reopen(keep_through_step=S)``): never a duplicate.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

from torch import nn

from trainmap.trainer import rundir
from trainmap.trainer.errors import UserError
from trainmap.trainer.tracker import Tracker

TaskMetrics = Callable[[nn.Module, int, int], Mapping[str, Any]]
"""``task_metrics(model, epoch, step) -> {column: value}``: e.g. grad_sym, dist_irr."""


class CheckpointRecorder:
    """Framework-neutral core of the callbacks; see the module docstring.

    ``scalars`` maps a trainmap column (``eval_acc``) to the framework's names
    for it, tried in order (the first one logged wins); columns not named in it
    keep the framework adapter's defaults. Values are the latest the framework
    logged up to the checkpoint.
    """

    def __init__(
        self,
        run_dir: str | os.PathLike,
        hook_points: Iterable[str] | None = None,
        *,
        every_n_epochs: int | None = None,
        every_n_steps: int | None = None,
        task_metrics: TaskMetrics | None = None,
        scalars: Mapping[str, str | Iterable[str]] | None = None,
        default_scalars: Mapping[str, Iterable[str]] = (),
        config: Mapping[str, Any] | None = None,
        task: str = "custom",
        seed: int | None = None,
        split_heads: Mapping[str, int | tuple[int, int]] | None = None,
        include_gains: bool = False,
        overwrite: bool = False,
    ):
        if every_n_epochs is not None and every_n_steps is not None:
            raise UserError("give every_n_epochs or every_n_steps, not both")
        if every_n_epochs is None and every_n_steps is None:
            every_n_epochs = 1
        for name, value in (("every_n_epochs", every_n_epochs), ("every_n_steps", every_n_steps)):
            if value is not None and (not isinstance(value, int) or value < 1):
                raise UserError(f"{name} must be a positive integer, got {value!r}")
        path = Path(run_dir)
        # names are checked now, before training starts, not at the first checkpoint
        self.path = rundir.run_path(path.parent.parent, path.parent.name, path.name)
        self.hook_points = None if hook_points is None else list(hook_points)
        self.every_n_epochs, self.every_n_steps = every_n_epochs, every_n_steps
        self.task_metrics = task_metrics
        self.names: dict[str, list[str]] = {k: list(v) for k, v in dict(default_scalars).items()}
        for column, names in (scalars or {}).items():
            self.names[column] = [names] if isinstance(names, str) else list(names)
        self.tracker_options = dict(
            config=config,
            task=task,
            seed=seed,
            split_heads=split_heads,
            include_gains=include_gains,
            overwrite=overwrite,
        )
        self.tracker: Tracker | None = None
        self.model: nn.Module | None = None
        self.latest: dict[str, Any] = {}  # framework name -> latest logged value
        self.pending: tuple[int, int] | None = None  # (epoch, step) of a row due
        self.last_step: int | None = None
        self.resumed_from_step: int | None = None

    # -------------------------------------------------------------- lifecycle

    def start(self, model: nn.Module, step: int) -> None:
        """Open the run: a new one, or, when training resumes at ``step`` > 0, the existing one.

        Rows after ``step`` (written after the framework's last checkpoint) are
        dropped, so the resumed training appends without duplicates.
        """
        self.model = model
        self.pending, self.latest = None, {}
        if self.tracker is not None:  # a second fit() in the same process
            self.tracker.finish("completed")
        exists = (self.path / rundir.META_FILE).exists()
        overwrite = self.tracker_options["overwrite"]
        if exists and step == 0 and not overwrite:
            raise UserError(
                f"run {self.path} already exists and this training starts at step 0 (not a "
                "resume from a checkpoint): pass overwrite=True or choose another run_dir"
            )
        resume = exists and step > 0 and not overwrite
        self.tracker = Tracker(
            model,
            self.hook_points,
            run_dir=self.path,
            resume_through_step=step if resume else None,
            **self.tracker_options,
        )
        self.resumed_from_step = step if resume else None
        self.last_step = step if resume else None

    def step_done(self, epoch: int, step: int) -> None:
        """An optimizer step finished (``step`` counts them from 1)."""
        if self.every_n_steps is not None and step % self.every_n_steps == 0:
            self._due(epoch, step)

    def epoch_done(self, epoch: int, step: int) -> None:
        """Epoch ``epoch`` (counted from 1) finished after ``step`` optimizer steps."""
        if self.every_n_epochs is not None and epoch % self.every_n_epochs == 0:
            self._due(epoch, step)

    def observe(self, values: Mapping[str, Any]) -> None:
        """Remember the framework's logged scalars (by the framework's names)."""
        self.latest.update(values)

    def flush(self) -> dict[str, Any] | None:
        """Write the row that is due, if any; return it."""
        if self.pending is None or self.tracker is None:
            return None
        epoch, step = self.pending
        self.pending = None
        scalars = {}
        for column, names in self.names.items():
            for name in names:
                if self.latest.get(name) is not None:
                    scalars[column] = self.latest[name]
                    break
        if self.task_metrics is not None and not self.tracker.diverged:
            scalars.update(self.task_metrics(self.model, epoch, step))
        self.last_step = step
        return self.tracker.log(epoch, step=step, **scalars)

    def finish(self, status: str = "completed", error: str | None = None) -> None:
        """Write a row still due and close the run with ``status``."""
        if self.tracker is None:
            return
        if status == "completed":
            self.flush()
        self.tracker.finish(status, error)
        self.tracker = None

    def _due(self, epoch: int, step: int) -> None:
        if step == self.last_step or (self.pending is not None and self.pending[1] == step):
            return  # this step already has its row
        self.flush()
        self.pending = (epoch, step)
