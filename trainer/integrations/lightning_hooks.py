"""The Lightning callback's hooks, shared by ``lightning.pytorch`` and ``pytorch_lightning``.

The two packages ship separate ``Callback`` classes and each Trainer accepts
only its own, so :mod:`.lightning` and :mod:`.pytorch_lightning` each combine
this mixin with their package's base class. This module imports neither.
"""

from __future__ import annotations

import os
from collections.abc import Iterable, Mapping
from typing import Any

from trainmap.trainer.integrations.recorder import CheckpointRecorder, TaskMetrics

# trainmap column -> names a LightningModule commonly logs it under (self.log), in order
LIGHTNING_SCALARS = {
    "train_loss": ["train_loss_epoch", "train_loss", "loss_epoch", "loss"],
    "train_acc": ["train_acc_epoch", "train_acc", "train_accuracy"],
    "eval_loss": ["val_loss", "eval_loss", "valid_loss", "val_loss_epoch"],
    "eval_acc": ["val_acc", "eval_acc", "val_accuracy", "valid_acc", "val_acc_epoch"],
}


class LightningHooks:
    """Write trainmap checkpoint rows from a Lightning ``Trainer.fit``.

    ``run_dir`` is ``ROOT/EXPERIMENT/RUN``; ``hook_points`` are module names of
    the LightningModule (``model.encoder.layers.*``; globs allowed, ``None`` =
    every module with weights). A row every ``every_n_epochs`` epochs (default 1)
    or every ``every_n_steps`` optimizer steps, holding the weight statistics,
    ``train_loss``/``train_acc``/``eval_loss``/``eval_acc`` from what the module
    logged with ``self.log`` (names in :data:`LIGHTNING_SCALARS`; ``scalars``
    adds or overrides them, e.g. ``{"eval_acc": "val/acc"}``), and whatever
    ``task_metrics(model, epoch, step)`` returns. ``fit(ckpt_path=...)``
    resumes the run directory: rows after the checkpoint's step are dropped, the
    rest appended. Only the global-zero process writes.
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
        super().__init__()
        self.recorder = CheckpointRecorder(
            run_dir,
            hook_points,
            every_n_epochs=every_n_epochs,
            every_n_steps=every_n_steps,
            task_metrics=task_metrics,
            scalars=scalars,
            default_scalars=LIGHTNING_SCALARS,
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

    # Lightning restores a checkpoint (ckpt_path=...) before on_train_start, so
    # global_step is already the resumed step here.
    def on_train_start(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.recorder.start(pl_module, int(trainer.global_step))

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx) -> None:
        if not trainer.is_global_zero or self.recorder.every_n_steps is None:
            return
        # epochs completed so far, counting this one once its last batch is done
        last_batch = batch_idx + 1 >= _batches_per_epoch(trainer)
        epoch = int(trainer.current_epoch) + int(last_batch)
        self.recorder.step_done(epoch, int(trainer.global_step))
        # written now, before ModelCheckpoint (always run last) may save this step
        self._flush(trainer)

    # At the callbacks' on_train_epoch_end, the epoch's validation has run and
    # epoch-level metrics are in callback_metrics; ModelCheckpoint saves after us.
    def on_train_epoch_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self.recorder.epoch_done(int(trainer.current_epoch) + 1, int(trainer.global_step))
            self._flush(trainer)

    def on_train_end(self, trainer, pl_module) -> None:
        if trainer.is_global_zero:
            self._flush(trainer)
            self.recorder.finish("completed")

    def on_exception(self, trainer, pl_module, exception) -> None:
        if trainer.is_global_zero:
            if isinstance(exception, KeyboardInterrupt):
                self.recorder.finish("interrupted", "interrupted by the user (Ctrl-C)")
            else:
                self.recorder.finish("failed", f"{type(exception).__name__}: {exception}")

    def _flush(self, trainer) -> None:
        self.recorder.observe(trainer.callback_metrics)
        self.recorder.flush()


def _batches_per_epoch(trainer) -> float:
    batches = trainer.num_training_batches
    return float("inf") if batches is None else float(batches)
