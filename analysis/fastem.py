"""A vectorised Baum-Welch for diagonal Gaussian HMMs, equivalent to hmmlearn's.

hmmlearn fits a GaussianHMM one sequence at a time: for 32 runs it calls its
C++ forward-backward 32 times per EM iteration, in log space, plus numpy
overhead per call. Here all runs go through the forward-backward pass
together: runs are padded to the longest length and stacked into a (runs,
time, states) array, and each time step is one small matrix product for all
runs at once, with per-step scaling instead of logarithms.

Everything else is hmmlearn's algorithm, on purpose, so that a fit here is the
same fit hmmlearn would make (tests compare one EM step and the likelihoods):

* the same initialisation (k-means means with ``n_init=10`` and the same
  ``random_state``, the data covariance plus ``min_covar`` for every state,
  start and transition probabilities drawn from the same Dirichlet(1/n));
* the same M-step with hmmlearn's default priors (``covars_prior=1e-2``,
  ``covars_weight=1``, no prior on means, start or transitions);
* the same stopping rule: stop after ``n_iter`` iterations or when the
  log-likelihood improves by less than ``tol``.
"""

from __future__ import annotations

import math
from collections.abc import Sequence

import numpy as np

MIN_COVAR = 1e-3  # hmmlearn's GaussianHMM defaults
COVARS_PRIOR = 1e-2


def pad_runs(X: np.ndarray, lengths: Sequence[int]) -> tuple[np.ndarray, np.ndarray]:
    """Stacked rows -> (runs, T_max, F) zero-padded array and a (runs, T_max) mask."""
    lengths = np.asarray(lengths, dtype=int)
    T = int(lengths.max())
    out = np.zeros((len(lengths), T, X.shape[1]))
    mask = np.arange(T)[None, :] < lengths[:, None]
    out[mask] = X
    return out, mask


