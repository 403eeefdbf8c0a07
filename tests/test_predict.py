"""Convergence prediction (analysis.predict), its validation, the CLI and the pure figure code.

One synthetic experiment (24 runs x 100 checkpoints, default branches: a fast
branch 0 -> 1 -> 3 and a slow detour branch 0 -> 2 -> 1 -> 3 in the truth's
numbering) is fitted once through the real API; predictions are made for
prefixes of its runs with each run left out of the reference runs.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest

from trainmap.analysis import predict, predict_study
from trainmap.analysis.evidence import km_median
from trainmap.analysis.synthetic import make_synthetic, write_synthetic_experiment
from trainmap.app import curve_figures, prediction_figures
from trainmap.trainer import rundir
from trainmap.trainer.cli import main as cli_main

EXPERIMENT = "synth"
N_RUNS = 24
N_CHECKPOINTS = 100
SEED = 3


@pytest.fixture(scope="module")
def fitted(tmp_path_factory):
    from trainmap import analysis

    root = tmp_path_factory.mktemp("predict")
    write_synthetic_experiment(
        root, EXPERIMENT, n_runs=N_RUNS, n_checkpoints=N_CHECKPOINTS, seed=SEED
    )
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        analysis.fit_experiment(root, EXPERIMENT, max_states=4, restarts=2, workers=1, bootstrap=0)
    truth = make_synthetic(n_runs=N_RUNS, n_checkpoints=N_CHECKPOINTS, seed=SEED)
    return root, truth, predict.load_reference(root, EXPERIMENT)


def test_slow_branch_runs_are_predicted_later_once_the_branch_is_entered(fitted):
    _, truth, reference = fitted
    medians = {0: [], 1: []}
    lows = {0: [], 1: []}
    for i, run in enumerate(truth.run_names):
        path = truth.paths[i]
        entered = int(np.flatnonzero(path != path[0])[0])  # first checkpoint on the branch
        prefix = truth.frame(i).iloc[: entered + 6]  # past the ramp into the new state
        prediction = predict.predict_frame(reference, prefix, run, exclude=[run])
        assert prediction.converged_at is None
        assert prediction.median is not None and prediction.basis == "path", prediction.text()
        assert prediction.n_reference <= N_RUNS - 1  # never its own reference
        medians[truth.branch[i]].append(prediction.median)
        lows[truth.branch[i]].append(prediction.low)
    fast, slow = medians[0], medians[1]
    assert len(fast) >= 8 and len(slow) >= 8
    assert min(slow) > max(fast), (fast, slow)
    # The intervals separate too: even the slow runs' 10% quantiles lie past the fast medians.
    assert min(lows[1]) > np.median(fast)


def test_before_the_fork_both_branches_get_the_same_prediction(fitted):
    _, truth, reference = fitted
    predictions = set()
    for i, run in enumerate(truth.run_names[:6]):
        prediction = predict.predict_frame(reference, truth.frame(i).iloc[:5], run)
        assert prediction.state == 0 and prediction.path == [0] * 5
        predictions.add((prediction.basis, prediction.n_reference))
    # Every run is in state 0 at epoch 4 and none has converged: all runs are references.
    assert predictions == {("path", N_RUNS)}


def test_pooled_prefix_is_scaled_exactly_as_the_fit_scaled_the_run(fitted):
    from trainmap.analysis.prepare import prepare_experiment

    root, truth, reference = fitted
    assert reference.normalize == "pooled"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_experiment(root, EXPERIMENT, normalize="pooled")
    i = prepared.run_names.index("seed-05")
    frame = rundir.load_run(root, EXPERIMENT, "seed-05").metrics.iloc[:30]
    X, epochs, acc, notes = predict.run_rows(reference, frame, "seed-05")
    np.testing.assert_allclose(X, prepared.X[i][:30], rtol=1e-10, atol=1e-10)
    assert notes == [] and list(epochs) == list(range(30))
    # The filtered state now agrees with the fit's Viterbi path of the whole run.
    prediction = predict.predict_frame(reference, frame, "seed-05", exclude=["seed-05"])
    assert prediction.state == reference.paths["seed-05"][29]
    assert prediction.filtered.shape == (30, reference.n)
    np.testing.assert_allclose(prediction.filtered.sum(axis=1), 1.0)


def test_a_converged_prefix_says_so(fitted):
    _, truth, reference = fitted
    i = 0
    prediction = predict.predict_frame(reference, truth.frame(i), "seed-00", exclude=["seed-00"])
    assert prediction.converged_at == truth.convergence_epoch[i]
    assert prediction.median is None and prediction.basis is None
    assert prediction.text() == f"already converged at epoch {truth.convergence_epoch[i]}"


def test_km_quantiles_agree_with_the_evidence_median_and_handle_censoring():
    rng = np.random.default_rng(0)
    for _ in range(20):
        times = rng.integers(10, 60, size=12).astype(float)
        events = rng.random(12) < 0.7
        assert predict.km_quantiles(times, events, [0.5])[0] == km_median(times, events)
    # 4 converged at 10, 20, 30, 40 and 4 censored at 50: the median is reached,
    # the 90% quantile is not (half the runs never converged while watched).
    times = [10, 20, 30, 40, 50, 50, 50, 50]
    events = [True] * 4 + [False] * 4
    assert predict.km_quantiles(times, events, [0.1, 0.5, 0.9]) == [10.0, 40.0, None]
    assert predict.km_quantiles([], [], [0.5]) == [None]


# ------------------------------------------------------------------ bad input


def test_no_saved_fit_gives_the_fit_command(tmp_path):
    write_synthetic_experiment(tmp_path, "unfitted", n_runs=2, n_checkpoints=10, seed=1)
    with pytest.raises(predict.PredictError, match="no saved fit") as caught:
        predict.predict_run(tmp_path, "unfitted", "seed-0")
    assert f"trainmap fit {tmp_path / 'unfitted'}" in str(caught.value)


def test_run_without_checkpoints_and_run_lacking_features(fitted):
    root, _, reference = fitted
    writer = rundir.RunWriter.create(root, "other", "empty", task="synthetic")
    with pytest.raises(predict.PredictError, match="no checkpoint yet"):
        predict.predict_frame(reference, rundir.load_run(root, "other", "empty").metrics, "empty")
    writer.close()
    frame = make_synthetic(n_runs=1, n_checkpoints=10, seed=SEED).frame(0).drop(columns=["l2"])
    with pytest.raises(predict.PredictError, match="lacks feature l2 that the fit of synth"):
        predict.predict_frame(reference, frame, "nobias")


def test_per_run_fit_notes_that_a_prefix_is_scaled_on_itself(fitted):
    _, truth, reference = fitted
    per_run = predict.Reference(**{**reference.__dict__, "normalize": "per_run"})
    prediction = predict.predict_frame(per_run, truth.frame(1).iloc[:20], "seed-01")
    assert any("z-scored on themselves" in note for note in prediction.notes)


def test_not_enough_reference_runs_is_said(fitted):
    _, truth, reference = fitted
    prediction = predict.predict_frame(
        reference, truth.frame(2).iloc[:5], "seed-02", exclude=reference.runs[:-3]
    )
    assert prediction.basis is None and prediction.median is None
    assert "not enough runs to tell: 3 reference runs" in prediction.text()


# ------------------------------------------------------------------ validation


def test_validation_table_and_verdict(fitted):
    root, _, reference = fitted
    result = predict_study.validate(root, EXPERIMENT, reference=reference)
    assert result["verdict"] in ("better", "not_better")
    overall = result["overall"]
    assert overall["answered"] >= predict_study.MIN_CASES
    assert overall["scored"] + overall["already_converged"] == 3 * N_RUNS
    assert 0 <= overall["model_coverage"] <= 1
    # Every held-out run was excluded from its own references.
    assert all(c["n_reference"] < N_RUNS for c in result["cases"] if not c["converged"])
    table = predict_study.format_table(result)
    assert table.count("\n") == 1 + 4 and "| 25% |" in table and "| all |" in table


def test_validation_with_few_cases_says_not_enough_runs():
    cases = [
        {"run": "a", "fraction": 0.25, "converged": False, "truth": 50.0, "median": 45.0,
         "low": 40.0, "high": 60.0, "basis": "path", "at_risk_median": 55.0,
         "at_risk_low": 30.0, "at_risk_high": 70.0, "curve": None},
    ]  # fmt: skip
    result = predict_study.summarize(cases)
    assert result["verdict"] == "not_enough_runs" and "need >=" in result["message"]


def test_curve_extrapolation():
    epochs = np.arange(10)
    assert predict_study.curve_extrapolation(epochs, 0.1 * epochs, 0.9) == pytest.approx(9.0)
    assert predict_study.curve_extrapolation(epochs, 0.05 * epochs, 0.9) == pytest.approx(18.0)
    assert predict_study.curve_extrapolation(epochs, np.full(10, 0.5), 0.9) is None
    assert predict_study.curve_extrapolation(epochs[:1], [0.1], 0.9) is None
    assert predict_study.curve_extrapolation(epochs, None, 0.9) is None


# ------------------------------------------------------------------ CLI


def test_cli_prints_state_probabilities_prediction_and_verdict(fitted, capsys):
    root, _, reference = fitted
    assert cli_main(["predict", str(root / EXPERIMENT / "seed-02"), "--upto", "30"]) == 0
    out = capsys.readouterr().out
    assert "run synth/seed-02: 30 checkpoints, last epoch 29" in out
    assert f"current state: S{reference.paths['seed-02'][29]} (filtered probability" in out
    header = next(line for line in out.splitlines() if line.strip().startswith("epoch"))
    assert header.split() == ["epoch", *(f"S{k}" for k in range(reference.n))]
    assert "   29 " in out and "   25 " in out  # the last 5 checkpoints
    assert "predicted convergence" in out and "by the same route and stayed in it" in out
    assert out.strip().splitlines()[-1].startswith("validation: ")


def test_cli_bad_input(fitted, tmp_path, capsys):
    root, _, _ = fitted
    write_synthetic_experiment(tmp_path, "unfitted", n_runs=2, n_checkpoints=10, seed=1)
    assert cli_main(["predict", str(tmp_path / "unfitted" / "seed-0")]) == 2
    assert f"trainmap fit {tmp_path / 'unfitted'}" in capsys.readouterr().err
    assert cli_main(["predict", str(root / EXPERIMENT / "no-such-run")]) == 2
    assert "is not a run directory" in capsys.readouterr().err
    assert cli_main(["predict", str(root / EXPERIMENT / "seed-00"), "--upto", "-3"]) == 2
    assert "upto must be at least 1 checkpoint, got -3" in capsys.readouterr().err


# ------------------------------------------------------------------ figures

SUMMARY = {
    "state": 1, "n": 4, "state_prob": 0.97, "epoch": 40, "converged_at": None, "median": 61.0,
    "low": 56.0, "high": 64.0, "floor": 99.0, "n_reference": 9, "basis": "path",
    "text": "~61, 80% interval 56–64 (from 9 runs ...)",
}  # fmt: skip
BETTER = {"verdict": "better", "message": "beats the naive baselines (...)"}
WORSE = {"verdict": "not_better", "message": "does NOT beat the naive baselines (...)"}


def test_prediction_cell_shows_a_number_only_when_validated():
    assert prediction_figures.prediction_cell(SUMMARY, BETTER) == "~61 (56–64), 9 runs"
    assert prediction_figures.prediction_cell(SUMMARY, WORSE).startswith(
        "56–64, 9 runs (interval only"
    )
    assert (
        prediction_figures.prediction_cell({**SUMMARY, "high": None}, BETTER)
        == "~61 (56–open), 9 runs"
    )
    assert (
        prediction_figures.prediction_cell({**SUMMARY, "converged_at": 50}, BETTER)
        == "converged at 50"
    )
    assert (
        prediction_figures.prediction_cell({**SUMMARY, "basis": None}, BETTER)
        == "not enough runs to tell"
    )
    assert prediction_figures.prediction_cell({"error": "x"}, None) == "no prediction: x"
    rows = prediction_figures.with_predictions([{"run": "a"}, {"run": "b"}], {"b": "~61"})
    assert [r["predicted_convergence"] for r in rows] == ["", "~61"]


def test_add_prediction_draws_band_and_line_only_when_validated():
    base = curve_figures.metric_figure("eval_acc").to_plotly_json()
    confident = prediction_figures.add_prediction(base, SUMMARY, BETTER)["layout"]
    band, line = confident["shapes"]
    assert (band["type"], band["x0"], band["x1"]) == ("rect", 56.0, 64.0)
    assert (line["type"], line["x0"]) == ("line", 61.0)
    assert confident["annotations"][0]["text"] == "predicted convergence ~61 (56–64), 9 runs"
    unsure = prediction_figures.add_prediction(base, SUMMARY, WORSE)["layout"]
    assert [s["type"] for s in unsure["shapes"]] == ["rect"]
    assert "interval only" in unsure["annotations"][0]["text"]
    open_end = prediction_figures.add_prediction(base, {**SUMMARY, "high": None}, WORSE)["layout"]
    assert open_end["shapes"][0]["x1"] == 99.0  # to the last epoch any reference run was seen
    done = prediction_figures.add_prediction(base, {**SUMMARY, "converged_at": 50}, BETTER)
    assert not done["layout"].get("shapes")
    assert base["layout"].get("shapes") in (None, [], ())  # the input is not modified
    # A run the fit never decoded: its states so far shade the background too.
    live = {**SUMMARY, "epochs": [0, 1, 2, 3], "path": [0, 0, 1, 1]}
    shaded = prediction_figures.add_prediction(base, live, WORSE, shade_states=True)["layout"][
        "shapes"
    ]
    assert [s["name"] for s in shaded] == ["S0", "S1", "S0->S1", "predicted convergence interval"]
    assert shaded[2]["x0"] == 1.5
    converged = prediction_figures.add_prediction(
        base, {**live, "converged_at": 3}, BETTER, shade_states=True
    )
    assert [s["name"] for s in converged["layout"]["shapes"]] == ["S0", "S1", "S0->S1"]
    words = prediction_figures.prediction_words(SUMMARY, WORSE)
    assert words.startswith("Now in S1 of the 4-state map (p = 0.97) at epoch 40.")
    assert "between epochs 56 and 64" in words and "does NOT beat" in words


def test_predict_modules_never_import_torch_and_the_cli_module_imports_cheaply():
    import subprocess
    import sys

    code = (
        "import sys, trainmap.analysis.predict, trainmap.analysis.predict_study, trainmap.analysis.predict_cli\n"
        "assert 'torch' not in sys.modules, 'torch imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
    cheap = (
        "import sys, trainmap.analysis.predict_cli\n"
        "assert not {'numpy', 'pandas', 'hmmlearn'} & set(sys.modules), 'heavy import'\n"
    )
    subprocess.run([sys.executable, "-c", cheap], check=True)


def test_dashboard_loaders_follow_a_running_run(fitted, tmp_path, monkeypatch):
    """The Runs page's cells: a running run only, keyed so appended rows show at once."""
    import shutil

    from trainmap.app import data
    from trainmap.app.main import create_app

    monkeypatch.setattr(data, "FINGERPRINT_TTL", 0.0)
    source, truth, _ = fitted
    root = tmp_path / "root"
    shutil.copytree(source / EXPERIMENT, root / EXPERIMENT)
    write_synthetic_experiment(root, "unfitted", n_runs=2, n_checkpoints=10, seed=1)
    live = rundir.RunWriter.create(root, EXPERIMENT, "live", task="synthetic")
    live.append_frame(truth.frame(2).iloc[:10])
    waiting = rundir.RunWriter.create(root, "unfitted", "live", task="synthetic")
    waiting.append_frame(truth.frame(2).iloc[:10])
    app = create_app(root, cache_dir=tmp_path / "cache")
    try:
        with app.server.app_context():
            cells = data.runs_predictions(
                str(root), EXPERIMENT, data.fingerprint(str(root), EXPERIMENT)
            )
            reference = predict.load_reference(root, EXPERIMENT)
            validation = predict_study.validate(root, EXPERIMENT, reference=reference)
            first = predict.predict_run(root, EXPERIMENT, "live", reference=reference)
            assert cells == {
                "live": prediction_figures.prediction_cell(first.summary(), validation)
            }
            live.append_frame(truth.frame(2).iloc[10:40])
            fp = data.fingerprint(str(root), EXPERIMENT)
            second = predict.predict_run(root, EXPERIMENT, "live", reference=reference)
            assert second.epoch == 39 and second.summary() != first.summary()
            cell = prediction_figures.prediction_cell(second.summary(), validation)
            assert data.runs_predictions(str(root), EXPERIMENT, fp) == {"live": cell}
            view = data.prediction_view(str(root), EXPERIMENT, fp, "live")
            assert view["prediction"]["epoch"] == 39 and view["validation"]["verdict"]
            assert data.prediction_view(str(root), EXPERIMENT, fp, "seed-00") is None  # completed
            # A running run of an experiment never fitted: the command to run.
            other = data.runs_predictions(
                str(root), "unfitted", data.fingerprint(str(root), "unfitted")
            )
            assert other["live"].startswith("no prediction: no saved fit; run trainmap fit ")
    finally:
        live.close()
        waiting.close()


