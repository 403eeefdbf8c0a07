"""The built-in tasks: data, model, loss and presets, all offline.

A task is a :class:`Task`: a config class (flat, extends ``TrainConfig``),
presets (``paper``, ``quick``, ``tiny``) as dicts of overrides, and small
functions the training loop calls by name. ``get_task(name)`` raises a
UserError listing the valid names.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from torch import Tensor, nn

from trainmap.trainer.config import TrainConfig
from trainmap.trainer.errors import UserError


@dataclass(frozen=True)
class Data:
    train_x: Tensor
    train_y: Tensor
    test_x: Tensor
    test_y: Tensor

    def to(self, device: str) -> Data:
        return Data(*(t.to(device) for t in (self.train_x, self.train_y, self.test_x, self.test_y)))


@dataclass(frozen=True)
class Task:
    name: str
    description: str
    config_class: type[TrainConfig]
    presets: dict[str, dict[str, Any]]
    make_data: Callable[[Any], Data]  # (config) -> Data, deterministic in config.seed
    make_model: Callable[[Any], nn.Module]  # (config) -> model; call after seeding torch
    loss: Callable[[Tensor, Tensor], Tensor]  # (outputs, targets) -> mean loss
    correct: Callable[[Tensor, Tensor], Tensor]  # (outputs, targets) -> number correct
    hook_points: list[str]  # default hook points
    # (model, config, epoch) -> extra scalar columns, e.g. grad_sym and dist_irr
    extra_metrics: Callable[[nn.Module, Any, int], dict[str, float]] | None = None
    # (config) -> WeightMetrics' split_heads: which attention matrices to split per head
    split_heads: Callable[[Any], dict[str, int | tuple[int, int]]] | None = None

    def config(self, preset: str = "quick", **overrides: Any) -> TrainConfig:
        """The config of ``preset`` with ``overrides`` (None values are ignored)."""
        if preset not in self.presets:
            raise UserError(
                f"unknown preset {preset!r} for task {self.name}; "
                f"valid presets: {', '.join(self.presets)}"
            )
        values = {"task": self.name, "preset": preset, **self.presets[preset]}
        values.update({k: v for k, v in overrides.items() if v is not None})
        return self.config_class(**values)


def _registry() -> dict[str, Task]:
    from trainmap.trainer.tasks import digits, modular, parity

    return {
        task.name: task for task in (modular.MODADD, modular.MODADD_LN, parity.TASK, digits.TASK)
    }


def task_names() -> list[str]:
    return list(_registry())


def get_task(name: str) -> Task:
    tasks = _registry()
    if name not in tasks:
        raise UserError(f"unknown task {name!r}; valid tasks: {', '.join(tasks)}")
    return tasks[name]


def classification_loss(logits: Tensor, targets: Tensor) -> Tensor:
    return nn.functional.cross_entropy(logits, targets)


def classification_correct(logits: Tensor, targets: Tensor) -> Tensor:
    return (logits.argmax(dim=-1) == targets).sum()
