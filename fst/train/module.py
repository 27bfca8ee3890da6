"""LightningModule: trains a TransformerNet against a frozen perceptual loss."""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytorch_lightning as pl
import torch
from torchvision.utils import make_grid

from fst import nets
from fst.errors import FstError
from fst.fsutil import file_sha256
from fst.infer.backends import resolve_model
from fst.loss.adversarial import OBJECTIVES, PaintingCrops, discriminator_loss, generator_loss
from fst.loss.perceptual import PerceptualLoss
from fst.nets.transformer import TransformerNet
from fst.train.checkpoint import add_metadata

OptimizerFactory = Callable[[Iterable[torch.nn.Parameter]], torch.optim.Optimizer]
SchedulerFactory = Callable[[torch.optim.Optimizer], torch.optim.lr_scheduler.LRScheduler]

# The state of the painting crops' random generator in checkpoints (adversarial term only).
CROPS_RNG_KEY = "fst_painting_crops_rng"

# The frozen VGG16 weights stay out of checkpoints (~30 MB per file, and the weight source
# may move): on_save_checkpoint drops them, on_load_checkpoint puts the live module's back.
FROZEN_PREFIXES = ("loss.vgg.", "loss.content_vgg.")

# What a model file records about how it was made beyond its own run (an earlier starting
# point, styles added by `fst add-style`): carried into the init_from record of a model trained on from it.
LINEAGE_KEYS = ("init_from", "added_styles")


def load_initial_weights(net: TransformerNet, spec: str) -> dict[str, Any]:
    """Start ``net`` from the weights of the model file ``spec`` (a path or a model name).

    The architectures must match, except that layers ``net`` has and the file lacks keep
    their initialisation (tone conditioning added to a trained model starts as the
    identity). Returns what the new model file records about its starting point.
    """
    path = resolve_model(spec)
    source, meta = nets.load(path)
    _check_shapes(net, source, path)
    missing, unexpected = net.load_state_dict(source.state_dict(), strict=False)
    if unexpected:
        raise FstError(f"model.init_from={spec}: {path} has weights this network lacks: {', '.join(unexpected[:4])}")
    record = {"model": path.name, "sha256": file_sha256(path), "steps": meta.get("steps"),
              "training": meta.get("training"), "new_layers": sorted({k.rsplit(".", 1)[0] for k in missing})}
    # The base's own history goes along, so the new file still says how every weight was made.
    record.update({key: meta[key] for key in LINEAGE_KEYS if meta.get(key)})
    return record


def _check_shapes(net: TransformerNet, source: TransformerNet, path: Path) -> None:
    # load_state_dict(strict=False) still raises on a shape mismatch, as a multi-line RuntimeError.
    own = net.state_dict()
    for key, value in source.state_dict().items():
        if key in own and own[key].shape != value.shape:
            raise FstError(f"model.init_from: {path} is another architecture ({key}: {tuple(value.shape)} "
                           f"in the file, {tuple(own[key].shape)} here)")


