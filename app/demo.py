"""``trainmap demo``: train modadd with and without LayerNorm, fit both, serve the dashboard.

Both experiments use the task's ``quick`` preset over 24 seeds (the presets are
documented in ``trainer/tasks/modular.py``): without LayerNorm the runs fork
into a fast and a slow branch and the slow branch passes through a detour
state; with LayerNorm every run follows one path. After fitting, the demo
prints what tells the two apart (states, forks, detours with their test,
convergence spread) and serves the dashboard on the comparison page, while
one more seed of the first task trains at a watchable pace (``app/live_run.py``)
so its predicted convergence can be seen on the Runs and Metric curves pages
as it trains.

Re-running reuses finished runs and the saved fits, so the second start is
quick; a demo stopped with Ctrl-C continues its runs where they were (the
live run starts over: see ``app/live_run.py``).
``TRAINMAP_DEMO_PRESET=tiny`` selects presets of a few seconds per seed (used
by the end-to-end test).
"""

from __future__ import annotations

import argparse
import os
import signal
import statistics
import sys
import time

DEFAULT_TASKS = "modadd,modadd_ln"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "--root",
        default=os.environ.get("TRAINMAP_ROOT", "trainmap-runs"),
        help="where runs are written (default: $TRAINMAP_ROOT or ./trainmap-runs)",
    )
    parser.add_argument(
        "--tasks",
        "--task",
        dest="tasks",
        default=DEFAULT_TASKS,
        help=f"built-in tasks, comma-separated; the first is the one the dashboard opens on "
        f"when there is only one (default {DEFAULT_TASKS})",
    )
    parser.add_argument(
        "--preset",
        default=os.environ.get("TRAINMAP_DEMO_PRESET", "quick"),
        help="preset of the tasks (default: $TRAINMAP_DEMO_PRESET or quick)",
    )
    parser.add_argument(
        "--seeds",
        default="0-23",
        help="seeds to train per task, e.g. 0-23 (default; a detour test needs >= 4 runs "
        "on each side of a state, so fewer seeds may show a fork but cannot back it)",
    )
    parser.add_argument("--workers", type=int, default=2, help="parallel training processes")
    parser.add_argument("--max-states", type=int, default=8, help="largest HMM to try")
    parser.add_argument("--restarts", type=int, default=5, help="HMM restarts per size")
    parser.add_argument(
        "--n-states", type=int, default=None, help="use this many states instead of the selected n"
    )
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=8050)
    parser.add_argument(
        "--live-pace",
        type=float,
        # 3 s: the Runs and curves pages poll every 3 s, so each refresh shows a new
        # checkpoint; a quick modadd seed then converges (epoch 175, the median) after
        # about 1 min 45 s of live prediction and finishes in 5 min.
        default=3.0,
        metavar="SECONDS",
        help="while serving, one more seed of the first task trains with at least this many "
        "seconds between checkpoints, so its prediction can be watched (default 3; 0: full "
        "speed)",
    )
    parser.add_argument(
        "--no-serve", action="store_true", help="train and fit, then exit (no live run)"
    )


def main(args: argparse.Namespace) -> int:
    # Imported here so `trainmap --help` stays fast.
    from trainmap.analysis import fit_experiment
    from trainmap.trainer.errors import UserError
    from trainmap.trainer.train import parse_seeds, train_seeds

    tasks = [task.strip() for task in args.tasks.split(",") if task.strip()]
    if not tasks:
        raise UserError("--tasks is empty; give e.g. modadd,modadd_ln")
    experiments = [f"{task}-{args.preset}" for task in tasks]
    seeds = parse_seeds(args.seeds)
    # everything checkable is checked before minutes of training
    if args.workers < 1:
        raise UserError(f"--workers must be at least 1, got {args.workers}")
    if not args.live_pace >= 0:
        raise UserError(f"--live-pace must be 0 or more seconds, got {args.live_pace}")
    if not args.no_serve:
        from trainmap.app.cli import check_address

        check_address(args.host, args.port)
    from trainmap.app.live_run import LiveRun, unused_seed

    live = LiveRun(
        args.root, tasks[0], args.preset, experiments[0], unused_seed(seeds), args.live_pace
    )
    live.clear()  # the previous demo's, before the fit, which must not see it (app/live_run.py)
    started = time.time()

    which = " and ".join(f"{task} ({args.preset} preset)" for task in tasks)
    print(f"[1/3] training {which}, seeds {args.seeds}, {args.workers} workers, into {args.root}")
    for task, experiment in zip(tasks, experiments):
        task_started = time.time()
        summaries = train_seeds(
            task,
            preset=args.preset,
            seeds=seeds,
            root=args.root,
            experiment=experiment,
            workers=args.workers,
            resume=True,  # a demo stopped with Ctrl-C continues where it was
        )
        print(f"      {experiment}: {_runs_line(summaries)} ({time.time() - task_started:.0f} s)")
    print(f"      training done in {time.time() - started:.0f} s")

    fit_started = time.time()
    print(f"[2/3] fitting HMMs with 1..{args.max_states} states, {args.restarts} restarts each")
    maps = {}
    for experiment in experiments:
        try:
            fit = fit_experiment(
                args.root,
                experiment,
                max_states=args.max_states,
                restarts=args.restarts,
                n_states=args.n_states,
                workers=args.workers,
            )
        except ValueError as error:  # analysis explains bad input in the message
            raise UserError(str(error)) from None
        maps[experiment] = fit.map()
        print(f"      {experiment}: {fit.selected_n} states")
        for line in summary_lines(maps[experiment]):
            print(f"        {line}")
    comparison = _comparison_lines(args.root, experiments)
    for line in comparison:
        print(f"      {line}")
    print(
        f"      fits done in {time.time() - fit_started:.0f} s; "
        f"total {time.time() - started:.0f} s since the demo started"
    )
    if args.no_serve:
        return 0

    from trainmap.app.main import serve

    base = f"http://{args.host}:{args.port}"
    if len(experiments) > 1:
        url = f"{base}/compare?experiments={','.join(experiments)}"
    else:
        url = f"{base}/map?experiment={experiments[0]}"
    print(f"[3/3] serving the dashboard: {url}  (Ctrl-C to stop)", flush=True)
    for experiment in experiments:
        print(f"      training map of {experiment}: {base}/map?experiment={experiment}")
    curves, runs = live.urls(base)
    print(
        f"      live run {live.experiment}/{live.run} (seed {live.seed}, not in the fit) trains "
        f"while the dashboard serves, a checkpoint every {live.pace:g} s or more"
    )
    print(f"      its predicted convergence, updating as it trains: {curves}")
    print(f"      the Runs page, prediction column: {runs}", flush=True)
    # SIGTERM (e.g. from a process manager) stops the live run too, as Ctrl-C does
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(128 + signal.SIGTERM))
    live.start()
    try:
        serve(args.root, host=args.host, port=args.port)
    finally:
        live.stop()
    return 0


