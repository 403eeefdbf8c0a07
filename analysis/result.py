"""What a fit produces: plain data the CLI prints and the dashboard draws.

These classes are the contract between ``analysis`` (which computes them) and
``app`` (which only reads them). Everything here is numbers, strings, lists and,
for the per-checkpoint data (a map's decoded paths and epochs, millions of
values for a large experiment), integer arrays in a :class:`RunArrays`, so a
result saves to JSON plus npz and loads back without pickle.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace

import numpy as np
import pandas as pd


class RunArrays(Mapping):
    """Run name -> read-only 1-D integer array, every run's values in one array.

    ``flat`` holds all runs one after another (in ``names`` order) and run
    ``names[i]`` is ``flat[offsets[i]:offsets[i + 1]]``, a view: loading a
    map's 4 M decoded states is one array, not 4 M Python ints, and whole-map
    statistics work on ``flat`` directly (not named ``values``: that is the
    Mapping method). Two RunArrays are equal when they hold the same runs with
    equal values (the dtype may differ).
    """

    def __init__(self, names: Sequence[str], values: np.ndarray, offsets: np.ndarray):
        names = [str(name) for name in names]
        values = np.asarray(values)
        offsets = np.asarray(offsets, dtype=np.int64)
        if values.ndim != 1 or not np.issubdtype(values.dtype, np.integer):
            raise ValueError(
                f"values must be a 1-D integer array, got {values.dtype}{values.shape}"
            )
        if (
            offsets.shape != (len(names) + 1,)
            or offsets[0] != 0
            or offsets[-1] != len(values)
            or np.any(np.diff(offsets) < 0)
        ):
            raise ValueError("offsets must run from 0 to len(values), one more than the names")
        if len(set(names)) != len(names):
            raise ValueError("run names must be unique")
        values = values.view()
        values.flags.writeable = False  # the views handed out share this memory
        self.names, self.flat, self.offsets = names, values, offsets
        self._index = {name: i for i, name in enumerate(names)}

    @classmethod
    def from_mapping(cls, mapping: Mapping[str, Sequence[int]], dtype=np.int64) -> RunArrays:
        """Pack ``{run: sequence of ints}`` (a RunArrays is returned as it is)."""
        if isinstance(mapping, RunArrays):
            return mapping
        names = list(mapping)
        parts = [np.asarray(mapping[name], dtype=dtype).reshape(-1) for name in names]
        offsets = np.concatenate([[0], np.cumsum([len(p) for p in parts], dtype=np.int64)])
        values = np.concatenate(parts) if parts else np.empty(0, dtype=dtype)
        return cls(names, values, offsets)

    def lengths(self) -> np.ndarray:
        return np.diff(self.offsets)

    def same_layout(self, other: RunArrays) -> bool:
        """Whether ``other`` has the same runs in the same order with the same lengths."""
        return self.names == other.names and np.array_equal(self.offsets, other.offsets)

    def __getitem__(self, run: str) -> np.ndarray:
        i = self._index[run]
        return self.flat[self.offsets[i] : self.offsets[i + 1]]

    def __iter__(self):
        return iter(self.names)

    def __len__(self) -> int:
        return len(self.names)

    def __contains__(self, run) -> bool:
        return run in self._index

    def __eq__(self, other) -> bool:
        if not isinstance(other, Mapping):
            return NotImplemented
        other = RunArrays.from_mapping(other)
        return sorted(self.names) == sorted(other.names) and all(
            np.array_equal(self[name], other[name]) for name in self.names
        )

    __hash__ = None  # mutable-looking container semantics, like dict

    def to_lists(self) -> dict[str, list[int]]:
        """``{run: list of ints}``: the JSON form (slow for millions of values)."""
        return {name: self[name].tolist() for name in self.names}

    def __repr__(self) -> str:
        return f"RunArrays({len(self.names)} runs, {len(self.flat)} values)"


def aligned_paths(training_map) -> tuple[RunArrays, RunArrays]:
    """A map's (paths, epochs) as RunArrays of one layout: ``paths.flat[i]`` is the
    state at epoch ``epochs.flat[i]``, so whole-map statistics need no loop over runs.

    Without a copy for every map built or loaded by analysis; maps given as
    plain ``{run: list}`` (as tests build them) are packed. Raises ValueError
    when a run's path and epochs differ in length.
    """
    paths = RunArrays.from_mapping(training_map.paths)
    epochs = training_map.epochs
    if not (isinstance(epochs, RunArrays) and epochs.same_layout(paths)):
        epochs = RunArrays.from_mapping({run: epochs[run] for run in paths.names})
        if not epochs.same_layout(paths):
            raise ValueError("a map's paths and epochs differ in length")
    return paths, epochs


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
    # run name -> canonical state per checkpoint (a RunArrays; tests may pass a dict)
    paths: Mapping[str, np.ndarray]
    epochs: Mapping[str, np.ndarray]  # run name -> epoch per checkpoint (same length as path)
    convergence_epoch: dict[str, int | None]  # None: censored (never reached threshold)
    # analysis.evidence.occupancy_regression: coef (state -> epochs, None if not
    # estimable), intercept, reference_state, n_params, df_model, df_resid, r2,
    # r2_adjusted, r2_loo, f_stat, p_value, saturated, n_runs, n_censored, message
    regression: dict
    dissimilarity: float  # mean pairwise total-variation distance of occupancies

    def to_dict(self, with_paths: bool = True) -> dict:
        """Plain JSON data; ``with_paths=False`` leaves out ``paths`` and ``epochs``
        (the fit store keeps those in an npz)."""
        out = asdict(replace(self, paths={}, epochs={}))  # asdict would deep-copy the arrays
        del out["paths"], out["epochs"]
        if with_paths:
            out["paths"] = RunArrays.from_mapping(self.paths).to_lists()
            out["epochs"] = RunArrays.from_mapping(self.epochs).to_lists()
        return out

    @classmethod
    def from_dict(
        cls, data: dict, paths: Mapping | None = None, epochs: Mapping | None = None
    ) -> TrainingMap:
        """The map of :meth:`to_dict`; ``paths`` and ``epochs`` when the data leaves them out."""
        data = dict(data)
        data["paths"] = RunArrays.from_mapping(data["paths"] if paths is None else paths)
        data["epochs"] = RunArrays.from_mapping(data["epochs"] if epochs is None else epochs)
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
