"""Image classification on scikit-learn's bundled 8x8 digits (1797 images, no download).

A small CNN: two 3x3 convolutions (16 and 32 channels) with ReLU, 2x2 max
pooling, and a linear classifier; AdamW lr 1e-3, weight decay 0.01,
batch 64, 80/20 split drawn from the seed. Pixels are scaled to [0, 1]. The
paper used MNIST/CIFAR with LeNet/ResNet; this is the offline stand-in.

Presets: ``paper`` (60 epochs), ``quick`` (30 epochs), ``tiny`` (3 epochs).
Measured for ``quick``, seed 0 only: 8 s CPU; eval acc >= 0.9 from epoch 4,
0.981 at the end. Digits are easy: a quick rise, not a delayed jump.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from trainmap.trainer.config import TrainConfig
from trainmap.trainer.tasks import Data, Task, classification_correct, classification_loss


@dataclass
class DigitsConfig(TrainConfig):
    test_fraction: float = 0.2
    channels: int = 16


PAPER = dict(epochs=60, eval_every=1, batch_size=64, optimizer="adamw", lr=1e-3, weight_decay=0.01)
PRESETS = {
    "paper": PAPER,
    "quick": dict(PAPER, epochs=30),
    "tiny": dict(PAPER, epochs=3, channels=4),
}


def make_data(config: DigitsConfig) -> Data:
    from sklearn.datasets import load_digits  # bundled with scikit-learn: offline

    digits = load_digits()
    images = torch.tensor(digits.images, dtype=torch.float32).unsqueeze(1) / 16  # (N, 1, 8, 8)
    labels = torch.tensor(digits.target, dtype=torch.long)
    order = torch.randperm(len(labels), generator=torch.Generator().manual_seed(config.seed))
    n_test = round(config.test_fraction * len(labels))
    test, train = order[:n_test], order[n_test:]
    return Data(images[train], labels[train], images[test], labels[test])


class CNN(nn.Module):
    def __init__(self, config: DigitsConfig):
        super().__init__()
        c = config.channels
        self.conv1 = nn.Conv2d(1, c, 3, padding=1)
        self.conv2 = nn.Conv2d(c, 2 * c, 3, padding=1)
        self.fc = nn.Linear(2 * c * 4 * 4, 10)

    def forward(self, x: Tensor) -> Tensor:  # (B, 1, 8, 8) -> logits (B, 10)
        x = torch.relu(self.conv1(x))
        x = nn.functional.max_pool2d(torch.relu(self.conv2(x)), 2)  # (B, 2c, 4, 4)
        return self.fc(x.flatten(1))


TASK = Task(
    name="digits",
    description="sklearn digits (8x8, offline), small CNN",
    config_class=DigitsConfig,
    presets=PRESETS,
    make_data=make_data,
    make_model=CNN,
    loss=classification_loss,
    correct=classification_correct,
    hook_points=["conv1", "conv2", "fc"],
)