def test_a_new_run_still_training_leaves_the_fit_current_until_it_ends(fitted, tmp_path):
    """The run being predicted does not outdate the fit that predicts it (analysis.api.list_fits)."""
    import json
    import shutil

    from trainmap import analysis
    from trainmap.analysis import store

    source, truth, _ = fitted
    root = tmp_path / "root"
    shutil.copytree(source / EXPERIMENT, root / EXPERIMENT)
    live = rundir.RunWriter.create(root, EXPERIMENT, "live", task="synthetic")
    try:
        live.append_frame(truth.frame(2).iloc[:10])
        assert [fit["current"] for fit in analysis.list_fits(root, EXPERIMENT)] == [True]
        reference = predict.load_reference(root, EXPERIMENT)
        assert not reference.stale
        prediction = predict.predict_run(root, EXPERIMENT, "live", reference=reference)
        assert not any("predates" in note for note in prediction.notes)
        # a fit saved before summaries listed its runs: the names come from fit.json
        (summary_file,) = store.fits_dir(root, EXPERIMENT).glob(f"*/{store.SUMMARY_FILE}")
        summary = json.loads(summary_file.read_text())
        assert sorted(summary.pop("run_names")) == sorted(reference.runs)
        summary_file.write_text(json.dumps(summary))
        live.append_frame(truth.frame(2).iloc[10:20])
        assert [fit["current"] for fit in analysis.list_fits(root, EXPERIMENT)] == [True]
        # finished, it is a run a refit would include: the fit is outdated now
        live.finish("completed")
        assert [fit["current"] for fit in analysis.list_fits(root, EXPERIMENT)] == [False]
        assert predict.load_reference(root, EXPERIMENT).stale
    finally:
        live.close()


