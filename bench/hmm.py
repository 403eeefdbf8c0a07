"""Benchmark: trainmap's HMM sweep against a plain sequential hmmlearn loop.

Run with ``python bench/hmm.py`` (options: ``--help``). Both sides fit
n = 1..8 states x 4 restarts with the same ``n_iter`` on the same runs of a
synthetic experiment (40 runs x 300 checkpoints x 14 features, 4 true states;
8 runs held out), timed in the same process, alternating ``--repeats`` times:

* baseline: the reference's procedure (visualizing_training's
  ``HMM.get_avg_log_likelihood``): per-run z-scoring, then for every n and
  restart a plain ``GaussianHMM(n, "diag", n_iter).fit`` with hmmlearn's
  defaults (k-means init with 10 k-means runs, tol 0.01), ``score``, ``aic``
  and ``bic`` on the held-out runs, one after the other; n selected by the
  held-out BIC averaged over restarts (see :func:`baseline`);
* trainmap: ``analysis.model.StateSelector`` with its defaults (pooled
  z-scoring, one k-means run per restart, tolerance 1e-4 nats per train
  checkpoint, restarts of one n batched in the vectorised EM and scoring of
  ``analysis.fastem``, 2 worker processes started anew, ICL at the best
  restart), and the same again with the worker pool already started. Unless
  ``--no-ablation``, the sweep also runs with one change at a time, to show
  where the speed-up comes from.

It prints the load average, wall times (medians), the speed-ups, the n each side selects against the
truth, and the adjusted Rand index of trainmap's decoded paths.

A second section measures the bootstrap over runs (``analysis.bootstrap``) on
an experiment shaped like the demo's (24 runs x 100 checkpoints x 14
features, n = 1..6, 3 restarts, 2 workers): the main fit, then ``--bootstrap``
resamples (default 50) with trainmap's defaults (at most 3 restarts, n up to
the selected n + 2) and, unless ``--no-ablation``, with the main fit's
settings (the main fit's restarts, the full n range), printing seconds, cost
per resample and the stability found. ``--only-bootstrap`` runs just this
section; ``--bootstrap 0`` skips it.
"""

from __future__ import annotations

import argparse
import os
import sys
import time
import warnings

sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), ".."))

import numpy as np  # noqa: E402


def baseline(prepared, max_states, restarts, n_iter, seed):
    """The reference's procedure (visualizing_training.hmm.HMM.get_avg_log_likelihood).

    Each run's raw features z-scored on their own (``scipy.stats.zscore`` per
    column, as ``HMM._prep_train_data``), then for n = 1..max_states and each
    of ``restarts`` seeds one ``GaussianHMM(n_components=n, covariance_type=
    "diag", n_iter=n_iter).fit(train)`` with every other argument at hmmlearn's
    default (k-means init with ``n_init=10``, ``tol=1e-2``, ``random_state=None``,
    i.e. numpy's global generator, seeded once here for repeatability), then
    ``score``, ``aic`` and ``bic`` on the held-out runs. The reference selects n
    by the held-out BIC averaged over seeds. The reference splits runs with
    ``train_test_split(test_size=0.2)``; here both sides use trainmap's split,
    so they fit and score the same runs.

    Returns per n: mean held-out BIC, mean EM iterations.
    """
    from hmmlearn.hmm import GaussianHMM
    from scipy.stats import zscore

    def stack(which):
        runs = [zscore(prepared.raw[i], axis=0) for i in which]
        return np.vstack(runs), [len(r) for r in runs]

    X, lengths = stack(prepared.train)
    Xh, lengths_h = stack(prepared.heldout)
    np.random.seed(seed)
    rows = []
    for n in range(1, max_states + 1):
        bics, iters = [], []
        for _ in range(restarts):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                model = GaussianHMM(n_components=n, covariance_type="diag", n_iter=n_iter)
                model.fit(X, lengths=lengths)
                model.score(Xh, lengths=lengths_h)
                model.aic(Xh, lengths=lengths_h)
                bics.append(model.bic(Xh, lengths=lengths_h))
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
    parser.add_argument(
        "--repeats", type=int, default=3, help="baseline/trainmap pairs timed (medians reported)"
    )
    parser.add_argument("--bootstrap", type=int, default=50, help="resamples (0 = skip)")
    parser.add_argument(
        "--only-bootstrap", action="store_true", help="run only the bootstrap section"
    )
    parser.add_argument(
        "--no-ablation",
        dest="ablation",
        action="store_false",
        help="skip the step-by-step runs that show where the speed-up comes from",
    )
    args = parser.parse_args()
    if not args.only_bootstrap:
        sweep_section(args)
    if args.bootstrap:
        bootstrap_section(args)
    return 0


