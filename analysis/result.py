"""What a fit produces: plain data the CLI prints and the dashboard draws.

These classes are the contract between ``analysis`` (which computes them) and
``app`` (which only reads them). Everything here is numbers, strings and lists,
so a result saves to JSON and loads back without pickle.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field

import pandas as pd


@dataclass
class StateInfo:
    """One latent state (a node of the training map)."""

    state: int  # canonical label 0..n-1, ordered by mean epoch of first visit
    occupancy: float  # fraction of all decoded checkpoints spent in this state
    self_prob: float  # fitted transmat[k, k]
    start_runs: int  # runs whose path starts here
    end_runs: int  # runs whose path ends here
    is_detour: bool  # detour["verdict"] == "detour"
    visited_runs: int
    mean_epoch: float  # mean epoch of the checkpoints decoded as this state
    profile: dict[str, float] = field(default_factory=dict)  # feature -> mean (z units)
    # The detour test of this state (analysis.evidence.detour_tests): verdict,
    # test, run counts, p_value, p_adjusted, delay, delay_ci, alpha, message.
    # Empty for fits saved before the test existed.
    detour: dict = field(default_factory=dict)


@dataclass
class EdgeFeature:
    """A feature driving a transition j -> k."""

    feature: str
    score: float  # mean |d log p(s_t=k | z_1..t) / d z_t| over entries into k from j
    delta_z: float  # mu_k - mu_j in z units; its sign is the arrow


@dataclass
class EdgeInfo:
    """A transition j -> k (j != k) seen in at least one decoded path."""

    source: int
    target: int
    prob: float  # fitted transmat[j, k]
    n_runs: int  # runs whose path takes this edge
    n_transitions: int  # times it is taken, over all runs
    mean_convergence_epoch: float | None  # over the runs taking it that converged
    top_features: list[EdgeFeature] = field(default_factory=list)


@dataclass
class TrainingMap:
    """The decoded training map for one number of states."""

    n_states: int
    states: list[StateInfo]
    edges: list[EdgeInfo]
    paths: dict[str, list[int]]  # run name -> canonical state per checkpoint
    epochs: dict[str, list[int]]  # run name -> epoch per checkpoint (same length as path)
    convergence_epoch: dict[str, int | None]  # None: censored (never reached threshold)
    # analysis.evidence.occupancy_regression: coef (state -> epochs, None if not
    # estimable), intercept, reference_state, n_params, df_model, df_resid, r2,
    # r2_adjusted, r2_loo, f_stat, p_value, saturated, n_runs, n_censored, message
    regression: dict
    dissimilarity: float  # mean pairwise total-variation distance of occupancies

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> TrainingMap:
        data = dict(data)
        data["states"] = [StateInfo(**s) for s in data["states"]]
        data["edges"] = [
            EdgeInfo(**{**e, "top_features": [EdgeFeature(**f) for f in e["top_features"]]})
            for e in data["edges"]
        ]
        data["regression"] = {
            **data["regression"],
            "coef": {int(k): v for k, v in data["regression"].get("coef", {}).items()},
        }
        return cls(**data)


@dataclass
class FitResult:
    """A model sweep over n = 1..max_states, the selected n, and a map per feasible n.

    ``sweep`` has one row per n with columns: n, feasible, failures, converged,
    train_ll, heldout_ll_mean, heldout_ll_std, heldout_ll_best, aic_mean,
    aic_std, aic_best, bic_mean, bic_std, bic_best, icl_best (NaN where infeasible);
    analysis also adds n_iter_mean, best_restart, n_params, seconds and error
    (the first failed restart's message, "" if none).
    """

    experiment: str
    fingerprint: str  # of the input runs and the fit parameters
    params: dict  # features, normalize, cov, criterion, max_states, restarts, ...
    feature_names: list[str]
    runs: list[str]  # runs used, sorted
    excluded_runs: dict[str, str]  # run -> why it was left out or truncated
    sweep: pd.DataFrame
    selected_n: int
    maps: dict[int, TrainingMap]  # keyed by n
    # Added by analysis (defaults keep older constructors working):
    warnings: list[str] = field(default_factory=list)  # dropped features, truncated runs, ...
    loaded: bool = False  # True when this result came from the store, not a new fit
    stale: bool = False  # True when the runs changed since this saved fit (api.latest_fit)
    # How n was selected (analysis.model.describe_selection): criterion,
    # max_states_tried, extended, at_ceiling, penalty, effective_rows,
    # autocorr_time, message, ...; {} for fits saved before it existed.
    selection: dict = field(default_factory=dict)
    # Stability of n, states and edges over resampled runs (analysis.bootstrap); {} if not run.
    bootstrap: dict = field(default_factory=dict)

    def map(self, n: int | None = None) -> TrainingMap:
        """The map for ``n`` states (default: the selected n)."""
        n = self.selected_n if n is None else int(n)
        if n not in self.maps:
            raise KeyError(f"no map for n={n}; available: {sorted(self.maps)}")
        return self.maps[n]
