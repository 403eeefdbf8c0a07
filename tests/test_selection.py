"""Selecting n: the effective-sample-size penalty, the ceiling guardrail, too few runs.

The long-run study (runs of 300-3000 checkpoints) is a script,
``python -m analysis.selection_study --long``; these tests stay small.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy.signal import lfilter

from trainmap.analysis import api, store
from trainmap.analysis.cli import format_selection, format_sweep
from trainmap.analysis.fitting import autocorr_time, lag1_autocorrelation
from trainmap.analysis.model import (
    DEFAULT_CRITERION,
    LONG_RUN_CHECKPOINTS,
    effective_criteria,
    select_n,
)
from trainmap.analysis.prepare import prepare_frames, runs_needed_for_heldout, split_runs
from trainmap.analysis.synthetic import make_synthetic


def prepared_of(truth, **kwargs):
    frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        return prepare_frames(frames, **kwargs)


# ------------------------------------------------- effective sample size


@pytest.mark.parametrize("phi", [0.0, 0.5, 0.7, 0.9])
def test_autocorr_time_of_a_known_ar1_process(phi):
    rng = np.random.default_rng(1)
    runs = [lfilter([1.0], [1.0, -phi], rng.normal(size=(2000, 3)), axis=0) for _ in range(10)]
    rho = lag1_autocorrelation(runs)
    assert rho.shape == (3,) and rho == pytest.approx(phi, abs=0.02)
    assert autocorr_time(rho.mean()) == pytest.approx((1 + phi) / (1 - phi), rel=0.1)


def test_autocorr_time_never_inflates_the_sample():
    assert autocorr_time(-0.4) == 1.0  # negative correlation counts as none
    assert autocorr_time(1.0) == autocorr_time(0.9999) == 100.0  # capped
    # A run's first and last checkpoints are not a lag-1 pair of the next run.
    two = [np.array([[1.0], [1.0]]), np.array([[-1.0], [-1.0]])]
    assert lag1_autocorrelation(two) == pytest.approx([0.5])


def test_ess_penalty_grows_with_autocorrelation():
    truth = make_synthetic(10, 80, seed=3, n_states=2, n_features=4)
    result, _ = api.fit_prepared(
        prepared_of(truth, features=truth.feature_names),
        max_states=3,
        restarts=1,
        workers=1,
        criterion="icl_ess",
    )
    sweep = result.sweep
    tau = sweep["autocorr_time"].iloc[0]
    assert tau > 1 and (sweep["autocorr_time"] == tau).all()
    feasible = sweep[sweep.feasible]
    t_eff = feasible["heldout_rows"] / tau
    penalty = feasible["bic_ess"] + 2 * feasible["heldout_ll_best"]
    assert np.allclose(penalty, np.sqrt(tau) * feasible["n_params"] * np.log(t_eff))
    assert (feasible["icl_ess"] >= feasible["bic_ess"]).all()
    # Uncorrelated residuals: the penalty is BIC's, up to ln(T) vs ln(T/tau).
    white = effective_criteria(sweep.assign(lag1_best=-0.1))
    assert (white["autocorr_time"] == 1).all()
    assert np.allclose(white.loc[white.feasible, "bic_ess"], feasible["bic_best"])
    selection = result.selection
    assert selection["penalty"] == "ess" and selection["autocorr_time"] == pytest.approx(tau)
    assert selection["effective_rows"] == pytest.approx(t_eff.iloc[0])
    assert "autocorrelation time" in selection["message"]


def test_auto_uses_plain_icl_on_short_runs_and_the_ess_penalty_on_long_ones():
    truth = make_synthetic(10, 80, seed=3, n_states=2, n_features=4)
    result, _ = api.fit_prepared(
        prepared_of(truth, features=truth.feature_names), max_states=3, restarts=1, workers=1
    )
    sweep = result.sweep
    assert (sweep["rows_per_run"].dropna() == 80).all()
    assert np.allclose(sweep["icl_auto"], sweep["icl_best"], equal_nan=True)
    assert result.selection["penalty"] == "plain"
    assert "plain ICL" in result.selection["message"]
    long = effective_criteria(sweep.assign(rows_per_run=float(LONG_RUN_CHECKPOINTS)))
    assert np.allclose(long["icl_auto"], long["icl_ess"], equal_nan=True)


# ------------------------------------------------------------ the ceiling


def test_selection_at_the_ceiling_extends_the_sweep():
    truth = make_synthetic(20, 150, seed=0, n_states=5)
    result, _ = api.fit_prepared(
        prepared_of(truth), max_states=3, restarts=2, workers=2, bootstrap=0
    )
    selection = result.selection
    assert result.selected_n == 5 and selection["criterion"] == DEFAULT_CRITERION
    assert selection["extended"] and selection["max_states_tried"] == 6
    assert not selection["at_ceiling"] and selection["warning"] == ""
    assert list(result.sweep["n"]) == [1, 2, 3, 4, 5, 6] and set(result.maps) == set(range(1, 7))
    assert "still falling at n = 3, so the sweep went on to n = 6" in selection["message"]
    assert not any(w.startswith("selection:") for w in result.warnings)


def test_selection_at_the_cap_warns_everywhere():
    truth = make_synthetic(20, 150, seed=0, n_states=5)
    result, _ = api.fit_prepared(
        prepared_of(truth), max_states=2, restarts=2, workers=2, max_states_cap=3, bootstrap=0
    )
    selection = result.selection
    assert result.selected_n == 3 and selection["at_ceiling"] and selection["extended"]
    assert "largest tried (cap 3): the true n may be larger" in selection["message"]
    assert f"selection: {selection['warning']}" in result.warnings
    assert f"warning: {selection['warning']}" in format_selection(result).splitlines()
    # A given n is the user's choice: no ceiling warning, but what the criterion says.
    given = api._choose(result, DEFAULT_CRITERION, 2)
    assert not given.selection["at_ceiling"] and given.selected_n == 2
    assert "would pick 3" in given.selection["message"]
    assert not any(w.startswith("selection:") for w in given.warnings)


# ----------------------------------------------------------- too few runs


def test_too_few_runs_for_a_held_out_set_is_said_plainly():
    assert runs_needed_for_heldout(0.2) == 5 and runs_needed_for_heldout(0.0) is None
    assert split_runs([f"r{i}" for i in range(4)], 0.2, seed=0)[1] == []
    assert len(split_runs([f"r{i}" for i in range(5)], 0.2, seed=0)[1]) == 1
    truth = make_synthetic(4, 60, seed=2, n_states=2, n_features=4)
    frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
    with pytest.warns(UserWarning, match="4 usable runs; a held-out share of 0.2 needs at least 5"):
        prepared = prepare_frames(frames, features=truth.feature_names)
    assert prepared.heldout == []
    result, _ = api.fit_prepared(prepared, max_states=2, restarts=1, workers=1)
    assert result.selection["heldout_runs"] == 0
    assert (
        "no held-out runs (4 runs, a held-out set needs at least 5)" in result.selection["message"]
    )
    assert any("needs at least 5 runs" in w for w in result.warnings)
    assert "in-sample LL" in format_sweep(result).splitlines()[0]
    heldout_ll = api._choose(result, "heldout_ll", None)
    assert "selects nothing" in heldout_ll.selection["message"]


# ------------------------------------------------------------- persistence


def test_selection_is_saved_and_old_fits_load(tmp_path):
    from trainmap.analysis.synthetic import write_synthetic_experiment

    write_synthetic_experiment(tmp_path, "exp", n_runs=6, n_checkpoints=60, seed=1, n_states=2)
    fit = dict(max_states=2, restarts=1, workers=1)
    result = api.fit_experiment(tmp_path, "exp", **fit)
    loaded = api.load_fit(tmp_path, "exp", **fit)
    # 60 checkpoints a run: "auto" is plain ICL
    assert loaded.selection == result.selection and loaded.selection["penalty"] == "plain"
    # Another criterion on the saved fit describes that criterion.
    plain = api.load_fit(tmp_path, "exp", **fit, criterion="bic_mean")
    assert plain.selection["criterion"] == "bic_mean" and plain.selection["penalty"] == "plain"
    assert plain.selection["autocorr_time"] is None
    # A fit saved before selection and the ESS columns existed still loads and selects.
    saved, payload, _ = store.load_fit_folder(store.fits_dir(tmp_path, "exp") / result.fingerprint)
    del payload["selection"]
    old = [c for c in payload["sweep_columns"] if c not in ("lag1_best", "autocorr_time")]
    payload["sweep"] = {c: payload["sweep"][c] for c in old}
    payload["sweep_columns"] = [c for c in old if not c.endswith("_ess")]
    legacy = store.result_from_payload(
        payload, {n: (m.paths, m.epochs) for n, m in saved.maps.items()}
    )
    assert legacy.selection == {}
    chosen = api._choose(legacy, DEFAULT_CRITERION, None)
    assert chosen.selected_n == select_n(legacy.sweep, "icl")
    chosen = api._choose(legacy, "icl_ess", None)
    assert chosen.selected_n == select_n(legacy.sweep, "icl")
    assert "needs a refit" in chosen.selection["message"]
