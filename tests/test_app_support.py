"""Fixtures shared by the dashboard tests (this file holds no tests itself).

``make_root`` writes a small synthetic experiment plus one broken run. Its fit
is built from the synthetic truth (known state paths), so the expected map is
known exactly: ``truth_fit`` turns paths into the ``analysis.result`` classes
the way analysis does, and the app only has to draw it.
"""

from __future__ import annotations

import numpy as np
import pandas as pd

from trainmap.analysis.evidence import detour_tests, occupancy_regression
from trainmap.analysis.result import EdgeFeature, EdgeInfo, FitResult, StateInfo, TrainingMap
from trainmap.analysis.synthetic import make_synthetic, write_synthetic_experiment

EXPERIMENT = "synth"
N_RUNS = 8
N_CHECKPOINTS = 120
SEED = 3


def make_root(root, n_runs=N_RUNS, n_checkpoints=N_CHECKPOINTS, experiment=EXPERIMENT):
    """A root with one synthetic experiment and a broken run; returns the truth."""
    write_synthetic_experiment(
        root, experiment, n_runs=n_runs, n_checkpoints=n_checkpoints, seed=SEED
    )
    broken = root / experiment / "seed-broken"
    broken.mkdir()
    (broken / "meta.json").write_text("{not json")
    return make_synthetic(n_runs=n_runs, n_checkpoints=n_checkpoints, seed=SEED)


def _map_from_paths(names, paths, epochs, features, convergence) -> TrainingMap:
    n = int(max(int(p.max()) for p in paths) + 1)
    all_states = np.concatenate(paths)
    all_epochs = np.concatenate(epochs)
    # The evidence as analysis computes it, on the true paths.
    occupancy = np.array([np.bincount(p, minlength=n) / len(p) for p in paths])
    conv = [convergence[name] for name in names]
    events = np.array([c is not None for c in conv])
    times = np.array([c if c is not None else e[-1] for c, e in zip(conv, epochs)], dtype=float)
    detours = detour_tests(occupancy > 0, times, events)
    target = np.array([c if c is not None else np.nan for c in conv], dtype=float)
    states = []
    for k in range(n):
        visited = [i for i, p in enumerate(paths) if (p == k).any()]
        states.append(
            StateInfo(
                state=k,
                occupancy=float((all_states == k).mean()),
                self_prob=0.95,
                start_runs=sum(int(p[0] == k) for p in paths),
                end_runs=sum(int(p[-1] == k) for p in paths),
                is_detour=detours[k]["verdict"] == "detour",
                detour=detours[k],
                visited_runs=len(visited),
                mean_epoch=float(all_epochs[all_states == k].mean()) if visited else 0.0,
                profile={f: float(np.sin(k + j)) * 2 for j, f in enumerate(features)},
            )
        )
    edges = {}
    for i, p in enumerate(paths):
        change = np.flatnonzero(p[1:] != p[:-1])
        for t in change:
            key = (int(p[t]), int(p[t + 1]))
            edge = edges.setdefault(key, {"runs": set(), "count": 0})
            edge["runs"].add(i)
            edge["count"] += 1
    edge_infos = []
    for (j, k), edge in sorted(edges.items()):
        conv = [convergence[names[i]] for i in edge["runs"] if convergence[names[i]] is not None]
        edge_infos.append(
            EdgeInfo(
                source=j,
                target=k,
                prob=round(0.02 + 0.01 * k, 3),
                n_runs=len(edge["runs"]),
                n_transitions=edge["count"],
                mean_convergence_epoch=float(np.mean(conv)) if conv else None,
                top_features=[
                    EdgeFeature(feature=f, score=1.0 / (r + 1), delta_z=(-1) ** (r + j) * (r + 1.5))
                    for r, f in enumerate(features[:3])
                ],
            )
        )
    return TrainingMap(
        n_states=n,
        states=states,
        edges=edge_infos,
        paths={name: [int(s) for s in p] for name, p in zip(names, paths)},
        epochs={name: [int(e) for e in ep] for name, ep in zip(names, epochs)},
        convergence_epoch=dict(convergence),
        regression=occupancy_regression(occupancy, target),
        dissimilarity=0.1,
    )


def truth_fit(truth, experiment=EXPERIMENT, max_states=4) -> FitResult:
    """A FitResult whose n-state map merges the true states above n-1 into n-1."""
    names = list(truth.run_names)
    convergence = {n: c for n, c in zip(names, truth.convergence_epoch)}
    features = list(truth.feature_names)
    maps = {}
    for n in range(1, max_states + 1):
        paths = [np.minimum(np.asarray(p), n - 1) for p in truth.paths]
        maps[n] = _map_from_paths(names, paths, truth.epochs, features, convergence)
    ns = np.arange(1, max_states + 1)
    # BIC falls to a minimum at the true n (4) and then rises: the selected n is 4.
    bic = 1000.0 - 300 * np.minimum(ns, 4) + 40 * ns
    sweep = pd.DataFrame(
        {
            "n": ns,
            "feasible": True,
            "failures": 0,
            "converged": 2,
            "train_ll": -bic / 2,
            "heldout_ll_mean": -bic / 3,
            "heldout_ll_std": 5.0,
            "heldout_ll_best": -bic / 3 + 3,
            "aic_mean": bic - 50,
            "aic_std": 8.0,
            "aic_best": bic - 55,
            "bic_mean": bic,
            "bic_std": 10.0,
            "bic_best": bic - 5,
            "icl_best": bic + 5,
        }
    )
    return FitResult(
        experiment=experiment,
        fingerprint="truth",
        params={"criterion": "bic", "max_states": max_states, "restarts": 2},
        feature_names=features,
        runs=sorted(names),
        excluded_runs={},
        sweep=sweep,
        selected_n=4,
        maps=maps,
    )
