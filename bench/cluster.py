"""Benchmark: a fit through a dask.distributed cluster against the local engine.

Run with ``python bench/cluster.py`` (options: ``--help``). It generates a
synthetic experiment (default 1000 runs x 1000 checkpoints x 14 features,
``analysis.synthetic``), starts ``dask scheduler`` and ``dask worker ADDRESS
--nworkers N --nthreads 1 --memory-limit M`` as separate processes on loopback
(bench/cli_cluster.py), and fits it with ``analysis.api.fit_prepared`` twice,
on the same prepared data and with the same settings:

* through the cluster (``backend="dask"``, the CLI's ``--backend dask
  --scheduler ADDRESS``): joblib's dask backend scatters the train and
  held-out arrays to the cluster once per sweep, not once per task;
* locally with loky worker processes (the default engine), as many as the
  cluster has workers.

It prints the time of each, their ratio, both selected n and whether the fits
are equal, the memory limit of each dask worker and the peak memory each
reached (the largest of the scheduler's memory reports, sampled every half
second during the fit, and the worker process's peak resident set size), the
peak of the local workers, the cost of shipping the data to every worker once,
and the load average. Then it stops the processes.

The default sweep is n = 1..5 x 2 restarts (about a minute per fit at load
average 4 on 2 cores); n = 1..8 x 4 restarts (``--max-states 8 --restarts 4``)
took 1553 s through the cluster on 2026-12-04 at load averages from 4 to 31
(other engineers' test suites), and its local fit had not finished 25 minutes
later.
"""

from __future__ import annotations

import argparse
import os
import resource
import sys
import threading
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

from bench.cli_cluster import CLICluster  # noqa: E402

MIB = 2**20


def _peak_rss_mib() -> float:
    """Peak resident set size of the calling process, in MiB (ru_maxrss is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


class MemoryWatch:
    """Samples the scheduler's memory report of every worker; keeps each worker's peak."""

    def __init__(self, client, every: float = 0.5):
        self.client, self.every = client, every
        self.peak: dict[str, int] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self):
        while not self._stop.is_set():
            for address, info in self.client.scheduler_info()["workers"].items():
                memory = int(info.get("metrics", {}).get("memory", 0))
                self.peak[address] = max(self.peak.get(address, 0), memory)
            self._stop.wait(self.every)

    def __enter__(self):
        self._thread.start()
        return self

    def __exit__(self, *exc):
        self._stop.set()
        self._thread.join()


def main() -> int:
    parser = argparse.ArgumentParser(description="dask cluster fit benchmark")
    parser.add_argument("--runs", type=int, default=1000)
    parser.add_argument("--checkpoints", type=int, default=1000)
    parser.add_argument("--max-states", type=int, default=5)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument("--nworkers", type=int, default=2, help="dask worker processes")
    parser.add_argument("--memory-limit", default="4GiB", help="per dask worker process")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from dask.distributed import Client

    from trainmap.analysis.api import fit_prepared
    from trainmap.analysis.prepare import prepare_frames
    from trainmap.analysis.synthetic import make_synthetic

    started = time.perf_counter()
    truth = make_synthetic(args.runs, args.checkpoints, seed=args.seed)
    frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
    del truth
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_frames(frames, seed=args.seed)
    del frames
    X, _ = prepared.stack(prepared.train)
    X_held, _ = prepared.stack(prepared.heldout)
    data_mib = (X.nbytes + X_held.nbytes) / MIB
    print(
        f"data: {args.runs} runs x {args.checkpoints} checkpoints x "
        f"{len(prepared.feature_names)} features ({len(prepared.train)} train, "
        f"{len(prepared.heldout)} held out; {data_mib:.0f} MiB of float64), made in "
        f"{time.perf_counter() - started:.0f} s; sweep n = 1..{args.max_states} x "
        f"{args.restarts} restarts; {os.cpu_count()} cores, load average "
        f"{os.getloadavg()[0]:.1f}",
        flush=True,
    )
    common = dict(
        max_states=args.max_states,
        restarts=args.restarts,
        workers=args.nworkers,
        seed=args.seed,
        bootstrap=0,
        max_states_cap=args.max_states,  # the same n range for both, no extension
    )

    with CLICluster(nworkers=args.nworkers, memory_limit=args.memory_limit) as cluster:
        workers = cluster.workers()
        limits = sorted({w["memory_limit"] for w in workers.values()})
        print(
            f"cluster: dask scheduler at {cluster.address}, dask worker --nworkers "
            f"{args.nworkers} --nthreads 1 --memory-limit {args.memory_limit} "
            f"(scheduler reports {', '.join(f'{m / MIB:.0f} MiB' for m in limits)} per worker)",
            flush=True,
        )
        with Client(cluster.address) as client:
            # What shipping the data costs: both arrays to every worker, once.
            started = time.perf_counter()
            futures = client.scatter([X, X_held], broadcast=True, hash=False)
            client.gather(futures)
            t_ship = time.perf_counter() - started
            del futures
            print(
                f"  shipping the {data_mib:.0f} MiB to all {args.nworkers} workers once: "
                f"{t_ship:.1f} s (joblib's dask backend does this once per sweep)",
                flush=True,
            )
            with MemoryWatch(client) as watch:
                started = time.perf_counter()
                remote, _ = fit_prepared(
                    prepared, backend="dask", scheduler=cluster.address, **common
                )
                t_dask = time.perf_counter() - started
            peak_rss = client.run(_peak_rss_mib)
        print(f"  fit through the cluster: {t_dask:.1f} s", flush=True)
        for address in sorted(workers):
            print(
                f"    worker {address}: memory limit {workers[address]['memory_limit'] / MIB:.0f}"
                f" MiB, peak {watch.peak.get(address, 0) / MIB:.0f} MiB reported to the "
                f"scheduler, peak RSS {peak_rss.get(address, float('nan')):.0f} MiB"
            )

    started = time.perf_counter()
    local, _ = fit_prepared(prepared, backend="loky", **common)
    t_local = time.perf_counter() - started
    from joblib.externals.loky import get_reusable_executor

    get_reusable_executor().shutdown(wait=True)  # reaped, so their peak RSS is counted
    local_peak = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024
    print(
        f"local engine (loky, {args.nworkers} processes): {t_local:.1f} s; "
        f"largest peak RSS of a child process {local_peak:.0f} MiB"
    )
    same_table = np.allclose(
        remote.sweep["icl_best"].to_numpy(float),
        local.sweep["icl_best"].to_numpy(float),
        equal_nan=True,
    )
    same_paths = remote.map().paths == local.map().paths
    print(
        f"cluster / local time: {t_dask / t_local:.2f}; selected n: cluster {remote.selected_n}, "
        f"local {local.selected_n} (true 4); same sweep table: {same_table}; same paths: "
        f"{same_paths}; load average now {os.getloadavg()[0]:.1f}"
    )
    return 0


if __name__ == "__main__":
    sys.exit(main())
