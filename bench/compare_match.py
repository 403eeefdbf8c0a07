"""Measure state matching across experiments on synthetic truth (analysis.compare).

Run with ``python bench/compare_match.py`` (options: ``--help``). Nothing is
written to disk. For every seed and state separation it makes two synthetic
experiments from the same states (analysis.synthetic): A forks (half the runs
take a detour through an extra state), B follows the main branch only, with
other runs (other noise) than A. Each is prepared and fitted on its own with
the defaults (analysis.api.fit_prepared), then compared with
analysis.compare.compare_fits. A fitted state stands for the true state most
of its checkpoints belong to. Reported per case:

* the distances (pooled sd) of the pairs the assignment makes, and whether each
  pairs the same true state;
* the smallest distance between two states of the same fit (distinct states);
* whether A's detour state was left without a counterpart, as it should be.

These numbers are where ``MATCH_THRESHOLD`` (0.5) comes from: same-state
pairs must fall below it and distinct states above it.

``--distinct-detours`` checks the "similar" grade instead: five states, A's
detour goes through state 2 and B's through state 3, so the two detours are
different states and any pair made of them is a false correspondence; the
table then lists every group as ``true A/true B:grade(distance)``.
"""

from __future__ import annotations

import argparse
import itertools
import sys
import warnings
from collections import Counter
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from trainmap.analysis.api import fit_prepared  # noqa: E402
from trainmap.analysis.compare import (  # noqa: E402
    LoadedFit,
    common_profiles,
    compare_fits,
    distance_matrix,
)
from trainmap.analysis.prepare import prepare_frames  # noqa: E402
from trainmap.analysis.synthetic import make_synthetic  # noqa: E402


def fitted(name, truth, runs, max_states, restarts):
    frames = {truth.run_names[i]: truth.frame(i) for i in runs}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_frames(frames)
        result, canonical = fit_prepared(
            prepared, experiment=name, max_states=max_states, restarts=restarts, workers=1
        )
    n = result.selected_n
    loaded = LoadedFit(
        name=name,
        path=name,
        fit=result,
        n=n,
        means=canonical[n]["means"],
        center=prepared.center[0],
        scale=prepared.scale[0],
    )
    true_paths = {truth.run_names[i]: truth.paths[i] for i in runs}
    majority = {}
    for k in range(n):
        votes = Counter()
        for run, path in result.map().paths.items():
            votes.update(true_paths[run][np.asarray(path) == k].tolist())
        majority[k] = votes.most_common(1)[0][0] if votes else None
    return loaded, majority


def distinct_detours(args) -> int:
    print("| seed | separation | n A, B | groups (true state in A / in B: grade (distance)) |")
    print("|---|---|---|---|")
    false_pairs = 0
    for seed, sep in itertools.product(range(1, args.seeds + 1), args.separations.split(",")):
        kwargs = dict(n_checkpoints=args.checkpoints, seed=seed, separation=float(sep), n_states=5)
        truth_a = make_synthetic(n_runs=args.runs, branches=[[0, 1, 4], [0, 2, 1, 4]], **kwargs)
        truth_b = make_synthetic(n_runs=2 * args.runs, branches=[[0, 1, 4], [0, 3, 1, 4]], **kwargs)
        a, true_a = fitted("A", truth_a, range(args.runs), args.max_states + 1, args.restarts)
        b, true_b = fitted("B", truth_b, range(args.runs, 2 * args.runs), args.max_states + 1,
                           args.restarts)  # fmt: skip
        cells = []
        for g in compare_fits([a, b], match_on="levels").groups:
            sa, sb = g["states"]["A"], g["states"]["B"]
            ta = true_a[sa] if sa is not None else "-"
            tb = true_b[sb] if sb is not None else "-"
            false_pairs += g["matched"] and ta != tb
            how = f"{g['grade']} ({g['distance']:.2f})" if g["matched"] else "alone"
            cells.append(f"{ta}/{tb}: {how}")
        print(f"| {seed} | {sep} | {a.n}, {b.n} | {'; '.join(cells)} |")
    print(f"\npairs of different true states: {false_pairs}")
    return 0


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=5, help="seeds 1..N (default 5)")
    parser.add_argument("--separations", default="4,6", help="state separations (noise sds)")
    parser.add_argument("--runs", type=int, default=12, help="runs per experiment")
    parser.add_argument("--checkpoints", type=int, default=150)
    parser.add_argument("--max-states", type=int, default=5)
    parser.add_argument("--restarts", type=int, default=2)
    parser.add_argument(
        "--distinct-detours", action="store_true", help="A and B detour through different states"
    )
    args = parser.parse_args(argv)
    if args.distinct_detours:
        return distinct_detours(args)

    print("| seed | separation | n A, B | matched pairs (pooled sd; * = same true state) "
          "| closest distinct states | detour alone |")  # fmt: skip
    print("|---|---|---|---|---|---|")
    same, distinct, wrong, detour_alone = [], [], 0, 0
    cases = list(itertools.product(range(1, args.seeds + 1), args.separations.split(",")))
    for seed, sep in cases:
        kwargs = dict(n_checkpoints=args.checkpoints, seed=seed, separation=float(sep))
        truth_a = make_synthetic(n_runs=args.runs, **kwargs)
        truth_b = make_synthetic(n_runs=2 * args.runs, branches=[[0, 1, 3]], **kwargs)
        a, true_a = fitted("A", truth_a, range(args.runs), args.max_states, args.restarts)
        b, true_b = fitted("B", truth_b, range(args.runs, 2 * args.runs), args.max_states,
                           args.restarts)  # fmt: skip
        c = compare_fits([a, b], match_on="levels")
        profiles, _ = common_profiles([a, b], c.features)
        pairs = []
        for g in c.groups:
            if g["matched"]:
                ok = true_a[g["states"]["A"]] == true_b[g["states"]["B"]]
                wrong += not ok
                same.append(g["distance"])
                grade = "" if g["grade"] == "same" else f" ({g['grade']})"
                pairs.append(f"{g['distance']:.2f}{'*' if ok else ''}{grade}")
        within = [distance_matrix(p, p)[np.triu_indices(len(p), 1)] for p in profiles if len(p) > 1]
        closest = float(np.concatenate(within).min())
        distinct.append(closest)
        detour = [k for k, t in true_a.items() if t == 2]
        alone = bool(detour) and all(
            not c.group_of("A", k)["matched"] for k in detour
        )  # A's state for the true detour state 2 has no partner in B
        detour_alone += alone
        print(f"| {seed} | {sep} | {a.n}, {b.n} | {' '.join(pairs)} | {closest:.2f} | "
              f"{'yes' if alone else 'no (merged)' if not detour else 'no'} |")  # fmt: skip
    print()
    print(f"same-state pairs: {len(same)}, distance {min(same):.2f}-{max(same):.2f}; "
          f"pairs of different true states: {wrong}; closest distinct states in a fit: "
          f"{min(distinct):.2f}; detour left alone in {detour_alone} of {len(cases)} cases")  # fmt: skip
    return 0


if __name__ == "__main__":
    sys.exit(main())
