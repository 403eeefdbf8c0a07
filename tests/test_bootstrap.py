"""The bootstrap over runs (analysis.bootstrap): stability of n, states and edges.

Synthetic experiments with a known truth: well-separated states must come out
stable, states fitted to noise must not. Few resamples keep the tests fast;
they check behaviour, not the precision of the shares.
"""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from trainmap.analysis import api, store
from trainmap.analysis.bootstrap import (
    MIN_RUNS,
    bootstrap_map,
    match_states,
    match_thresholds,
    resample_indices,
)
from trainmap.analysis.cli import format_bootstrap, format_map
from trainmap.analysis.prepare import prepare_frames
from trainmap.analysis.synthetic import make_synthetic, write_synthetic_experiment
from trainmap.trainer.columns import WEIGHT_COLUMNS

SEED = 1
print(f"bootstrap tests: synthetic seed {SEED}")

FIT = dict(max_states=4, restarts=4, workers=2, seed=0)
RESAMPLES = 10


def prepared_of(truth):
    frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_frames(frames, features=list(WEIGHT_COLUMNS[: len(truth.feature_names)]))


@pytest.fixture(scope="module")
def clean():
    """Three well-separated states (two branches, one through a detour state)."""
    truth = make_synthetic(12, 100, seed=SEED, n_states=3, n_features=5, separation=8.0)
    result, _ = api.fit_prepared(prepared_of(truth), bootstrap=RESAMPLES, **FIT)
    return truth, result


@pytest.fixture(scope="module")
def noise():
    """No states at all (one regime plus AR noise), fitted with a user-given n = 3."""
    truth = make_synthetic(12, 100, seed=SEED, n_states=1, n_features=5)
    result, _ = api.fit_prepared(prepared_of(truth), bootstrap=RESAMPLES, n_states=3, **FIT)
    return truth, result


# ------------------------------------------------------------------ matching


def test_match_states_pairs_by_means_and_rejects_far_states():
    reference = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 6.0]])
    # half the distance to the nearest other state: 2, 2, 3
    assert match_thresholds(reference).tolist() == [2.0, 2.0, 3.0]
    shuffled = reference[[2, 0, 1]] + 0.3
    assert match_states(reference, shuffled).tolist() == [1, 2, 0]
    # the state near (0, 6) moved 3.5 away: nearer to no reference state than allowed
    moved = np.array([[0.0, 0.0], [4.0, 0.0], [0.0, 9.5]])
    assert match_states(reference, moved).tolist() == [0, 1, -1]
    # fewer states than the reference: the unpaired one is absent
    assert match_states(reference, reference[:2]).tolist() == [0, 1, -1]
    # one state has no neighbour: it always matches
    assert match_states(reference[:1], np.array([[50.0, 0.0]])).tolist() == [0]


def test_resample_indices_are_seeded_and_stay_within_their_side_of_the_split():
    train, held = list(range(10)), [10, 11, 12]
    a = resample_indices(train, held, seed=3, index=5)
    b = resample_indices(train, held, seed=3, index=5)
    assert all(np.array_equal(x, y) for x, y in zip(a, b))
    assert len(a[0]) == 10 and set(a[0]) <= set(train)
    assert len(a[1]) == 3 and set(a[1]) <= set(held)
    others = [resample_indices(train, held, seed=3, index=i)[0] for i in range(6)]
    assert len({tuple(o) for o in others}) > 1  # resamples differ from each other


# ------------------------------------------------------------------ clean vs ambiguous


