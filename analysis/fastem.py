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
  log-likelihood improves by less than ``tol``;
* the same scores: :func:`score_batch` gives hmmlearn's ``score`` and
  ``score_samples`` for every restart in one pass.
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


def _log_emissions_flat(X: np.ndarray, means: np.ndarray, variances: np.ndarray) -> np.ndarray:
    """log N(x_i | mu_k, diag(var_k)) as an (N, S, K) array for rows X (N, F).

    The quadratic form expanded into one matrix product for all fits and
    states, [x**2, x, 1] @ [prec; -2 mu prec; sum mu**2 prec + log det + F log 2pi],
    instead of an (N, S, K, F) difference array.
    """
    S, K, F = means.shape
    precision = (1.0 / variances).reshape(-1, F)  # (S*K, F)
    mu = means.reshape(-1, F)
    constant = (mu**2 * precision).sum(axis=1) + np.log(variances).reshape(-1, F).sum(axis=1)
    weights = np.concatenate(
        [precision.T, -2.0 * (mu * precision).T, (constant + F * math.log(2 * math.pi))[None]]
    )
    design = np.concatenate([X**2, X, np.ones((len(X), 1))], axis=1)
    return (-0.5 * (design @ weights)).reshape(len(X), S, K)


def e_step_batch(
    Xp, mask, startprob, transmat, means, variances, *, posteriors=False, forward_only=False
):
    """Forward-backward for S fits and all runs at once (leading axis S).

    Each time step is one batched matrix product for every fit and run, so the
    Python loop over time is paid once for all of them. The recursions keep
    time as the outer axis, (T, S, R, K), so that every step reads and writes
    contiguous blocks in place (no copies or temporaries per step: with a few
    states and runs a step is dominated by per-call overhead). Returns the
    log-likelihood per fit (S,) and the sufficient statistics of hmmlearn's
    M-step, each with a leading S axis: start, trans, post, obs, obs**2; with
    ``posteriors``, the state posteriors (S, R, T, K) instead of the statistics;
    with ``forward_only``, the log-likelihoods alone (no backward pass).
    """
    S, K = startprob.shape
    R, T, F = Xp.shape
    Xt = np.ascontiguousarray(np.swapaxes(Xp, 0, 1)).reshape(-1, F)  # rows in (t, r) order
    mask_t = np.ascontiguousarray(mask.T)  # (T, R)
    log_b = _log_emissions_flat(Xt, means, variances).reshape(T, R, S, K).swapaxes(1, 2)
    shift = log_b.max(axis=3)  # (T, S, R): per-row scaling keeps exp() in range
    B = np.exp(log_b - shift[..., None])  # (T, S, R, K), contiguous
    alpha = np.empty_like(B)
    # Per-step scales and their inverses, kept (T, S, R, 1) so that every
    # step broadcasts without building views; sums over states are products
    # with a ones vector (several times faster than .sum on small blocks).
    scale = np.empty((T, S, R, 1))
    inv_scale = np.empty_like(scale)
    ones = np.ones((K, 1))
    ragged = not mask.all()
    ended = ~mask_t[:, None, :, None]  # (T, 1, R, 1): rows past a run's end
    np.multiply(startprob[:, None, :], B[0], out=alpha[0])
    for t in range(T):
        a, st = alpha[t], scale[t]
        if t:
            np.matmul(alpha[t - 1], transmat, out=a)
            a *= B[t]
        np.matmul(a, ones, out=st)
        np.maximum(st, 1e-300, out=st)
        if ragged:  # rows past a run's end: neutral scale, excluded below
            np.copyto(st, 1.0, where=ended[t])
        np.divide(1.0, st, out=inv_scale[t])
        a *= inv_scale[t]
    inside = mask_t[:, None, :]  # (T, 1, R)
    log_likelihood = ((np.log(scale[..., 0]) + shift) * inside).sum(axis=(0, 2))
    if forward_only:
        return log_likelihood, None
    beta = np.empty_like(B)
    beta[T - 1] = 1.0
    trans_t = np.ascontiguousarray(np.swapaxes(transmat, 1, 2))
    step = np.empty_like(B[0])
    for t in range(T - 2, -1, -1):
        b = beta[t]
        np.multiply(B[t + 1], beta[t + 1], out=step)
        np.matmul(step, trans_t, out=b)
        b *= inv_scale[t + 1]
        if ragged:
            np.copyto(b, 1.0, where=ended[t + 1])

    gamma = alpha * beta
    gamma *= inside[..., None]
    gamma /= np.maximum(gamma @ ones, 1e-300)
    if posteriors:
        return log_likelihood, np.ascontiguousarray(gamma.transpose(1, 2, 0, 3))
    # Expected transitions: sum_t alpha_{t-1}(i) A_ij B_t(j) beta_t(j) / c_t.
    weighted = B[1:] * beta[1:]
    weighted *= inv_scale[1:]
    weighted *= inside[1:, ..., None]
    # (S, rows, K) blocks per fit, so each statistic is one batched product.
    left = np.moveaxis(alpha[:-1], 1, 0).reshape(S, -1, K)
    right = np.moveaxis(weighted, 1, 0).reshape(S, -1, K)
    trans = transmat * (np.swapaxes(left, 1, 2) @ right)
    flat_gamma = np.swapaxes(np.moveaxis(gamma, 1, 0).reshape(S, -1, K), 1, 2)  # (S, K, T*R)
    stats = {
        "start": gamma[0].sum(axis=1),
        "trans": trans,
        "post": flat_gamma.sum(axis=2),
        "obs": flat_gamma @ Xt,
        "obs**2": flat_gamma @ Xt**2,
    }
    return log_likelihood, stats