def _toy_reference(stays, threshold=0.9):
    """Runs of 100 epochs that enter S1 at ``entry`` (after ``route``) and converge ``duration``
    epochs later (None: never), leaving S1 for S2 at ``leave`` epochs after entering if given.
    """
    paths, epochs, convergence = {}, {}, {}
    for i, (route, entry, duration, leave) in enumerate(stays):
        path = np.zeros(100, dtype=int)
        path[: len(route)] = route
        path[entry:] = 1
        if leave is not None:
            path[entry + leave :] = 2
        name = f"r{i}"
        paths[name], epochs[name] = path, np.arange(100)
        convergence[name] = None if duration is None else entry + duration
    return predict.Reference(
        experiment="toy", fit_key="k", created_at="", stale=False, n=3, cov="diag",
        normalize="pooled", feature_names=["x"], center=None, scale=None, threshold=threshold,
        arrays={}, runs=sorted(paths), epochs=epochs, paths=paths, convergence=convergence,
    )  # fmt: skip


def test_entry_clock_aligns_runs_at_the_start_of_their_stay():
    stays = [
        ([0], entry, duration, None)
        for entry, duration in zip((10, 20, 30, 40, 50), (15, 25, 35, 45, 55))
    ]
    reference = _toy_reference(stays)
    # This run entered S1 at epoch 30 by the route {0}, and is at epoch 40 now.
    level, times, events, _ = predict.match_reference(reference, 40, 1, 30.0, frozenset({0, 1}))
    assert level == "path" and sorted(times) == [45, 55, 65, 75, 85] and all(events)
    assert predict.survival_prediction(times, events)["median"] == 65.0
    # 20 epochs into the stay only runs whose stay lasted longer are still comparable.
    level, times, _, _ = predict.match_reference(reference, 50, 1, 30.0, frozenset({0, 1}))
    assert sorted(times) == [55, 65, 75, 85]


def test_entry_clock_route_state_and_fallback_levels():
    route = [([0], 10, 30, None)] * 2 + [([0, 2], 10, 60, None)] * 3  # 2 direct, 3 via S2
    left = [([0], 10, 40, 5)]  # left S1 after 5 epochs: not comparable 10 epochs in
    never = [([0], 10, None, None)]  # censored at its last epoch, 99
    reference = _toy_reference(route + left + never)
    level, times, events, _ = predict.match_reference(reference, 30, 1, 20.0, frozenset({0, 1}))
    # 3 runs took this run's route (2 + the never-converged one): too few, so any route.
    assert level == "state" and len(times) == 6
    assert sorted(t for t, e in zip(times, events) if not e) == [20 + 89]
    level, times, _, n_at_risk = predict.match_reference(
        reference, 30, 1, 20.0, frozenset({0, 1}), min_reference=7
    )
    assert level == "all" and n_at_risk == 7 and sorted(times)[0] == 40