def log_emissions(Xp: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """log N(x | mu_k, diag(var_k)) for every (run, t, k), by matrix products."""
    precision = 1.0 / variances  # (K, F)
    quad = (
        (Xp**2) @ precision.T
        - 2.0 * Xp @ (means * precision).T
        + (means**2 * precision).sum(axis=1)
    )
    log_det = np.log(variances).sum(axis=1)
    return -0.5 * (Xp.shape[-1] * math.log(2 * math.pi) + log_det + quad)


def e_step(Xp, mask, startprob, transmat, means, variances):
    """Forward-backward for all runs at once.

    Returns the total log-likelihood and the sufficient statistics hmmlearn's
    M-step uses: start, trans (expected transition counts), post, obs, obs**2.
    """
    R, T, _ = Xp.shape
    log_b = log_emissions(Xp, means, variances)
    shift = log_b.max(axis=2, keepdims=True)  # per-row scaling keeps exp() in range
    B = np.exp(log_b - shift)
    alpha = np.empty_like(B)
    scale = np.ones((R, T))
    a = startprob[None, :] * B[:, 0]
    scale[:, 0] = a.sum(axis=1)
    alpha[:, 0] = a / scale[:, 0, None]
    for t in range(1, T):
        a = (alpha[:, t - 1] @ transmat) * B[:, t]
        s = a.sum(axis=1)
        s = np.where(mask[:, t], np.maximum(s, 1e-300), 1.0)  # padded rows: neutral
        scale[:, t] = s
        alpha[:, t] = a / s[:, None]
    beta = np.ones_like(B)
    for t in range(T - 2, -1, -1):
        b = (B[:, t + 1] * beta[:, t + 1]) @ transmat.T / scale[:, t + 1, None]
        beta[:, t] = np.where(mask[:, t + 1, None], b, 1.0)
    log_likelihood = float((np.log(scale) + shift[..., 0])[mask].sum())

    gamma = alpha * beta * mask[..., None]
    gamma /= np.maximum(gamma.sum(axis=2, keepdims=True), 1e-300)
    # Expected transitions: sum_t alpha_{t-1}(i) A_ij B_t(j) beta_t(j) / c_t.
    weighted = B[:, 1:] * beta[:, 1:] / scale[:, 1:, None] * mask[:, 1:, None]
    trans = transmat * np.einsum("rti,rtj->ij", alpha[:, :-1], weighted)
    flat_gamma = gamma.reshape(-1, gamma.shape[2])
    flat_x = Xp.reshape(-1, Xp.shape[2])
    stats = {
        "start": gamma[:, 0].sum(axis=0),
        "trans": trans,
        "post": flat_gamma.sum(axis=0),
        "obs": flat_gamma.T @ flat_x,
        "obs**2": flat_gamma.T @ flat_x**2,
    }
    return log_likelihood, stats


def m_step(stats, startprob, transmat):
    """hmmlearn's M-step for a diagonal GaussianHMM with its default priors."""
    start = np.where(startprob == 0, 0, np.maximum(stats["start"], 0))
    start = start / max(start.sum(), 1e-300)
    trans = np.where(transmat == 0, 0, np.maximum(stats["trans"], 0))
    rows = trans.sum(axis=1, keepdims=True)
    trans = np.where(rows > 0, trans / np.where(rows > 0, rows, 1), transmat)
    denom = stats["post"][:, None]
    means = stats["obs"] / denom
    c_n = stats["obs**2"] - 2 * means * stats["obs"] + means**2 * denom
    variances = (COVARS_PRIOR + c_n) / np.maximum(denom, 1e-5)
    return start, trans, means, variances


def init_params(X: np.ndarray, n_states: int, random_state: int, n_init: int = 10, full=False):
    """hmmlearn's GaussianHMM initialisation (k-means means, data covariance).

    ``n_init=10`` is hmmlearn's choice: ten k-means runs per fit, which takes
    longer than the EM itself on a few thousand rows. Each restart of the
    sweep already has its own seed, so the sweep uses ``n_init=1``.
    With ``full``, covariances are (n, F, F) matrices, else variances (n, F).
    """
    from sklearn.cluster import KMeans

    means = KMeans(n_clusters=n_states, random_state=random_state, n_init=n_init).fit(X)
    cov = np.atleast_2d(np.cov(X.T)) + MIN_COVAR * np.eye(X.shape[1])
    if full:
        variances = np.tile(cov, (n_states, 1, 1))
    else:
        variances = np.tile(np.diag(cov), (n_states, 1))
    # hmmlearn draws sparse Dirichlet(1/n) start and transition probabilities
    # from RandomState(random_state), before k-means (which seeds itself).
    rng = np.random.RandomState(random_state)
    startprob = rng.dirichlet(np.full(n_states, 1.0 / n_states))
    transmat = rng.dirichlet(np.full(n_states, 1.0 / n_states), size=n_states)
    return startprob, transmat, means.cluster_centers_, variances


def fit_diag(X, lengths, n_states, *, n_iter=100, tol=1e-2, random_state=0, params=None):
    """Fit a diagonal Gaussian HMM; returns (arrays, history, converged).

    ``arrays`` has startprob, transmat, means and covars (variances, (n, F)),
    as :func:`analysis.model.model_arrays`. ``params`` (a tuple of start,
    trans, means, variances) skips the initialisation.
    """
    X = np.asarray(X, dtype=float)
    Xp, mask = pad_runs(X, lengths)
    if params is None:
        params = init_params(X, n_states, random_state)
    startprob, transmat, means, variances = (np.array(p, dtype=float) for p in params)
    history: list[float] = []
    converged = False
    for _ in range(n_iter):
        log_likelihood, stats = e_step(Xp, mask, startprob, transmat, means, variances)
        startprob, transmat, means, variances = m_step(stats, startprob, transmat)
        history.append(log_likelihood)
        if len(history) >= 2 and history[-1] - history[-2] < tol:
            converged = True
            break
    arrays = {"startprob": startprob, "transmat": transmat, "means": means, "covars": variances}
    return arrays, history, converged
