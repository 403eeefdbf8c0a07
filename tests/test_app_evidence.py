"""The dashboard's words for evidence (app/evidence.py): pure, no server or browser."""

from __future__ import annotations

from trainmap.app import evidence

DETOUR = {
    "verdict": "detour",
    "test": "log-rank",
    "n_visiting": 9,
    "n_other": 15,
    "n_censored_visiting": 1,
    "n_censored_other": 0,
    "p_value": 0.0002,
    "p_adjusted": 0.0008,
    "delay": 96.0,
    "delay_ci": [40.0, None],
    "alpha": 0.05,
    "message": "",
}


def test_detour_words_carry_test_p_delay_and_interval():
    text = evidence.detour_words("S3", DETOUR)
    assert text.startswith("Detour:")
    assert "96 epochs later" in text and "+40 to unbounded" in text
    assert "log-rank p < 0.001" in text and "9 runs visit it, 15 do not" in text


def test_no_detour_and_earlier_runs_are_worded_as_such():
    text = evidence.detour_words(
        "S1", {**DETOUR, "verdict": "no_detour", "p_adjusted": 0.31, "delay": -12.0}
    )
    assert text.startswith("Not a detour") and "12 epochs earlier" in text and "p = 0.310" in text


def test_not_enough_runs_uses_the_analysis_message_and_old_fits_say_not_computed():
    message = "not enough runs to tell: 2 runs visit it, need >= 4 on each side"
    text = evidence.detour_words("S2", {"verdict": "not_enough_runs", "message": message})
    assert text == f"S2: {message}"
    assert "not computed" in evidence.detour_words("S2", {})


def test_stability_words_and_opacity():
    assert evidence.stability_share({"0->1": 0.9}, "0->1") == 0.9
    assert evidence.stability_share({}, "0->1") is None
    assert evidence.stability_words(0.94, 50) == (
        "Found in 47 of 50 bootstrap resamples of the runs (94%)."
    )
    assert "not computed" in evidence.stability_words(None, 50)
    assert evidence.opacity(None) == evidence.MAX_OPACITY
    assert evidence.opacity(0.0) == evidence.MIN_OPACITY
    assert evidence.opacity(1.0) == evidence.MAX_OPACITY
    assert evidence.opacity(0.2) < evidence.opacity(0.8)


def test_regression_words_in_and_out_of_sample_or_saturated():
    good = {"r2": 0.89, "r2_loo": 0.59, "p_value": 0.004, "n_runs": 24, "saturated": False}
    text = evidence.regression_words(good)
    assert (
        "in-sample R² 0.89" in text and "leave-one-out R² 0.59" in text and "24 converged" in text
    )
    saturated = {
        "r2": 1.0,
        "r2_loo": None,
        "saturated": True,
        "message": "saturated: 8 parameters for 7 runs, need >= 10 runs",
    }
    text = evidence.regression_words(saturated)
    assert "saturated: 8 parameters for 7 runs" in text and "R² 1.00" not in text
    # an old fit without out-of-sample R² shows no bare in-sample number
    old = evidence.regression_words({"r2": 0.99, "p_value": 0.01})
    assert "0.99" not in old and "refit" in old


def test_n_distribution_words():
    boot = {"n_resamples": 50, "selected_n_counts": {"3": 31, "4": 19}}
    text = evidence.n_distribution_words(boot, 3)
    assert "50 resamples" in text and "n = 3: 31, n = 4: 19" in text and "62%" in text
    short = {"n_resamples": 0, "message": "not enough runs to tell: 5 runs, need >= 8"}
    assert "need >= 8" in evidence.n_distribution_words(short, 3)
    assert "no bootstrap" in evidence.n_distribution_words({}, 3)


def test_selection_words():
    assert evidence.selection_words({}) is None
    assert evidence.selection_words({"message": "n = 8 is the largest tried"}) == (
        "n = 8 is the largest tried"
    )
