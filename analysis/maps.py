"""From a fitted HMM to a training map: paths, nodes, edges, detours.

docs/method.md sections 3 and 4. :func:`build_map` decodes every run (train and
held-out) with Viterbi, relabels the states canonically, and fills the plain
data classes of :mod:`analysis.result` that the CLI prints and the dashboard
draws. The statistics (detour tests, occupancy regression) are in
:mod:`analysis.evidence`.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from trainmap.analysis.evidence import detour_tests, occupancy_regression
from trainmap.analysis.explain import edge_gradients
from trainmap.analysis.fitting import make_model
from trainmap.analysis.result import EdgeFeature, EdgeInfo, RunArrays, StateInfo, TrainingMap


def convergence_epoch(epochs: np.ndarray, accuracy: np.ndarray | None, threshold: float = 0.9):
    """First epoch whose accuracy reaches ``threshold``; None if never (censored)."""
    if accuracy is None:
        return None
    hits = np.flatnonzero(np.nan_to_num(accuracy, nan=-np.inf) >= threshold)
    return int(epochs[hits[0]]) if len(hits) else None


def canonical_order(paths: Sequence[np.ndarray], epochs: Sequence[np.ndarray], n: int):
    """Old state numbers in canonical order: by mean epoch of first visit.

    State numbers out of EM are arbitrary; ordering by when runs first reach a
    state makes labels (and the dashboard's colours) stable across refits.
    Unvisited states go last; ties break by the old number.
    """
    first = [[] for _ in range(n)]
    for path, epoch in zip(paths, epochs):
        states, first_index = np.unique(np.asarray(path), return_index=True)
        for state, t in zip(states, first_index):
            first[int(state)].append(epoch[t])
    keys = [(np.mean(f) if f else np.inf, old) for old, f in enumerate(first)]
    return [old for _, old in sorted(keys)]


def permute_arrays(arrays: dict, order: Sequence[int]) -> dict:
    """Model arrays with states renumbered so that new state i is old ``order[i]``."""
    order = np.asarray(order)
    return {
        "startprob": arrays["startprob"][order],
        "transmat": arrays["transmat"][np.ix_(order, order)],
        "means": arrays["means"][order],
        "covars": arrays["covars"][order],
    }


def total_variation_dissimilarity(occupancy: np.ndarray) -> float:
    """Mean pairwise total-variation distance between runs' occupancy distributions.

    With the 0/1 ground metric this is the Wasserstein distance of docs/method.md 4.
    """
    if len(occupancy) < 2:
        return 0.0
    pairs = itertools.combinations(range(len(occupancy)), 2)
    return float(np.mean([0.5 * np.abs(occupancy[a] - occupancy[b]).sum() for a, b in pairs]))


def build_map(
    arrays: dict,
    covariance_type: str,
    run_names: Sequence[str],
    X_runs: Sequence[np.ndarray],
    epochs: Sequence[np.ndarray],
    feature_names: Sequence[str],
    convergence: dict[str, int | None],
    top_k: int = 3,
) -> tuple[TrainingMap, dict]:
    """The training map of one fitted model, and its arrays in canonical order."""
    model = make_model(arrays, covariance_type)
    n = len(arrays["means"])
    raw_paths = [model.decode(X, algorithm="viterbi")[1] for X in X_runs]
    order = canonical_order(raw_paths, epochs, n)
    new_of_old = np.empty(n, dtype=int)
    new_of_old[order] = np.arange(n)
    paths = [new_of_old[p] for p in raw_paths]
    canonical = permute_arrays(arrays, order)
    model = make_model(canonical, covariance_type)

    occupancy = np.array([np.bincount(p, minlength=n) / len(p) for p in paths])
    total = np.bincount(np.concatenate(paths), minlength=n)
    conv = np.array([convergence.get(r) for r in run_names], dtype=object)
    converged = np.array([c is not None for c in conv])
    # Censored runs (never reached the threshold) are left out of the
    # regression but kept in the detour tests, censored at their last epoch.
    regression = occupancy_regression(
        occupancy, np.array([np.nan if c is None else c for c in conv], dtype=float)
    )
    times = np.array(
        [c if c is not None else np.asarray(e)[-1] for c, e in zip(conv, epochs)], dtype=float
    )
    detours = detour_tests(occupancy > 0, times, converged)

    states = []
    for k in range(n):
        in_k = [e[p == k] for p, e in zip(paths, epochs)]
        visited = sum(len(x) > 0 for x in in_k)
        states.append(
            StateInfo(
                state=k,
                occupancy=float(total[k] / total.sum()),
                self_prob=float(canonical["transmat"][k, k]),
                start_runs=int(sum(p[0] == k for p in paths)),
                end_runs=int(sum(p[-1] == k for p in paths)),
                # A detour: runs visiting it converge significantly later than
                # the runs that manage without it (docs/method.md 4, analysis.evidence).
                is_detour=detours[k]["verdict"] == "detour",
                visited_runs=int(visited),
                mean_epoch=float(np.concatenate(in_k).mean()) if visited else float("nan"),
                profile={f: float(v) for f, v in zip(feature_names, canonical["means"][k])},
                detour=detours[k],
            )
        )

    gradients = edge_gradients(model, X_runs, paths)
    edges = []
    for (j, k), grad in sorted(gradients.items()):
        taking = [i for i, p in enumerate(paths) if np.any((p[:-1] == j) & (p[1:] == k))]
        count = int(sum(int(np.sum((p[:-1] == j) & (p[1:] == k))) for p in paths))
        conv_taking = [conv[i] for i in taking if conv[i] is not None]
        delta = canonical["means"][k] - canonical["means"][j]
        top = np.argsort(-grad, kind="stable")[:top_k]
        edges.append(
            EdgeInfo(
                source=j,
                target=k,
                prob=float(canonical["transmat"][j, k]),
                n_runs=len(taking),
                n_transitions=count,
                mean_convergence_epoch=float(np.mean(conv_taking)) if conv_taking else None,
                top_features=[
                    EdgeFeature(feature_names[f], float(grad[f]), float(delta[f])) for f in top
                ],
            )
        )

    training_map = TrainingMap(
        n_states=n,
        states=states,
        edges=edges,
        paths=RunArrays.from_mapping(dict(zip(run_names, paths))),
        epochs=RunArrays.from_mapping(dict(zip(run_names, epochs))),
        convergence_epoch={r: convergence.get(r) for r in run_names},
        regression=regression,
        dissimilarity=total_variation_dissimilarity(occupancy),
    )
    return training_map, canonical
