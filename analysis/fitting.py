"""Fitting Gaussian HMMs for one n: the part of the sweep that runs in worker processes.

docs/method.md section 2, steps 4-5. :func:`fit_restarts` fits the restarts of
one n and scores them on the held-out runs; :mod:`analysis.model` runs it for
every n in parallel (through joblib, in local processes or on a dask cluster)
and selects n.

This module imports numpy and the vectorised EM (:mod:`analysis.fastem`) only:
a worker process that unpickles :func:`fit_restarts` starts in ~0.2 s, where
importing pandas and scikit-learn took ~1 s (measured in bench/hmm.py, cold
pool). scikit-learn's k-means, which starts each fit, runs in the process that
calls :func:`fastem.init_params`: the sweep's own process on local workers (see
``analysis.model.run_sweep``), else here. hmmlearn is imported only for its
engine and to rebuild a model.
"""

from __future__ import annotations

import math
import time
import warnings
from collections.abc import Sequence

import numpy as np


def n_parameters(n_states: int, n_features: int, covariance_type: str) -> int:
    """Free parameters of a Gaussian HMM: start, transition, mean and covariance.

    Start probabilities have n-1 free values, each transition row n-1, each
    state a mean vector and a diagonal (F values) or full (F(F+1)/2) covariance.
    Matches hmmlearn's ``_get_n_fit_scalars_per_param`` (tested).
    """
    n, f = n_states, n_features
    cov = {"diag": n * f, "full": n * f * (f + 1) // 2, "spherical": n, "tied": f * (f + 1) // 2}
    if covariance_type not in cov:
        raise ValueError(f"unknown covariance_type {covariance_type!r}")
    return (n - 1) + n * (n - 1) + n * f + cov[covariance_type]


def make_model(arrays: dict, covariance_type: str):
    """Rebuild a fitted ``GaussianHMM`` from plain arrays (no pickle involved)."""
    from hmmlearn.hmm import GaussianHMM

    means = np.asarray(arrays["means"], dtype=float)
    model = GaussianHMM(n_components=len(means), covariance_type=covariance_type)
    model.startprob_ = np.asarray(arrays["startprob"], dtype=float)
    model.transmat_ = np.asarray(arrays["transmat"], dtype=float)
    model.n_features = means.shape[1]  # hmmlearn needs it before covars_ is set
    model.means_ = means
    model.covars_ = np.asarray(arrays["covars"], dtype=float)
    return model


def model_arrays(model) -> dict[str, np.ndarray]:
    """The parameters of a fitted ``GaussianHMM`` as plain arrays.

    Covariances are stored in the model's own shape: (n, F) for diag, (n, F, F)
    for full (hmmlearn's ``_covars_``).
    """
    return {
        "startprob": np.array(model.startprob_, dtype=float),
        "transmat": np.array(model.transmat_, dtype=float),
        "means": np.array(model.means_, dtype=float),
        "covars": np.array(model._covars_, dtype=float),
    }


# The batched numpy engine holds a few (restarts, runs, T, n) arrays and works
# through the runs in groups of at most this many values per array; if a single
# run is larger, the sweep falls back to hmmlearn, which works one run at a time.
BATCH_LIMIT = 3_000_000


def lag1_autocorrelation(residuals: Sequence[np.ndarray]) -> np.ndarray:
    """Lag-1 autocorrelation of each feature's residuals, pooled over runs.

    ``residuals`` holds one (T_i, F) array per run. Pairs (t, t+1) are taken
    within runs only. Residuals are not re-centred per run: a model's residuals
    are zero-mean by assumption, so a per-run offset the model missed is
    persistence (less independent information), just as AR noise is.
    Returns F values (0 for a feature with no variance or no pairs).
    """
    residuals = [np.asarray(r, dtype=float) for r in residuals]
    if not residuals:
        return np.zeros(0)
    lagged = sum((r[1:] * r[:-1]).sum(axis=0) for r in residuals)
    power = sum((r**2).sum(axis=0) for r in residuals)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(power > 0, lagged / power, 0.0)
    return np.asarray(rho, dtype=float)


# The largest autocorrelation time counted: beyond it a run carries less than
# one independent checkpoint per ~100, and the estimate from lag 1 means little.
MAX_AUTOCORR_TIME = 100.0


def autocorr_time(rho: float) -> float:
    """Integrated autocorrelation time of an AR(1) process with lag-1 correlation ``rho``.

    tau = 1 + 2 * sum_k rho^k = (1 + rho) / (1 - rho): the number of
    consecutive checkpoints that carry the information of one independent
    one. Negative correlation is counted as none (tau = 1), so the effective
    sample size never exceeds the number of checkpoints.
    """
    rho = float(np.clip(rho, 0.0, 1.0))
    if rho >= 1.0:
        return MAX_AUTOCORR_TIME
    return float(min((1.0 + rho) / (1.0 - rho), MAX_AUTOCORR_TIME))


def _residual_lag1(model_means, X, lengths, posteriors) -> float:
    """Mean over features of the lag-1 autocorrelation of x_t - E[mu | x] (posterior mean)."""
    residual = X - posteriors @ model_means
    runs = np.split(residual, np.cumsum(lengths)[:-1])
    return float(np.mean(lag1_autocorrelation(runs)))


def _score(record, arrays, scores, held_lengths, converged, n_done):
    """Fill ``record`` with likelihoods and criteria of a fitted model (raises if degenerate).

    ``scores`` is (train log-likelihood, held-out log-likelihood, held-out
    posteriors, held-out rows), the held-out rows being the train rows when
    there are no held-out runs.
    """
    p = record["n_params"]
    if not all(np.isfinite(v).all() for v in arrays.values()):
        raise ValueError("degenerate fit: non-finite parameters")
    train_ll, held_ll, posteriors, held = scores
    if not (np.isfinite(train_ll) and np.isfinite(held_ll)):
        raise ValueError("degenerate fit: non-finite log-likelihood")
    T = len(held)
    # ICL = BIC + 2 * entropy of the posterior state assignments: it
    # penalises states whose assignments overlap (Biernacki et al. 2000).
    with np.errstate(divide="ignore", invalid="ignore"):
        entropy = -np.nansum(np.where(posteriors > 0, posteriors * np.log(posteriors), 0.0))
    record.update(
        ok=True,
        train_ll=float(train_ll),
        heldout_ll=float(held_ll),
        heldout_rows=T,
        heldout_runs=len(held_lengths),
        entropy=float(entropy),
        lag1=_residual_lag1(arrays["means"], held, held_lengths, posteriors),
        aic=-2 * held_ll + 2 * p,
        bic=-2 * held_ll + p * math.log(T),
        icl=-2 * held_ll + p * math.log(T) + 2 * float(entropy),
        converged=bool(converged),
        n_iter=int(n_done),
        arrays=arrays,
    )


def fit_restarts(
    X: np.ndarray,
    lengths: Sequence[int],
    X_held: np.ndarray,
    lengths_held: Sequence[int],
    n_states: int,
    restarts: Sequence[int],
    *,
    covariance_type: str = "diag",
    n_iter: int = 100,
    tol: float | None = None,
    seed: int = 0,
    kmeans_n_init: int = 1,
    engine: str = "numpy",
    starts: Sequence[tuple] | None = None,
) -> list[dict]:
    """Fit GaussianHMMs with ``n_states`` for the given restarts; score on held-out runs.

    Never raises: each record has ``ok`` (False with ``error`` on failure), the
    train and held-out log-likelihoods, AIC, BIC and ICL on the held-out rows,
    ``converged`` (tolerance reached), ``n_iter`` and the fitted ``arrays``.

    Restart r starts from hmmlearn's initialisation with ``random_state =
    1000 * seed + r`` (k-means with ``kmeans_n_init`` runs; hmmlearn uses 10).
    ``engine="numpy"`` (diag only) runs the restarts' EM together in
    :mod:`analysis.fastem`, the same algorithm as hmmlearn's; otherwise, or
    when the data are too large to batch, each restart is ``GaussianHMM.fit``.
    ``starts`` are the restarts' :func:`fastem.init_params`, if already made
    (for the numpy engine; by :func:`initial_params`).
    """
    from threadpoolctl import threadpool_limits

    from trainmap.analysis import fastem

    started = time.perf_counter()
    p = n_parameters(n_states, X.shape[1], covariance_type)
    records = [
        {"n": n_states, "restart": r, "ok": False, "error": None, "n_params": p} for r in restarts
    ]
    if tol is None:  # stop when a step gains less than 1e-4 nats per train checkpoint
        tol = 1e-4 * len(X)
    # Too few points: fewer rows than states (k-means cannot start) or no more
    # train rows than free parameters (the fit is not identified).
    if len(X) < n_states or len(X) <= p:
        for record in records:
            record["error"] = f"too few points: {len(X)} train rows for {p} parameters"
            record["seconds"] = 0.0
        return records
    batched = batchable(engine, covariance_type, n_states, len(restarts), lengths)
    held, held_lengths = (X_held, lengths_held) if len(X_held) else (X, lengths)
    # One BLAS/OpenMP thread per fit: the sweep is parallel across fits
    # already, and oversubscribed threads only slow it down. hmmlearn warns
    # (not raises) on some degenerate cases; _score checks for them.
    with warnings.catch_warnings(), threadpool_limits(1):
        warnings.simplefilter("ignore")
        if batched:
            try:
                if starts is None:
                    starts = initial_params(X, n_states, restarts, seed, kmeans_n_init)
                fits = fastem.fit_diag_batch(
                    X, lengths, starts, n_iter=n_iter, tol=tol, max_elements=BATCH_LIMIT
                )
                # Every restart scored in one pass each (hmmlearn's score and
                # score_samples, batched; tested equal).
                fitted = [arrays for arrays, _, _ in fits]
                train_ll = fastem.score_batch(X, lengths, fitted, max_elements=BATCH_LIMIT)
                held_ll, posteriors = fastem.score_batch(
                    held, held_lengths, fitted, posteriors=True, max_elements=BATCH_LIMIT
                )
            except Exception:  # e.g. k-means on degenerate data: try one by one
                batched = False
        for i, record in enumerate(records):
            one_started = time.perf_counter()
            try:
                if batched:
                    arrays, history, converged = fits[i]
                    scores = (train_ll[i], held_ll[i], posteriors[i], held)
                    n_done = len(history)
                else:
                    model = _fit_hmmlearn(
                        X, lengths, n_states, 1000 * seed + record["restart"],
                        covariance_type, n_iter, tol, kmeans_n_init,
                    )  # fmt: skip
                    arrays = model_arrays(model)
                    # hmmlearn's monitor_.converged is also True when n_iter ran
                    # out; we report convergence only if the tolerance was reached.
                    history = list(model.monitor_.history)
                    converged = len(history) >= 2 and history[-1] - history[-2] < tol
                    n_done = model.monitor_.iter
                    if all(np.isfinite(v).all() for v in arrays.values()):
                        scores = (
                            model.score(X, lengths),
                            *model.score_samples(held, held_lengths),
                            held,
                        )
                    else:
                        scores = (np.nan, np.nan, None, held)
                _score(record, arrays, scores, held_lengths, converged, n_done)
            except Exception as error:  # a failed fit is data for the sweep table
                record["error"] = f"{type(error).__name__}: {error}"
            record["seconds"] = time.perf_counter() - one_started
    if batched:  # the batched EM's time, shared evenly between its restarts
        shared = (time.perf_counter() - started - sum(r["seconds"] for r in records)) / len(records)
        for record in records:
            record["seconds"] += shared
    return records


def batchable(engine: str, covariance_type: str, n_states: int, n_restarts: int, lengths) -> bool:
    """Whether :func:`fit_restarts` runs these restarts' EM together (:mod:`analysis.fastem`)."""
    return (
        engine == "numpy"
        and covariance_type == "diag"
        and n_restarts * max(lengths) * n_states <= BATCH_LIMIT  # one run fits
    )


def initial_params(X, n_states, restarts, seed=0, kmeans_n_init=1) -> list[tuple]:
    """hmmlearn's initialisation of each restart (:func:`fastem.init_params`): k-means."""
    from threadpoolctl import threadpool_limits

    from trainmap.analysis import fastem

    with threadpool_limits(1):  # beside the sweep's workers: one thread
        return [
            fastem.init_params(X, n_states, 1000 * seed + r, n_init=kmeans_n_init) for r in restarts
        ]


def _fit_hmmlearn(X, lengths, n_states, random_state, covariance_type, n_iter, tol, n_init):
    """One ``GaussianHMM.fit`` from hmmlearn's initialisation with ``n_init`` k-means runs."""
    from hmmlearn.hmm import GaussianHMM

    from trainmap.analysis import fastem

    model = GaussianHMM(
        n_components=n_states,
        covariance_type=covariance_type,
        n_iter=n_iter,
        tol=tol,
        random_state=random_state,
        init_params="",
    )
    start = fastem.init_params(
        X, n_states, random_state, n_init=n_init, full=covariance_type == "full"
    )
    model.n_features = X.shape[1]
    model.startprob_, model.transmat_, model.means_ = start[:3]
    model.covars_ = start[3]
    return model.fit(X, lengths)


def fit_one(X, lengths, X_held, lengths_held, n_states, restart, **kwargs) -> dict:
    """One (n, restart) fit: :func:`fit_restarts` for a single restart."""
    return fit_restarts(X, lengths, X_held, lengths_held, n_states, [restart], **kwargs)[0]
