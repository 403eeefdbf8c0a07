"""trainmap's callback for ``lightning.pytorch`` (``pip install "trainmap[lightning]"``)::

    import lightning.pytorch as L
    from trainmap.trainer.integrations.lightning import TrainmapCallback

    trainer = L.Trainer(max_epochs=20, callbacks=[TrainmapCallback("runs/my-exp/seed-0")])

For the classic ``pytorch_lightning`` package use
:mod:`trainmap.trainer.integrations.pytorch_lightning` (same arguments). See
:class:`~trainmap.trainer.integrations.lightning_hooks.LightningHooks`.
"""

from __future__ import annotations

try:
    from lightning.pytorch import Callback
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        'TrainmapCallback for lightning.pytorch needs Lightning: pip install "trainmap[lightning]"'
    ) from error

from trainmap.trainer.integrations.lightning_hooks import LIGHTNING_SCALARS, LightningHooks


class TrainmapCallback(LightningHooks, Callback):
    __doc__ = LightningHooks.__doc__


__all__ = ["TrainmapCallback", "LIGHTNING_SCALARS"]
