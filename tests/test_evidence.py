"""The statistics behind detours and the occupancy regression (analysis/evidence.py).

Hand computations and scipy cross-checks for the pieces, then synthetic truth
(analysis.synthetic) for the whole: a real detour is found in every seed, an
experiment where every run takes one path flags nothing.
"""

from __future__ import annotations

import warnings

import numpy as np
import pytest
from scipy import stats

from trainmap.analysis import api, evidence
from trainmap.analysis.evidence import (
    ALPHA,
    MIN_RUNS_PER_SIDE,
    delay_interval,
    detour_tests,
    holm,
    km_median,
    logrank_test,
    occupancy_regression,
)
from trainmap.analysis.prepare import prepare_frames
from trainmap.analysis.result import TrainingMap
from trainmap.analysis.synthetic import make_synthetic

SEEDS = (0, 1, 2)
print(f"evidence tests: synthetic seeds {SEEDS}")


# ---------------------------------------------------------------- log-rank


def test_logrank_matches_a_hand_computation():
    # Group A converges at epochs 1 and 3; group B at 2 and is censored at 4.
    # Event times 1, 2, 3 with (at risk, at risk in A, events, events in A):
    #   t=1: (4, 2, 1, 1)  E_A = 1/2  V = 1/2 * 1/2 * 3/3 = 1/4
    #   t=2: (3, 1, 1, 0)  E_A = 1/3  V = 1/3 * 2/3 * 2/2 = 2/9
    #   t=3: (2, 1, 1, 1)  E_A = 1/2  V = 1/2 * 1/2 * 1/1 = 1/4
    # O_A - E_A = 2 - 4/3 = 2/3, V = 13/18, chi2 = (4/9) / (13/18) = 8/13.
    chi2, p, o_minus_e = logrank_test([1, 3, 2, 4], [1, 1, 1, 0], [1, 1, 0, 0])
    assert chi2 == pytest.approx(8 / 13)
    assert o_minus_e == pytest.approx(2 / 3)
    assert p == pytest.approx(stats.chi2.sf(8 / 13, 1))


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_logrank_agrees_with_scipy_on_censored_ties(seed):
    rng = np.random.default_rng(seed)
    times = rng.integers(1, 30, 40).astype(float)  # many ties
    events = rng.random(40) < 0.7
    group = rng.random(40) < 0.4
    chi2, p, o_minus_e = logrank_test(times, events, group)

    def censored(mask):
        return stats.CensoredData(uncensored=times[mask & events], right=times[mask & ~events])

    ref = stats.logrank(censored(group), censored(~group))
    assert chi2 == pytest.approx(ref.statistic**2)
    assert p == pytest.approx(ref.pvalue)
    assert np.sign(o_minus_e) == np.sign(ref.statistic)  # scipy: z = (O - E) / sqrt(V) for x


def test_logrank_without_events_has_nothing_to_test():
    assert logrank_test([5, 6, 7, 8], [0, 0, 0, 0], [1, 1, 0, 0])[1] == 1.0


def test_km_median_by_hand_and_against_scipy():
    # 1, 2, 3, 4 all converged: S drops to 0.5 at 2.
    assert km_median([1, 2, 3, 4], [1, 1, 1, 1]) == 2
    # Censored at 1, then events at 2, 3, 4: S(2) = 2/3, S(3) = 1/3 -> median 3.
    assert km_median([1, 2, 3, 4], [0, 1, 1, 1]) == 3
    # More than half never converge: undefined.
    assert km_median([1, 5, 5], [1, 0, 0]) is None
    rng = np.random.default_rng(3)
    times = rng.integers(1, 50, 25).astype(float)
    events = rng.random(25) < 0.8
    sf = stats.ecdf(stats.CensoredData(uncensored=times[events], right=times[~events])).sf
    expected = sf.quantiles[np.argmax(sf.probabilities <= 0.5)]
    assert km_median(times, events) == expected


def test_holm_adjustment():
    # Sorted p 0.01, 0.03, 0.04, 0.2 -> 4*0.01, max(.04, 3*.03), max(.09, 2*.04), 0.2.
    assert holm([0.01, 0.04, 0.03, 0.2]) == pytest.approx([0.04, 0.09, 0.09, 0.2])
    assert holm([0.6, 0.9]) == [1.0, 1.0]
    assert holm([]) == []


def test_delay_interval_covers_the_shift_and_is_reproducible():
    rng = np.random.default_rng(0)
    slow = rng.normal(130, 10, 12)
    fast = rng.normal(100, 10, 12)
    times = np.r_[slow, fast]
    events = np.ones(24, bool)
    group = np.r_[np.ones(12, bool), np.zeros(12, bool)]
    lo, hi = delay_interval(times, events, group)
    assert lo < 30 < hi and lo > 0
    assert delay_interval(times, events, group) == [lo, hi]


