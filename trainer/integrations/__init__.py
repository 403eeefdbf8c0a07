"""Callbacks for training frameworks: a run directory from a Lightning or Hugging Face run.

::

    from trainmap.trainer.integrations.lightning import TrainmapCallback  # lightning.pytorch
    from trainmap.trainer.integrations.pytorch_lightning import TrainmapCallback  # classic name
    from trainmap.trainer.integrations.hf import TrainmapCallback  # transformers.Trainer

Each is a thin adapter over :class:`~trainmap.trainer.integrations.recorder.CheckpointRecorder`
(cadence, resume, scalars, task metrics), which writes through
:class:`~trainmap.trainer.tracker.Tracker`: the rows have the same columns as a
hand-written loop's. Importing this package imports no framework; each module
imports its own when it is imported (``pip install "trainmap[lightning]"`` or
``"trainmap[hf]"``).
"""
