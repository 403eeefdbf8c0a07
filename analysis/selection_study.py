"""Which normalisation and criterion recover the true states? (docs/selection.md)

Run ``python -m analysis.selection_study`` to regenerate the table. For several
synthetic experiments with a known number of states (analysis.synthetic), it
fits one sweep per normalisation and asks every criterion which n it selects;
the adjusted Rand index (ARI) compares the decoded paths of all runs at the
selected n with the true paths (1 = identical partition, 0 = chance).
"""

from __future__ import annotations

import argparse
import time
import warnings

import numpy as np
import pandas as pd
from sklearn.metrics import adjusted_rand_score

from analysis.api import fit_prepared
from analysis.model import CRITERIA, select_n
from analysis.prepare import NORMALIZATIONS, prepare_frames
from analysis.synthetic import make_synthetic


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
    parser.add_argument("--runs", type=int, default=20)
    parser.add_argument("--checkpoints", type=int, default=200)
    parser.add_argument("--restarts", type=int, default=3)
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--out", help="also write the per-experiment table as CSV")
    args = parser.parse_args()
    table = study(
        true_states=args.true_states,
        seeds=args.seeds,
        n_runs=args.runs,
        n_checkpoints=args.checkpoints,
        restarts=args.restarts,
        workers=args.workers,
    )
    if args.out:
        table.to_csv(args.out, index=False)
    print(markdown(summarize(table)))


if __name__ == "__main__":
    main()
