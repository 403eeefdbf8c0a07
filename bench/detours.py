"""Measure the detour test on synthetic truth: true detours found, false ones flagged.

Run with ``python bench/detours.py`` (options: ``--help``). For every generator
and seed it writes nothing to disk: it makes a synthetic experiment in memory
(analysis.synthetic), fits it with the defaults (analysis.api.fit_prepared) and
compares the selected map's detour states with the truth. A decoded state
stands for the true state most of its checkpoints belong to; it is a true
detour when that state is one only the slow branch visits. Generators:

* ``fork4``: the default graph, ``0 -> 1 -> 3`` and the detour ``0 -> 2 -> 1 -> 3``;
* ``fork5``: five states, ``0 -> 1 -> 2 -> 4`` and ``0 -> 1 -> 3 -> 2 -> 4``,
  stronger autocorrelation (AR 0.85) and fewer checkpoints;
* ``noisy5``: ``fork5`` with less separated states (3.5 noise sds), AR 0.9,
  more drift and dwell jitter: the criterion may over-split, so states visited
  by some runs appear that are not detours;
* ``null``: every run on one path ``0 -> 1 -> 2`` (any flag is false);
* ``shuffled``: ``fork4`` with the accuracy columns shuffled between runs, so
  the map still forks but the branch says nothing about convergence (any flag
  is false).

Beside the test it counts what the old rule (positive coefficient of a
centred minimum-norm regression, visited by some but not all runs) would flag.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402

GENERATORS = {
    "fork4": dict(n_states=4, detours={2}),
    "fork5": dict(
        n_states=5,
        branches=[[0, 1, 2, 4], [0, 1, 3, 2, 4]],
        ar=0.85,
        n_checkpoints=120,
        detours={3},
    ),
    "noisy5": dict(
        n_states=5,
        branches=[[0, 1, 2, 4], [0, 1, 3, 2, 4]],
        separation=3.5,
        ar=0.9,
        drift=0.6,
        dwell_jitter=0.3,
        detours={3},
    ),
    "null": dict(n_states=3, branches=[[0, 1, 2]], detours=set()),
    "shuffled": dict(n_states=4, shuffle=True, detours=set()),
}


def old_sign_rule(training_map) -> list[int]:
    """The rule the test replaced: positive centred min-norm coefficient, some runs only."""
    names = list(training_map.paths)
    n = training_map.n_states
    occ = np.array([np.bincount(training_map.paths[r], minlength=n) for r in names], dtype=float)
    occ /= occ.sum(axis=1, keepdims=True)
    conv = np.array([training_map.convergence_epoch[r] for r in names], dtype=object)
    ok = np.array([c is not None for c in conv])
    y = conv[ok].astype(float)
    centred = occ[ok] - occ[ok].mean(axis=0)
    coef = np.linalg.lstsq(centred, y - y.mean(), rcond=None)[0]
    visited = (occ > 0).sum(axis=0)
    return [k for k in range(n) if coef[k] > 1e-9 and 0 < visited[k] < len(names)]


def evaluate(name, seed, n_runs, n_checkpoints, max_states, restarts):
    from trainmap.analysis import api
    from trainmap.analysis.prepare import prepare_frames
    from trainmap.analysis.synthetic import make_synthetic

    spec = dict(GENERATORS[name])
    true_detours = spec.pop("detours")
    shuffle = spec.pop("shuffle", False)
    spec.setdefault("n_checkpoints", n_checkpoints)
    truth = make_synthetic(n_runs, seed=seed, **spec)
    if shuffle:
        order = np.random.default_rng(seed).permutation(n_runs)
        truth.scalars = [truth.scalars[i] for i in order]
    frames = {r: truth.frame(i) for i, r in enumerate(truth.run_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_frames(frames)
        result, _ = api.fit_prepared(prepared, max_states=max_states, restarts=restarts, seed=seed)
    m = result.map()
    decoded = np.concatenate([m.paths[r] for r in truth.run_names])
    true = np.concatenate([p[: len(m.paths[r])] for r, p in zip(truth.run_names, truth.paths)])
    stands_for = {
        k: int(np.bincount(true[decoded == k]).argmax())
        for k in range(m.n_states)
        if (decoded == k).any()
    }
    flagged = [s.state for s in m.states if s.is_detour]
    old = old_sign_rule(m)
    found = {stands_for[k] for k in flagged} & true_detours
    return {
        "selected_n": result.selected_n,
        "true_n": truth.n_states,
        "tested": sum(s.detour.get("p_adjusted") is not None for s in m.states),
        "found": len(found),
        "true": len(true_detours),
        "false": sum(stands_for[k] not in true_detours for k in flagged),
        "old_found": len({stands_for[k] for k in old} & true_detours),
        "old_false": sum(stands_for[k] not in true_detours for k in old),
    }


def null_calibration(repeats=4000, seed=0):
    """How often the test rejects, and flags a detour, when both groups are alike."""
    from trainmap.analysis.evidence import ALPHA, logrank_test

    rng = np.random.default_rng(seed)
    print(f"null calibration, {repeats} simulations per row (alpha {ALPHA}):")
    for a, b in [(4, 4), (4, 8), (4, 20), (6, 18), (12, 12)]:
        group = np.r_[np.ones(a, bool), np.zeros(b, bool)]
        reject = later = 0
        for _ in range(repeats):
            times = rng.integers(50, 150, a + b).astype(float)
            events = rng.random(a + b) < 0.85
            _, p, o_minus_e = logrank_test(times, events, group)
            reject += p < ALPHA
            later += p < ALPHA and o_minus_e < 0
        print(
            f"  {a:>2} vs {b:>2} runs: rejects {reject / repeats:.1%}, "
            f"flags a detour {later / repeats:.1%}"
        )


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--seeds", type=int, default=6)
    parser.add_argument("--runs", type=int, default=24)
    parser.add_argument("--checkpoints", type=int, default=150)
    parser.add_argument("--max-states", type=int, default=8)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--generators", default=",".join(GENERATORS))
    parser.add_argument(
        "--calibration", action="store_true", help="only the log-rank null calibration"
    )
    args = parser.parse_args(argv)
    if args.calibration:
        null_calibration()
        return 0
    print(
        f"{'generator':>9} {'seed':>4} {'n':>5} {'tested':>6} {'found':>7} {'false':>5}   old rule"
    )
    for name in args.generators.split(","):
        totals = dict(found=0, true=0, false=0, old_found=0, old_false=0, runs=0)
        start = time.perf_counter()
        for seed in range(args.seeds):
            row = evaluate(name, seed, args.runs, args.checkpoints, args.max_states, args.restarts)
            print(
                f"{name:>9} {seed:>4} {row['selected_n']:>2}/{row['true_n']:<2} {row['tested']:>6} "
                f"{row['found']:>3}/{row['true']:<3} {row['false']:>5}   "
                f"found {row['old_found']}/{row['true']}, false {row['old_false']}"
            )
            for key in ("found", "true", "false", "old_found", "old_false"):
                totals[key] += row[key]
        print(
            f"{name}: test found {totals['found']}/{totals['true']} true detours, "
            f"flagged {totals['false']} false; old sign rule found "
            f"{totals['old_found']}/{totals['true']}, flagged {totals['old_false']} false "
            f"({time.perf_counter() - start:.0f} s)"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