# ---------------------------------------------------------------- verdicts


def _groups(visit_times, other_times, visit_events=None, other_events=None):
    times = np.r_[visit_times, other_times].astype(float)
    events = np.r_[
        np.ones(len(visit_times), bool) if visit_events is None else visit_events,
        np.ones(len(other_times), bool) if other_events is None else other_events,
    ]
    visits = np.zeros((len(times), 1), bool)
    visits[: len(visit_times), 0] = True
    return visits, times, events


def test_clear_detour_is_flagged_with_its_evidence():
    visits, times, events = _groups([150, 160, 155, 170, 165, 158], [100, 104, 98, 110, 102, 99])
    (d,) = detour_tests(visits, times, events)
    assert d["verdict"] == "detour" and d["test"] == "log-rank" and d["alpha"] == ALPHA
    assert d["p_adjusted"] == d["p_value"] < ALPHA  # one state tested: nothing to adjust
    assert d["delay"] == km_median([150, 160, 155, 170, 165, 158], [1] * 6) - km_median(
        [100, 104, 98, 110, 102, 99], [1] * 6
    )
    lo, hi = d["delay_ci"]
    assert 0 < lo <= d["delay"] <= hi
    assert (d["n_visiting"], d["n_other"]) == (6, 6)
    assert "detour" in d["message"] and "p =" in d["message"]


def test_faster_visitors_are_not_a_detour():
    visits, times, events = _groups([100, 104, 98, 110, 102, 99], [150, 160, 155, 170, 165, 158])
    (d,) = detour_tests(visits, times, events)
    assert d["verdict"] == "no_detour" and d["p_adjusted"] < ALPHA and d["delay"] < 0


def test_too_few_runs_says_so_with_the_numbers():
    visits, times, events = _groups([300, 310], [100, 104, 98, 110, 102, 99, 101, 97])
    (d,) = detour_tests(visits, times, events)
    assert d["verdict"] == "not_enough_runs"
    assert d["p_value"] is None and d["delay"] is None and d["delay_ci"] is None
    assert "2 runs visit it" in d["message"] and f"need >= {MIN_RUNS_PER_SIDE}" in d["message"]


def test_all_no_and_some_runs():
    visits = np.array([[1, 1, 0, 1]] * 5 + [[1, 0, 0, 0]] * 5, bool)
    times = np.r_[np.full(5, 150.0), np.full(5, 100.0)]
    out = detour_tests(visits, times, np.ones(10, bool))
    assert [d["verdict"] for d in out] == ["all_runs", "detour", "no_runs", "detour"]
    # Two states tested: Holm doubles the smaller p (the two are equal here).
    assert out[1]["p_adjusted"] == pytest.approx(min(1.0, 2 * out[1]["p_value"]))
    assert out[0]["p_value"] is None and out[2]["p_value"] is None


def test_censored_runs_are_kept_not_dropped():
    # Every visiting run is censored (never converged by its last epoch, 200):
    # dropping them would leave nothing to test; kept, they are the detour.
    visits, times, events = _groups(
        [200, 200, 200, 200, 200],
        [100, 104, 98, 110, 102],
        visit_events=np.zeros(5, bool),
    )
    (d,) = detour_tests(visits, times, events)
    assert d["n_censored_visiting"] == 5 and d["n_censored_other"] == 0
    assert d["verdict"] == "detour" and d["p_value"] < ALPHA
    assert d["delay"] is None  # the visitors' median is not reached
    # Unbounded above; below, the visitors' median is beyond epoch 200 in every
    # resample and the others' is at most 110.
    assert d["delay_ci"][1] is None and d["delay_ci"][0] >= 200 - 110
    assert "not reached" in d["message"]


def test_no_run_converged_is_not_enough_to_tell():
    visits, times, events = _groups([200] * 5, [200] * 5, np.zeros(5, bool), np.zeros(5, bool))
    (d,) = detour_tests(visits, times, events)
    assert d["verdict"] == "not_enough_runs" and "none of the 10 runs converged" in d["message"]


# ------------------------------------------------- synthetic truth, end to end


def _true_visits(truth):
    return np.array([[(p == k).any() for k in range(truth.n_states)] for p in truth.paths])


def _times(truth):
    conv = truth.convergence_epoch
    times = [c if c is not None else e[-1] for c, e in zip(conv, truth.epochs)]
    return np.array(times, float), np.array([c is not None for c in conv])


