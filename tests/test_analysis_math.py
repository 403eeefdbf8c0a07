"""Analysis maths against hmmlearn itself: parameter counts, BIC, filtered-posterior derivative."""

from __future__ import annotations

import math

import numpy as np
import pytest
from hmmlearn.hmm import GaussianHMM

from trainmap.analysis.explain import filtered_posterior, posterior_gradient
from trainmap.analysis.fitting import fit_one, make_model, model_arrays, n_parameters
from trainmap.analysis.prepare import zscore
from trainmap.analysis.synthetic import make_synthetic


def small_data(n_runs=6, n_checkpoints=80, n_features=4, seed=3):
    truth = make_synthetic(n_runs, n_checkpoints, seed=seed, n_states=3, n_features=n_features)
    X = [zscore(x)[0] for x in truth.X]
    return X, truth


@pytest.mark.parametrize("cov", ["diag", "full"])
@pytest.mark.parametrize("n", [1, 2, 4])
@pytest.mark.parametrize("n_features", [3, 14])
def test_parameter_count_matches_hmmlearn(cov, n, n_features):
    model = GaussianHMM(n_components=n, covariance_type=cov)
    model.n_features = n_features
    assert n_parameters(n, n_features, cov) == sum(model._get_n_fit_scalars_per_param().values())


@pytest.mark.parametrize("cov", ["diag", "full"])
def test_aic_bic_match_hmmlearn(cov):
    X, _ = small_data()
    train, held = np.concatenate(X[:4]), np.concatenate(X[4:])
    lengths, held_lengths = [len(x) for x in X[:4]], [len(x) for x in X[4:]]
    record = fit_one(train, lengths, held, held_lengths, 3, 0, covariance_type=cov, n_iter=20)
    assert record["ok"], record["error"]
    model = make_model(record["arrays"], cov)
    assert record["heldout_ll"] == pytest.approx(model.score(held, held_lengths), rel=1e-9)
    assert record["bic"] == pytest.approx(model.bic(held, held_lengths), rel=1e-9)
    assert record["aic"] == pytest.approx(model.aic(held, held_lengths), rel=1e-9)
    # ICL adds twice the posterior entropy, so it is never below BIC.
    assert record["icl"] >= record["bic"]


@pytest.mark.parametrize("cov", ["diag", "full"])
def test_derivative_matches_finite_differences_of_hmmlearn_posterior(cov):
    X, _ = small_data()
    model = GaussianHMM(3, covariance_type=cov, n_iter=15, random_state=0)
    model.fit(np.concatenate(X), [len(x) for x in X])
    run = X[0]
    ours = filtered_posterior(model, run)
    for t in (0, 5, 40, 79):
        # hmmlearn's own filtered posterior at t: the smoothed posterior of the
        # last row of the prefix z_1..t.
        prefix = run[: t + 1].copy()
        theirs = model.predict_proba(prefix)[-1]
        assert np.allclose(ours[t], theirs, atol=1e-8)
        for k in range(3):
            if theirs[k] < 1e-6:  # log p is numerically flat-lined there
                continue
            grad = posterior_gradient(model, prefix[-1], theirs, k)
            assert grad.shape == (run.shape[1],)  # a vector, not the reference's scalar
            h = 1e-5
            numeric = np.empty_like(grad)
            for f in range(run.shape[1]):
                up, down = prefix.copy(), prefix.copy()
                up[-1, f] += h
                down[-1, f] -= h
                numeric[f] = (
                    math.log(model.predict_proba(up)[-1][k])
                    - math.log(model.predict_proba(down)[-1][k])
                ) / (2 * h)
            assert np.allclose(grad, numeric, rtol=1e-4, atol=1e-4), (t, k, grad, numeric)


def test_model_arrays_round_trip_gives_same_likelihood():
    X, _ = small_data()
    stacked, lengths = np.concatenate(X), [len(x) for x in X]
    for cov in ("diag", "full"):
        model = GaussianHMM(3, covariance_type=cov, n_iter=10, random_state=1).fit(stacked, lengths)
        rebuilt = make_model(model_arrays(model), cov)
        assert rebuilt.score(stacked, lengths) == pytest.approx(model.score(stacked, lengths))


