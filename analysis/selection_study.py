"""Which normalisation and criterion recover the true states? (docs/selection.md)

Run ``python -m analysis.selection_study`` to regenerate the first table and
``python -m analysis.selection_study --long`` for the long-run table. For several
synthetic experiments with a known number of states (analysis.synthetic), it
fits one sweep per normalisation and asks every criterion which n it selects;
the adjusted Rand index (ARI) compares the decoded paths of all runs at the
selected n with the true paths (1 = identical partition, 0 = chance).
"""

from __future__ import annotations

import argparse
import time
import warnings
from types import SimpleNamespace

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from trainmap.analysis.api import fit_prepared
from trainmap.analysis.model import CRITERIA, select_n
from trainmap.analysis.prepare import NORMALIZATIONS, prepare_frames
from trainmap.analysis.synthetic import make_synthetic


def path_ari(result, truth, n: int) -> float:
    """ARI between decoded and true states over every checkpoint of every run."""
    decoded = result.maps[n].paths
    pred, true = [], []
    for name, path in zip(truth.run_names, truth.paths):
        if name in decoded:
            k = len(decoded[name])
            pred.append(decoded[name])
            true.append(path[:k])
    return float(adjusted_rand_score(np.concatenate(true), np.concatenate(pred)))


def study(
    true_states=(3, 4, 5),
    seeds=(0, 1),
    n_runs=20,
    n_checkpoints=200,
    max_states=8,
    restarts=3,
    workers=2,
    **synthetic_kwargs,
) -> pd.DataFrame:
    rows = []
    for k in true_states:
        for seed in seeds:
            truth = make_synthetic(n_runs, n_checkpoints, seed=seed, n_states=k, **synthetic_kwargs)
            frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
            for normalize in NORMALIZATIONS:
                started = time.perf_counter()
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    prepared = prepare_frames(frames, normalize=normalize, seed=seed)
                    result, _ = fit_prepared(
                        prepared,
                        max_states=max_states,
                        restarts=restarts,
                        workers=workers,
                        seed=seed,
                    )
                for criterion in CRITERIA:
                    n = select_n(result.sweep, criterion)
                    rows.append(
                        dict(
                            true_n=k,
                            seed=seed,
                            normalize=normalize,
                            criterion=criterion,
                            selected_n=n,
                            correct=n == k,
                            ari=path_ari(result, truth, n),
                            ari_true_n=path_ari(result, truth, k) if k in result.maps else np.nan,
                        )
                    )
                print(
                    f"true n={k} seed={seed} {normalize}: "
                    f"{time.perf_counter() - started:.1f}s, picks "
                    + ", ".join(
                        f"{r['criterion']}={r['selected_n']}" for r in rows[-len(CRITERIA) :]
                    ),
                    flush=True,
                )
    return pd.DataFrame(rows)


def full_ess_pick(sweep: pd.DataFrame) -> int:
    """The n picked by ICL with the likelihood scaled by 1 / tau (penalty x tau).

    The alternative to trainmap's sqrt(tau) rule (analysis.model.effective_criteria),
    measured in the long-run study only: (-2 LL + 2 entropy) / tau + p ln(T / tau).
    """
    g = sweep[sweep["feasible"]]
    tau = float(g["autocorr_time"].iloc[0])
    t_eff = np.maximum(g["heldout_rows"] / tau, 2.0)
    icl = (-2 * g["heldout_ll_best"] + 2 * g["entropy_best"]) / tau + g["n_params"] * np.log(t_eff)
    return int(g["n"].iloc[int(np.argmin(icl.to_numpy()))])


