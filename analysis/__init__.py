"""trainmap's analysis: HMM training maps over many runs' metric sequences (no torch).

The public API (what the CLI and the dashboard call) is in :mod:`analysis.api`::

    from trainmap.analysis import fit_experiment, load_fit, list_fits
    result = fit_experiment("runs", "modadd", max_states=8)
    result.map().edges          # the training map for the selected n

Importing this package must stay cheap (``trainmap --help`` imports
``analysis.cli``) and must never import torch, so the names below are loaded
from their modules on first use.
"""

from __future__ import annotations

import importlib

_EXPORTS = {
    "fit_experiment": "trainmap.analysis.api",
    "fit_prepared": "trainmap.analysis.api",
    "fits_fingerprint": "trainmap.analysis.store",
    "latest_fit": "trainmap.analysis.api",
    "list_fits": "trainmap.analysis.api",
    "load_fit": "trainmap.analysis.api",
    "rename_state": "trainmap.analysis.api",
    "state_names": "trainmap.analysis.api",
    "EdgeFeature": "trainmap.analysis.result",
    "EdgeInfo": "trainmap.analysis.result",
    "FitResult": "trainmap.analysis.result",
    "StateInfo": "trainmap.analysis.result",
    "TrainingMap": "trainmap.analysis.result",
}

__all__ = sorted(_EXPORTS)


def __getattr__(name: str):
    if name in _EXPORTS:
        value = getattr(importlib.import_module(_EXPORTS[name]), name)
        globals()[name] = value  # later look-ups skip this function
        return value
    raise AttributeError(f"module 'trainmap.analysis' has no attribute {name!r}")
