"""The reproduction report's rules (trainer/reproduce.py) on fits with known answers.

The fits are built from synthetic truth (test_app_support.truth_fit), so the
fork, the drivers and the paths are known; the report must reach the verdict
its written rule gives, and say why.
"""

from __future__ import annotations

from test_app_support import truth_fit

from trainmap.analysis.synthetic import make_synthetic
from trainmap.trainer import reproduce


def forking_fit(selected_n=4, counts=None, edge_stability=None):
    """Runs fork out of S0: 0 -> 1 -> 3, and 0 -> 2 -> 1 -> 3 (the synthetic default)."""
    fit = truth_fit(make_synthetic(n_runs=8, n_checkpoints=120, seed=3))
    fit.selected_n = selected_n
    fit.bootstrap = {
        "n": selected_n,
        "n_resamples": sum((counts or {}).values()),
        "selected_n_counts": counts or {},
        "edge_stability": edge_stability or {},
    }
    return fit


def linear_fit():
    fit = truth_fit(make_synthetic(n_runs=8, n_checkpoints=120, seed=3, branches=[[0, 1, 2, 3]]))
    fit.bootstrap = {}
    return fit


def test_state_count_verdict_needs_the_bootstrap_to_agree():
    check = reproduce.claim_states("x", "≈ 4", 3, 5)
    agree = check({"x": forking_fit(counts={"4": 40, "6": 10})})
    assert agree.verdict == "reproduced" and "80% of resamples" in agree.why
    assert "4: 40, 6: 10" in agree.result
    split = check({"x": forking_fit(counts={"4": 15, "7": 35})})
    assert split.verdict == "partly"
    off = check({"x": forking_fit(counts={"7": 50})})
    assert off.verdict == "partly"  # the pick is inside, the resamples are not
    fit = forking_fit(counts={})
    assert check({"x": fit}).verdict == "partly" and "no bootstrap" in check({"x": fit}).why
    fit.selected_n = 2
    assert check({"x": fit}).verdict == "not"


def test_fork_is_reproduced_only_when_both_branches_are_stable():
    stable = forking_fit(counts={"4": 50}, edge_stability={"0->1": 0.9, "0->2": 0.8})
    claim = reproduce.claim_fork({"modadd-quick": stable})
    assert claim.verdict == "reproduced"
    assert (
        "S0→S1" in claim.result and "S0→S2" in claim.result and "80% of resamples" in claim.result
    )
    shaky = forking_fit(counts={"4": 50}, edge_stability={"0->1": 0.9, "0->2": 0.1})
    assert reproduce.claim_fork({"modadd-quick": shaky}).verdict == "partly"
    assert reproduce.claim_fork({"modadd-quick": linear_fit()}).verdict == "not"


def test_linear_map_and_detour_counts():
    fits = {"modadd-quick": forking_fit(), "modadd_ln-quick": linear_fit()}
    assert reproduce.claim_linear(fits).verdict == "reproduced"
    assert reproduce.claim_linear({"modadd_ln-quick": forking_fit()}).verdict == "partly"
    # truth_fit marks a state visited by some runs as a detour; the linear fit has none
    fewer = reproduce.claim_fewer_detours(fits)
    assert fewer.verdict == "reproduced" and "1 without LayerNorm (S2), 0 with" in fewer.result


def test_regression_claim_uses_the_out_of_sample_r2():
    fit = forking_fit()
    tmap = fit.map()
    tmap.regression = {"r2": 0.97, "r2_loo": 0.4, "n_runs": 8, "saturated": False}
    assert reproduce.claim_r2({"modadd-quick": fit}).verdict == "not"
    tmap.regression = {"r2": 0.97, "r2_loo": 0.93, "n_runs": 8, "saturated": False}
    assert reproduce.claim_r2({"modadd-quick": fit}).verdict == "reproduced"
    tmap.regression = {"r2": 1.0, "saturated": True, "message": "saturated: 5 parameters, 4 runs"}
    claim = reproduce.claim_r2({"modadd-quick": fit})
    assert claim.verdict == "not" and "saturated" in claim.result


def test_report_has_a_row_per_claim_and_the_costs():
    fits = {
        "modadd-quick": forking_fit(counts={"4": 50}, edge_stability={"0->1": 1.0, "0->2": 1.0}),
        "modadd_ln-quick": linear_fit(),
    }
    claims = reproduce.evaluate_claims(fits)
    assert len(claims) == len(reproduce.CLAIMS)
    missing = [c for c in claims if c.why == "experiment missing"]
    assert len(missing) == 2  # parity and digits were not fitted here
    costs = {
        "modadd": {"seconds": 1.2, "epochs_timed": 3, "paper_epochs": 20000, "eval_every": 100}
    }
    text = reproduce.render(claims, fits, {"modadd-quick": 75.0}, costs, "0-7", "cmd", "here")
    assert text.count("| **") == len(claims)
    assert "| modadd | 3 of 20000 | 0.400 | 2.2 h | 44.4 h |" in text
    assert "| modadd-quick | 8 | 75 s |" in text and "| modadd_ln-quick | 8 | reused |" in text
