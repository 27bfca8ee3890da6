"""``model=multistyle``: one network for many paintings (conditional instance norm).

    python -m fst.train model=multistyle 'styles=[starry_night,the_wave,udnie]'
    python -m fst.train model=multistyle styles=bundled experiment=quick

``styles`` lists configs/style option names and image paths in any mix (a path's style is
called by its file stem), or is ``bundled``: the six bundled paintings. The network is the
configured TransformerNet with ``num_styles`` = the number of paintings
(fst.nets.conditional_norm): each painting owns a (gamma, beta) row in every norm layer,
the convolutions are shared.

Each sample of a batch is given its own style, drawn so that every run of ``num_styles``
consecutive samples (counted over the whole run and every DDP rank) holds each style
once, in an order drawn from the seed and the sample count alone: balanced, random, and
the same after a resume. The loss (fst.loss.multistyle) is the single-style loss with
each sample compared with its own painting. Logged per style: ``train/styles/<name>/...``
and ``val/styles/<name>/...``; the validation preview shows every photo in every style,
one row per style. Everything else (data, schedule, checkpoints, resume, DDP, sweeps,
export) is single-style training's.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch

from fst.errors import FstError
from fst.fsutil import file_sha256
from fst.images import open_rgb
from fst.loss.multistyle import MultiStyleLoss
from fst.loss.perceptual import PerceptualLoss
from fst.nets.conditional_norm import one_hot
from fst.nets.transformer import TransformerNet
from fst.resources import CONFIG_DIR, bundled_style
from fst.train.module import OptimizerFactory, SchedulerFactory, StyleTransferModule

BUNDLED = "bundled"
# A painting smaller than this on its shorter side has too little texture for Gram targets
# (the same bound as style.image in fst.train.run).
MIN_STYLE_SIDE = 64


def style_options() -> list[str]:
    """The configs/style option names (the bundled paintings)."""
    return sorted(p.stem for p in (CONFIG_DIR / "style").glob("*.yaml"))


def resolve_styles(styles: str | Sequence[str]) -> list[tuple[str, Path]]:
    """(name, painting file) for each entry of ``styles``, checked; FstError naming a bad one.

    An entry is a configs/style option name, an image path (named by its stem) or ``bundled``.
    """
    entries = [styles] if isinstance(styles, str) else [str(s) for s in styles]
    options = style_options()
    resolved: list[tuple[str, Path]] = []
    for entry in entries:
        if entry == BUNDLED:
            resolved += [(name, bundled_style(name)) for name in options]
        elif entry in options:
            resolved.append((entry, bundled_style(entry)))
        else:
            path = Path(entry).expanduser()
            if not path.is_file():
                raise FstError(f"styles: {entry!r} is neither a style ({', '.join(options)}, {BUNDLED}) "
                               "nor an image file")
            resolved.append((path.stem, path))
    if not resolved:
        raise FstError(f"styles is empty: list paintings (names among {', '.join(options)}, or image paths) "
                       f"or say {BUNDLED}")
    names = [name for name, _ in resolved]
    twice = sorted({name for name in names if names.count(name) > 1})
    if twice:
        raise FstError(f"styles: {', '.join(twice)} given more than once (each painting is one style; "
                       "rename files whose stems clash)")
    for name, path in resolved:
        image = open_rgb(path)  # FstError naming the file if it does not decode
        if min(image.size) < MIN_STYLE_SIDE:
            raise FstError(f"styles: {path}: {image.size[0]}x{image.size[1]} px is too small "
                           f"(at least {MIN_STYLE_SIDE} px on the shorter side)")
    return resolved


def balanced_styles(num_styles: int, seed: int, first_sample: int, count: int) -> torch.Tensor:
    """Style indices (count,) of samples ``first_sample`` ... of a run.

    Samples are taken in blocks of ``num_styles``: block k holds every style once, in the
    order of a permutation drawn from (seed, k). A function of the sample number alone,
    so a resumed run and every DDP rank draw what an uninterrupted single run would.
    """
    indices = []
    block_of = None
    order = None
    for n in range(first_sample, first_sample + count):
        block, position = divmod(n, num_styles)
        if block != block_of:
            generator = torch.Generator().manual_seed(seed * 1_000_003 + block)
            order, block_of = torch.randperm(num_styles, generator=generator), block
        indices.append(int(order[position]))  # type: ignore[index]
    return torch.tensor(indices, dtype=torch.long)


class MultiStyleModule(StyleTransferModule):
    """StyleTransferModule for a network of many styles, one style per sample.

    ``net`` is a factory (the configured TransformerNet as a partial) called with
    ``num_styles``; ``loss`` the configured single-style PerceptualLoss, whose VGG16, layers
    and weights the multi-style loss takes over; ``styles`` as :func:`resolve_styles` takes
    them; ``style_seed`` draws the style order. Other arguments: StyleTransferModule's.
    """

    def __init__(
        self,
        net: Callable[..., TransformerNet],
        loss: PerceptualLoss,
        optimizer: OptimizerFactory,
        scheduler: SchedulerFactory | None,
        channels_last: bool | str,
        compile: bool,
        style_name: str,
        styles: str | Sequence[str],
        style_seed: int = 0,
        **kwargs: Any,
    ) -> None:
        # Plain data for the saved hyperparameters (checkpoints load with weights_only=True).
        styles = [styles] if isinstance(styles, str) else [str(s) for s in styles]
        resolved = resolve_styles(styles)
        multi_net = net(num_styles=len(resolved)) if not isinstance(net, TransformerNet) else net
        if multi_net.config.num_styles != len(resolved):
            raise FstError(f"the network holds {multi_net.config.num_styles} styles, styles lists {len(resolved)}")
        multi_loss = MultiStyleLoss(loss, resolved)
        super().__init__(multi_net, multi_loss, optimizer, scheduler, channels_last, compile, style_name, **kwargs)
        self.style_names = [name for name, _ in resolved]
        self.style_files = {name: path for name, path in resolved}
        self.style_seed = int(style_seed)
        self._batch_weights: torch.Tensor | None = None

    @property
    def num_styles(self) -> int:
        return len(self.style_names)

    def extra_metadata(self) -> dict[str, Any]:
        """What a multi-style model file records beside the single-style keys: the style names
        (in the order of the network's table rows) and each painting's sha256."""
        return {"styles": list(self.style_names),
                "style_sha256s": {name: file_sha256(path) for name, path in self.style_files.items()}}

    def forward(self, images: torch.Tensor, style: torch.Tensor | None = None) -> torch.Tensor:
        if style is None:
            raise ValueError(f"a multi-style network needs style weights ({self.num_styles} styles: "
                             f"{', '.join(self.style_names)})")
        return self.net(self._layout(images), style)

    def _run_net(self, photos: torch.Tensor) -> torch.Tensor:
        if self._batch_weights is None or self._batch_weights.shape[0] != photos.shape[0]:
            raise RuntimeError("no styles drawn for this batch (MultiStyleModule.select_styles)")
        compiled = self.__dict__.get("_compiled_net")
        return (compiled if compiled is not None else self.net)(photos, self._batch_weights)

    def select_styles(self, style_index: torch.Tensor) -> None:
        """The styles of the samples of the batch about to be trained on."""
        style_index = style_index.to(self.device)
        self._batch_weights = one_hot(style_index, self.num_styles).to(self.device)
        self.loss.select(style_index)

    def draw_styles(self, batch_size: int) -> torch.Tensor:
        """This step's style per sample (see :func:`balanced_styles`)."""
        trainer = self._trainer
        world, rank = (trainer.world_size, trainer.global_rank) if trainer is not None else (1, 0)
        first = (self.global_step * world + rank) * batch_size
        return balanced_styles(self.num_styles, self.style_seed, first, batch_size)

    def training_step(self, batch: torch.Tensor, batch_idx: int) -> torch.Tensor:
        self.select_styles(self.draw_styles(batch.shape[0]))
        try:
            return super().training_step(batch, batch_idx)
        finally:
            self.loss.select(None)

    @torch.no_grad()
    def preview(self, photos: torch.Tensor) -> torch.Tensor:
        """``photos`` (B, 3, H, W) in every style: (num_styles * B, 3, H, W), style by style."""
        photos = self._layout(photos)
        return torch.cat([self.net(photos, one_hot(s, self.num_styles).to(photos.device))
                          for s in range(self.num_styles)])

    def validation_step(self, batch: torch.Tensor, batch_idx: int) -> None:
        """Every photo in every style: the terms averaged over styles, each style's own, one preview grid."""
        photos = self._layout(batch)
        outputs, summed, logged = [], {}, {}
        for s, name in enumerate(self.style_names):
            index = torch.full((photos.shape[0],), s, dtype=torch.long, device=photos.device)
            weights = one_hot(index, self.num_styles).to(photos.device)
            stylized = self.net(photos, weights)
            terms = self.loss(stylized, photos, net=lambda x, w=weights: self.net(x, w), style_index=index)
            for key, value in terms.items():
                if key.startswith("styles/"):
                    logged[key] = value
                else:
                    summed[key] = summed.get(key, 0.0) + value / self.num_styles
            outputs.append(stylized)
        self.log_dict({f"val/{k}": v for k, v in {**summed, **logged}.items()}, sync_dist=True)
        if batch_idx == 0 and self.trainer.is_global_zero:
            self._log_grid(photos, torch.cat(outputs))