def e_step(Xp, mask, startprob, transmat, means, variances):
    """Forward-backward for one fit: total log-likelihood and hmmlearn's statistics."""
    batch = [np.asarray(p, dtype=float)[None] for p in (startprob, transmat, means, variances)]
    log_likelihood, stats = e_step_batch(Xp, mask, *batch)
    return float(log_likelihood[0]), {key: value[0] for key, value in stats.items()}


def m_step(stats, startprob, transmat):
    """hmmlearn's M-step for diagonal GaussianHMMs with its default priors (batched)."""
    start = np.where(startprob == 0, 0, np.maximum(stats["start"], 0))
    start = start / np.maximum(start.sum(axis=-1, keepdims=True), 1e-300)
    trans = np.where(transmat == 0, 0, np.maximum(stats["trans"], 0))
    rows = trans.sum(axis=-1, keepdims=True)
    trans = np.where(rows > 0, trans / np.where(rows > 0, rows, 1), transmat)
    denom = stats["post"][..., None]
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


def chunk_runs(X, lengths, n_fits, n_states, max_elements):
    """Padded groups of consecutive runs, each small enough for the batched E-step.

    A group's (fits, runs, T, states) arrays hold at most ``max_elements``
    values (a group has at least one run), so memory stays bounded however many
    runs an experiment has; the statistics of the groups are summed.
    """
    lengths = list(lengths)
    bounds = np.concatenate([[0], np.cumsum(lengths)])
    chunks, first = [], 0
    for last in range(1, len(lengths) + 1):
        longest = max(lengths[first:last])
        if last - first > 1 and n_fits * (last - first) * longest * n_states > max_elements:
            chunks.append((first, last - 1))
            first = last - 1
    chunks.append((first, len(lengths)))
    return [pad_runs(X[bounds[a] : bounds[b]], lengths[a:b]) for a, b in chunks]


def _e_step_chunks(chunks, *params):
    """e_step_batch summed over groups of runs."""
    total, stats = None, None
    for Xp, mask in chunks:
        ll, part = e_step_batch(Xp, mask, *params)
        if stats is None:
            total, stats = ll, part
        else:
            total = total + ll
            stats = {key: stats[key] + part[key] for key in stats}
    return total, stats