@pytest.mark.parametrize("seed", SEEDS)
def test_true_paths_detour_found_and_shuffled_convergence_flags_nothing(seed):
    """On the true paths: the detour branch's extra state, and a null with the same fork."""
    truth = make_synthetic(16, 150, seed=seed)  # branches 0-1-3 and 0-2-1-3
    times, events = _times(truth)
    out = detour_tests(_true_visits(truth), times, events)
    assert [d["verdict"] for d in out] == ["all_runs", "all_runs", "detour", "all_runs"]
    assert out[2]["delay"] > 0
    # Same fork, convergence epochs shuffled between runs: branch says nothing.
    order = np.random.default_rng(seed).permutation(len(times))
    out = detour_tests(_true_visits(truth), times[order], events[order])
    assert out[2]["verdict"] == "no_detour"


def _fit_map(truth, seed):
    frames = {name: truth.frame(i) for i, name in enumerate(truth.run_names)}
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        prepared = prepare_frames(frames)
    result, _ = api.fit_prepared(
        prepared, max_states=5, restarts=2, workers=1, seed=seed, bootstrap=0
    )
    return result.map()


@pytest.mark.parametrize("seed", SEEDS)
def test_fitted_map_finds_the_detour_and_the_null_flags_nothing(seed):
    truth = make_synthetic(16, 150, seed=seed)
    m = _fit_map(truth, seed)
    detours = [s for s in m.states if s.is_detour]
    assert len(detours) == 1
    (state,) = detours
    decoded = np.concatenate([m.paths[r] for r in truth.run_names])
    true = np.concatenate(truth.paths)
    assert np.bincount(true[decoded == state.state]).argmax() == 2  # the truth's detour state
    assert state.detour["verdict"] == "detour" and state.detour["delay"] > 0
    assert all(s.is_detour == (s.detour["verdict"] == "detour") for s in m.states)

    null = make_synthetic(16, 150, seed=seed, n_states=3, branches=[[0, 1, 2]])
    m = _fit_map(null, seed)
    assert not any(s.is_detour for s in m.states)
    assert all(s.detour["verdict"] in ("all_runs", "no_runs", "no_detour") for s in m.states)


def test_old_fits_without_detour_still_load():
    truth = make_synthetic(6, 60, seed=0, n_states=2)
    m = _fit_map(truth, 0)
    data = m.to_dict()
    for state in data["states"]:
        del state["detour"]
    loaded = TrainingMap.from_dict(data)
    assert all(s.detour == {} for s in loaded.states)


# ---------------------------------------------------------------- regression


def test_two_states_rank_deficient_input_gives_finite_coefficients():
    # Occupancies of two states sum to one: intercept + both is singular, and
    # the old minimum-norm fit returned coefficients of order 1e16 here.
    share = np.array([0.2, 0.3, 0.35, 0.5, 0.6, 0.7])
    occupancy = np.column_stack([share, 1 - share])
    target = 80 + 100 * share + np.array([1.0, -2.0, 0.5, 1.5, -1.0, 0.0])
    reg = occupancy_regression(occupancy, target)
    assert reg["reference_state"] == 1  # the most occupied state
    assert reg["n_params"] == 2 and reg["df_model"] == 1 and reg["df_resid"] == 4
    slope, intercept = np.polyfit(share, target, 1)
    assert reg["coef"][0] == pytest.approx(slope) and reg["coef"][1] == 0.0
    assert reg["intercept"] == pytest.approx(intercept)
    assert all(np.isfinite(c) for c in reg["coef"].values())
    r = stats.linregress(share, target)
    assert reg["r2"] == pytest.approx(r.rvalue**2) and reg["p_value"] == pytest.approx(r.pvalue)
    assert not reg["saturated"]


def test_unvisited_state_is_dropped_not_estimated():
    rng = np.random.default_rng(0)
    occ = rng.dirichlet([2, 2, 2], size=10)
    occupancy = np.column_stack([occ, np.zeros(10)])  # state 3: no run used visits it
    reg = occupancy_regression(occupancy, rng.normal(100, 10, 10))
    assert reg["coef"][3] is None and reg["n_params"] == 3 and reg["df_resid"] == 7
    assert all(np.isfinite(c) for c in reg["coef"].values() if c is not None)
    assert "1 more state dropped" in reg["message"]


