"""The GPU path: weight statistics are computed where the weights are; only results move.

The CUDA tests skip on machines without one (this project's CI has none); the
order-statistics median that replaces the CPU's numpy partition there is
checked on the CPU too, since ``kthvalue`` is the same operation on both.
"""

from __future__ import annotations

import numpy as np
import pytest
import torch
from torch import nn

from trainmap.trainer.metrics import WeightMetrics, _median_on_device

CUDA = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA on this machine")


@pytest.mark.parametrize("n", [1, 2, 7, 10, 1001])
def test_the_device_median_is_numpys_median(n):
    values = torch.randn(n, generator=torch.Generator().manual_seed(n))
    assert float(_median_on_device(values)) == float(np.median(values.numpy().astype(np.float64)))


def model():
    torch.manual_seed(0)
    return nn.Sequential(nn.Linear(16, 32), nn.ReLU(), nn.Linear(32, 4))


@CUDA
def test_cuda_columns_match_cpu_and_only_results_leave_the_device(monkeypatch):
    cpu_columns, _ = WeightMetrics(model(), None).compute()
    on_gpu = model().cuda()
    moved = []
    original = torch.Tensor.cpu

    def record(tensor, *args, **kwargs):
        if tensor.is_cuda:
            moved.append(tensor.numel())
        return original(tensor, *args, **kwargs)

    monkeypatch.setattr(torch.Tensor, "cpu", record)
    gpu_columns, finite = WeightMetrics(on_gpu, None).compute()
    assert finite
    # a results table per shape (matrices x 8 metrics), never a weight tensor
    weights = min(p.numel() for p in on_gpu.parameters() if p.dim() == 2)
    assert all(size < weights for size in moved), moved
    for column, value in cpu_columns.items():
        assert np.isclose(gpu_columns[column], value, rtol=1e-4, atol=1e-6), column