def test_clean_experiment_is_stable_and_n_concentrates_on_the_truth(clean):
    truth, result = clean
    boot = result.bootstrap
    assert result.selected_n == truth.n_states
    assert boot["n_resamples"] == RESAMPLES and boot["n"] == result.selected_n
    counts = boot["selected_n_counts"]
    assert sum(counts.values()) == RESAMPLES
    assert counts.get(str(truth.n_states), 0) >= 0.8 * RESAMPLES
    assert set(boot["state_stability"]) == {str(s.state) for s in result.map().states}
    assert min(boot["state_stability"].values()) >= 0.9
    edges = {f"{e.source}->{e.target}" for e in result.map().edges}
    assert set(boot["edge_stability"]) == edges
    assert np.mean(list(boot["edge_stability"].values())) >= 0.8
    assert boot["message"] == ""
    # the detour branch's extra state is flagged in most resamples, no other state is
    detours = {str(s.state) for s in result.map().states if s.is_detour}
    assert detours and set(boot["detour_stability"]) == set(boot["state_stability"])
    for state, share in boot["detour_stability"].items():
        assert share >= 0.5 if state in detours else share <= 0.1


def test_states_fitted_to_noise_are_unstable(clean, noise):
    _, result = noise
    boot = result.bootstrap
    assert boot["n"] == 3 and boot["n_given"]
    # the criterion, left to itself, mostly finds a single state in noise
    assert boot["selected_n_counts"].get("1", 0) >= 0.8 * RESAMPLES
    states = list(boot["state_stability"].values())
    edges = list(boot["edge_stability"].values())
    clean_states = list(clean[1].bootstrap["state_stability"].values())
    assert np.mean(states) <= np.mean(clean_states) - 0.25
    assert np.mean(edges) <= 0.3
    # every run follows the same (non-)path: nothing to flag as a detour
    assert max(boot["detour_stability"].values()) <= 0.1


# ------------------------------------------------------------------ too few runs, reproducibility


def test_too_few_runs_says_so_and_computes_nothing():
    truth = make_synthetic(MIN_RUNS - 2, 60, seed=SEED, n_states=2, n_features=4)
    result, _ = api.fit_prepared(prepared_of(truth), bootstrap=RESAMPLES, **FIT)
    boot = result.bootstrap
    assert boot["message"] == f"not enough runs to tell: {MIN_RUNS - 2} runs, need >= {MIN_RUNS}"
    assert boot["n_resamples"] == 0
    assert boot["state_stability"] == {} and boot["selected_n_counts"] == {}
    assert format_bootstrap(boot) == f"bootstrap: {boot['message']}"
    assert "stability" not in format_map(result.map(), bootstrap=boot)


def test_bootstrap_off_and_bad_counts():
    truth = make_synthetic(MIN_RUNS, 40, seed=SEED, n_states=2, n_features=3)
    prepared = prepared_of(truth)
    result, _ = api.fit_prepared(prepared, bootstrap=0, max_states=2, restarts=1, workers=1)
    assert result.bootstrap == {}
    with pytest.raises(ValueError, match="bootstrap must be 0"):
        api.fit_prepared(prepared, bootstrap=-1, max_states=2, restarts=1, workers=1)


def test_same_seed_same_bootstrap_and_other_seed_other_draws(clean):
    truth, result = clean
    prepared = prepared_of(truth)
    models = api.fit_prepared(prepared, bootstrap=0, **FIT)[1]
    reference = models[result.selected_n]["means"]
    edges = [(e.source, e.target) for e in result.map().edges]
    common = dict(n=result.selected_n, max_n=4, criterion="icl", restarts=2, n_resamples=4)
    runs = (prepared.X, prepared.train, prepared.heldout, reference, edges)
    a = bootstrap_map(*runs, seed=5, workers=2, **common)
    b = bootstrap_map(*runs, seed=5, workers=1, backend="sequential", **common)
    a.pop("seconds"), b.pop("seconds")
    assert a == b


# ------------------------------------------------------------------ saved with the fit