def score_batch(X, lengths, fits, *, posteriors=False, max_elements=3_000_000):
    """hmmlearn's ``score`` (or ``score_samples``) for several diagonal HMMs at once.

    ``fits`` is a list of dicts with startprob, transmat, means and covars
    (variances), as :func:`fit_diag_batch` returns them. Returns the total
    log-likelihood of X per fit, and with ``posteriors`` also each fit's state
    posteriors as stacked rows (len(X), n), hmmlearn's ``score_samples``. A fit
    with non-finite parameters gets a non-finite score; the others are unaffected.
    """
    X = np.asarray(X, dtype=float)
    names = ("startprob", "transmat", "means", "covars")
    params = [np.stack([np.asarray(f[name], dtype=float) for f in fits]) for name in names]
    n_states = params[0].shape[1]
    total = np.zeros(len(fits))
    parts = []
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        for Xp, mask in chunk_runs(X, lengths, len(fits), n_states, max_elements):
            ll, gamma = e_step_batch(
                Xp, mask, *params, posteriors=posteriors, forward_only=not posteriors
            )
            total += ll
            if posteriors:
                parts.append(gamma[:, mask])  # (S, rows of this group, n)
    if not posteriors:
        return total
    return total, list(np.concatenate(parts, axis=1))


def fit_diag_batch(X, lengths, starts, *, n_iter=100, tol=1e-2, max_elements=3_000_000):
    """Run EM for several diagonal HMMs with the same n on the same data at once.

    ``starts`` is a list of initial (startprob, transmat, means, variances), one
    per restart. Each restart follows exactly hmmlearn's EM and stops on its own
    (after ``n_iter`` iterations or a gain below ``tol``); stopped ones are no
    longer computed. Runs are processed in groups of at most ``max_elements``
    array values (see :func:`chunk_runs`). Returns one (arrays, history,
    converged) per restart.
    """
    X = np.asarray(X, dtype=float)
    n_states = len(starts[0][0])
    chunks = chunk_runs(X, lengths, len(starts), n_states, max_elements)
    params = [np.stack([np.asarray(p[i], dtype=float) for p in starts]) for i in range(4)]
    S = len(starts)
    histories: list[list[float]] = [[] for _ in range(S)]
    converged = np.zeros(S, dtype=bool)
    active = np.arange(S)
    with np.errstate(divide="ignore", invalid="ignore", over="ignore", under="ignore"):
        for _ in range(n_iter):
            current = [p[active] for p in params]
            log_likelihood, stats = _e_step_chunks(chunks, *current)
            updated = m_step(stats, current[0], current[1])
            for p, new in zip(params, updated):
                p[active] = new
            still = []
            for j, s in enumerate(active):
                histories[s].append(float(log_likelihood[j]))
                h = histories[s]
                if len(h) >= 2 and h[-1] - h[-2] < tol:
                    converged[s] = True
                elif np.isfinite(h[-1]):  # a NaN likelihood stops (and fails) the fit
                    still.append(s)
            active = np.array(still, dtype=int)
            if not len(active):
                break
    names = ("startprob", "transmat", "means", "covars")
    return [
        ({name: params[i][s] for i, name in enumerate(names)}, histories[s], bool(converged[s]))
        for s in range(S)
    ]


def fit_diag(X, lengths, n_states, *, n_iter=100, tol=1e-2, random_state=0, params=None):
    """Fit one diagonal Gaussian HMM; returns (arrays, history, converged).

    ``arrays`` has startprob, transmat, means and covars (variances, (n, F)),
    as :func:`analysis.fitting.model_arrays`. ``params`` (a tuple of start,
    trans, means, variances) skips hmmlearn's initialisation.
    """
    if params is None:
        params = init_params(np.asarray(X, dtype=float), n_states, random_state)
    return fit_diag_batch(X, lengths, [params], n_iter=n_iter, tol=tol)[0]