def sweep_section(args) -> None:
    """trainmap's sweep against the plain hmmlearn loop (the module docstring's first part)."""
    from sklearn.metrics import adjusted_rand_score

    from trainmap.analysis.maps import build_map, convergence_epoch
    from trainmap.analysis.model import StateSelector
    from trainmap.analysis.prepare import prepare_frames
    from trainmap.analysis.synthetic import make_synthetic

    truth = make_synthetic(args.runs, args.checkpoints, seed=args.seed)
    frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
    heldout = 8 / args.runs
    ours = prepare_frames(frames, heldout=heldout, seed=args.seed)  # trainmap's defaults
    print(
        f"data: {args.runs} runs x {args.checkpoints} checkpoints x {len(ours.feature_names)} "
        f"features, {len(ours.heldout)} runs held out, true n = {truth.n_states}; sweep "
        f"n = 1..{args.max_states} x {args.restarts} restarts, n_iter = {args.n_iter}; "
        f"{os.cpu_count()} cores, load average {os.getloadavg()[0]:.1f}"
    )

    X, lengths = ours.stack(ours.train)
    Xh, lengths_h = ours.stack(ours.heldout)

    def sweep(**kwargs):
        started = time.perf_counter()
        selector = StateSelector(
            max_states=args.max_states,
            restarts=args.restarts,
            n_iter=args.n_iter,
            random_state=args.seed,
            **kwargs,
        ).fit(X, lengths, Xh, lengths_h)
        return selector, time.perf_counter() - started

    def cold_pool():
        """Stop loky's reusable worker pool, so the next sweep starts its processes anew."""
        from joblib.externals.loky import get_reusable_executor

        get_reusable_executor().shutdown(wait=True)

    # Baseline and trainmap's default sweep alternate, so that both see the
    # same load on the shared machine; medians over --repeats pairs.
    t_base, cpu_base, t_cold, t_warm = [], [], [], []
    for _ in range(args.repeats):
        started, cpu = time.perf_counter(), time.process_time()
        rows = baseline(ours, args.max_states, args.restarts, args.n_iter, args.seed)
        t_base.append(time.perf_counter() - started)
        cpu_base.append(time.process_time() - cpu)
        cold_pool()
        selector, t = sweep(workers=args.workers)
        t_cold.append(t)
        # A long-lived process (the dashboard) reuses loky's worker pool, so
        # later sweeps do not pay for starting processes and imports again.
        t_warm.append(sweep(workers=args.workers)[1])
    t_base_all = t_base
    t_base, t_ours = float(np.median(t_base)), float(np.median(t_cold))
    n_base = min(rows, key=lambda row: row[1])[0]

    ablation = []
    if args.ablation:
        # Where the speed comes from: the same sweep, one change at a time.
        _, t = sweep(workers=1, backend="sequential", engine="hmmlearn")
        ablation.append(("hmmlearn EM, 1 k-means run/restart, tol 1e-4/checkpoint, 1 process", t))
        _, t = sweep(workers=1, backend="sequential")
        ablation.append(("+ restarts batched in the vectorised EM (analysis.fastem)", t))
    ablation.append((f"+ {args.workers} worker processes (loky, cold pool) = default", t_ours))
    ablation.append(("  the same again, pool already started (warm)", float(np.median(t_warm))))

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
    sweep_table = selector.sweep_.set_index("n")
    for n, bic, iters in rows:
        print(
            f"  n={n}: {bic:10.1f} ({iters:5.1f}) | "
            f"{sweep_table.loc[n, 'icl_best']:10.1f} ({sweep_table.loc[n, 'n_iter_mean']:5.1f})"
        )
    print(
        f"\nbaseline, the reference's procedure (sequential hmmlearn, its defaults: "
        f"10 k-means runs, tol 0.01; per-run z-scoring): median {t_base:6.1f} s wall "
        f"({_list(t_base_all)} s), {np.median(cpu_base):.1f} s CPU"
    )
    print(f"  selects n = {n_base} by mean held-out BIC (the reference's criterion)")
    print(
        f"trainmap, cold pool: {_list(t_cold)} s; warm pool: {_list(t_warm)} s; "
        f"baseline / trainmap (cold) per pair: "
        f"{', '.join(f'{b / c:.1f}x' for b, c in zip(t_base_all, t_cold))}"
    )
    for label, t in ablation:
        print(f"{label:<78} {t:6.1f} s  ({t_base / t:4.1f}x)")
    print(
        f"trainmap selects n = {n_ours} (ICL); true n = {truth.n_states}; "
        f"speed-up of the default sweep (median of {args.repeats}): {t_base / t_ours:.2f}x; "
        f"load average now {os.getloadavg()[0]:.1f}"
    )
    print(f"trainmap map for the selected n (Viterbi, edges, derivatives): {t_map:.1f} s")
    print(f"adjusted Rand index of trainmap's decoded paths vs truth: {ari:.3f}")


