"""trainmap: see how your models learn.

One importable name for the three parts, which live in the repository's top-level
folders and are mapped here by ``pyproject.toml`` (``[tool.setuptools.package-dir]``):

- ``trainmap.trainer`` (``trainer/``): track weight statistics of PyTorch models;
- ``trainmap.analysis`` (``analysis/``): HMM training maps over many runs (no torch);
- ``trainmap.app`` (``app/``): the Dash dashboard (no torch).

``from trainmap import Tracker`` imports torch on first use only, so the dashboard
and the analysis, which import this package too, stay torch-free.
"""

import importlib

__version__ = "0.1.0"

_LAZY = {"Tracker": "trainmap.trainer.tracker", "train_seeds": "trainmap.trainer.train"}

__all__ = ["Tracker", "train_seeds", "__version__"]


def __getattr__(name):
    if name in _LAZY:
        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainmap' has no attribute {name!r}")