def test_saturated_fit_is_marked_not_presented():
    rng = np.random.default_rng(1)
    occupancy = rng.dirichlet(np.ones(8), size=7)  # 8 parameters, 7 runs
    reg = occupancy_regression(occupancy, rng.normal(100, 10, 7))
    assert reg["saturated"] and reg["df_resid"] < 1
    assert reg["r2"] is None and reg["r2_loo"] is None and reg["p_value"] is None
    assert reg["n_params"] == 7  # intercept + 6 states: 7 runs cannot identify more
    assert "saturated" in reg["message"] and "need >= 8 runs" in reg["message"]
    # One run more is still saturated with 8 states; at 9 runs it is a result.
    assert occupancy_regression(rng.dirichlet(np.ones(8), 8), rng.normal(100, 10, 8))["saturated"]
    reg = occupancy_regression(rng.dirichlet(np.ones(8), 9), rng.normal(100, 10, 9))
    assert not reg["saturated"] and reg["df_resid"] == 1 and reg["r2"] is not None


def test_loo_r2_equals_brute_force_refits():
    rng = np.random.default_rng(2)
    occupancy = rng.dirichlet(np.ones(4), size=15)
    target = 100 + occupancy @ np.array([0, 40, -20, 60]) + rng.normal(0, 5, 15)
    reg = occupancy_regression(occupancy, target)
    ref = reg["reference_state"]
    columns = [k for k in range(4) if k != ref]
    X = np.column_stack([np.ones(15), occupancy[:, columns]])
    predictions = []
    for i in range(15):
        rest = np.arange(15) != i
        beta = np.linalg.lstsq(X[rest], target[rest], rcond=None)[0]
        predictions.append(X[i] @ beta)
    sst = ((target - target.mean()) ** 2).sum()
    brute = 1 - ((target - np.array(predictions)) ** 2).sum() / sst
    assert reg["r2_loo"] == pytest.approx(brute)
    assert reg["r2_loo"] < reg["r2"]
    assert reg["r2_adjusted"] == pytest.approx(1 - (1 - reg["r2"]) * 14 / 11)


def test_loo_is_undefined_when_one_run_alone_determines_a_coefficient():
    rng = np.random.default_rng(4)
    occupancy = np.column_stack([rng.dirichlet([3, 3], 10), np.zeros(10)])
    occupancy[0] = [0.5, 0.3, 0.2]  # only run 0 visits state 2: its leverage is 1
    reg = occupancy_regression(occupancy, rng.normal(100, 10, 10))
    assert reg["coef"][2] is not None and reg["r2"] is not None
    assert reg["r2_loo"] is None and "undefined (a run alone" in reg["message"]


def test_censored_runs_are_left_out_of_the_regression_and_counted():
    rng = np.random.default_rng(3)
    occupancy = rng.dirichlet(np.ones(3), size=12)
    target = rng.normal(100, 10, 12)
    target[[2, 5]] = np.nan  # never converged
    reg = occupancy_regression(occupancy, target)
    assert reg["n_runs"] == 10 and reg["n_censored"] == 2
    assert "2 censored runs" in reg["message"]
    assert reg == occupancy_regression(
        occupancy[np.isfinite(target)], target[np.isfinite(target)]
    ) | {
        "n_censored": 2,
        "message": reg["message"],
    }


def test_module_constants_are_documented_values():
    # The docs quote these; a change must change docs/method.md too.
    assert (evidence.ALPHA, evidence.MIN_RUNS_PER_SIDE, evidence.N_BOOTSTRAP) == (0.05, 4, 1000)


# ---------------------------------------------------------------- CLI text


def test_cli_lines_show_the_evidence_or_say_why_not():
    from trainmap.analysis.cli import format_detour, format_regression

    visits, times, events = _groups([150, 160, 155, 170, 165, 158], [100, 104, 98, 110, 102, 99])
    line = format_detour(detour_tests(visits, times, events)[0])
    assert line.startswith("detour test: DETOUR (log-rank p ") and "adjusted" in line
    assert "delay +" in line and "95% interval [+" in line
    visits, times, events = _groups([300, 310], [100, 104, 98, 110, 102, 99])
    line = format_detour(detour_tests(visits, times, events)[0])
    assert "not enough runs to tell: 2 runs visit it" in line
    assert format_detour({}) is None  # a fit saved before the test: nothing invented

    rng = np.random.default_rng(1)
    saturated = occupancy_regression(rng.dirichlet(np.ones(8), 7), rng.normal(100, 10, 7))
    line = format_regression(saturated, censored=0)
    assert "saturated: 7 parameters for 7 runs, need >= 8 runs" in line and "R² 1" not in line
    reg = occupancy_regression(rng.dirichlet(np.ones(3), 20), rng.normal(100, 10, 20))
    line = format_regression(reg, censored=1)
    assert f"R² {reg['r2']:.3f} in-sample, {reg['r2_loo']:.3f} leave-one-out" in line
    assert "1 censored run left out" in line
