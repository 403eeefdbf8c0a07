"""The statistics behind a map's claims: detour tests and the occupancy regression.

docs/method.md section 4. Pure functions on plain arrays (numpy and scipy, no torch,
no HMM), so each can be checked against a hand computation.

Detours. A run's *convergence time* is the first epoch at which its eval
accuracy reaches the threshold; a run that never reaches it is *censored* at
its last epoch: we know only that it converges later than that, if ever.
Dropping such runs would hide exactly the slow runs a detour is about, and
treating their last epoch as a convergence epoch would make them look fast.
The log-rank test compares two groups' time-to-event distributions using each
censored run for as long as it is observed, is the standard test for that, and
needs no assumption about the shape of the distributions. For every state
that some runs visit and others do not, :func:`detour_tests` compares the
visiting runs with the others, corrects the p-values over the states tested in
the map (Holm, which controls the family-wise error rate without assuming the
tests independent: the groups of different states share runs), and reports the
delay in epochs as the difference of Kaplan-Meier medians with a bootstrap
interval.

Regression. :func:`occupancy_regression` regresses the convergence epoch of the
converged runs on their state occupancies. Occupancies sum to one, so with an
intercept one state must be left out (the reference); the fit reports
in-sample, adjusted and leave-one-out R^2 and refuses to present a saturated
fit (as many parameters as runs) as a result.
"""

from __future__ import annotations

from collections.abc import Sequence

import numpy as np
from scipy import stats

TEST_NAME = "log-rank"
# Significance level of the detour test, after Holm correction over the states
# tested in one map. The conventional 5%: a map flags a false detour in at most
# 1 of 20 null experiments.
ALPHA = 0.05
# Runs needed on each side (visiting / not visiting) before a state is tested.
# With 3 runs on a side even a perfect separation cannot be significant: the
# most extreme of the C(6, 3) = 20 equally likely orderings has two-sided
# permutation p = 2/20 = 0.1. With 4 a side it is 2/70 = 0.029 < ALPHA, so 4 is
# the smallest group size for which a rank-based test can give evidence at all;
# below it the log-rank's chi-square approximation only invents precision.
MIN_RUNS_PER_SIDE = 4
N_BOOTSTRAP = 1000
BOOTSTRAP_SEED = 0
CI_LEVEL = 0.95


# ---------------------------------------------------------------- survival


def logrank_test(times, events, group) -> tuple[float, float, float]:
    """Two-sample log-rank test.

    Parameters
    ----------
    times : time of each run (convergence epoch, or last epoch if censored).
    events : True where the run converged at ``times``, False where censored.
    group : True for the runs of the first group.

    Returns ``(chi2, p_value, observed_minus_expected)``: the statistic (1 df),
    its two-sided p-value, and O - E for the first group (negative: the first
    group converges later than the pooled rate predicts). At each distinct
    event time the at-risk runs are those with ``times >= t``, so a run
    censored at t counts as at risk there (the usual convention). Ties use the
    hypergeometric variance. Without any variance (no events, or every event at
    one time with nobody else at risk) there is nothing to test: p = 1.
    """
    times = np.asarray(times, dtype=float)
    events = np.asarray(events, dtype=bool)
    group = np.asarray(group, dtype=bool)
    event_times = np.unique(times[events])
    at_risk = times[None, :] >= event_times[:, None]  # (distinct event times, runs)
    dies = events[None, :] & (times[None, :] == event_times[:, None])
    n = at_risk.sum(axis=1).astype(float)
    n1 = (at_risk & group).sum(axis=1).astype(float)
    d = dies.sum(axis=1).astype(float)
    d1 = (dies & group).sum(axis=1).astype(float)
    expected = d * n1 / n
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.where(n > 1, d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1), 0.0)
    o_minus_e = float((d1 - expected).sum())
    v = float(variance.sum())
    if v <= 0:
        return 0.0, 1.0, o_minus_e
    chi2 = o_minus_e**2 / v
    return float(chi2), float(stats.chi2.sf(chi2, 1)), o_minus_e


def _km_medians(times: np.ndarray, events: np.ndarray, weights: np.ndarray) -> np.ndarray:
    """Kaplan-Meier median for each row of ``weights`` (copies of each run).

    A row of counts describes one (re)sample of the runs, so a bootstrap of B
    resamples is one call. The median is the first time at which the estimated
    share of runs not yet converged is <= 1/2; NaN where it never gets there
    (more than half censored).
    """
    weights = np.atleast_2d(weights).astype(float)
    grid, inverse = np.unique(times, return_inverse=True)
    n_rows = len(weights)
    d = np.zeros((n_rows, len(grid)))
    total = np.zeros((n_rows, len(grid)))
    np.add.at(d.T, inverse[events], weights[:, events].T)
    np.add.at(total.T, inverse, weights.T)
    at_risk = np.cumsum(total[:, ::-1], axis=1)[:, ::-1]
    with np.errstate(invalid="ignore", divide="ignore"):
        factor = np.where(at_risk > 0, 1.0 - d / at_risk, 1.0)
    survival = np.cumprod(factor, axis=1)
    reached = survival <= 0.5 + 1e-12
    first = np.argmax(reached, axis=1)
    return np.where(reached.any(axis=1), grid[first], np.nan)