class StyleTransferModule(pl.LightningModule):
    """The optimizer on the transformation network; every loss term logged; preview grids in validation.

    Built by Hydra from ``configs/model`` (``net``, ``optimizer`` and ``scheduler``
    factories) plus the instantiated ``configs/loss``. ``optimizer`` is called with the
    network's parameters, ``scheduler`` (optional) with the optimizer; the scheduler is
    stepped every training step.

    With ``loss.adversarial_weight`` > 0 a patch discriminator trains beside the network
    (``discriminator``: the ``model/discriminator`` node, with its ``net`` and ``optimizer``
    factories, ``objective``, ``paintings``, ``painting_size`` and ``crop``), under manual
    optimisation: each training step is one step of the network on perceptual +
    weighted adversarial loss (the discriminator frozen), the scheduler's step, then one
    step of the discriminator on painting crops against the same stylized crops (detached).
    One training step is one global step, as without the term. Lightning's automatic
    gradient clipping and gradient accumulation do not exist in this mode (it refuses
    ``trainer.gradient_clip_val`` and ``trainer.accumulate_grad_batches`` > 1). With the
    weight at 0 nothing of this is built, and training is exactly what it was without it.
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
        discriminator: Mapping[str, Any] | None = None,
        init_from: str | None = None,
        tone_lr: float = 0.01,
    ) -> None:
        super().__init__()
        self.net = net
        self.tone_lr = float(tone_lr)
        self.init_source = load_initial_weights(net, init_from) if init_from else None
        self.loss = loss
        self.optimizer_factory = optimizer
        self.scheduler_factory = scheduler
        # "auto": channels_last on CUDA only; on CPU it measured 13-16% slower (BENCHMARKS.md).
        self.channels_last = channels_last if channels_last != "auto" else torch.cuda.is_available()
        self.compile_net = compile
        self.style_name = style_name
        self.adversarial_weight = float(getattr(loss, "adversarial_weight", 0.0))
        if self.adversarial_weight > 0:
            self._build_adversarial(discriminator)
        # Factories and modules are not plain data: checkpoints stay loadable with weights_only=True.
        self.save_hyperparameters(ignore=["net", "loss", "optimizer", "scheduler", "discriminator"])
        if self.channels_last:
            self.net.to(memory_format=torch.channels_last)
            self.loss.to(memory_format=torch.channels_last)
            if self.adversarial_weight > 0:
                self.discriminator.to(memory_format=torch.channels_last)

    def _build_adversarial(self, spec: Mapping[str, Any] | None) -> None:
        if not spec:
            raise FstError("loss.adversarial_weight > 0 needs a discriminator: model/discriminator=patch")
        objective = str(spec["objective"])
        if objective not in OBJECTIVES:
            raise FstError(f"model.discriminator.objective={objective}: choose one of {', '.join(OBJECTIVES)}")
        paintings = list(spec.get("paintings") or [self.loss.style_image_path])
        if None in paintings:
            raise FstError("the adversarial term needs the painting as a file: set model.discriminator.paintings")
        self.adversarial_objective = objective
        self.painting_crops = PaintingCrops(paintings, spec["painting_size"], spec["crop"])
        # Its own generator, seeded from the run's seed: other draws from the global RNG
        # (data loader iterators, validation) cannot move the crops, and a checkpoint
        # carries its state whole.
        self.crops_rng = torch.Generator().manual_seed(int(torch.randint(2**62, (1,))))
        self.discriminator = spec["net"]()
        self.discriminator_optimizer_factory = spec["optimizer"]
        self.automatic_optimization = False

    def check_trainer(self, trainer: pl.Trainer) -> None:
        """What this module cannot train under, as one line (Lightning's own message is a traceback)."""
        if self.automatic_optimization:
            return
        if trainer.gradient_clip_val:
            raise FstError(f"trainer.gradient_clip_val={trainer.gradient_clip_val}: gradient clipping is not "
                           "available with the adversarial term (loss.adversarial_weight > 0)")
        if trainer.accumulate_grad_batches != 1:
            raise FstError(f"trainer.accumulate_grad_batches={trainer.accumulate_grad_batches}: gradient "
                           "accumulation is not available with the adversarial term (loss.adversarial_weight > 0)")

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self._run_net(self._layout(images))

    def _run_net(self, photos: torch.Tensor) -> torch.Tensor:
        compiled = self.__dict__.get("_compiled_net")
        return compiled(photos) if compiled is not None else self.net(photos)

    def _layout(self, images: torch.Tensor) -> torch.Tensor:
        return images.contiguous(memory_format=torch.channels_last) if self.channels_last else images

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        if self.adversarial_weight > 0:
            return self._adversarial_training_step(batch)
        photos = self._layout(batch)
        terms = self.loss(self._run_net(photos), photos, net=self._run_net)  # net: for the stability term
        # For NonFiniteGuard (fst.train.reliability): it names the term that went bad.
        self.last_terms = {k: v.detach() for k, v in terms.items()}
        # Logged tensors stay on device: Lightning reduces them without a host sync per step.
        self.log_dict({f"train/{k}": v.detach() for k, v in terms.items()}, prog_bar=False)
        self.log("loss", terms["total"].detach(), prog_bar=True, logger=False)
        return terms["total"]

    def _adversarial_training_step(self, batch: torch.Tensor) -> torch.Tensor:
        """One step of the network (perceptual + adversarial loss), then one of the discriminator."""
        net_optimizer, disc_optimizer = self.optimizers()
        photos = self._layout(batch)
        stylized = self._run_net(photos)

        self.toggle_optimizer(net_optimizer)  # the discriminator's weights take no gradient here
        terms = self.loss(stylized, photos, net=self._run_net)
        fake_logits = self.discriminator(stylized)
        terms["adversarial"] = self.adversarial_weight * generator_loss(fake_logits, self.adversarial_objective)
        terms["total"] = terms["total"] + terms["adversarial"]
        self.last_terms = {k: v.detach() for k, v in terms.items()}  # NonFiniteGuard reads them at each step
        net_optimizer.zero_grad(set_to_none=True)
        self.manual_backward(terms["total"])
        net_optimizer.step()
        net_optimizer.zero_grad(set_to_none=True)
        self.untoggle_optimizer(net_optimizer)
        scheduler = self.lr_schedulers()
        if scheduler is not None:
            scheduler.step()

        self.toggle_optimizer(disc_optimizer)
        paintings = self._layout(self.painting_crops.sample(photos.shape[0], self.crops_rng, photos.device).to(stylized.dtype))
        # One forward for both halves: one power iteration of the spectral norms per step.
        logits = self.discriminator(torch.cat([paintings, stylized.detach()]))
        real_logits, fake_logits = logits.split([paintings.shape[0], photos.shape[0]])
        disc_terms = {"discriminator": discriminator_loss(real_logits, fake_logits, self.adversarial_objective),
                      "discriminator/real_logit": real_logits.detach().float().mean(),
                      "discriminator/fake_logit": fake_logits.detach().float().mean()}
        self.last_terms = {k: v.detach() for k, v in disc_terms.items()}
        disc_optimizer.zero_grad(set_to_none=True)
        self.manual_backward(disc_terms["discriminator"])
        with _not_a_global_step(disc_optimizer):
            disc_optimizer.step()
        disc_optimizer.zero_grad(set_to_none=True)
        self.untoggle_optimizer(disc_optimizer)

        logged = {**{k: v.detach() for k, v in terms.items()}, **{k: v.detach() for k, v in disc_terms.items()}}
        self.log_dict({f"train/{k}": v for k, v in logged.items()}, prog_bar=False)
        self.log("loss", terms["total"].detach(), prog_bar=True, logger=False)
        return terms["total"].detach()

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
        optimizer = self.optimizer_factory(params=self._parameter_groups())
        if self.adversarial_weight > 0:
            optimizers = [optimizer, self.discriminator_optimizer_factory(params=self.discriminator.parameters())]
            if self.scheduler_factory is None:
                return optimizers
            return optimizers, [{"scheduler": self.scheduler_factory(optimizer=optimizer), "interval": "step"}]
        if self.scheduler_factory is None:
            return optimizer
        scheduler = self.scheduler_factory(optimizer=optimizer)
        return {"optimizer": optimizer, "lr_scheduler": {"scheduler": scheduler, "interval": "step"}}

    def _parameter_groups(self) -> list[dict[str, Any]]:
        # The tone conditioning's twelve numbers must travel about 1 where a convolution
        # weight travels 0.01, and Adam moves every parameter by about its lr per step:
        # they get their own lr (the scheduler scales both groups alike).
        tone = [p for name, p in self.net.named_parameters() if name.startswith("tone.")]
        rest = [p for name, p in self.net.named_parameters() if not name.startswith("tone.")]
        if not tone:
            return [{"params": rest}]
        return [{"params": rest}, {"params": tone, "lr": self.tone_lr}]

    def on_save_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        state = checkpoint["state_dict"]
        for key in [k for k in state if k.startswith(FROZEN_PREFIXES)]:
            del state[key]
        add_metadata(checkpoint, self, self.global_step)
        if self.adversarial_weight > 0:
            checkpoint[CROPS_RNG_KEY] = self.crops_rng.get_state()

    def on_load_checkpoint(self, checkpoint: dict[str, Any]) -> None:
        # Loading is strict: every other key (the net, the style targets) must be in the file.
        state = checkpoint["state_dict"]
        for key, value in self.state_dict().items():
            if key.startswith(FROZEN_PREFIXES):
                state.setdefault(key, value)
        if self.adversarial_weight > 0 and CROPS_RNG_KEY in checkpoint:
            self.crops_rng.set_state(checkpoint[CROPS_RNG_KEY])

    def setup(self, stage: str) -> None:
        if self.compile_net and stage == "fit":
            # Kept out of the module tree so checkpoint keys stay those of the plain net.
            self.__dict__["_compiled_net"] = torch.compile(self.net)


@contextmanager
def _not_a_global_step(optimizer: Any) -> Iterator[None]:
    """Step ``optimizer`` without counting it as a global step.

    Under manual optimisation Lightning counts every optimizer's step as one global step
    (a known upstream behaviour of Lightning 2.x), so the discriminator's would halve
    ``trainer.max_steps`` and move the checkpoints, the schedule and the data position
    (all counted in global steps). The LightningOptimizer's step hooks do the counting;
    they are set to no-ops for this one step. Everything else of its step (precision
    plugin, ``on_before_optimizer_step`` callbacks such as NonFiniteGuard) still runs.
    """
    before, after = optimizer._on_before_step, optimizer._on_after_step
    optimizer._on_before_step = optimizer._on_after_step = _nothing
    try:
        yield
    finally:
        optimizer._on_before_step, optimizer._on_after_step = before, after


def _nothing() -> None:
    return None
