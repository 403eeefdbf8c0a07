"""trainmap's trainer: track weight statistics of PyTorch models, per checkpoint.

Importing this package does not import torch: ``trainer.rundir`` (the run
directory format) is used by the torch-free analysis and dashboard. The
torch-based parts are imported when first used, e.g. ``from trainer import Tracker``.
"""

__version__ = "0.1.0"

_LAZY = {"Tracker": "trainmap.trainer.tracker", "train_seeds": "trainmap.trainer.train"}


def __getattr__(name):
    if name in _LAZY:
        import importlib

        return getattr(importlib.import_module(_LAZY[name]), name)
    raise AttributeError(f"module 'trainmap.trainer' has no attribute {name!r}")
