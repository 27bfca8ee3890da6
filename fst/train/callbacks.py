"""Lightning callbacks: end-of-run export of the model file."""

from __future__ import annotations

import logging
from pathlib import Path

import pytorch_lightning as pl

from fst.nets.model_file import save_model
from fst.train.checkpoint import module_metadata

log = logging.getLogger(__name__)


class ExportModel(pl.Callback):
    """Writes ``model.safetensors`` when training ends (rank 0 only)."""

    def __init__(self, path: str) -> None:
        self.path = Path(path)
        self.written: Path | None = None

    def on_train_end(self, trainer: pl.Trainer, pl_module: pl.LightningModule) -> None:
        if not trainer.is_global_zero:
            return
        self.written = save_model(pl_module.net, self.path, module_metadata(pl_module, trainer.global_step))
        log.info("exported model: %s", self.written)
