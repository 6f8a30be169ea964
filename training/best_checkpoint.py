"""The best checkpoint of a fit: ranked by SELECTION_METRIC, and restoring the best so far of a run written when the
best checkpoint was ranked by val/top1 (the same values wherever the network never changed mid-fit)."""

from __future__ import annotations

import re
import warnings

from pytorch_lightning.callbacks import ModelCheckpoint

from lightning_modules.classifier import SELECTION_METRIC

EARLIER = "ModelCheckpoint" + repr(dict(monitor="val/top1", mode="max", every_n_train_steps=0, every_n_epochs=1,
                                        train_time_interval=None))
# Restored through the legacy key below, the earlier state is still listed by Lightning as a callback to add.
warnings.filterwarnings("ignore", message=rf"Be aware that when using `ckpt_path`.*\[{re.escape(repr(EARLIER))}\]")


class BestCheckpoint(ModelCheckpoint):
    """ModelCheckpoint monitoring SELECTION_METRIC (mode max). A resumed run keeps its best so far whether its
    checkpoint holds this callback's state or that of the ModelCheckpoint on val/top1 it was written with."""

    def __init__(self, **kwargs) -> None:
        super().__init__(monitor=SELECTION_METRIC, mode="max", **kwargs)

    @property
    def _legacy_state_key(self) -> str:
        # Lightning looks a callback's state up under this key where its state_key is not in the checkpoint:
        # main.py's best checkpoint as it was before it ranked by SELECTION_METRIC. A private Lightning hook, overridden
        # because it is the only way to read a callback's state under another key.
        return EARLIER
