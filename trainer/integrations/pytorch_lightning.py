"""trainmap's callback for the classic ``pytorch_lightning`` package::

    import pytorch_lightning as pl
    from trainmap.trainer.integrations.pytorch_lightning import TrainmapCallback

    trainer = pl.Trainer(max_epochs=20, callbacks=[TrainmapCallback("runs/my-exp/seed-0")])

The same callback as :mod:`trainmap.trainer.integrations.lightning`, on this
package's ``Callback`` class (each Trainer accepts only its own package's).
"""

from __future__ import annotations

try:
    from pytorch_lightning import Callback
except ImportError as error:  # pragma: no cover - depends on the environment
    raise ImportError(
        "TrainmapCallback for pytorch_lightning needs it: pip install pytorch-lightning"
    ) from error

from trainmap.trainer.integrations.lightning_hooks import LIGHTNING_SCALARS, LightningHooks


class TrainmapCallback(LightningHooks, Callback):
    __doc__ = LightningHooks.__doc__


__all__ = ["TrainmapCallback", "LIGHTNING_SCALARS"]
