"""A dask.distributed cluster started the way a user starts one: two command lines.

``dask scheduler`` and ``dask worker ADDRESS`` run as separate processes (the
CLIs that dask[distributed] installs next to this Python), on loopback only.
Used by ``bench/cluster.py`` and ``tests/test_cluster_cli.py``::

    with CLICluster(nworkers=2, memory_limit="2GiB") as cluster:
        fit_prepared(prepared, backend="dask", scheduler=cluster.address)

Leaving the ``with`` block (normally or by an exception) stops both processes:
SIGINT first (dask's clean shutdown), then SIGKILL of the whole process group
after a timeout, so no worker outlives a failed test.
"""

from __future__ import annotations

import json
import os
import shutil
import signal
import subprocess
import sys
import tempfile
import time


def dask_cli() -> str:
    """The ``dask`` command of this Python's environment (else the one on PATH)."""
    here = os.path.join(os.path.dirname(sys.executable), "dask")
    found = here if os.path.exists(here) else shutil.which("dask")
    if not found:
        raise RuntimeError("the dask command line is missing: pip install 'dask[distributed]'")
    return found


class CLICluster:
    """``dask scheduler`` plus ``dask worker ADDRESS --nworkers N --nthreads 1 --memory-limit M``."""

    def __init__(self, nworkers: int = 2, memory_limit: str = "2GiB", timeout: float = 60.0):
        self.nworkers = nworkers
        self.memory_limit = memory_limit
        self.timeout = timeout
        self.address: str | None = None
        self._processes: list[subprocess.Popen] = []
        self._tmp: tempfile.TemporaryDirectory | None = None

    def __enter__(self) -> CLICluster:
        try:
            self._start()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _spawn(self, name: str, args: list[str]) -> subprocess.Popen:
        log = open(os.path.join(self._tmp.name, f"{name}.log"), "wb")  # noqa: SIM115
        process = subprocess.Popen(
            [dask_cli(), *args],
            stdout=log,
            stderr=subprocess.STDOUT,
            cwd=self._tmp.name,
            start_new_session=True,  # its own process group: killed as one on failure
        )
        log.close()
        self._processes.append(process)
        return process

    def log(self, name: str) -> str:
        """What ``dask scheduler`` ("scheduler") or ``dask worker`` ("worker") printed."""
        with open(os.path.join(self._tmp.name, f"{name}.log"), errors="replace") as f:
            return f.read()

    def _start(self) -> None:
        from dask.distributed import Client

        self._tmp = tempfile.TemporaryDirectory(prefix="trainmap-dask-")
        info = os.path.join(self._tmp.name, "scheduler.json")
        scheduler = self._spawn(
            "scheduler",
            ["scheduler", "--host", "127.0.0.1", "--port", "0", "--no-dashboard",
             "--scheduler-file", info],
        )  # fmt: skip
        deadline = time.monotonic() + self.timeout
        while not os.path.exists(info):
            if scheduler.poll() is not None:
                raise RuntimeError(f"dask scheduler exited:\n{self.log('scheduler')}")
            if time.monotonic() > deadline:
                raise TimeoutError(f"dask scheduler did not start:\n{self.log('scheduler')}")
            time.sleep(0.1)
        time.sleep(0.2)  # the file is written in one go, but let the writer finish
        with open(info) as f:
            self.address = json.load(f)["address"]
        worker = self._spawn(
            "worker",
            ["worker", self.address, "--nworkers", str(self.nworkers), "--nthreads", "1",
             "--memory-limit", self.memory_limit, "--no-dashboard", "--host", "127.0.0.1",
             "--local-directory", self._tmp.name, "--death-timeout", str(int(self.timeout))],
        )  # fmt: skip
        with Client(self.address, timeout=self.timeout) as client:
            remaining = max(deadline - time.monotonic(), 1.0)
            try:
                client.wait_for_workers(self.nworkers, timeout=remaining)
            except TimeoutError:
                state = "exited" if worker.poll() is not None else "running"
                raise TimeoutError(
                    f"dask workers did not connect ({state}):\n{self.log('worker')}"
                ) from None

    def workers(self) -> dict[str, dict]:
        """The scheduler's view of each worker (memory_limit, metrics, ...)."""
        from dask.distributed import Client

        with Client(self.address, timeout=self.timeout) as client:
            return client.scheduler_info()["workers"]

    def close(self) -> None:
        """Stop the workers, then the scheduler; escalate to SIGKILL if they hang."""
        for process in reversed(self._processes):  # workers first
            if process.poll() is None:
                process.send_signal(signal.SIGINT)
        for process in reversed(self._processes):
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                os.killpg(process.pid, signal.SIGKILL)
                process.wait(timeout=10)
        self._processes.clear()
        if self._tmp is not None:
            self._tmp.cleanup()
            self._tmp = None
