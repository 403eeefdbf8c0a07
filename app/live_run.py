"""The demo's live run: one more seed, trained while the dashboard serves, to watch its prediction.

Where it lives, and why. A run's prediction comes from the saved fit of its
own experiment (``analysis.predict.load_reference``), so the live run is a
run of the fitted experiment: ``ROOT/modadd-quick/live-seed-24`` for the
demo's seeds 0-23. Its seed is one the fit did not use, and its name is not
``seed-N``, so neither ``trainmap train`` nor a later demo with more seeds
ever takes it for one of theirs. While it is being written the fit stays
current (``analysis.api.list_fits``: a run the fit never saw that is still
running does not outdate it), so the dashboard neither marks the fit stale
nor asks for a refit; after it has finished, it does (a refit would now
include a 25th run), which is true.

Each demo start removes the previous demo's live run before fitting and
trains it again from the start: a finished live run resumed would show
nothing live, and a live run present at fit time would change the
experiment's fingerprint, so the demo would refit with a half-trained run in
the fit. A live run still being written (another demo serving) is refused.

It trains the preset the fit's runs were trained with (the prediction is read
off runs trained alike), at a ``pace``: the training waits so that each
checkpoint comes at least ``pace`` seconds after the previous one. The rows
are those of an unpaced run; only the wall clock is stretched, so that
a person can watch the prediction move (a quick seed otherwise takes 10-20 s).

It trains in a child process (``multiprocessing`` spawn: the parent serves
the dashboard, and a fork of a process that has imported torch is not safe).
Ctrl-C reaches both through the terminal's process group; :meth:`LiveRun.stop`
stops the child in any case (SIGTERM), and the child stops itself if the demo dies.
The child marks the run interrupted on Ctrl-C or SIGTERM, like any run.
This module imports no torch; only the child does.
"""

from __future__ import annotations

import multiprocessing
import os
import shutil
import signal
import threading
import time
from pathlib import Path

from trainmap.trainer import rundir
from trainmap.trainer.errors import UserError

STOP_GRACE = 10.0  # seconds the child gets to mark its run interrupted


def unused_seed(seeds) -> int:
    """The smallest seed not among ``seeds`` (24 for 0-23): one the fit never saw,
    and never past the largest seed the trainer accepts, whatever ``seeds`` holds."""
    taken = set(seeds)
    return next(seed for seed in range(len(taken) + 1) if seed not in taken)


class LiveRun:
    """One seed of ``task`` trained into ``root/experiment/live-seed-N`` in a child process."""

    def __init__(self, root, task: str, preset: str, experiment: str, seed: int, pace: float):
        self.root, self.task, self.preset = str(root), task, preset
        self.experiment, self.seed, self.pace = experiment, int(seed), float(pace)
        self.run = f"live-seed-{self.seed}"
        self.process: multiprocessing.Process | None = None

    def clear(self) -> None:
        """Remove the previous demo's live run (UserError if one is still being written)."""
        path = Path(self.root) / self.experiment / self.run
        if not os.path.lexists(path):
            return
        if path.is_symlink() or not path.is_dir():
            raise UserError(f"{path} is not the demo's live run directory; move it away")
        summary = rundir.summarize_run(path, self.experiment)
        if summary.status == "running":
            pid = (summary.meta or {}).get("writer", {}).get("pid")
            raise UserError(
                f"the live run {path} is being written by process {pid} (another trainmap "
                "demo?); stop that first"
            )
        shutil.rmtree(path)

    def start(self) -> None:
        context = multiprocessing.get_context("spawn")
        self.process = context.Process(
            target=_train,
            args=(self.root, self.task, self.preset, self.experiment, self.seed, self.run),
            kwargs={"pace": self.pace, "parent": os.getpid()},
            name=f"trainmap live run {self.experiment}/{self.run}",
            daemon=True,  # never outlives a demo that exits normally
        )
        self.process.start()

    def stop(self) -> None:
        """Stop the training (it marks its run interrupted) and wait for the child to end."""
        process = self.process
        if process is None or not process.is_alive():
            return
        process.join(timeout=1.0)  # after Ctrl-C it got the SIGINT itself
        if process.is_alive():
            process.terminate()  # SIGTERM, which the child turns into Ctrl-C
            process.join(timeout=STOP_GRACE)
        if process.is_alive():
            process.kill()
            process.join()

    def urls(self, base: str) -> tuple[str, str]:
        """The live run's Metric curves page (with its prediction) and its experiment's Runs."""
        return (
            f"{base}/curves?experiment={self.experiment}&run={self.run}&metric=eval_acc",
            f"{base}/?experiment={self.experiment}",
        )


def _train(root, task, preset, experiment, seed, run, *, pace: float, parent: int) -> None:
    """The child: train the run; stop (run marked interrupted) on SIGTERM or if the demo dies."""
    import _thread

    from trainmap.trainer.train import make_configs, train_run

    # SIGTERM ends it like Ctrl-C (SIGINT may be ignored: a demo started in the background)
    signal.signal(signal.SIGTERM, signal.default_int_handler)

    def stop_with_parent():
        while os.getppid() == parent:
            time.sleep(1.0)
        _thread.interrupt_main()

    threading.Thread(target=stop_with_parent, daemon=True).start()
    (config,) = make_configs(task, preset, [seed])
    try:
        train_run(config, root, experiment, run=run, progress=False, pace=pace)
    except KeyboardInterrupt:
        pass  # the tracker has marked the run interrupted
