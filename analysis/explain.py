"""Why an edge j -> k happens: the derivative of the filtered state posterior.

docs/method.md section 3. With the filtered posterior ``p(h | z_1..t)`` from the
forward algorithm,

    d log p(s_t = k | z_1..t) / d z_t
        = S_k^-1 (mu_k - z_t) - sum_h p(h | z_1..t) S_h^-1 (mu_h - z_t)

is a vector over features (the reference code wrongly sums it to a scalar).
Only the emission term of step t depends on z_t; the prediction from steps
before t does not, which is why the formula has no transition terms.
"""

from __future__ import annotations

import numpy as np
from scipy.special import logsumexp


def log_emissions(model, X: np.ndarray) -> np.ndarray:
    """log N(z_t | mu_h, S_h) for every row t and state h, as hmmlearn computes it."""
    return model._compute_log_likelihood(np.asarray(X, dtype=float))


def filtered_posterior(model, X: np.ndarray) -> np.ndarray:
    """p(s_t = h | z_1..t) for one run, shape (T, n): the normalised forward pass."""
    log_b = log_emissions(model, X)
    try:
        # hmmlearn's own C++ forward pass (log space): fast on long runs.
        from hmmlearn import _hmmc

        _, alpha = _hmmc.forward_log(model.startprob_, model.transmat_, log_b)
        alpha = alpha - logsumexp(alpha, axis=1, keepdims=True)
        return np.exp(alpha)
    except (ImportError, AttributeError, TypeError):  # a future hmmlearn: plain numpy
        pass
    log_start = np.log(np.maximum(model.startprob_, 1e-300))
    log_trans = np.log(np.maximum(model.transmat_, 1e-300))
    alpha = np.empty_like(log_b)
    alpha[0] = log_start + log_b[0]
    for t in range(1, len(log_b)):
        alpha[t] = logsumexp(alpha[t - 1][:, None] + log_trans, axis=0) + log_b[t]
    alpha -= logsumexp(alpha, axis=1, keepdims=True)
    return np.exp(alpha)


def precisions(model) -> np.ndarray:
    """S_h^-1 for every state, shape (n, F, F)."""
    covars = np.asarray(model.covars_, dtype=float)  # always (n, F, F) in hmmlearn
    return np.linalg.inv(covars)


def posterior_gradient(model, z: np.ndarray, posterior: np.ndarray, k: int) -> np.ndarray:
    """d log p(s_t = k | z_1..t) / d z_t at one checkpoint (a vector over features).

    ``posterior`` is the filtered posterior at t (over states), ``z`` the row z_t.
    """
    prec = precisions(model)
    pull = np.einsum("hij,hj->hi", prec, model.means_ - z[None, :])  # S_h^-1 (mu_h - z)
    return pull[k] - posterior @ pull


def edge_gradients(model, X_runs, paths) -> dict[tuple[int, int], np.ndarray]:
    """Mean ABSOLUTE derivative over every entry into k from j, per edge (j, k).

    ``X_runs`` are the runs' feature rows and ``paths`` their decoded states, in
    the model's own state numbering. The derivative is evaluated at the first
    checkpoint t of the new state (s_{t-1} = j, s_t = k).
    """
    prec = precisions(model)
    sums: dict[tuple[int, int], np.ndarray] = {}
    counts: dict[tuple[int, int], int] = {}
    for X, path in zip(X_runs, paths):
        path = np.asarray(path)
        entries = np.flatnonzero(path[1:] != path[:-1]) + 1
        if not len(entries):
            continue
        post = filtered_posterior(model, X)
        for t in entries:
            j, k = int(path[t - 1]), int(path[t])
            pull = np.einsum("hij,hj->hi", prec, model.means_ - X[t][None, :])
            grad = np.abs(pull[k] - post[t] @ pull)
            sums[(j, k)] = sums.get((j, k), 0.0) + grad
            counts[(j, k)] = counts.get((j, k), 0) + 1
    return {edge: sums[edge] / counts[edge] for edge in sums}