def bootstrap_section(args, n_runs=24, n_checkpoints=100, max_states=6, restarts=3) -> None:
    """The bootstrap over runs on a demo-shaped experiment: seconds and cost per resample.

    Wall times depend on what else runs on the machine, so the cost is also
    measured as CPU time in one process (sequential backend, a few resamples),
    which gives the wall time on idle cores: resamples x CPU per resample /
    workers.
    """
    from trainmap.analysis import api
    from trainmap.analysis.bootstrap import bootstrap_map
    from trainmap.analysis.prepare import prepare_frames
    from trainmap.analysis.synthetic import make_synthetic

    truth = make_synthetic(n_runs, n_checkpoints, seed=args.seed)
    frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_frames(frames, seed=args.seed)
    print(
        f"\nbootstrap: {n_runs} runs x {n_checkpoints} checkpoints x "
        f"{len(prepared.feature_names)} features (the demo's shape), true n = "
        f"{truth.n_states}; main fit n = 1..{max_states} x {restarts} restarts; "
        f"{args.bootstrap} resamples; {os.cpu_count()} cores, "
        f"load average {os.getloadavg()[0]:.1f}"
    )
    common = dict(max_states=max_states, restarts=restarts, seed=args.seed)
    started = time.process_time()
    result, models = api.fit_prepared(
        prepared, bootstrap=0, workers=1, backend="sequential", **common
    )
    cpu_fit = time.process_time() - started
    n = result.selected_n
    print(f"  main fit: {cpu_fit:.2f} CPU s (one process), selects n = {n}")

    # The bootstrap as fit_experiment runs it (default restarts and n range).
    api.fit_prepared(prepared, bootstrap=0, workers=args.workers, **common)  # warm the pool
    boot = api.fit_prepared(prepared, bootstrap=args.bootstrap, workers=args.workers, **common)[
        0
    ].bootstrap
    default = boot["restarts"]
    wall = boot["seconds"]
    print(
        f"  default ({default} restarts, n = 1..selected+2), {args.workers} workers: "
        f"{wall:.1f} s wall = {wall / args.bootstrap:.2f} s per resample"
    )
    print(f"    n over resamples: {_counts(boot)}; n range {boot['n_range']}")
    print(f"    state stability {_shares(boot['state_stability'])}")
    print(f"    edge stability {_shares(boot['edge_stability'])}")
    print(f"    detour flagged {_shares(boot['detour_stability'])}")

    # CPU per resample, load-independent: a few resamples in this process.
    # Same convergence input as api passes (censored runs at their last epoch).
    conv = result.map().convergence_epoch
    epochs = [conv[r] for r in prepared.run_names]
    convergence = (
        np.array([e[-1] if c is None else c for c, e in zip(epochs, prepared.epochs)], float),
        np.array([c is not None for c in epochs]),
    )
    probe = min(args.bootstrap, 10)
    variants = [(f"default: {default} restarts, n = 1..selected+2", default, {})]
    if args.ablation:  # what the two savings buy: the CLI's 5 restarts, its n = 1..8
        variants.append(("5 restarts, n = 1..selected+2", 5, {}))
        variants.append((f"{default} restarts, n = 1..8", default, {"span": 8, "max_n": 8}))
        variants.append(("5 restarts, n = 1..8 (the CLI's main fit)", 5, {"span": 8, "max_n": 8}))
    print(f"  CPU per resample ({probe} resamples in one process) and projected wall time:")
    for label, boot_restarts, extra in variants:
        started = time.process_time()
        bootstrap_map(
            prepared.X,
            prepared.train,
            prepared.heldout,
            models[n]["means"],
            [(e.source, e.target) for e in result.map().edges],
            convergence=convergence,
            n=n,
            criterion=result.params["criterion"],
            restarts=boot_restarts,
            n_resamples=probe,
            seed=args.seed,
            workers=1,
            backend="sequential",
            progress_bar=False,
            **{"max_n": max_states, **extra},
        )
        cpu = (time.process_time() - started) / probe
        print(
            f"    {label:<48} {cpu:.2f} CPU s per resample ({cpu / cpu_fit:.1f} main fits); "
            f"{args.bootstrap} resamples on {args.workers} idle cores: "
            f"{args.bootstrap * cpu / args.workers:.1f} s"
        )


def _list(seconds) -> str:
    return ", ".join(f"{t:.1f}" for t in seconds)


def _counts(boot: dict) -> str:
    return ", ".join(f"{k} ×{v}" for k, v in boot["selected_n_counts"].items())


def _shares(values: dict) -> str:
    return " ".join(f"{k}:{v:.2f}" for k, v in values.items()) or "-"


if __name__ == "__main__":
    sys.exit(main())