def test_bootstrap_is_saved_loaded_and_added_to_an_existing_fit(tmp_path):
    write_synthetic_experiment(
        tmp_path, "exp", n_runs=MIN_RUNS, n_checkpoints=60, seed=SEED, n_states=2, n_features=4
    )
    fit = dict(max_states=3, restarts=2, workers=2, features=list(WEIGHT_COLUMNS[:4]))
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        plain = api.fit_experiment(tmp_path, "exp", bootstrap=0, **fit)
        assert plain.bootstrap == {} and not plain.loaded
        # Not part of the key: the saved sweep is reused and the bootstrap added to it.
        added = api.fit_experiment(tmp_path, "exp", bootstrap=3, **fit)
        assert added.loaded and added.fingerprint == plain.fingerprint
        assert added.bootstrap["n_resamples"] == 3 and added.bootstrap["n"] == added.selected_n
        loaded = api.load_fit(tmp_path, "exp", **fit)
        assert loaded.bootstrap == json.loads(json.dumps(added.bootstrap))
        again = api.fit_experiment(tmp_path, "exp", bootstrap=3, **fit)
        assert again.bootstrap == loaded.bootstrap  # loaded, not recomputed (same seconds)
        # Another n gets its own bootstrap, saved beside the first.
        other_n = 1 if loaded.selected_n != 1 else 2
        assert api.load_fit(tmp_path, "exp", n_states=other_n, **fit).bootstrap == {}
        other = api.fit_experiment(tmp_path, "exp", n_states=other_n, bootstrap=3, **fit)
        assert other.bootstrap["n"] == other_n and other.bootstrap["n_given"]
        assert api.load_fit(tmp_path, "exp", n_states=other_n, **fit).bootstrap == json.loads(
            json.dumps(other.bootstrap)
        )
        assert api.load_fit(tmp_path, "exp", **fit).bootstrap == loaded.bootstrap
        # A fit saved with its bootstrap keeps it in fit.json.
        fresh = api.fit_experiment(tmp_path, "exp", bootstrap=2, refit=True, **fit)
        assert api.load_fit(tmp_path, "exp", **fit).bootstrap == json.loads(
            json.dumps(fresh.bootstrap)
        )
    # A fit saved before bootstraps existed loads with an empty one.
    path = store.fits_dir(tmp_path, "exp") / plain.fingerprint / store.FIT_FILE
    payload = json.loads(path.read_text())
    del payload["bootstrap"]
    path.write_text(json.dumps(payload))
    assert api.load_fit(tmp_path, "exp", **fit).bootstrap == {}


def test_cli_prints_n_distribution_and_stability(clean):
    _, result = clean
    boot = result.bootstrap
    line = format_bootstrap(boot)
    assert line.startswith(f"n over {RESAMPLES} resamples: 3 ×")
    text = format_map(result.map(), bootstrap=boot)
    assert f"stability over {RESAMPLES} resamples" in text
    for state, share in boot["state_stability"].items():
        assert f"{state} {share:.2f}" in text
    for edge, share in boot["edge_stability"].items():
        assert f"{edge.replace('->', '→')} {share:.2f}" in text
    flagged = [k for k, v in boot["detour_stability"].items() if v]
    assert f"flagged a detour: {flagged[0]} {boot['detour_stability'][flagged[0]]:.2f}" in text
    # a bootstrap about another n is not printed with this map
    assert "stability" not in format_map(result.map(), bootstrap={**boot, "n": 99})


# ------------------------------------------------------------------ dask


def test_dask_backend_gives_the_same_bootstrap(cluster):
    truth = make_synthetic(MIN_RUNS, 60, seed=SEED, n_states=2, n_features=4)
    prepared = prepared_of(truth)
    common = dict(max_states=3, restarts=2, workers=2, bootstrap=4)
    on_dask, _ = api.fit_prepared(
        prepared, backend="dask", scheduler=cluster.scheduler_address, **common
    )
    local, _ = api.fit_prepared(prepared, backend="loky", **common)
    a, b = dict(on_dask.bootstrap), dict(local.bootstrap)
    a.pop("seconds"), b.pop("seconds")
    assert a["n_resamples"] == 4 and a == b
