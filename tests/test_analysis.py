"""The analysis package end to end: preparation, sweep, selection, maps, store, CLI.

Synthetic experiments (analysis.synthetic) have a known state path, so recovery
of the number of states and of the paths can be asserted.
"""

from __future__ import annotations

import json
import subprocess
import sys
import warnings

import numpy as np
import pandas as pd
import pytest
from sklearn.metrics import adjusted_rand_score

from trainmap.analysis import api, store
from trainmap.analysis.model import DEFAULT_CRITERION, select_n
from trainmap.analysis.prepare import DEFAULT_NORMALIZE, PrepareError, prepare_frames, split_runs
from trainmap.analysis.synthetic import make_synthetic, write_synthetic_experiment
from trainmap.trainer import rundir
from trainmap.trainer.cli import main as trainmap
from trainmap.trainer.columns import WEIGHT_COLUMNS

SEED = 0
print(f"analysis tests: synthetic seed {SEED}")

# Small but well-posed: fits in seconds, still forks and has a detour state.
FIT = dict(max_states=5, restarts=2, workers=2, bootstrap=0)  # bootstrap: test_bootstrap.py


def frames_of(truth):
    return {name: truth.frame(i) for i, name in enumerate(truth.run_names)}


def decoded_ari(result, truth, n=None):
    paths = result.map(n).paths
    pred = np.concatenate([paths[name] for name in truth.run_names if name in paths])
    true = np.concatenate(
        [p[: len(paths[name])] for name, p in zip(truth.run_names, truth.paths) if name in paths]
    )
    return adjusted_rand_score(true, pred)


@pytest.fixture(scope="module")
def experiment(tmp_path_factory):
    """A written synthetic experiment (one diverged run, no biases) fitted once."""
    root = tmp_path_factory.mktemp("runs")
    truth = write_synthetic_experiment(
        root, "exp", n_runs=12, n_checkpoints=150, seed=SEED, n_diverged=1, biases=False
    )
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        result = api.fit_experiment(root, "exp", **FIT)
    return root, truth, result, [str(w.message) for w in caught]


# ------------------------------------------------------------------ imports


