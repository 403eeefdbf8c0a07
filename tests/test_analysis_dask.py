"""The sweep on a dask.distributed cluster gives the same table as local processes."""

from __future__ import annotations

import pandas as pd
import pytest

from trainmap.analysis.api import fit_prepared
from trainmap.analysis.prepare import prepare_frames
from trainmap.analysis.synthetic import make_synthetic
from trainmap.trainer.columns import WEIGHT_COLUMNS


def test_dask_backend_matches_loky(cluster):
    truth = make_synthetic(8, 60, seed=4, n_states=3, n_features=5)
    frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
    prepared = prepare_frames(frames, features=list(WEIGHT_COLUMNS[:5]))
    common = dict(max_states=3, restarts=2, workers=2, seed=3, bootstrap=0)
    seen = []
    on_dask, _ = fit_prepared(
        prepared,
        backend="dask",
        scheduler=cluster.scheduler_address,
        progress=seen.append,
        **common,
    )
    local, _ = fit_prepared(prepared, backend="loky", **common)
    pd.testing.assert_frame_equal(
        on_dask.sweep.drop(columns="seconds"), local.sweep.drop(columns="seconds")
    )
    assert on_dask.selected_n == local.selected_n
    assert on_dask.map().paths == local.map().paths
    # progress reports the fraction of fits done after every task, ending at 1
    # (the restarts of one n run as one task: 3 tasks of 2 fits)
    assert seen == pytest.approx([1 / 3, 2 / 3, 1.0])
