"""LightningModule: trains a TransformerNet against a frozen perceptual loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid

from fst.loss.perceptual import PerceptualLoss
from fst.nets.transformer import TransformerNet
from fst.train.checkpoint import add_metadata

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

# The frozen VGG16 weights stay out of checkpoints (~30 MB per file, and the weight source
# may move): on_save_checkpoint drops them, on_load_checkpoint puts the live module's back.
FROZEN_PREFIXES = ("loss.vgg.", "loss.content_vgg.")


class StyleTransferModule(pl.LightningModule):
    """The optimizer on the transformation network; every loss term logged; preview grids in validation.

    Built by Hydra from ``configs/model`` (``net``, ``optimizer`` and ``scheduler``
    factories) plus the instantiated ``configs/loss``. ``optimizer`` is called with the
    network's parameters, ``scheduler`` (optional) with the optimizer; the scheduler is
    stepped every training step.
    """

    def __init__(
        self,
        net: TransformerNet,
        loss: PerceptualLoss,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None,
        channels_last: bool | str,
        compile: bool,
        style_name: str,
    ) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # "auto": channels_last on CUDA only; on CPU it measured 13-16% slower (BENCHMARKS.md).
        self.channels_last = channels_last if channels_last != "auto" else torch.cuda.is_available()
        self.compile_net = compile
        self.style_name = style_name
        # Factories and modules are not plain data: checkpoints stay loadable with weights_only=True.
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler"])
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
            self.loss.to(memory_format=torch.channels_last)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._run_net(self._layout(images))

    def _run_net(self, photos: torch.Tensor) -> torch.Tensor:
        compiled = self.__dict__.get("_compiled_net")
        return compiled(photos) if compiled is not None else self.net(photos)

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        photos = self._layout(batch)
        terms = self.loss(self._run_net(photos), photos, net=self._run_net)  # net: for the stability term
        # For NonFiniteGuard (fst.train.reliability): it names the term that went bad.
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        # Logged tensors stay on device: Lightning reduces them without a host sync per step.
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=False)
        self.log("loss", terms["total"].detach(), prog_bar=True, logger=False)
        return terms["total"]

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        photos = self._layout(batch)
        stylized = self.net(photos)
        terms = self.loss(stylized, photos, net=self.net)
        self.log_dict({f"val/{k}": v for k, v in terms.items()}, sync_dist=True)
        if batch_idx == 0 and self.trainer.is_global_zero:
            self._log_grid(photos, stylized)

    def _log_grid(self, photos: torch.Tensor, stylized: torch.Tensor) -> None:
        grid = make_grid(torch.cat([photos, stylized.clamp(0, 1)]).float().cpu(), nrow=photos.shape[0], padding=2)
        for logger in self.loggers:
            experiment = getattr(logger, "experiment", None)
            if hasattr(experiment, "add_image"):
                experiment.add_image("val/stylized", grid, global_step=self.global_step)

    def configure_optimizers(self) -> Any:
        optimizer = self.optimizer_factory(params=self.net.parameters())
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
            del state[key]
        add_metadata(checkpoint, self, self.global_step)

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Loading is strict: every other key (the net, the style targets) must be in the file.
        state = checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            if key.startswith(FROZEN_PREFIXES):
                state.setdefault(key, value)

    def setup(self, stage: str) -> None:
        if self.compile_net and stage == "fit":
            # Kept out of the module tree so checkpoint keys stay those of the plain net.
            self.__dict__["_compiled_net"] = torch.compile(self.net)
