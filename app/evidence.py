"""The evidence behind a number, in words: detour tests, stability, regression, n.

A training map shows states, edges and a chosen n; each of those is a finding
only as far as the statistics behind it go. These pure functions turn the
analysis's evidence (``StateInfo.detour``, ``TrainingMap.regression``,
``FitResult.bootstrap`` and ``FitResult.selection``; keys in docs/method.md)
into the sentences the dashboard shows, so that every page words the same
number the same way and tests can check the words without a browser.

Every function accepts the empty dict an older saved fit has, and then says
that the evidence was not computed rather than inventing it.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

# Opacity of a node or edge found in none / all of the bootstrap resamples:
# unstable parts fade but stay visible (and hoverable).
MIN_OPACITY, MAX_OPACITY = 0.25, 1.0


def _number(value) -> float | None:
    try:
        number = float(value)
    except (TypeError, ValueError):
        return None
    return number if math.isfinite(number) else None


def p_words(p) -> str:
    p = _number(p)
    if p is None:
        return "p n/a"
    return "p < 0.001" if p < 0.001 else f"p = {p:.3f}"


def interval_words(interval) -> str:
    """A bootstrap interval; an unbounded side (None) is said as such."""
    if not interval or len(interval) != 2:
        return "no interval"
    lo, hi = (_number(v) for v in interval)
    lo_text = f"{lo:+.0f}" if lo is not None else "unbounded"
    hi_text = f"{hi:+.0f}" if hi is not None else "unbounded"
    return f"95% interval {lo_text} to {hi_text}"


def detour_words(state_label: str, detour: Mapping | None) -> str:
    """One sentence on whether a state is a detour, with its test."""
    if not detour:
        return "Detour test not computed for this fit (refit with a current trainmap)."
    verdict = detour.get("verdict")
    n_v, n_o = detour.get("n_visiting", 0), detour.get("n_other", 0)
    if verdict in ("detour", "no_detour"):
        delay = _number(detour.get("delay"))
        if delay is None:
            effect = "the median delay is undefined (too many runs never converge)"
        else:
            direction = "later" if delay > 0 else "earlier"
            effect = (
                f"runs visiting it converge {abs(delay):.0f} epochs {direction} "
                f"(median; {interval_words(detour.get('delay_ci'))})"
            )
        test = (
            f"{detour.get('test', 'test')} {p_words(detour.get('p_adjusted'))} after correction "
            f"for the states tested; {n_v} runs visit it, {n_o} do not"
        )
        head = "Detour" if verdict == "detour" else "Not a detour at the tested level"
        return f"{head}: {effect}; {test}."
    message = detour.get("message")
    if message:
        return f"{state_label}: {message}"
    if verdict == "all_runs":
        return f"Every run visits {state_label}: not a detour."
    if verdict == "no_runs":
        return f"No run is decoded in {state_label}."
    return "Detour test: not enough runs to tell."


def stability_share(stability: Mapping | None, key) -> float | None:
    """The share of bootstrap resamples in which a state or edge was found."""
    if not stability:
        return None
    return _number(stability.get(str(key)))


def stability_words(share: float | None, n_resamples: int | None) -> str:
    if share is None or not n_resamples:
        return "Stability: not computed (no bootstrap for this n)."
    found = round(share * n_resamples)
    return f"Found in {found} of {n_resamples} bootstrap resamples of the runs ({share:.0%})."


def opacity(share: float | None) -> float:
    """Opacity on the map: unstable parts fade; parts never resampled stay solid."""
    if share is None:
        return MAX_OPACITY
    share = min(max(share, 0.0), 1.0)
    return round(MIN_OPACITY + (MAX_OPACITY - MIN_OPACITY) * share, 3)


def regression_words(regression: Mapping | None) -> str:
    """Convergence epoch regressed on state occupancy: in-sample and out-of-sample."""
    if not regression:
        return "Regression of convergence on occupancy: not computed."
    head = "Convergence epoch ~ state occupancy"
    if "r2_loo" not in regression and not regression.get("saturated"):
        return f"{head}: this older fit has no out-of-sample R²; refit to see one."
    if regression.get("saturated"):
        return f"{head}: {regression.get('message') or 'saturated, not a result'}"
    r2, loo = _number(regression.get("r2")), _number(regression.get("r2_loo"))
    parts = [f"in-sample R² {r2:.2f}" if r2 is not None else "in-sample R² n/a"]
    parts.append(f"leave-one-out R² {loo:.2f}" if loo is not None else "leave-one-out R² n/a")
    parts.append(f"F-test {p_words(regression.get('p_value'))}")
    parts.append(f"{regression.get('n_runs', 0)} converged runs")
    text = f"{head}: " + ", ".join(parts) + "."
    if regression.get("message"):
        text += f" {regression['message']}"
    return text


def n_distribution_words(bootstrap: Mapping | None, selected_n: int) -> str:
    """How often resampled runs select each n, against the n shown."""
    if not bootstrap:
        return "Uncertainty of n: no bootstrap saved with this fit."
    counts = {int(k): int(v) for k, v in (bootstrap.get("selected_n_counts") or {}).items()}
    total = int(bootstrap.get("n_resamples") or sum(counts.values()))
    if not counts or not total:
        return f"Uncertainty of n: {bootstrap.get('message') or 'not enough runs to tell'}"
    ranked = ", ".join(f"n = {n}: {c}" for n, c in sorted(counts.items()))
    share = counts.get(int(selected_n), 0) / total
    return (
        f"Bootstrap over runs ({total} resamples) selects {ranked}; "
        f"the n shown, {selected_n}, in {share:.0%}."
    )


def selection_words(selection: Mapping | None) -> str | None:
    """The selection's own warning (e.g. n at the largest tried), or None."""
    if not selection:
        return None
    return selection.get("message") or None
