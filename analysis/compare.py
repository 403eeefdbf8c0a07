"""Two or more experiments side by side: matched states, convergence, detours, transitions.

"What changed when I added LayerNorm?" needs the maps of both experiments in one
vocabulary. :func:`compare_experiments` loads each experiment's saved fit (it
never fits: an experiment without one gets the exact ``trainmap fit`` command)
and :func:`compare_fits` does the work on fits already in memory.

How states are matched, and why
-------------------------------
Each experiment keeps its own fit (separate fits, not one joint HMM): its map
is then exactly the one its own page shows, the number of states stays each
experiment's own finding (LayerNorm may really remove a phase), and comparing
needs no refit. The price is that state numbers are per fit, so states are
matched afterwards by their means, on a common scale:

1. Each fit's state means are in that fit's z units. A pooled fit stores the
   per-feature center and scale it used, so its means go back to raw feature
   units exactly (``mean * scale + center``).
2. Raw units differ wildly between features, so they are re-standardised with
   one pooled mean and sd per feature over all runs of all the experiments
   compared. That pooled sd is computed from each fit's stored center, scale
   and number of checkpoints (the within- plus between-experiment variance):
   exact, and no run file is read again.
3. The distance between two states is the root-mean-square difference of
   their means over the shared features, in pooled sd units ("on average
   per feature, the two states differ by d sds").
4. ``scipy.optimize.linear_sum_assignment`` pairs the states of two
   experiments with the smallest total distance (each state used at most
   once). A pair within ``threshold`` (default :data:`MATCH_THRESHOLD`) is
   *the same* phase: as close as one state fitted twice on different runs.
   A pair farther apart is still *similar* when the two states are closer to
   each other than either is to any other state of its own experiment (the
   experiments pass through corresponding phases, at different values);
   otherwise it is no match, and both states exist in one experiment only.
   With three or more experiments they join one at a time, each matched
   against the groups formed so far (by the mean of the group's members);
   with two this is the plain assignment.

A fit z-scored per run (the paper's normalisation) has no common scale: each
run has its own center and scale, so state means cannot go back to raw
units. Then states are matched on their z-unit means directly, and the
result says so (``scale == "z"``): such a match compares shapes of
trajectories, not levels. A user may ask for that too (``match_on="shapes"``):
when one experiment's weights are simply larger throughout (LayerNorm,
another width), no state matches on levels, yet the phases may follow the
same course relative to each experiment's own mean and sd.

Different feature columns: states are matched on the features every
experiment has; the others are listed. No shared feature is an error.

Convergence
-----------
Each run's convergence epoch comes from its fit (first checkpoint at the
fit's accuracy threshold); runs that never get there are censored at their
last epoch, as in the detour test (:mod:`analysis.evidence`). Each experiment
is compared with the first by the Gehan-Breslow generalised Wilcoxon test
(Holm-corrected when there are more than two experiments) and by the
difference of Kaplan-Meier medians with a bootstrap interval. Fewer than
``MIN_RUNS_PER_SIDE`` runs in an experiment: "not enough runs to tell".

Why not the log-rank test of the detour test: the log-rank weights every
convergence equally and is built for hazards in a constant ratio. Comparing
two training setups, that rarely holds: the fast setup converges early and
its few runs that never converge then have no chance left, while the slow
setup's runs converge later (the hazards cross). On the LayerNorm example
(7 of 8 runs per experiment converge, every converged LayerNorm run before
every converged run without it) the log-rank gives p = 0.076 and its exact
permutation version 0.096: the statistic, not its approximation, loses the
difference. Gehan's test weights each convergence by the runs still at risk,
i.e. it compares runs pairwise ("which converged first"; a run censored at
its last epoch counts as slower than every convergence before that epoch),
the censored form of the Wilcoxon rank-sum test: p = 0.006 there. It is the
test for "which setup converges sooner"; the detour test keeps the log-rank.

Everything returned is plain data (:class:`Comparison`), so the CLI prints it
and the dashboard draws it. This module must not import torch.
"""

from __future__ import annotations

