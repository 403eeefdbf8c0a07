"""From a fitted HMM to a training map: paths, nodes, edges, detours.

METHOD.md sections 3 and 4. :func:`build_map` decodes every run (train and
held-out) with Viterbi, relabels the states canonically, and fills the plain
data classes of :mod:`analysis.result` that the CLI prints and the dashboard
draws.
"""

from __future__ import annotations

import itertools
from collections.abc import Sequence

import numpy as np

from analysis.explain import edge_gradients
from analysis.model import make_model
from analysis.result import EdgeFeature, EdgeInfo, StateInfo, TrainingMap


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


def occupancy_regression(occupancy: np.ndarray, target: np.ndarray) -> dict:
    """Least squares of convergence epoch on state occupancy, with an F-test.

    Occupancies sum to 1 per run, so with an intercept the design is singular.
    We centre them and take the minimum-norm solution: the intercept is the
    mean convergence epoch and the coefficients sum to zero, so a positive
    coefficient means "more time in this state than average goes with later
    convergence". R^2 and the F-test use the rank of the centred design.
    """
    from scipy import stats

    m, n = occupancy.shape
    result = {"coef": {k: 0.0 for k in range(n)}, "intercept": None, "r2": None}
    result.update(p_value=None, n_runs=int(m), df_model=0, f_stat=None)
    if m < 2:
        return result
    centred = occupancy - occupancy.mean(axis=0)
    coef, _, rank, _ = np.linalg.lstsq(centred, target - target.mean(), rcond=None)
    fitted = centred @ coef
    sst = float(((target - target.mean()) ** 2).sum())
    sse = float(((target - target.mean() - fitted) ** 2).sum())
    result["coef"] = {k: float(c) for k, c in enumerate(coef)}
    result["intercept"] = float(target.mean())
    result["df_model"] = int(rank)
    if sst > 0:
        result["r2"] = 1.0 - sse / sst
    df_resid = m - rank - 1
    if rank > 0 and df_resid > 0 and sst > 0:
        if sse <= 0:
            result.update(f_stat=float("inf"), p_value=0.0)
        else:
            f_stat = ((sst - sse) / rank) / (sse / df_resid)
            result.update(f_stat=float(f_stat), p_value=float(stats.f.sf(f_stat, rank, df_resid)))
    return result


def total_variation_dissimilarity(occupancy: np.ndarray) -> float:
    """Mean pairwise total-variation distance between runs' occupancy distributions.

    With the 0/1 ground metric this is the Wasserstein distance of METHOD.md 4.
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
    regression = occupancy_regression(
        occupancy[converged], np.array([c for c in conv[converged]], dtype=float)
    )
    regression["n_censored"] = int((~converged).sum())

    states = []
    for k in range(n):
        in_k = [e[p == k] for p, e in zip(paths, epochs)]
        visited = sum(len(x) > 0 for x in in_k)
        coef = regression["coef"].get(k, 0.0)
        states.append(
            StateInfo(
                state=k,
                occupancy=float(total[k] / total.sum()),
                self_prob=float(canonical["transmat"][k, k]),
                start_runs=int(sum(p[0] == k for p in paths)),
                end_runs=int(sum(p[-1] == k for p in paths)),
                # A detour: visiting it goes with later convergence, and some
                # runs manage without it (METHOD.md 4).
                is_detour=bool(coef > 1e-9 and 0 < visited < len(paths)),
                visited_runs=int(visited),
                mean_epoch=float(np.concatenate(in_k).mean()) if visited else float("nan"),
                profile={f: float(v) for f, v in zip(feature_names, canonical["means"][k])},
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
        paths={r: p.astype(int).tolist() for r, p in zip(run_names, paths)},
        epochs={r: np.asarray(e).astype(int).tolist() for r, e in zip(run_names, epochs)},
        convergence_epoch={r: convergence.get(r) for r in run_names},
        regression=regression,
        dissimilarity=total_variation_dissimilarity(occupancy),
    )
    return training_map, canonical
