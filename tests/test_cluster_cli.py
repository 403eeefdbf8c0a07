"""A fit through a cluster started by the dask command lines equals the local fit.

``dask scheduler`` and ``dask worker ADDRESS`` run as separate processes on
loopback (bench/cli_cluster.py), as a user starts them; the session-wide
LocalCluster of conftest.py covers the in-process path.
"""

from __future__ import annotations

import os
import sys

import pandas as pd
import pytest

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

from bench.cli_cluster import CLICluster  # noqa: E402
from trainmap.analysis.api import fit_prepared  # noqa: E402
from trainmap.analysis.prepare import prepare_frames  # noqa: E402
from trainmap.analysis.synthetic import make_synthetic  # noqa: E402


@pytest.mark.slow
def test_fit_through_dask_cli_cluster_equals_local_fit():
    truth = make_synthetic(20, 50, seed=1, n_states=3)
    frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
    prepared = prepare_frames(frames)
    common = dict(max_states=4, restarts=2, workers=2, seed=0, bootstrap=0, max_states_cap=4)
    with CLICluster(nworkers=2, memory_limit="1GiB", timeout=120) as cluster:
        workers = cluster.workers()
        assert len(workers) == 2
        assert all(w["memory_limit"] == 2**30 and w["nthreads"] == 1 for w in workers.values())
        remote, _ = fit_prepared(prepared, backend="dask", scheduler=cluster.address, **common)
        processes = list(cluster._processes)
    # the scheduler and worker processes are gone once the block is left
    assert all(p.poll() is not None for p in processes)
    local, _ = fit_prepared(prepared, backend="loky", **common)
    pd.testing.assert_frame_equal(
        remote.sweep.drop(columns="seconds"), local.sweep.drop(columns="seconds")
    )
    assert remote.selected_n == local.selected_n
    assert remote.map().paths == local.map().paths


def test_cli_cluster_stops_its_processes_when_the_block_fails():
    processes = []
    with pytest.raises(RuntimeError, match="inside"):
        with CLICluster(nworkers=1, memory_limit="512MiB", timeout=120) as cluster:
            processes = list(cluster._processes)
            raise RuntimeError("a failure inside the block")
    assert len(processes) == 2
    assert all(p.poll() is not None for p in processes)