import itertools
import os
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np
from scipy import stats
from scipy.optimize import linear_sum_assignment

from trainmap.analysis.evidence import (
    ALPHA,
    CI_LEVEL,
    MIN_RUNS_PER_SIDE,
    delay_interval,
    holm,
    km_median,
)

# Two states whose means differ by more than this (root-mean-square over the
# shared features, in pooled sd units) are not the same phase. Measured on 10
# pairs of synthetic experiments built from the same states (seeds 1-5,
# separation 4 and 6; docs/compare.md): the same state fitted separately in
# each lands 0.13-0.24 sd apart (0.34-0.46 where one fit merged the detour
# state into a neighbour), while the closest two distinct states of one fit
# are 0.70 sd or more apart. 0.5 lies between the two.
MATCH_THRESHOLD = 0.5

SCALE_POOLED = "pooled_sd"
SCALE_Z = "z"
# What states are matched on: levels (the common scale), shapes (each
# experiment's own z units), or "auto" (the default): levels, or shapes when
# not a single state matches on levels.
MATCH_ON = ("auto", "levels", "shapes")


class CompareError(ValueError):
    """The experiments cannot be compared (no saved fit, no shared features, ...)."""


@dataclass
class LoadedFit:
    """One experiment's saved fit, as compare needs it (pure data, no files)."""

    name: str  # display name (the experiment's, made unique)
    path: str  # ROOT/EXPERIMENT, for messages
    fit: object  # analysis.result.FitResult
    n: int  # the number of states compared
    means: np.ndarray  # (n, F) canonical state means in the fit's z units
    center: np.ndarray | None  # (F,) pooled scaling; None for per-run z-scoring
    scale: np.ndarray | None
    stale: bool = False  # the runs changed since the fit