def km_median(times, events) -> float | None:
    """Kaplan-Meier median time; None when more than half the runs are censored before it."""
    times = np.asarray(times, dtype=float)
    if len(times) == 0:
        return None
    value = _km_medians(times, np.asarray(events, dtype=bool), np.ones(len(times)))[0]
    return None if np.isnan(value) else float(value)


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm-adjusted p-values (step-down, monotone, capped at 1)."""
    p = np.asarray(p_values, dtype=float)
    m = len(p)
    order = np.argsort(p, kind="stable")
    adjusted = np.empty(m)
    running = 0.0
    for rank, i in enumerate(order):
        running = max(running, min(1.0, (m - rank) * p[i]))
        adjusted[i] = running
    return adjusted.tolist()


def _bootstrap_medians(times, events, side, n_resamples, rng):
    """KM medians of ``n_resamples`` resamples (with replacement) of the runs in ``side``.

    Returns ``(median, floor)`` per resample: the median (NaN where undefined)
    and a lower bound for it, the last epoch observed in the resample (while
    more than half are still unconverged the median lies beyond every epoch
    seen).
    """
    idx = np.flatnonzero(side)
    picks = idx[rng.integers(0, len(idx), size=(n_resamples, len(idx)))]
    counts = np.zeros((n_resamples, len(times)))
    np.add.at(counts, (np.arange(n_resamples)[:, None], picks), 1.0)
    return _km_medians(times, events, counts), times[picks].max(axis=1)


def delay_interval(
    times, events, group, n_resamples=N_BOOTSTRAP, seed=BOOTSTRAP_SEED, level=CI_LEVEL
) -> list[float | None]:
    """Bootstrap percentile interval of the KM-median delay (group minus the rest).

    Runs are resampled with replacement within each group (group sizes fixed).
    Where a resample's median is undefined (more than half censored) only a
    floor is known: its last observed epoch. The lower bound then uses the
    floor for the group and +inf for the rest, the upper bound the reverse, so
    each bound is conservative; a bound is None when it is unbounded.
    """
    times = np.asarray(times, dtype=float)
    events = np.asarray(events, dtype=bool)
    group = np.asarray(group, dtype=bool)
    rng = np.random.default_rng(seed)
    m_in, floor_in = _bootstrap_medians(times, events, group, n_resamples, rng)
    m_out, floor_out = _bootstrap_medians(times, events, ~group, n_resamples, rng)
    defined_in, defined_out = ~np.isnan(m_in), ~np.isnan(m_out)
    lowest = np.where(defined_in, m_in, floor_in) - np.where(defined_out, m_out, np.inf)
    highest = np.where(defined_in, m_in, np.inf) - np.where(defined_out, m_out, floor_out)
    tail = (1 - level) / 2
    lo = np.quantile(lowest, tail, method="lower")
    hi = np.quantile(highest, 1 - tail, method="higher")
    return [float(lo) if np.isfinite(lo) else None, float(hi) if np.isfinite(hi) else None]


# ---------------------------------------------------------------- detours


def _verdict_base(n_visit, n_other, cens_visit, cens_other, alpha):
    return {
        "verdict": "no_detour",
        "test": TEST_NAME,
        "n_visiting": int(n_visit),
        "n_other": int(n_other),
        "n_censored_visiting": int(cens_visit),
        "n_censored_other": int(cens_other),
        "p_value": None,
        "p_adjusted": None,
        "delay": None,
        "delay_ci": None,
        "alpha": float(alpha),
        "message": "",
    }


def _bound(value) -> str:
    return "unbounded" if value is None else f"{value:+.0f}"


def detour_tests(
    visits: np.ndarray,
    times,
    events,
    *,
    alpha: float = ALPHA,
    min_runs: int = MIN_RUNS_PER_SIDE,
    n_resamples: int = N_BOOTSTRAP,
    seed: int = BOOTSTRAP_SEED,
) -> list[dict]:
    """The detour verdict of every state (docs/method.md 4), one dict per state: StateInfo.detour.

    Parameters
    ----------
    visits : bool array (runs, states), True where a run's path visits the state.
    times : per run, the convergence epoch, or the last epoch if it never converged.
    events : per run, True if it converged (False: censored at ``times``).

    A state visited by some runs but not all, with at least ``min_runs`` runs on
    each side, is tested (log-rank, visiting vs the rest); the p-values of the
    states tested are Holm-adjusted together. It is a ``"detour"`` when the
    adjusted p is below ``alpha`` and the visiting runs converge later: a
    positive KM-median delay, or, where a median is undefined because most runs
    of a side never converge, fewer convergences among visitors than the
    pooled rate predicts (log-rank O - E < 0).
    """
    visits = np.asarray(visits, dtype=bool)
    times = np.asarray(times, dtype=float)
    events = np.asarray(events, dtype=bool)
    n_runs, n_states = visits.shape
    out, pending = [], {}  # pending: state tested -> (later?, median visiting, median other)
    for k in range(n_states):
        v = visits[:, k]
        n_visit, n_other = int(v.sum()), int((~v).sum())
        info = _verdict_base(
            n_visit, n_other, int((v & ~events).sum()), int((~v & ~events).sum()), alpha
        )
        if n_visit == 0:
            info.update(verdict="no_runs", message="no run visits this state")
        elif n_other == 0:
            info.update(
                verdict="all_runs", message=f"all {n_runs} runs visit it: nothing to compare"
            )
        elif min(n_visit, n_other) < min_runs:
            info.update(
                verdict="not_enough_runs",
                message=(
                    f"not enough runs to tell: {n_visit} run{'s' * (n_visit != 1)} visit it, "
                    f"{n_other} do{'es' * (n_other == 1)} not; need >= {min_runs} on each side"
                ),
            )
        elif not events.any():
            info.update(
                verdict="not_enough_runs",
                message=f"not enough runs to tell: none of the {n_runs} runs converged",
            )
        else:
            _, p, o_minus_e = logrank_test(times, events, v)
            m_visit, m_other = km_median(times[v], events[v]), km_median(times[~v], events[~v])
            delay = None if m_visit is None or m_other is None else m_visit - m_other
            rng_seed = [seed, k]
            info.update(
                p_value=p,
                delay=delay,
                delay_ci=delay_interval(times, events, v, n_resamples, rng_seed),
            )
            later = delay > 0 if delay is not None else o_minus_e < 0
            pending[k] = (later, m_visit, m_other)
        out.append(info)

    tested = sorted(pending)
    for k, p_adj in zip(tested, holm([out[k]["p_value"] for k in tested])):
        info = out[k]
        info["p_adjusted"] = p_adj
        later, m_visit, m_other = pending[k]
        lo, hi = info["delay_ci"]
        delay = "undefined" if info["delay"] is None else f"{info['delay']:+.0f}"
        evidence = (
            f"{TEST_NAME} p = {info['p_value']:.2g}, Holm-adjusted over {len(tested)} "
            f"state{'s' * (len(tested) != 1)} {p_adj:.2g}; median convergence epoch "
            f"{_median_text(m_visit)} visiting vs {_median_text(m_other)} not; delay {delay} "
            f"epochs, {CI_LEVEL:.0%} interval [{_bound(lo)}, {_bound(hi)}]"
        )
        if p_adj < alpha and later:
            info.update(
                verdict="detour", message=f"detour: visiting runs converge later ({evidence})"
            )
        elif p_adj < alpha:
            info.update(message=f"no detour: visiting runs do not converge later ({evidence})")
        else:
            info.update(message=f"no detour: no significant difference at {alpha:g} ({evidence})")
    return out


def _median_text(value) -> str:
    return "not reached" if value is None else f"{value:.0f}"


# ---------------------------------------------------------------- regression


def _independent_columns(design: np.ndarray, candidates: Sequence[int], tol: float) -> list[int]:
    """Greedily keep the candidate columns that raise the rank of the design."""
    kept = []
    for j in candidates:
        trial = design[:, [0, *kept, j]]
        if np.linalg.matrix_rank(trial, tol=tol) == trial.shape[1]:
            kept.append(j)
    return kept


def occupancy_regression(occupancy: np.ndarray, target: np.ndarray) -> dict:
    """Least squares of convergence epoch on state occupancy, without overclaiming.

    Parameters
    ----------
    occupancy : (runs, states), each row a run's share of checkpoints per state.
    target : convergence epoch per run; NaN for censored runs, which are left
        out (an epoch they never reached cannot be regressed on) and counted.

    Occupancies sum to one, so an intercept plus every state is singular. The
    most occupied state (over the runs used) is the reference and is dropped:
    the intercept is the convergence epoch predicted for a run that spends all
    its time there, and ``coef[k]`` the change in epochs per unit of occupancy
    moved from the reference to state k (0 for the reference itself). Further
    columns that add no rank (a state no run used visits, or occupancies tied
    to others) are dropped too; their coef is None. The rank is checked
    explicitly, and df_model / df_resid count only the parameters kept.

    A fit with as many parameters as runs (df_resid < 1) is *saturated*: it
    fits any data perfectly, so R^2 and the F-test are withheld (None) and the
    message says how many runs are needed. Otherwise the result holds in-sample
    R^2, adjusted R^2, leave-one-out R^2 (1 - PRESS / SST, with PRESS from the
    hat matrix: exact for least squares, no refits) and the F-test.
    """
    occupancy = np.asarray(occupancy, dtype=float)
    target = np.asarray(target, dtype=float)
    n_states = occupancy.shape[1]
    keep = np.isfinite(target)
    n_censored = int((~keep).sum())
    occ, y = occupancy[keep], target[keep]
    m = len(y)
    result = {
        "coef": {k: None for k in range(n_states)},
        "intercept": None,
        "r2": None,
        "r2_adjusted": None,
        "r2_loo": None,
        "p_value": None,
        "f_stat": None,
        "n_runs": int(m),
        "n_censored": n_censored,
        "reference_state": None,
        "n_params": 0,
        "df_model": 0,
        "df_resid": 0,
        "saturated": True,
        "message": "",
    }
    censored_note = (
        f"; {n_censored} censored run{'s' * (n_censored != 1)} (never reached the threshold) "
        "left out"
        if n_censored
        else ""
    )
    if m == 0:
        result["message"] = f"no converged run to regress on{censored_note}"
        return result

    reference = int(np.argmax(occ.sum(axis=0)))
    design = np.column_stack([np.ones(m), occ])  # column j + 1 is state j
    # Relative tolerance: an exact dependency (occupancies summing to one, an
    # unvisited state) leaves a singular value at rounding level, far below
    # any genuine column.
    tol = 1e-10 * np.linalg.norm(design, 2)
    others = sorted((k for k in range(n_states) if k != reference), key=lambda k: -occ[:, k].sum())
    kept = _independent_columns(design, [k + 1 for k in others], tol=tol)
    X = design[:, [0, *kept]]
    n_params = X.shape[1]  # full column rank by construction: lstsq is the unique solution
    coef, *_ = np.linalg.lstsq(X, y, rcond=None)
    result["intercept"] = float(coef[0])
    result["coef"][reference] = 0.0
    for j, c in zip(kept, coef[1:]):
        result["coef"][j - 1] = float(c)
    df_model, df_resid = n_params - 1, m - n_params
    result.update(
        reference_state=reference,
        n_params=int(n_params),
        df_model=int(df_model),
        df_resid=int(df_resid),
        saturated=bool(df_resid < 1),
    )
    dropped = n_states - 1 - len(kept)
    dropped_note = (
        f"; {dropped} more state{'s' * (dropped != 1)} dropped (no independent occupancy)"
        if dropped
        else ""
    )
    what = (
        f"{n_params} parameter{'s' * (n_params != 1)} (intercept + {df_model} states; "
        f"reference state {reference}) for {m} converged run{'s' * (m != 1)}"
    )
    if result["saturated"]:
        result["message"] = (
            f"saturated: {what}, need >= {n_params + 1} runs; "
            f"R² and p are not results{dropped_note}{censored_note}"
        )
        return result

    fitted = X @ coef
    resid = y - fitted
    sst = float(((y - y.mean()) ** 2).sum())
    sse = float((resid**2).sum())
    if sst <= 0:
        result["message"] = (
            f"every converged run converged at the same epoch: nothing to explain ({what})"
            f"{dropped_note}{censored_note}"
        )
        return result
    r2 = 1.0 - sse / sst
    result["r2"] = r2
    result["r2_adjusted"] = 1.0 - (1.0 - r2) * (m - 1) / df_resid
    # Leave-one-out residuals e_i / (1 - h_ii), h the hat matrix X (X'X)^-1 X'.
    q, _ = np.linalg.qr(X)
    leverage = (q**2).sum(axis=1)
    if np.all(leverage < 1 - 1e-9):
        press = float(((resid / (1.0 - leverage)) ** 2).sum())
        result["r2_loo"] = 1.0 - press / sst
    if df_model > 0:
        if sse <= 0:
            result.update(f_stat=None, p_value=0.0)
        else:
            f_stat = ((sst - sse) / df_model) / (sse / df_resid)
            result.update(
                f_stat=float(f_stat), p_value=float(stats.f.sf(f_stat, df_model, df_resid))
            )
    loo = (
        "undefined (a run alone determines a coefficient)"
        if result["r2_loo"] is None
        else f"{result['r2_loo']:.3f}"
    )
    result["message"] = (
        f"{what}: R² {r2:.3f} in-sample, {loo} leave-one-out{dropped_note}{censored_note}"
    )
    return result
