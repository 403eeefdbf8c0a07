"""trainmap's callback for Hugging Face ``transformers.Trainer`` (``pip install "trainmap[hf]"``)::

    from transformers import Trainer
    from trainmap.trainer.integrations.hf import TrainmapCallback

    trainer = Trainer(model=model, args=args, train_dataset=train, eval_dataset=test,
                      callbacks=[TrainmapCallback("runs/my-exp/seed-0", ["bert.encoder.layer.*"])])

A row every ``every_n_epochs`` epochs (default 1) or ``every_n_steps`` optimizer
steps: the weight statistics, the Trainer's logged ``loss`` as ``train_loss``,
``eval_loss`` and ``eval_accuracy`` (from your ``compute_metrics``) as
``eval_loss``/``eval_acc`` (names in :data:`HF_SCALARS`; ``scalars`` adds or
overrides them), and ``task_metrics(model, epoch, step)``. The row of a step is
written after that step's logging and evaluation, at the latest as soon as the
Trainer has saved that step, so ``trainer.train(resume_from_checkpoint=...)``
continues the run directory without duplicates. Only the main process writes. A training that raises leaves
the run ``running`` (the Trainer has no exception hook); listings show it as
interrupted once the process is gone.
"""

from __future__ import annotations

import math
import os
from collections.abc import Iterable, Mapping
from typing import Any

try:
    from transformers import TrainerCallback
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        'TrainmapCallback for transformers needs it: pip install "trainmap[hf]"'
    ) from error

from trainmap.trainer.integrations.recorder import CheckpointRecorder, TaskMetrics

# trainmap column -> names the Trainer logs it under, in order. Not "train_loss":
# the Trainer logs that once, at the end, as the mean over the whole training.
HF_SCALARS = {
    "train_loss": ["loss"],
    "train_acc": ["train_accuracy", "train_acc"],
    "eval_loss": ["eval_loss"],
    "eval_acc": ["eval_accuracy", "eval_acc"],
}


class TrainmapCallback(TrainerCallback):
    """Write trainmap checkpoint rows from ``transformers.Trainer``; see the module docstring.

    ``hook_points`` are module names of the model passed to the Trainer
    (``bert.encoder.layer.*``; globs allowed, ``None`` = every module with weights).
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
        config: Mapping[str, Any] | None = None,
        task: str = "custom",
        seed: int | None = None,
        split_heads: Mapping[str, int | tuple[int, int]] | None = None,
        include_gains: bool = False,
        overwrite: bool = False,
    ):
        self.recorder = CheckpointRecorder(
            run_dir,
            hook_points,
            every_n_epochs=every_n_epochs,
            every_n_steps=every_n_steps,
            task_metrics=task_metrics,
            scalars=scalars,
            default_scalars=HF_SCALARS,
            config=config,
            task=task,
            seed=seed,
            split_heads=split_heads,
            include_gains=include_gains,
            overwrite=overwrite,
        )

    @property
    def path(self):
        return self.recorder.path

    # The Trainer has loaded a resumed checkpoint's state (global_step) before this.
    def on_train_begin(self, args, state, control, model=None, **kwargs):
        if state.is_world_process_zero:
            self.recorder.start(model, int(state.global_step))

    def on_step_begin(self, args, state, control, **kwargs):
        self._flush(state)  # a row due at the previous step has all its logs by now

    def on_step_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.recorder.step_done(_epochs_done(state), int(state.global_step))

    def on_epoch_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.recorder.epoch_done(_epochs_done(state), int(state.global_step))

    def on_log(self, args, state, control, logs=None, **kwargs):
        if state.is_world_process_zero and logs:
            self.recorder.observe(logs)

    def on_evaluate(self, args, state, control, metrics=None, **kwargs):
        if state.is_world_process_zero and metrics:
            self.recorder.observe(metrics)

    # Right after the Trainer saved this step (its logging and evaluation came first):
    # the row exists before the training moves on from a checkpoint it can resume from.
    def on_save(self, args, state, control, **kwargs):
        self._flush(state)

    def on_train_end(self, args, state, control, **kwargs):
        if state.is_world_process_zero:
            self.recorder.finish("completed")

    def _flush(self, state) -> None:
        if state.is_world_process_zero:
            self.recorder.flush()


def _epochs_done(state) -> int:
    """Completed epochs: ``state.epoch`` is fractional, exact at an epoch's end (up to rounding)."""
    return int(math.floor((state.epoch or 0.0) + 1e-6))


__all__ = ["TrainmapCallback", "HF_SCALARS"]