@dataclass
class Comparison:
    """The result of comparing experiments; plain JSON-able data.

    ``experiments``: one dict per experiment (order as given) with ``name``,
    ``path``, ``fit_key``, ``stale``, ``n_states``, ``n_bootstrap`` ({n: count}
    of the fit's bootstrap, {} if none), ``n_resamples``, ``runs``,
    ``n_converged``, ``n_censored``, ``convergence`` (run -> epoch or None),
    ``last_epoch`` (run -> last epoch), ``km_median``, ``threshold``,
    ``dissimilarity``, ``detours_tested``, ``detours_untold`` (states some runs
    skip, with too few runs on a side to test), ``states`` (one dict per state: ``state``, ``group``,
    ``label``, ``occupancy``, ``mean_epoch``, ``visited_runs``, ``is_detour``,
    ``detour``), ``edges`` (``source``, ``target``, ``source_group``,
    ``target_group``, ``n_runs``, ``prob``) and ``missing_features``.

    ``groups``: the matched phases, in label order: ``group`` (index, also the
    colour), ``label`` ("M0", ...), ``states`` (experiment name -> state or
    None), ``matched`` (in two or more experiments), ``grade`` ("same",
    "similar", or None when alone), ``distance`` (the largest
    pairwise distance of its members, pooled sd; None if alone) and
    ``nearest`` (for a state alone: its distance to the nearest state of each
    other experiment).

    ``quality``: ``matched_pairs``, ``mean_distance``, ``max_distance``,
    ``same_groups``, ``similar_groups``, ``unmatched_states``, ``unit`` and
    ``message``.

    ``convergence``: one test per experiment after the first, against the
    first: ``a``, ``b``, ``test``, ``n_a``, ``n_b``, ``censored_a``,
    ``censored_b``, ``median_a``, ``median_b``, ``difference`` (b - a, epochs),
    ``interval`` ([lo, hi], None = unbounded), ``chi2``, ``p_value``,
    ``p_adjusted``, ``verdict`` ("later", "earlier", "no_difference",
    "not_enough_runs") and ``message``.

    ``transitions``: edges (in group labels) that some experiment has and
    another has not: ``source``, ``target`` (labels), ``present`` (experiment
    -> runs taking it) and ``absent`` (experiment -> why: the state is not in
    that experiment, or no run makes the transition).
    """

    experiments: list[dict]
    features: list[str]  # the shared features states were matched on
    scale: str  # SCALE_POOLED or SCALE_Z
    match_on: str  # "levels" or "shapes": what the states were matched on
    threshold: float
    groups: list[dict]
    quality: dict
    convergence: list[dict]
    transitions: list[dict]
    warnings: list[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> Comparison:
        return cls(**data)

    def group_of(self, experiment: str, state: int) -> dict:
        """The group (matched phase) that ``state`` of ``experiment`` belongs to."""
        return next(g for g in self.groups if g["states"].get(experiment) == state)


# ---------------------------------------------------------------- loading


def fit_command(path: str | os.PathLike) -> str:
    return f"trainmap fit {path}"


def saved_fit(root: str | os.PathLike, experiment: str):
    """The fit to compare for ``root/experiment``: ``api.latest_fit``, as the dashboard shows it.

    Never computes. Raises :class:`CompareError` with the ``trainmap fit``
    command when there is none.
    """
    from trainmap.analysis import api
    from trainmap.trainer import rundir

    path = Path(root) / experiment
    try:
        rundir.experiment_path(root, experiment)
        fit = api.latest_fit(root, experiment)
    except (rundir.RunDirError, OSError) as error:
        raise CompareError(f"{path}: {error}") from None
    if fit is not None:
        return fit
    raise CompareError(
        f"experiment {experiment} has no saved fit to compare; fit it first with:\n"
        f"  {fit_command(path)}"
    )


def load_for_compare(
    root: str | os.PathLike, experiment: str, n: int | None = None, name: str | None = None
) -> LoadedFit:
    """Load ``root/experiment``'s saved fit and the arrays compare needs."""
    from trainmap.analysis import api

    fit = saved_fit(root, experiment)
    path = str(Path(root) / experiment)
    n = fit.selected_n if n is None else int(n)
    if n not in fit.maps:
        raise CompareError(
            f"{path}: no map with {n} states in its saved fit; feasible: {sorted(fit.maps)}"
        )
    arrays = api.model_arrays(root, experiment, fit, n)
    if arrays is None:
        raise CompareError(
            f"{path}: the saved fit's model arrays are unreadable; refit with:\n"
            f"  {fit_command(path)} --refit"
        )
    center = scale = None
    if fit.params.get("normalize") == "pooled":
        scaling = api.model_arrays(root, experiment, fit, 0)
        if scaling is not None and scaling["center"].shape[0] == 1:
            center, scale = scaling["center"][0], scaling["scale"][0]
    return LoadedFit(
        name=name or experiment,
        path=path,
        fit=fit,
        n=n,
        means=np.asarray(arrays["means"], dtype=float),
        center=center,
        scale=scale,
        stale=fit.stale,
    )


def compare_experiments(
    targets: Sequence[tuple[str | os.PathLike, str]],
    *,
    n_states: Sequence[int | None] | None = None,
    threshold: float = MATCH_THRESHOLD,
    match_on: str = "auto",
) -> Comparison:
    """Compare the saved fits of ``targets``, a list of ``(root, experiment)``.

    ``n_states``: per experiment, the number of states to compare (None: the
    fit's selected n). ``threshold`` and ``match_on``: see :func:`compare_fits`.
    Raises :class:`CompareError` for fewer than two experiments, a missing fit
    (with the command that makes it), an unknown n, or experiments without a
    shared feature.
    """
    targets = [(Path(root), str(experiment)) for root, experiment in targets]
    if len(targets) < 2:
        raise CompareError("compare needs at least two experiments")
    if len(set(targets)) < len(targets):
        raise CompareError("an experiment is listed twice")
    n_states = list(n_states) if n_states is not None else [None] * len(targets)
    if len(n_states) != len(targets):
        raise CompareError(f"{len(n_states)} values of n for {len(targets)} experiments")
    names = [experiment for _, experiment in targets]
    if len(set(names)) < len(names):  # same name under different roots
        names = [str(root / experiment) for root, experiment in targets]
    missing, loaded = [], []
    for (root, experiment), n, name in zip(targets, n_states, names):
        try:
            loaded.append(load_for_compare(root, experiment, n, name))
        except CompareError as error:
            missing.append(str(error))
    if missing:
        raise CompareError("\n".join(missing))
    return compare_fits(loaded, threshold=threshold, match_on=match_on)


# ---------------------------------------------------------------- matching


def _shared_features(fits: Sequence[LoadedFit]) -> tuple[list[str], list[list[str]]]:
    names = [list(f.fit.feature_names) for f in fits]
    common = set.intersection(*(set(n) for n in names))
    shared = [f for f in names[0] if f in common]
    return shared, [[f for f in n if f not in common] for n in names]


def _rows(fit: LoadedFit) -> int:
    """Checkpoints the fit's scaling was computed over (every decoded run)."""
    return sum(len(p) for p in fit.fit.map(fit.n).paths.values())


def common_profiles(fits: Sequence[LoadedFit], features: Sequence[str], match_on="levels"):
    """Every fit's state means on one scale, and which scale that is.

    Returns ``(profiles, scale)``: per fit an array (n_states, len(features)).
    With pooled scaling in every fit, raw means re-standardised by the pooled
    mean and sd of all the experiments' checkpoints (``scale == "pooled_sd"``);
    otherwise, or when ``match_on == "shapes"``, the fits' own z-unit means
    (``scale == "z"``).
    """
    columns = [[list(f.fit.feature_names).index(name) for name in features] for f in fits]
    if match_on == "shapes" or any(f.center is None for f in fits):
        return [f.means[:, c] for f, c in zip(fits, columns)], SCALE_Z
    counts = np.array([_rows(f) for f in fits], dtype=float)
    centers = np.array([f.center[c] for f, c in zip(fits, columns)])  # (fits, F)
    scales = np.array([f.scale[c] for f, c in zip(fits, columns)])
    weights = counts[:, None] / counts.sum()
    mean = (weights * centers).sum(axis=0)
    # Law of total variance: within each experiment plus between experiments.
    var = (weights * (scales**2 + (centers - mean) ** 2)).sum(axis=0)
    sd = np.where(var > 0, np.sqrt(var), 1.0)
    profiles = [
        (f.means[:, c] * f.scale[c] + f.center[c] - mean) / sd for f, c in zip(fits, columns)
    ]
    return profiles, SCALE_POOLED


def distance_matrix(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """Root-mean-square difference over features between every row of ``a`` and of ``b``."""
    return np.sqrt(((a[:, None, :] - b[None, :, :]) ** 2).mean(axis=2))


def own_separation(profiles: Sequence[np.ndarray]) -> list[np.ndarray]:
    """Per fit and state, the distance to the nearest other state of the same fit (inf if none)."""
    out = []
    for p in profiles:
        d = distance_matrix(p, p)
        np.fill_diagonal(d, np.inf)
        out.append(d.min(axis=1) if len(p) else np.empty(0))
    return out


def match_states(profiles: Sequence[np.ndarray], threshold: float) -> list[dict]:
    """Groups of matched states: ``{"members": {fit index: state}, "grade": ...}``.

    The first fit's states start one group each (in its canonical order);
    every further fit is assigned to the groups so far by
    ``linear_sum_assignment`` on the distance to each group's mean profile.
    An assigned pair is kept as ``"same"`` when it is within ``threshold``,
    as ``"similar"`` when the state is closer to the group than to any other
    state of its own fit and than the group's members are to theirs, and is
    otherwise refused; refused and left-over states start new groups (grade
    None). A group's grade is its loosest join.
    """
    separation = own_separation(profiles)
    groups = [{"members": {0: k}, "grade": None} for k in range(len(profiles[0]))]
    for i in range(1, len(profiles)):
        centroids = np.array(
            [np.mean([profiles[j][k] for j, k in g["members"].items()], axis=0) for g in groups]
        )
        dist = distance_matrix(profiles[i], centroids)
        rows, cols = linear_sum_assignment(dist)
        assigned = set()
        for r, c in zip(rows, cols):
            group = groups[c]
            spread = min(separation[j][k] for j, k in group["members"].items())
            if dist[r, c] <= threshold:
                grade = "same"
            elif dist[r, c] < min(separation[i][r], spread):
                grade = "similar"
            else:
                continue
            group["members"][i] = int(r)
            group["grade"] = "similar" if "similar" in (grade, group["grade"]) else "same"
            assigned.add(int(r))
        groups += [
            {"members": {i: k}, "grade": None} for k in range(len(profiles[i])) if k not in assigned
        ]
    return groups


# ---------------------------------------------------------------- convergence


def _times(tmap) -> tuple[list[str], np.ndarray, np.ndarray]:
    runs = sorted(tmap.paths)
    events = np.array([tmap.convergence_epoch.get(r) is not None for r in runs])
    times = np.array(
        [tmap.convergence_epoch[r] if ev else tmap.epochs[r][-1] for r, ev in zip(runs, events)],
        dtype=float,
    )
    return runs, times, events


def _epochs_text(value) -> str:
    return "not reached" if value is None else f"{value:.0f}"


def _bound(value) -> str:
    return "unbounded" if value is None else f"{value:+.0f}"


CONVERGENCE_TEST = "Gehan-Wilcoxon"


def weighted_logrank(times, events, group, weight: str = "gehan") -> tuple[float, float, float]:
    """Two-sample weighted log-rank test; ``weight`` "gehan" (runs at risk) or "logrank" (1).

    Same conventions and returns as :func:`analysis.evidence.logrank_test`
    (``(chi2, p_value, weighted observed minus expected for the first group)``);
    with ``weight="logrank"`` it is that test.
    """
    times = np.asarray(times, dtype=float)
    events = np.asarray(events, dtype=bool)
    group = np.asarray(group, dtype=bool)
    event_times = np.unique(times[events])
    at_risk = times[None, :] >= event_times[:, None]
    dies = events[None, :] & (times[None, :] == event_times[:, None])
    n = at_risk.sum(axis=1).astype(float)
    n1 = (at_risk & group).sum(axis=1).astype(float)
    d = dies.sum(axis=1).astype(float)
    d1 = (dies & group).sum(axis=1).astype(float)
    w = n if weight == "gehan" else np.ones_like(n)
    with np.errstate(invalid="ignore", divide="ignore"):
        variance = np.where(n > 1, d * (n1 / n) * (1 - n1 / n) * (n - d) / (n - 1), 0.0)
    u = float((w * (d1 - d * n1 / n)).sum())
    v = float((w**2 * variance).sum())
    if v <= 0:
        return 0.0, 1.0, u
    chi2 = u**2 / v
    return float(chi2), float(stats.chi2.sf(chi2, 1)), u


def convergence_test(a_name, a_map, b_name, b_map, *, alpha=ALPHA, min_runs=MIN_RUNS_PER_SIDE):
    """Is experiment b's convergence epoch different from a's? (censored runs kept)."""
    _, t_a, e_a = _times(a_map)
    _, t_b, e_b = _times(b_map)
    times, events = np.concatenate([t_a, t_b]), np.concatenate([e_a, e_b])
    group = np.r_[np.zeros(len(t_a), bool), np.ones(len(t_b), bool)]
    out = {
        "a": a_name,
        "b": b_name,
        "test": CONVERGENCE_TEST,
        "n_a": len(t_a),
        "n_b": len(t_b),
        "censored_a": int((~e_a).sum()),
        "censored_b": int((~e_b).sum()),
        "median_a": km_median(t_a, e_a),
        "median_b": km_median(t_b, e_b),
        "difference": None,
        "interval": None,
        "chi2": None,
        "p_value": None,
        "p_adjusted": None,
        "alpha": float(alpha),
        "verdict": "not_enough_runs",
        "message": "",
    }
    if min(len(t_a), len(t_b)) < min_runs:
        few = a_name if len(t_a) < min_runs else b_name
        count = min(len(t_a), len(t_b))
        out["message"] = (
            f"not enough runs to tell: {few} has {count} run{'s' * (count != 1)}, "
            f"need >= {min_runs} in each experiment"
        )
        return out
    if not events.any():
        out["message"] = "not enough runs to tell: no run of either experiment converged"
        return out
    chi2, p, o_minus_e = weighted_logrank(times, events, group)
    if out["median_a"] is not None and out["median_b"] is not None:
        out["difference"] = out["median_b"] - out["median_a"]
    out.update(
        chi2=chi2,
        p_value=p,
        interval=delay_interval(times, events, group),
        # O - E < 0 for b: fewer of b's runs converge than the pooled rate predicts.
        later=bool(o_minus_e < 0),
    )
    return out


def _convergence_words(test: dict) -> str:
    if test["verdict"] == "not_enough_runs":
        return test["message"]
    a, b = test["a"], test["b"]
    lo, hi = test["interval"] or (None, None)
    diff = "undefined" if test["difference"] is None else f"{test['difference']:+.0f}"
    evidence = (
        f"median convergence epoch {_epochs_text(test['median_b'])} for {b} vs "
        f"{_epochs_text(test['median_a'])} for {a} (Kaplan-Meier; "
        f"{test['censored_b']} of {test['n_b']} and {test['censored_a']} of {test['n_a']} runs "
        f"never converged), difference {diff} epochs, {CI_LEVEL:.0%} interval "
        f"[{_bound(lo)}, {_bound(hi)}]; {test['test']} p = {test['p_value']:.2g}"
        + (
            f", Holm-adjusted {test['p_adjusted']:.2g}"
            if test["p_adjusted"] != test["p_value"]
            else ""
        )
    )
    if test["verdict"] == "no_difference":
        return f"no significant difference at {test['alpha']:g}: {evidence}"
    return f"{b} converges {test['verdict']} than {a}: {evidence}"


def convergence_tests(names: Sequence[str], maps: Sequence) -> list[dict]:
    """Every experiment after the first against the first, Holm-corrected together."""
    tests = [convergence_test(names[0], maps[0], n, m) for n, m in zip(names[1:], maps[1:])]
    tested = [t for t in tests if t["p_value"] is not None]
    for test, p_adj in zip(tested, holm([t["p_value"] for t in tested])):
        test["p_adjusted"] = p_adj
        later = test.pop("later")
        if test["difference"] is not None:
            later = test["difference"] > 0
        if p_adj >= test["alpha"]:
            test["verdict"] = "no_difference"
        else:
            test["verdict"] = "later" if later else "earlier"
    for test in tests:
        test.pop("later", None)
        test["message"] = _convergence_words(test)
    return tests


# ---------------------------------------------------------------- the comparison


def _experiment_summary(f: LoadedFit, group_of: dict[int, int], labels, missing) -> dict:
    tmap = f.fit.map(f.n)
    bootstrap = getattr(f.fit, "bootstrap", None) or {}
    runs, times, events = _times(tmap)
    states = []
    for s in tmap.states:
        g = group_of[int(s.state)]
        states.append(
            {
                "state": int(s.state),
                "group": g,
                "label": labels[g],
                "occupancy": float(s.occupancy),
                "mean_epoch": None if not np.isfinite(s.mean_epoch) else float(s.mean_epoch),
                "visited_runs": int(s.visited_runs),
                "is_detour": bool(s.is_detour),
                "detour": dict(getattr(s, "detour", {}) or {}),
            }
        )
    edges = [
        {
            "source": int(e.source),
            "target": int(e.target),
            "source_group": group_of[int(e.source)],
            "target_group": group_of[int(e.target)],
            "n_runs": int(e.n_runs),
            "prob": float(e.prob),
        }
        for e in tmap.edges
    ]
    return {
        "name": f.name,
        "path": f.path,
        "fit_key": f.fit.fingerprint,
        "stale": bool(f.stale),
        "normalize": f.fit.params.get("normalize"),
        "n_states": int(f.n),
        "selected_n": int(f.fit.selected_n),
        "n_bootstrap": {
            int(k): int(v) for k, v in (bootstrap.get("selected_n_counts") or {}).items()
        },
        "n_resamples": int(bootstrap.get("n_resamples") or 0),
        "runs": runs,
        "n_converged": int(events.sum()),
        "n_censored": int((~events).sum()),
        "convergence": {r: tmap.convergence_epoch.get(r) for r in runs},
        "last_epoch": {r: int(tmap.epochs[r][-1]) for r in runs},
        "km_median": km_median(times, events),
        "threshold": f.fit.params.get("threshold"),
        "dissimilarity": float(tmap.dissimilarity),
        # States put to the detour test, and states some runs skip but too few to test.
        "detours_tested": sum(s["detour"].get("p_adjusted") is not None for s in states),
        "detours_untold": sum(s["detour"].get("verdict") == "not_enough_runs" for s in states),
        "states": states,
        "edges": edges,
        "missing_features": list(missing),
    }


def _transitions(summaries: list[dict], labels: list[str]) -> list[dict]:
    have_group = [{s["group"] for s in e["states"]} for e in summaries]
    taken = [
        {(d["source_group"], d["target_group"]): d["n_runs"] for d in e["edges"]} for e in summaries
    ]
    out = []
    for key in sorted(set().union(*taken)):
        if all(key in t for t in taken):
            continue
        present = {e["name"]: t[key] for e, t in zip(summaries, taken) if key in t}
        absent = {}
        for e, t, groups in zip(summaries, taken, have_group):
            if key in t:
                continue
            lost = [labels[g] for g in key if g not in groups]
            absent[e["name"]] = (
                f"{' and '.join(lost)} not in {e['name']}"
                if lost
                else f"{e['name']} has both states, but no run goes {labels[key[0]]} → "
                f"{labels[key[1]]}"
            )
        out.append(
            {
                "source": labels[key[0]],
                "target": labels[key[1]],
                "source_group": key[0],
                "target_group": key[1],
                "present": present,
                "absent": absent,
            }
        )
    return out


def compare_fits(
    fits: Sequence[LoadedFit], *, threshold: float = MATCH_THRESHOLD, match_on: str = "auto"
) -> Comparison:
    """Compare fits already loaded (pure: no file is read).

    ``match_on``: "levels" (state means on the pooled common scale), "shapes"
    (each experiment's own z units; see the module docstring) or "auto" (the
    default): levels, unless not a single state matches there, then shapes,
    and the warnings say so.
    """
    if match_on not in MATCH_ON:
        raise CompareError(f"match_on must be one of {MATCH_ON}, got {match_on!r}")
    if match_on != "auto":
        return _compare(fits, threshold, match_on)
    levels = _compare(fits, threshold, "levels")
    if levels.quality["matched_pairs"] or levels.scale != SCALE_POOLED:
        return levels
    shapes = _compare(fits, threshold, "shapes")
    shapes.warnings = [w for w in shapes.warnings if not w.startswith("matched on shapes")] + [
        "no state matched on the common scale (the experiments' feature levels differ "
        "throughout), so states are matched on shapes: each experiment's state means in "
        "its own z units (--match-on levels shows the unmatched view)"
    ]
    return shapes


def _compare(fits: Sequence[LoadedFit], threshold: float, match_on: str) -> Comparison:
    if len(fits) < 2:
        raise CompareError("compare needs at least two experiments")
    if threshold <= 0:
        raise CompareError(f"the match threshold must be positive, got {threshold}")
    names = [f.name for f in fits]
    features, missing = _shared_features(fits)
    if not features:
        listed = "; ".join(f"{f.name}: {', '.join(f.fit.feature_names)}" for f in fits)
        raise CompareError(
            f"the experiments share no feature column, so their states cannot be matched ({listed})"
        )
    notes = []
    for f, gone in zip(fits, missing):
        if gone:
            notes.append(
                f"{f.name} has features the others lack, left out of the matching: "
                f"{', '.join(gone)}"
            )
    profiles, scale = common_profiles(fits, features, match_on)
    if match_on == "shapes":
        notes.append(
            "matched on shapes: each experiment's state means in its own z units "
            "(relative to its own mean and sd), not on a common scale"
        )
    elif scale == SCALE_Z:
        per_run = [f.name for f in fits if f.center is None]
        notes.append(
            f"{', '.join(per_run)} {'was' if len(per_run) == 1 else 'were'} z-scored per run: "
            "no common scale, so states are matched on z-unit means (shapes, not levels)"
        )
    for f in fits:
        if f.stale:
            notes.append(
                f"{f.name}: the runs changed since its fit (still training?); refit with "
                f"{fit_command(f.path)}"
            )
    thresholds = {f.fit.params.get("threshold") for f in fits}
    if len(thresholds) > 1:
        notes.append(
            f"the fits use different convergence thresholds ({sorted(map(str, thresholds))}): "
            "convergence epochs are not comparable"
        )

    raw_groups = match_states(profiles, threshold)
    labels = [f"M{g}" for g in range(len(raw_groups))]
    group_of = [dict() for _ in fits]
    for g, raw in enumerate(raw_groups):
        for i, k in raw["members"].items():
            group_of[i][k] = g
    groups, pair_distances = [], []
    for g, raw in enumerate(raw_groups):
        members = raw["members"]
        pairs = [
            float(distance_matrix(profiles[i][[k]], profiles[j][[m]])[0, 0])
            for (i, k), (j, m) in itertools.combinations(sorted(members.items()), 2)
        ]
        pair_distances += pairs
        nearest = {}
        if len(members) == 1:
            ((i, k),) = members.items()
            for j, other in enumerate(profiles):
                if j != i and len(other):
                    nearest[names[j]] = float(distance_matrix(profiles[i][[k]], other).min())
        groups.append(
            {
                "group": g,
                "label": labels[g],
                "states": {names[i]: members.get(i) for i in range(len(fits))},
                "matched": len(members) > 1,
                "grade": raw["grade"],
                "distance": max(pairs) if pairs else None,
                "nearest": nearest,
            }
        )
    unmatched = sum(1 for g in groups if not g["matched"])
    same = sum(1 for g in groups if g["grade"] == "same")
    similar = sum(1 for g in groups if g["grade"] == "similar")
    if not same and scale == SCALE_POOLED:
        notes.append(
            "no state is the same on the common scale (the experiments' feature levels "
            "differ); matching on shapes compares the phases' courses instead "
            "(trainmap compare --match-on shapes)"
        )
    total = sum(len(p) for p in profiles)
    unit = "pooled sd" if scale == SCALE_POOLED else "z"
    grades = []
    if same:
        grades.append(f"{same} phase{'s' * (same != 1)} the same (within {threshold:g} {unit})")
    if similar:
        grades.append(
            f"{similar} phase{'s' * (similar != 1)} similar (each state closer to its partner "
            "than to the other states of its own experiment)"
        )
    distances = (
        f"mean distance {np.mean(pair_distances):.2f} {unit}, largest {np.max(pair_distances):.2f}"
        if pair_distances
        else f"no two states close enough to match ({unit})"
    )
    quality = {
        "matched_pairs": len(pair_distances),
        "mean_distance": float(np.mean(pair_distances)) if pair_distances else None,
        "max_distance": float(np.max(pair_distances)) if pair_distances else None,
        "same_groups": same,
        "similar_groups": similar,
        "unmatched_states": unmatched,
        "unit": unit,
        "message": (
            f"{total - unmatched} of {total} states matched across experiments"
            + (f": {'; '.join(grades)}" if grades else "")
            + f"; {distances}; on {len(features)} shared feature{'s' * (len(features) != 1)}"
        ),
    }
    summaries = [
        _experiment_summary(f, group_of[i], labels, missing[i]) for i, f in enumerate(fits)
    ]
    return Comparison(
        experiments=summaries,
        features=list(features),
        scale=scale,
        match_on=match_on,
        threshold=float(threshold),
        groups=groups,
        quality=quality,
        convergence=convergence_tests(names, [f.fit.map(f.n) for f in fits]),
        transitions=_transitions(summaries, labels),
        warnings=notes,
    )