def thinned_pick(truth, tau: float, seed: int, max_states: int, restarts: int, workers: int):
    """The alternative to a penalty: keep one checkpoint per autocorrelation time, refit.

    Every run keeps rows 0, s, 2s, ... with s = round(tau) (tau from the full
    fit); plain ICL picks n on the thinned runs. Returns the pick and the ARI of
    the thinned paths against the thinned truth.
    """
    stride = max(1, int(round(tau)))
    frames = {name: truth.frame(i).iloc[::stride] for i, name in enumerate(truth.run_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_frames(frames, seed=seed)
        result, _ = fit_prepared(
            prepared, max_states=max_states, restarts=restarts, workers=workers, criterion="icl"
        )
    thinned = SimpleNamespace(run_names=truth.run_names, paths=[p[::stride] for p in truth.paths])
    n = select_n(result.sweep, "icl")
    return n, path_ari(result, thinned, n)


def long_run_configs(n_configs: int = 8, seed: int = 0) -> list[dict]:
    """Varied synthetic generators for the long-run study (one draw per experiment).

    Each varies what the selection must be robust to, drawn at random so the
    criterion is not tuned to one generator: the true n (3-5), a forking or a
    linear state graph, the AR coefficient of the noise (0.5-0.9), the noise sd,
    per-run offsets, ramp length (a share of the run) and drift.
    """
    rng = np.random.default_rng(seed)
    configs = []
    for i in range(n_configs):
        k = int(rng.choice([3, 4, 5]))
        configs.append(
            dict(
                seed=100 * (seed + 1) + i,
                n_states=k,
                truth="forking" if i % 2 == 0 else "linear",
                ar=round(float(rng.uniform(0.5, 0.9)), 2),
                noise=round(float(rng.uniform(0.8, 1.3)), 2),
                run_offset=round(float(rng.uniform(0.2, 0.8)), 2),
                ramp_share=round(float(rng.uniform(0.01, 0.06)), 3),
                drift=round(float(rng.uniform(0.1, 0.5)), 2),
            )
        )
    return configs


def long_run_study(
    lengths=(300, 1000, 3000),
    n_configs=8,
    n_runs=16,
    max_states=8,
    restarts=2,
    workers=2,
    criteria=("icl", "bic_best", "bic_mean", "icl_ess", "bic_ess", "auto"),
    config_seed=0,
    thin=True,
) -> tuple[pd.DataFrame, pd.DataFrame]:
    """Does the selected n stay right as runs get longer? (docs/selection.md, "Long runs")

    For every length and every generator of :func:`long_run_configs`, one sweep
    with trainmap's defaults (pooled z-scoring, extension past ``max_states``
    for the default criterion); every criterion picks its n from the same sweep.
    Two alternatives are measured beside trainmap's criteria: "icl_tau" (the
    likelihood scaled by 1 / tau, :func:`full_ess_pick`) and, with ``thin``,
    "thin + icl" (one checkpoint per autocorrelation time, :func:`thinned_pick`).
    ``config_seed`` draws another set of generators. Returns the
    per-(experiment, criterion) picks and the sweep tables (for re-analysis
    without refitting).
    """
    rows, sweeps = [], []
    for length in lengths:
        for config in long_run_configs(n_configs, config_seed):
            k = config["n_states"]
            branches = [list(range(k))] if config["truth"] == "linear" else None
            truth = make_synthetic(
                n_runs,
                length,
                seed=config["seed"],
                n_states=k,
                branches=branches,
                ar=config["ar"],
                noise=config["noise"],
                run_offset=config["run_offset"],
                ramp=max(2, int(round(config["ramp_share"] * length))),
                drift=config["drift"],
            )
            frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
            started = time.perf_counter()
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")
                prepared = prepare_frames(frames, seed=config["seed"])
                result, _ = fit_prepared(
                    prepared, max_states=max_states, restarts=restarts, workers=workers
                )
            seconds = time.perf_counter() - started
            aris = {n: path_ari(result, truth, n) for n in result.maps}
            sweep = result.sweep.drop(columns=["error"]).assign(length=length, **config)
            sweep["ari"] = sweep["n"].map(aris)
            sweeps.append(sweep)
            taus = result.sweep["autocorr_time"].dropna()
            tau = float(taus.iloc[0]) if len(taus) else float("nan")
            picks = {c: (select_n(result.sweep, c), None) for c in criteria}
            picks["icl_tau (study only)"] = (full_ess_pick(result.sweep), None)
            if thin:
                picks["thin + icl (study only)"] = thinned_pick(
                    truth, tau, config["seed"], max_states, restarts, workers
                )
            for criterion, (n, ari) in picks.items():
                rows.append(
                    dict(
                        length=length,
                        **config,
                        criterion=criterion,
                        selected_n=n,
                        correct=n == k,
                        ari=aris[n] if ari is None else ari,
                        ari_true_n=aris.get(k, np.nan),
                        tau=tau,
                        max_tried=int(result.sweep["n"].max()),
                        seconds=seconds,
                    )
                )
            said = ", ".join(f"{c}={n}" for c, (n, _) in picks.items())
            print(
                f"T={length} K={k} {config['truth']} ar={config['ar']} seed={config['seed']}: "
                f"{seconds:.1f}s, tau={rows[-1]['tau']:.1f}, tried 1..{rows[-1]['max_tried']}, "
                f"picks {said}",
                flush=True,
            )
    return pd.DataFrame(rows), pd.concat(sweeps, ignore_index=True)


def short_run_study(
    lengths=(100, 150, 250),
    seeds=range(5),
    n_runs=16,
    restarts=3,
    workers=2,
    criteria=("icl", "icl_ess", "bic_best", "bic_ess", "auto"),
) -> pd.DataFrame:
    """The default generator (with its detour branch) and two variants on short runs.

    docs/selection.md, "Short runs": true n = 4 forking (the default branches),
    3 linear and 5 forking, each seed and length one sweep; every criterion
    picks from the same sweep. Returns one row per (experiment, criterion).
    """
    rows = []
    for length in lengths:
        for seed in seeds:
            for k, branches in ((4, None), (3, [[0, 1, 2]]), (5, None)):
                truth = make_synthetic(n_runs, length, seed=seed, n_states=k, branches=branches)
                frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
                with warnings.catch_warnings():
                    warnings.simplefilter("ignore")
                    prepared = prepare_frames(frames, seed=seed)
                    result, _ = fit_prepared(
                        prepared, max_states=7, restarts=restarts, workers=workers, seed=seed
                    )
                for criterion in criteria:
                    n = select_n(result.sweep, criterion)
                    rows.append(
                        dict(length=length, seed=seed, n_states=k, criterion=criterion,
                             selected_n=n, correct=n == k, ari=path_ari(result, truth, n))
                    )  # fmt: skip
                print(f"T={length} seed={seed} K={k}: done", flush=True)
    return pd.DataFrame(rows)


def summarize_long(table: pd.DataFrame) -> pd.DataFrame:
    """Per (criterion, length): how often n is right, the picks, mean and min ARI."""
    grouped = table.groupby(["criterion", "length"], sort=False)
    return grouped.apply(
        lambda g: pd.Series(
            {
                "correct_n": f"{int(g['correct'].sum())}/{len(g)}",
                "over / under": f"{int((g.selected_n > g.n_states).sum())}"
                f" / {int((g.selected_n < g.n_states).sum())}",
                "selected (true)": " ".join(f"{s}({t})" for s, t in zip(g.selected_n, g.n_states)),
                "mean_ARI": round(g["ari"].mean(), 3),
                "min_ARI": round(g["ari"].min(), 3),
            }
        ),
        include_groups=False,
    ).reset_index()


def summarize(table: pd.DataFrame) -> pd.DataFrame:
    """Per (normalize, criterion): how often n is right, selected n's, mean ARI."""
    grouped = table.groupby(["normalize", "criterion"], sort=False)
    return grouped.apply(
        lambda g: pd.Series(
            {
                "correct_n": f"{int(g['correct'].sum())}/{len(g)}",
                "selected (true)": " ".join(f"{s}({t})" for s, t in zip(g.selected_n, g.true_n)),
                "mean_ARI": round(g["ari"].mean(), 3),
                "min_ARI": round(g["ari"].min(), 3),
            }
        ),
        include_groups=False,
    ).reset_index()


def markdown(table: pd.DataFrame) -> str:
    """A GitHub markdown table (no extra dependency such as tabulate)."""
    lines = ["| " + " | ".join(map(str, table.columns)) + " |"]
    lines.append("|" + "---|" * len(table.columns))
    for row in table.itertuples(index=False):
        lines.append("| " + " | ".join(map(str, row)) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1])
    parser.add_argument("--true-states", type=int, nargs="+", default=[3, 4, 5])
    parser.add_argument("--runs", type=int, help="runs per experiment (default 20; --long 16)")
    parser.add_argument("--checkpoints", type=int, default=200)
    parser.add_argument("--restarts", type=int, help="restarts per n (default 3; --long 2)")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", help="also write the per-experiment table as CSV")
    parser.add_argument(
        "--long",
        action="store_true",
        help="the long-run study instead: runs of 300, 1000 and 3000 checkpoints "
        "(--lengths 100 150 250 for the short-run check)",
    )
    parser.add_argument("--no-thin", action="store_true", help="--long: skip the thinning refits")
    parser.add_argument(
        "--short",
        action="store_true",
        help="the short-run check on the default generator (100, 150, 250 checkpoints)",
    )
    parser.add_argument("--lengths", type=int, nargs="+", default=[300, 1000, 3000])
    parser.add_argument("--configs", type=int, default=8, help="generators per length (--long)")
    parser.add_argument("--sweeps", help="--long: also write every sweep table as CSV")
    parser.add_argument("--config-seed", type=int, default=0, help="--long: another generator set")
    args = parser.parse_args()
    if args.short:
        picks = short_run_study(workers=args.workers)
        if args.out:
            picks.to_csv(args.out, index=False)
        print(markdown(summarize_long(picks)))
        return
    if args.long:
        picks, sweeps = long_run_study(
            lengths=args.lengths,
            n_configs=args.configs,
            n_runs=args.runs or 16,
            restarts=args.restarts or 2,
            workers=args.workers,
            config_seed=args.config_seed,
            thin=not args.no_thin,
        )
        if args.out:
            picks.to_csv(args.out, index=False)
        if args.sweeps:
            sweeps.to_csv(args.sweeps, index=False)
        print(markdown(summarize_long(picks)))
        return
    table = study(
        true_states=args.true_states,
        seeds=args.seeds,
        n_runs=args.runs or 20,
        n_checkpoints=args.checkpoints,
        restarts=args.restarts or 3,
        workers=args.workers,
    )
    if args.out:
        table.to_csv(args.out, index=False)
    print(markdown(summarize(table)))


if __name__ == "__main__":
    main()