def _runs_line(summaries) -> str:
    """'24 completed; final eval acc 0.712-1.000 (23 of 24 >= 0.96)'."""
    statuses: dict[str, int] = {}
    for summary in summaries:
        statuses[summary.status] = statuses.get(summary.status, 0) + 1
    text = ", ".join(f"{count} {status}" for status, count in sorted(statuses.items()))
    accs = [s.last_eval_acc for s in summaries if s.last_eval_acc is not None]
    if accs:
        high = sum(acc >= 0.96 for acc in accs)
        text += (
            f"; final eval acc {min(accs):.3f}-{max(accs):.3f} ({high} of {len(summaries)} >= 0.96)"
        )
    return text


def summary_lines(training_map) -> list[str]:
    """What distinguishes this map: convergence spread, forks, detours (with their test)."""
    conv = list(training_map.convergence_epoch.values())
    reached = sorted(c for c in conv if c is not None)
    lines = []
    if reached:
        lines.append(
            f"convergence (eval acc >= 0.9): {len(reached)} of {len(conv)} runs, "
            f"epoch median {statistics.median(reached):g}, range {reached[0]}-{reached[-1]}; "
            f"{len(conv) - len(reached)} never reached it"
        )
    else:
        lines.append(f"convergence (eval acc >= 0.9): none of {len(conv)} runs reached it")

    outgoing: dict[int, list] = {}
    for edge in training_map.edges:
        outgoing.setdefault(edge.source, []).append(edge)
    forks = [
        f"S{source} -> " + ", ".join(f"S{e.target} ({e.n_runs} runs)" for e in edges)
        for source, edges in sorted(outgoing.items())
        if len(edges) > 1
    ]
    lines.append(
        "forks: " + ("; ".join(forks) if forks else "none (no state is left by two transitions)")
    )

    detours = [s for s in training_map.states if s.detour.get("verdict") == "detour"]
    for state in detours:
        d = state.detour
        lo, hi = d.get("delay_ci") or (None, None)
        lines.append(
            f"detour S{state.state}: its {d['n_visiting']} runs converge {_epochs(d['delay'])} "
            f"epochs later than the {d['n_other']} others (95% interval {_epochs(lo)} to "
            f"{_epochs(hi)}; {d['test']} p = {d['p_adjusted']:.2g} after Holm)"
        )
    if not detours:
        tested = [s for s in training_map.states if s.detour.get("p_value") is not None]
        untold = [s for s in training_map.states if s.detour.get("verdict") == "not_enough_runs"]
        if not any(s.detour for s in training_map.states):
            lines.append("detours: this fit was saved before the detour test existed")
        elif not tested and not untold:
            lines.append("detours: none (every run visits every state)")
        else:
            lines.append(
                f"detours: none ({len(tested)} states tested, "
                f"{len(untold)} with too few runs on one side to tell)"
            )
    return lines


def _epochs(value) -> str:
    return "unbounded" if value is None else f"{value:+.0f}"


def _comparison_lines(root, experiments) -> list[str]:
    """The convergence test between the experiments (docs/compare.md), when there are two."""
    if len(experiments) < 2:
        return []
    from trainmap.analysis.compare import CompareError, compare_experiments

    try:
        comparison = compare_experiments([(root, e) for e in experiments])
    except CompareError as error:
        return [f"comparison: {error}"]
    lines = [test["message"] for test in comparison.convergence]
    lines.append(
        f"full comparison: trainmap compare {' '.join(f'{root}/{e}' for e in experiments)}"
    )
    return lines
