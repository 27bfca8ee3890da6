"""Training entry point: ``python -m fst.train [group=option ...] [key=value ...]``.

Only composes and wires; the pieces live in fst.nets.transformer, fst.loss.perceptual,
fst.data, fst.train.module and fst.train.callbacks.
"""

from __future__ import annotations

import logging
import sys
import warnings
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import hydra
import pytorch_lightning as pl
from hydra.core.hydra_config import HydraConfig
from hydra.types import RunMode
from omegaconf import DictConfig, OmegaConf

from fst.train.config import CONFIG_DIR, check_group_overrides, quote_braced_values, register_resolvers
from fst.errors import FstError
from fst.loss.perceptual import PerceptualLoss
from fst.train.module import StyleTransferModule
from fst.sweep.callbacks import sweep_failure_message
from fst.sweep.job import run_sweep_job

log = logging.getLogger(__name__)
register_resolvers()
# The frozen VGG is in eval mode on purpose, and small photo folders make epochs shorter
# than the logging interval (logging follows the global step anyway): both warnings are noise.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")


def style_image_path(cfg: DictConfig) -> Path:
    path = Path(str(cfg.style.image)).expanduser()
    if not path.is_file():
        raise FstError(f"style.image={cfg.style.image}: no such file")
    return path


def build_loss(cfg: DictConfig) -> PerceptualLoss:
    return PerceptualLoss(
        style_image=style_image_path(cfg),
        style_size=cfg.style.size,
        content_layers=list(cfg.loss.content_layers),
        style_layers=dict(cfg.loss.style_layers),
        content_weight=cfg.loss.content_weight,
        style_weight=cfg.loss.style_weight,
        tv_weight=cfg.loss.tv_weight,
        vgg_weights=str(cfg.loss.vgg.weights),
    )


def train(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> dict[str, Any]:
    """Train one style network as configured; returns the output dir, model path and final losses.

    ``extra_callbacks`` are added to the configured ones (programmatic use, tests).
    """
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    style_image_path(cfg)  # cheap checks first: a typo should not wait for data or VGG

    datamodule: pl.LightningDataModule = hydra.utils.instantiate(cfg.data)
    datamodule.setup("fit")  # surfaces data errors before the loss network is loaded
    module = StyleTransferModule(
        net=hydra.utils.instantiate(cfg.model.net),
        loss=build_loss(cfg),
        lr=cfg.model.lr,
        scheduler=OmegaConf.to_container(cfg.model.scheduler, resolve=True) if cfg.model.scheduler else None,
        channels_last=cfg.model.channels_last,
        compile=cfg.model.compile,
        style_name=cfg.style.name,
    )
    callbacks = [hydra.utils.instantiate(c) for c in (cfg.get("callbacks") or {}).values() if c]
    callbacks += list(extra_callbacks)
    loggers = [hydra.utils.instantiate(c) for c in (cfg.get("logger") or {}).values() if c]
    trainer: pl.Trainer = hydra.utils.instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        (output_dir / "config.yaml").write_text(OmegaConf.to_yaml(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    exported = next((c.written for c in callbacks if getattr(c, "written", None)), None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
    return {"output_dir": str(output_dir), "model_path": str(exported) if exported else None, "metrics": metrics}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    hydra_cfg = HydraConfig.get()
    if hydra_cfg.mode == RunMode.MULTIRUN:
        # Never raises: a failed job is recorded in its summary.json and the sweep goes on.
        return run_sweep_job(cfg, train, hydra_cfg.job.num, list(hydra_cfg.overrides.task))
    try:
        result = train(cfg)
    except FstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(1)
    if result["model_path"]:
        print(f"model: {result['model_path']}")
    return result["metrics"].get("train/total")


def main() -> None:
    # In place: Lightning's DDP launcher re-runs sys.argv for the other ranks.
    sys.argv[1:] = quote_braced_values(sys.argv[1:])
    try:
        check_group_overrides(sys.argv[1:])
    except FstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(2)
    _hydra_main()
    failure = sweep_failure_message()  # multirun: set when jobs failed (all of them ran)
    if failure:
        print(f"error: {failure}", file=sys.stderr)
        sys.exit(1)


if __name__ == "__main__":
    main()
