"""trainmap's analysis: HMM training maps over many runs' metric sequences (no torch).

The public API (what the CLI and the dashboard call) is in :mod:`analysis.api`::

    from analysis import fit_experiment, load_fit, list_fits
    result = fit_experiment("runs", "modadd", max_states=8)
    result.map().edges          # the training map for the selected n

Importing this package must stay cheap and must never import torch.
"""

from analysis.api import fit_experiment, fit_prepared, list_fits, load_fit
from analysis.result import EdgeFeature, EdgeInfo, FitResult, StateInfo, TrainingMap

__all__ = [
    "EdgeFeature",
    "EdgeInfo",
    "FitResult",
    "StateInfo",
    "TrainingMap",
    "fit_experiment",
    "fit_prepared",
    "list_fits",
    "load_fit",
]
