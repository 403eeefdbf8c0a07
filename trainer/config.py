"""The flat training configuration shared by every built-in task (torch-free).

Each task extends :class:`TrainConfig` with its own flat fields (``p``,
``n_bits``, ...) and names presets as plain dicts of overrides. The whole config
is written to the run's ``meta.json``, so a run says exactly how it was made.
"""

from __future__ import annotations

from dataclasses import dataclass


@dataclass
class TrainConfig:
    task: str = ""
    preset: str = ""
    seed: int = 0
    epochs: int = 100
    eval_every: int = 1  # epochs between checkpoints (one metrics row each)
    batch_size: int = 0  # 0 = the whole training set in one batch
    optimizer: str = "adamw"  # adamw | sgd
    lr: float = 1e-3
    weight_decay: float = 1.0
    beta1: float = 0.9
    beta2: float = 0.98
    hook_points: list[str] | None = None  # None = the task's default hook points
    device: str = "cpu"
