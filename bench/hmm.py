"""Benchmark: trainmap's HMM sweep against a plain sequential hmmlearn loop.

Run with ``python bench/hmm.py`` (options: ``--help``). Both sides fit
n = 1..8 states x 4 restarts with the same ``n_iter`` on the same synthetic
experiment (40 runs x 300 checkpoints x 14 features, 4 true states; 8 runs
held out), measured one after the other in the same process:

* baseline: ``GaussianHMM(n, "diag", n_iter, random_state=r).fit(...)`` in a
  loop with hmmlearn's defaults, scored on the held-out runs, n selected by
  the paper's rule (lowest held-out BIC averaged over restarts, per-run
  z-scoring);
* trainmap: ``analysis.model.StateSelector`` with its defaults (parallel
  workers, one k-means run per restart's initialisation, tolerance per
  checkpoint, pooled z-scoring, ICL at the best restart).

It prints wall times, the speed-up, the n each side selects against the truth,
and the adjusted Rand index of the decoded paths at the selected n.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402


def baseline(prepared, max_states, restarts, n_iter):
    """The plain loop: one hmmlearn fit after another, hmmlearn defaults."""
    from hmmlearn.hmm import GaussianHMM

    X, lengths = prepared.stack(prepared.train)
    Xh, lengths_h = prepared.stack(prepared.heldout)
    rows = []
    for n in range(1, max_states + 1):
        bics, iters = [], []
        for r in range(restarts):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = GaussianHMM(n, covariance_type="diag", n_iter=n_iter, random_state=r)
                model.fit(X, lengths)
                bics.append(model.bic(Xh, lengths_h))
            iters.append(model.monitor_.iter)
        rows.append((n, float(np.mean(bics)), float(np.mean(iters))))
    return rows


def main() -> int:
    parser = argparse.ArgumentParser(description="HMM sweep benchmark")
    parser.add_argument("--runs", type=int, default=40)
    parser.add_argument("--checkpoints", type=int, default=300)
    parser.add_argument("--max-states", type=int, default=8)
    parser.add_argument("--restarts", type=int, default=4)
    parser.add_argument("--n-iter", type=int, default=100)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    from sklearn.metrics import adjusted_rand_score

    from analysis.maps import build_map, convergence_epoch
    from analysis.model import StateSelector
    from analysis.prepare import prepare_frames
    from analysis.synthetic import make_synthetic

    truth = make_synthetic(args.runs, args.checkpoints, seed=args.seed)
    frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
    heldout = 8 / args.runs
    paper = prepare_frames(frames, normalize="per_run", heldout=heldout, seed=args.seed)
    ours = prepare_frames(frames, heldout=heldout, seed=args.seed)  # trainmap's defaults
    print(
        f"data: {args.runs} runs x {args.checkpoints} checkpoints x {len(ours.feature_names)} "
        f"features, {len(ours.heldout)} runs held out, true n = {truth.n_states}; sweep "
        f"n = 1..{args.max_states} x {args.restarts} restarts, n_iter = {args.n_iter}; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    )

    started = time.perf_counter()
    rows = baseline(paper, args.max_states, args.restarts, args.n_iter)
    t_base = time.perf_counter() - started
    n_base = min(rows, key=lambda row: row[1])[0]

    started = time.perf_counter()
    X, lengths = ours.stack(ours.train)
    Xh, lengths_h = ours.stack(ours.heldout)
    selector = StateSelector(
        max_states=args.max_states,
        restarts=args.restarts,
        n_iter=args.n_iter,
        workers=args.workers,
        random_state=args.seed,
    ).fit(X, lengths, Xh, lengths_h)
    t_ours = time.perf_counter() - started

    started = time.perf_counter()
    convergence = {
        name: convergence_epoch(e, a)
        for name, e, a in zip(ours.run_names, ours.epochs, ours.accuracy)
    }
    n_ours = selector.n_components_
    training_map, _ = build_map(
        selector.models_[n_ours],
        "diag",
        ours.run_names,
        ours.X,
        ours.epochs,
        ours.feature_names,
        convergence,
    )
    t_map = time.perf_counter() - started
    ari = adjusted_rand_score(
        np.concatenate(truth.paths),
        np.concatenate([training_map.paths[r] for r in truth.run_names]),
    )

    print("\nper n: baseline mean held-out BIC (mean EM iterations) | trainmap ICL (iterations)")
    sweep = selector.sweep_.set_index("n")
    for n, bic, iters in rows:
        print(
            f"  n={n}: {bic:12.1f} ({iters:5.1f}) | {sweep.loc[n, 'icl_best']:12.1f} "
            f"({sweep.loc[n, 'n_iter_mean']:5.1f})"
        )
    print(f"\nbaseline (sequential hmmlearn, paper's rule): {t_base:7.1f} s, selects n = {n_base}")
    print(
        f"trainmap sweep ({args.workers} workers):            {t_ours:7.1f} s, selects n = {n_ours}"
    )
    print(f"speed-up: {t_base / t_ours:.2f}x    (true n = {truth.n_states})")
    print(f"trainmap map for the selected n (Viterbi, edges, derivatives): {t_map:.1f} s")
    print(f"adjusted Rand index of trainmap's decoded paths vs truth: {ari:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