def test_vectorised_em_is_hmmlearns_em():
    """trainmap.analysis.fastem does the same EM as hmmlearn: same likelihoods, same updates."""
    from trainmap.analysis.fastem import e_step, fit_diag, pad_runs

    X, _ = small_data()
    X[2] = X[2][:50]  # runs of different lengths are padded and masked
    stacked, lengths = np.concatenate(X), [len(x) for x in X]
    reference = GaussianHMM(3, covariance_type="diag", n_iter=4, tol=-1, random_state=5)
    reference.fit(stacked, lengths)
    arrays, history, _ = fit_diag(stacked, lengths, 3, n_iter=4, tol=-1, random_state=5)
    assert history == pytest.approx(list(reference.monitor_.history), rel=1e-10)
    assert np.allclose(arrays["means"], reference.means_, atol=1e-9)
    assert np.allclose(arrays["covars"], reference._covars_, atol=1e-9)
    assert np.allclose(arrays["transmat"], reference.transmat_, atol=1e-9)
    Xp, mask = pad_runs(stacked, lengths)
    ll, stats = e_step(Xp, mask, *[reference.startprob_, reference.transmat_,
                                   reference.means_, reference._covars_])  # fmt: skip
    assert ll == pytest.approx(reference.score(stacked, lengths), rel=1e-12)
    theirs, _ = reference._do_estep(stacked, lengths)
    for key in ("start", "trans", "post", "obs", "obs**2"):
        assert np.allclose(stats[key], theirs[key], atol=1e-8)


def test_batched_restarts_equal_separate_fits():
    from trainmap.analysis.fastem import fit_diag, fit_diag_batch, init_params

    X, _ = small_data()
    stacked, lengths = np.concatenate(X), [len(x) for x in X]
    starts = [init_params(stacked, 3, r, n_init=1) for r in range(3)]
    batch = fit_diag_batch(stacked, lengths, starts, n_iter=30, tol=1e-3)
    for start, (arrays, history, converged) in zip(starts, batch):
        alone, alone_history, alone_converged = fit_diag(
            stacked, lengths, 3, n_iter=30, tol=1e-3, params=start
        )
        assert len(history) == len(alone_history) and converged == alone_converged
        assert history == pytest.approx(alone_history, rel=1e-12)
        for key in arrays:
            assert np.allclose(arrays[key], alone[key], atol=1e-10)


def test_runs_in_groups_give_the_same_fit():
    """Bounded memory: EM over groups of runs equals EM over all runs at once."""
    from trainmap.analysis.fastem import chunk_runs, fit_diag_batch, init_params

    X, _ = small_data()
    X[1] = X[1][:30]
    stacked, lengths = np.concatenate(X), [len(x) for x in X]
    starts = [init_params(stacked, 3, r, n_init=1) for r in range(2)]
    assert len(chunk_runs(stacked, lengths, 2, 3, max_elements=500)) == len(X)
    whole = fit_diag_batch(stacked, lengths, starts, n_iter=20, tol=1e-3)
    grouped = fit_diag_batch(stacked, lengths, starts, n_iter=20, tol=1e-3, max_elements=500)
    for (a, ha, _), (b, hb, _) in zip(whole, grouped):
        assert ha == pytest.approx(hb, rel=1e-12)
        assert all(np.allclose(a[key], b[key], atol=1e-10) for key in a)


def test_batched_scores_are_hmmlearns_scores():
    """fastem.score_batch gives hmmlearn's score and score_samples for every fit at once."""
    from trainmap.analysis.fastem import score_batch

    X, _ = small_data()
    X[4] = X[4][:37]  # ragged runs
    stacked, lengths = np.concatenate(X), [len(x) for x in X]
    models = [
        GaussianHMM(n, covariance_type="diag", n_iter=5, random_state=r).fit(stacked, lengths)
        for n, r in ((3, 0), (3, 1))
    ]
    fits = [model_arrays(m) for m in models]
    fits.append({key: np.full_like(value, np.nan) for key, value in fits[0].items()})
    # groups of runs (max_elements) give the same as all runs at once
    for limit in (3_000_000, 700):
        total = score_batch(stacked, lengths, fits, max_elements=limit)
        held, posteriors = score_batch(stacked, lengths, fits, posteriors=True, max_elements=limit)
        for i, model in enumerate(models):
            ll, post = model.score_samples(stacked, lengths)
            assert total[i] == pytest.approx(model.score(stacked, lengths), rel=1e-12)
            assert held[i] == pytest.approx(ll, rel=1e-12)
            assert np.allclose(posteriors[i], post, atol=1e-10)
        assert not np.isfinite(total[2])  # a degenerate fit fails alone


def test_numpy_and_hmmlearn_engines_give_the_same_records():
    """The batched sweep task (numpy engine) scores as hmmlearn's fits would."""
    from trainmap.analysis.fitting import fit_restarts

    X, _ = small_data()
    train, lengths = np.concatenate(X[:4]), [len(x) for x in X[:4]]
    held, held_lengths = np.concatenate(X[4:]), [len(x) for x in X[4:]]
    common = dict(n_iter=15, tol=1e-3, seed=2)
    ours = fit_restarts(train, lengths, held, held_lengths, 3, [0, 1], engine="numpy", **common)
    theirs = fit_restarts(
        train, lengths, held, held_lengths, 3, [0, 1], engine="hmmlearn", **common
    )
    for a, b in zip(ours, theirs):
        assert a["ok"] and b["ok"] and a["n_iter"] == b["n_iter"]
        for key in ("train_ll", "heldout_ll", "bic", "icl", "entropy", "lag1"):
            assert a[key] == pytest.approx(b[key], rel=1e-8), key