def test_analysis_never_imports_torch():
    code = (
        "import sys, trainmap.analysis, trainmap.analysis.api, trainmap.analysis.cli, trainmap.analysis.store, trainmap.analysis.maps, "
        "trainmap.analysis.synthetic, trainmap.analysis.selection_study, trainmap.analysis.fastem, trainmap.analysis.model, "
        "trainmap.analysis.explain, trainmap.analysis.prepare, trainmap.analysis.evidence, hmmlearn.hmm, joblib, "
        "dask.distributed\n"
        "from trainmap.analysis import fit_experiment, FitResult\n"
        # a whole (tiny) fit, map included, must not pull torch in either
        "from trainmap.analysis.synthetic import make_synthetic\n"
        "from trainmap.analysis.prepare import prepare_frames\n"
        "t = make_synthetic(4, 40, n_states=2)\n"
        "p = prepare_frames({n: t.frame(i) for i, n in enumerate(t.run_names)})\n"
        "trainmap.analysis.fit_prepared(p, max_states=2, restarts=1, backend='sequential')\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    cheap = "import sys, trainmap.analysis.cli\nassert 'hmmlearn' not in sys.modules\n"
    subprocess.run([sys.executable, "-c", cheap], check=True)


# -------------------------------------------------------------- preparation


def test_synthetic_writer_round_trip(tmp_path):
    truth = write_synthetic_experiment(tmp_path, "exp", n_runs=3, n_checkpoints=40, seed=1)
    memory = make_synthetic(3, 40, seed=1)
    runs, broken = rundir.load_experiment(tmp_path, "exp")
    assert not broken and [r.name for r in runs] == truth.run_names
    for i, run in enumerate(runs):
        assert list(run.metrics.columns[:2]) == ["epoch", "step"]
        assert set(WEIGHT_COLUMNS) <= set(run.metrics.columns)
        assert np.allclose(run.metrics[list(WEIGHT_COLUMNS)].to_numpy(), memory.X[i])
        assert np.array_equal(truth.paths[i], memory.paths[i])
        assert run.metrics["eval_acc"].max() >= 0.9
    assert truth.convergence_epoch == memory.convergence_epoch
    # Branch-dependent convergence: the detour branch converges later on average.
    conv = np.array(make_synthetic(12, 200, seed=0).convergence_epoch, dtype=float)
    branch = np.array(make_synthetic(12, 200, seed=0).branch)
    assert conv[branch == 1].mean() > conv[branch == 0].mean() + 20


def test_prepare_zscores_truncates_and_drops():
    rng = np.random.default_rng(0)
    frames = {}
    for name, n in (("b", 30), ("a", 20), ("c", 25)):
        frame = pd.DataFrame(
            {
                "epoch": np.arange(n)[::-1],  # stored out of order: must be sorted by step
                "step": np.arange(n)[::-1] * 10,
                "l2": rng.normal(5, 2, n),
                "l1": 3.0,  # constant within every run
                "mean_b": np.nan,  # a model without biases
            }
        )
        frames[name] = frame
    frames["c"].loc[frames["c"]["step"] >= 150, "l2"] = np.nan  # diverges at step 150
    frames["d"] = frames["a"].assign(l2=np.nan)  # nothing finite at all
    with pytest.warns(UserWarning) as record:
        prepared = prepare_frames(
            frames, features=["l2", "l1", "mean_b"], normalize="per_run", heldout=0.25, seed=1
        )
    messages = " ".join(str(w.message) for w in record)
    assert "mean_b" in messages and "'c'" in messages and "d (" in messages
    assert prepared.feature_names == ["l2", "l1"]
    assert prepared.run_names == ["a", "b", "c"]
    assert prepared.lengths == [20, 30, 15]
    assert prepared.excluded["c"].startswith("truncated at epoch 14")
    assert prepared.excluded["d"].startswith("excluded")
    for x, steps in zip(prepared.X, prepared.steps):
        assert np.all(np.diff(steps) > 0)
        assert np.allclose(x[:, 0].mean(), 0) and np.allclose(x[:, 0].std(), 1)
        assert np.all(x[:, 1] == 0)  # constant feature -> 0, not NaN
    with pytest.warns(UserWarning) as again:  # warned again, every time
        pooled = prepare_frames(frames, features=["l2", "l1"], normalize="pooled")
    assert any("truncated" in str(w.message) for w in again)
    stacked = np.concatenate(pooled.X)
    assert np.allclose(stacked[:, 0].mean(), 0) and np.allclose(stacked[:, 0].std(), 1)
    with pytest.warns(UserWarning, match="excluded: d"):  # 'c' is finite in its first 5
        first = prepare_frames(frames, features=["l2"], first_n=5)
    assert first.lengths == [5, 5, 5]
    with pytest.raises(PrepareError):
        prepare_frames(frames, features=["nope"])


def test_split_is_by_run_deterministic_and_seeded():
    names = [f"seed-{i}" for i in range(10)]
    train, held = split_runs(names, 0.2, seed=0)
    assert len(held) == 2 and sorted(train + held) == list(range(10))
    assert split_runs(names, 0.2, seed=0) == (train, held)
    # Same runs given in another order: the same runs are held out.
    shuffled = names[::-1]
    _, held2 = split_runs(shuffled, 0.2, seed=0)
    assert sorted(shuffled[i] for i in held2) == sorted(names[i] for i in held)
    assert any(split_runs(names, 0.2, seed=s)[1] != held for s in range(1, 5))


# ----------------------------------------------------------- sweep and map


def test_default_recovers_true_states_and_paths():
    """The default normalisation + criterion find the true n and the paths."""
    truth = make_synthetic(20, 150, seed=SEED)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_frames(frames_of(truth))  # defaults
    result, _ = api.fit_prepared(prepared, max_states=6, restarts=2, workers=2, bootstrap=0)
    assert result.params["criterion"] == DEFAULT_CRITERION
    assert prepared.normalize == DEFAULT_NORMALIZE
    assert result.selected_n == truth.n_states == 4
    assert decoded_ari(result, truth) > 0.9
    m = result.map()
    # Every run starts in state 0 and the detour state of the truth is found.
    assert m.states[0].start_runs == len(truth.run_names)
    assert any(s.is_detour for s in m.states)
    assert all(s.is_detour == (s.detour["verdict"] == "detour") for s in m.states)
    assert m.regression["r2"] > 0.8 and m.regression["p_value"] < 0.01
    assert not m.regression["saturated"] and m.regression["r2_loo"] > 0.8


def test_map_contents(experiment):
    root, truth, result, caught = experiment
    assert any("mean_b" in w for w in caught)  # biases dropped with a warning
    assert any("seed-11" in w for w in caught)  # the diverged run named
    assert "truncated" in result.excluded_runs["seed-11"]
    assert result.feature_names == [f for f in WEIGHT_COLUMNS if not f.endswith("_b")]
    assert set(result.maps) == set(result.sweep.loc[result.sweep.feasible, "n"])
    for n, m in result.maps.items():
        assert m.n_states == n and len(m.states) == n
        assert sorted(m.paths) == result.runs  # train and held-out runs decoded
        assert all(len(m.paths[r]) == len(m.epochs[r]) for r in result.runs)
        assert sum(s.occupancy for s in m.states) == pytest.approx(1.0)
        # Canonical labels: ordered by mean epoch of first visit.
        firsts = []
        for k in range(n):
            visits = [
                m.epochs[r][np.flatnonzero(m.paths[r] == k)[0]]
                for r in result.runs
                if np.any(m.paths[r] == k)
            ]
            firsts.append(np.mean(visits) if visits else np.inf)
        assert firsts == sorted(firsts)
        for e in m.edges:
            assert e.source != e.target and 0 <= e.prob <= 1 and e.n_runs >= 1
            assert len(e.top_features) == min(3, len(result.feature_names))
            assert all(f.score >= 0 for f in e.top_features)
            scores = [f.score for f in e.top_features]
            assert scores == sorted(scores, reverse=True)
    m = result.map()
    assert result.selected_n == select_n(result.sweep, DEFAULT_CRITERION)
    assert m.convergence_epoch["seed-11"] is None or isinstance(m.convergence_epoch["seed-11"], int)
    conv = [c for c in m.convergence_epoch.values() if c is not None]
    assert m.regression["n_runs"] == len(conv)
    assert 0 <= m.dissimilarity <= 1


def test_infeasible_n_is_recorded_not_raised():
    # 2 train runs x 12 checkpoints = 24 rows; with 3 features (diag) n=1 has 6
    # free parameters, n=2 15, n=3 26 and n=4 39: n >= 3 cannot be identified.
    truth = make_synthetic(3, 12, seed=1, n_states=2, n_features=3)
    prepared = prepare_frames(frames_of(truth), features=list(WEIGHT_COLUMNS[:3]), heldout=0.34)
    result, _ = api.fit_prepared(prepared, max_states=4, restarts=2, workers=1)
    sweep = result.sweep.set_index("n")
    assert sweep.loc[1, "feasible"] and sweep.loc[2, "feasible"]
    for n in (3, 4):
        assert not sweep.loc[n, "feasible"] and sweep.loc[n, "failures"] == 2
        assert np.isnan(sweep.loc[n, "bic_best"]) and n not in result.maps
    assert result.selected_n in (1, 2)
    with pytest.raises(ValueError, match="infeasible"):
        api.fit_prepared(prepared, max_states=4, restarts=1, workers=1, n_states=4)


def test_fixed_seed_is_deterministic():
    truth = make_synthetic(6, 60, seed=2, n_states=3, n_features=5)
    prepared = prepare_frames(frames_of(truth), features=list(WEIGHT_COLUMNS[:5]))
    a, arrays_a = api.fit_prepared(prepared, max_states=3, restarts=2, workers=1, seed=7)
    b, arrays_b = api.fit_prepared(prepared, max_states=3, restarts=2, workers=2, seed=7)
    pd.testing.assert_frame_equal(a.sweep.drop(columns="seconds"), b.sweep.drop(columns="seconds"))
    # In-process and worker-process fits may differ in the last bits (BLAS
    # threading), never in anything a user sees.
    ma, mb = a.map(3), b.map(3)
    assert ma.paths == mb.paths
    assert [(e.source, e.target, e.n_runs) for e in ma.edges] == [
        (e.source, e.target, e.n_runs) for e in mb.edges
    ]
    assert [e.prob for e in ma.edges] == pytest.approx([e.prob for e in mb.edges], rel=1e-9)
    assert np.allclose(arrays_a[3]["means"], arrays_b[3]["means"], rtol=1e-9)
    c, _ = api.fit_prepared(prepared, max_states=3, restarts=2, workers=1, seed=8)
    assert not np.allclose(c.sweep["heldout_ll_mean"], a.sweep["heldout_ll_mean"])


# -------------------------------------------------------------- persistence


def test_store_round_trip_without_pickle_and_invalidation(experiment, tmp_path):
    root, truth, result, _ = experiment
    saved = store.fits_dir(root, "exp") / result.fingerprint
    files = sorted(p.name for p in saved.iterdir())
    assert files == ["fit.json", "models.npz", "paths.npz", "summary.json"]

    # Plain JSON (no NaN/Infinity tokens) and arrays that load with allow_pickle=False.
    def refuse(token):
        raise AssertionError(f"non-standard JSON token {token}")

    payload = json.loads((saved / "fit.json").read_text(), parse_constant=refuse)
    assert all("paths" not in m and "epochs" not in m for m in payload["maps"].values())
    with np.load(saved / "models.npz", allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)
        n = result.selected_n
        assert npz[f"n{n}_transmat"].shape == (n, n)
    with np.load(saved / "paths.npz", allow_pickle=False) as npz:
        assert all(npz[name].dtype != object for name in npz.files)

    loaded = api.load_fit(root, "exp", **FIT)
    assert loaded is not None and loaded.loaded
    pd.testing.assert_frame_equal(loaded.sweep, result.sweep)
    assert loaded.selected_n == result.selected_n and loaded.runs == result.runs
    for n in result.maps:
        assert json.dumps(loaded.maps[n].to_dict(), sort_keys=True, default=str) == json.dumps(
            result.maps[n].to_dict(), sort_keys=True, default=str
        )
    again = api.fit_experiment(root, "exp", **FIT)
    assert again.loaded and again.fingerprint == result.fingerprint
    # Other criteria and n are answered from the same saved fit, without refitting.
    other = api.load_fit(root, "exp", **FIT, criterion="bic_mean", n_states=2)
    assert other.selected_n == 2 and other.params["criterion"] == "bic_mean"
    assert api.load_fit(root, "exp", **{**FIT, "max_states": 3}) is None
    fits = api.list_fits(root, "exp")
    assert [f["key"] for f in fits] == [result.fingerprint] and fits[0]["current"]
    assert fits[0]["feasible_n"] == sorted(result.maps) and fits[0]["n_runs"] == len(result.runs)

    # A changed run invalidates the saved fit (a copy, to keep the fixture intact).
    import shutil

    shutil.copytree(root / "exp", tmp_path / "exp")
    assert api.load_fit(tmp_path, "exp", **FIT) is not None
    latest = api.latest_fit(tmp_path, "exp")
    assert latest.fingerprint == result.fingerprint and latest.loaded and not latest.stale
    fits_fp = store.fits_fingerprint(tmp_path, "exp")
    writer = rundir.RunWriter.reopen(tmp_path / "exp" / "seed-00")
    row = rundir.load_run(tmp_path, "exp", "seed-00").metrics.iloc[-1].to_dict()
    writer.append({**row, "epoch": int(row["epoch"]) + 1, "step": int(row["step"]) + 10})
    writer.finish()
    assert api.load_fit(tmp_path, "exp", **FIT) is None
    assert api.list_fits(tmp_path, "exp")[0]["current"] is False
    # ... but stays the one to show, marked stale (the dashboard and compare say so).
    latest = api.latest_fit(tmp_path, "exp")
    assert latest.fingerprint == result.fingerprint and latest.stale
    assert store.fits_fingerprint(tmp_path, "exp") == fits_fp  # the fits did not change
    # The listing reads the small summary; a fit saved without one lists the same.
    listed = api.list_fits(tmp_path, "exp")
    (store.fits_dir(tmp_path, "exp") / result.fingerprint / "summary.json").unlink()
    assert api.list_fits(tmp_path, "exp") == listed
    assert store.fits_fingerprint(tmp_path, "exp") != fits_fp
    shutil.rmtree(store.fits_dir(tmp_path, "exp"))
    assert api.latest_fit(tmp_path, "exp") is None


def test_bad_parameters_are_value_errors(experiment):
    root = experiment[0]
    for bad in (
        dict(cov="tied"),
        dict(criterion="vibes"),
        dict(normalize="none"),
        dict(n_states=9),
        dict(backend="dask"),  # no scheduler
        dict(max_states=0),
        dict(seed=-1),
        dict(threshold=float("nan")),
        dict(bootstrap=-1),
    ):
        with pytest.raises(ValueError):
            api.fit_experiment(root, "exp", **{**FIT, **bad})
    with pytest.raises(TypeError):  # not a setting: never silently ignored by a fit
        api.fit_experiment(root, "exp", **FIT, max_state=3)


def test_fit_settings_are_one_type_for_cli_api_and_store(experiment):
    from trainmap.analysis.cli import add_arguments, fit_settings
    from trainmap.analysis.model import CRITERIA
    from trainmap.analysis.settings import CRITERIA_NAMES, FitSettings

    root, _, result, _ = experiment
    assert set(CRITERIA) == set(CRITERIA_NAMES)
    # The CLI's defaults are FitSettings' defaults; its options set the same fields.
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert fit_settings(parser.parse_args(["r/e"])) == FitSettings()
    asked = fit_settings(parser.parse_args(["r/e", "--max-states", "5", "--features", "l1, l2"]))
    assert asked == FitSettings(max_states=5, features=("l1", "l2"))
    # A FitSettings, keyword arguments, or both: the same request and the same saved fit.
    settings = FitSettings(**FIT)
    assert api.fit_experiment(root, "exp", settings).fingerprint == result.fingerprint
    assert api.load_fit(root, "exp", FitSettings(), **FIT).fingerprint == result.fingerprint
    key = settings.key_params()  # what the saved fit is keyed by, as it records it
    assert {name: result.params[name] for name in key} == key
    # The command the dashboard shows for these settings parses back to them.
    options = settings.cli_options().split()
    assert fit_settings(parser.parse_args(["r/e", *options])) == settings


# ---------------------------------------------------------------------- CLI


def test_cli_prints_table_selection_and_map(experiment, capsys):
    root, _, result, _ = experiment
    code = trainmap(["fit", str(root / "exp"), "--max-states", "5", "--restarts", "2"])
    out = capsys.readouterr().out
    assert code == 0
    assert "[loaded saved fit]" in out  # same request as the fixture: no refit
    assert f"selected n = {result.selected_n} (by {DEFAULT_CRITERION})" in out
    for n in range(1, 6):
        assert any(line.lstrip().startswith(str(n)) for line in out.splitlines())
    assert "edges (" in out and "drivers:" in out and "detour states:" in out
    assert "R²" in out and "seed-11: truncated" in out
    arrows = [line for line in out.splitlines() if "->" in line]
    assert arrows and all(("↑" in line or "↓" in line) for line in arrows)

    code = trainmap(["fit", str(root / "exp"), "--max-states", "5", "--restarts", "2",
                     "--n-states", "2"])  # fmt: skip
    assert code == 0 and "selected n = 2 (given)" in capsys.readouterr().out

    assert trainmap(["fit", str(root / "missing")]) == 2
    assert "not an experiment directory" in capsys.readouterr().err
    assert trainmap(["fit", str(root / "exp"), "--features", "nope"]) == 2
    assert "nope" in capsys.readouterr().err


def test_state_selector_follows_sklearn_conventions():
    from sklearn.base import clone
    from sklearn.utils.estimator_checks import check_no_attributes_set_in_init

    from trainmap.analysis.model import StateSelector

    selector = StateSelector(max_states=3, restarts=2, workers=1)
    check_no_attributes_set_in_init("StateSelector", selector)
    assert clone(selector).get_params() == selector.get_params()
    with pytest.raises(ValueError, match="covariance_type"):  # validated in fit, not __init__
        StateSelector(covariance_type="tied").fit(np.zeros((10, 2)), [10])
    X = np.random.default_rng(0).normal(size=(60, 2))
    fitted = selector.fit(X[:40], [20, 20], X[40:], [20])
    assert fitted is selector and selector.n_components_ in selector.models_
    assert list(selector.sweep_["n"]) == [1, 2, 3]
