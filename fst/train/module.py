"""LightningModule: trains a TransformerNet against a frozen perceptual loss."""

from __future__ import annotations

import math
from typing import Any

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid

from fst.train.export import module_metadata
from fst.loss.perceptual import PerceptualLoss
from fst.nets.transformer import TransformerNet

# Frozen VGG weights are rebuilt from fst.loss.weights on load; keeping them out of
# checkpoints saves ~30 MB per file and lets the weight source move.
_FROZEN_PREFIXES = ("loss.vgg.", "loss.content_vgg.")


class StyleTransferModule(pl.LightningModule):
    """Adam on the transformation network; every loss term logged; preview grids in validation."""

    def __init__(
        self,
        net: TransformerNet,
        loss: PerceptualLoss,
        lr: float = 1e-3,
        scheduler: dict[str, Any] | None = None,
        channels_last: bool | str = "auto",
        compile: bool = False,
        style_name: str = "style",
    ) -> None:
        super().__init__()
        self.net = net
        self.loss = loss
        self.lr = lr
        self.scheduler_cfg = dict(scheduler) if scheduler else None
        # "auto": channels_last on CUDA only; on CPU it measured 13-16% slower (BENCHMARKS.md).
        self.channels_last = channels_last if channels_last != "auto" else torch.cuda.is_available()
        self.compile_net = compile
        self.style_name = style_name
        self.strict_loading = False  # frozen VGG keys are absent from checkpoints on purpose
        self.save_hyperparameters(ignore=["net", "loss"])
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
        terms = self.loss(self._run_net(photos), photos)
        # Logged tensors stay on device: Lightning reduces them without a host sync per step.
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=False)
        self.log("loss", terms["total"].detach(), prog_bar=True, logger=False)
        return terms["total"]

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        photos = self._layout(batch)
        stylized = self.net(photos)
        terms = self.loss(stylized, photos)
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
        optimizer = torch.optim.Adam(self.net.parameters(), lr=self.lr)
        if not self.scheduler_cfg:
            return optimizer
        cfg = dict(self.scheduler_cfg)
        name = cfg.pop("name")
        interval = cfg.pop("interval", "step")
        scheduler = build_scheduler(name, optimizer, cfg, self.trainer.max_steps)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": interval}}

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(_FROZEN_PREFIXES)]:
            del state[key]
        checkpoint["fst_net_config"] = self.net.config.to_dict()
        checkpoint["fst_metadata"] = module_metadata(self, self.global_step)

    def setup(self, stage: str) -> None:
        if self.compile_net and stage == "fit":
            # Kept out of the module tree so checkpoint keys stay those of the plain net.
            self.__dict__["_compiled_net"] = torch.compile(self.net)


def build_scheduler(name: str, optimizer: torch.optim.Optimizer, cfg: dict[str, Any], max_steps: int):
    """``cosine`` (to ``min_lr_ratio`` x lr over max_steps), ``step`` (gamma every step_size) or ``none``."""
    if name == "cosine":
        ratio = float(cfg.get("min_lr_ratio", 0.0))
        total = max(1, int(max_steps))
        return torch.optim.lr_scheduler.LambdaLR(optimizer, CosineFactor(total, ratio))
    if name == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, step_size=int(cfg["step_size"]), gamma=float(cfg["gamma"]))
    raise ValueError(f"model.scheduler.name must be 'cosine' or 'step', got {name!r}")


class CosineFactor:
    """Picklable cosine decay factor for LambdaLR (lambdas cannot be checkpointed)."""

    def __init__(self, total_steps: int, min_ratio: float) -> None:
        self.total_steps = total_steps
        self.min_ratio = min_ratio

    def __call__(self, step: int) -> float:
        progress = min(step, self.total_steps) / self.total_steps
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))
