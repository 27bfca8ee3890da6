"""Training entry point: ``python -m fst.train [group=option ...] [key=value ...]``.

Only instantiates and connects what the configs describe: ``data`` (a LightningDataModule),
``loss`` (fst.loss.perceptual), ``model`` (fst.train.module with its net, optimizer and
scheduler), ``callbacks``, ``logger`` and ``trainer``. In a multirun (``-m``) each job runs
through the configured ``sweep.job`` wrapper (fst.sweep.job), which records the job's
outcome for the sweep report instead of ending the sweep at the first failure.
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

from fst.errors import EXIT_FAILED, EXIT_USAGE, FstError, UsageError
from fst.fsutil import atomic_write_text
from fst.train.config import CONFIG_DIR, check_group_overrides, instantiate, quote_braced_values, register_resolvers

log = logging.getLogger(__name__)
register_resolvers()
# The frozen VGG is in eval mode on purpose, and small photo folders make epochs shorter
# than the logging interval (logging follows the global step anyway): both warnings are noise.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")


def check_style_image(cfg: DictConfig) -> None:
    """The cheapest check first: a typo in style.image should not wait for data or VGG16."""
    if not Path(str(cfg.style.image)).expanduser().is_file():
        raise FstError(f"style.image={cfg.style.image}: no such file")


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    return [instantiate(node) for node in (group or {}).values() if node]


def train(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> dict[str, Any]:
    """Train one style network as configured; returns the output dir, model path and final losses.

    ``extra_callbacks`` are added to the configured ones (programmatic use, tests, sweeps).
    """
    pl.seed_everything(cfg.seed, workers=True)
    output_dir = Path(cfg.paths.output_dir)
    check_style_image(cfg)

    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    datamodule.setup("fit")  # surfaces data errors before the loss network is loaded
    module: pl.LightningModule = instantiate(cfg.model, loss=instantiate(cfg.loss))
    callbacks = [*_instantiate_all(cfg.get("callbacks")), *extra_callbacks]
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers)

    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        atomic_write_text(output_dir / "config.yaml", OmegaConf.to_yaml(cfg, resolve=True))
    trainer.fit(module, datamodule=datamodule, ckpt_path=cfg.get("ckpt_path"))

    exported = next((c.written for c in callbacks if getattr(c, "written", None)), None)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
    return {"output_dir": str(output_dir), "model_path": str(exported) if exported else None, "metrics": metrics}


@hydra.main(version_base="1.3", config_path=str(CONFIG_DIR), config_name="train")
def _hydra_main(cfg: DictConfig) -> float | None:
    job_wrapper = OmegaConf.select(cfg, "sweep.job")
    if job_wrapper is not None and HydraConfig.get().mode == RunMode.MULTIRUN:
        return instantiate(job_wrapper)(cfg, train)
    try:
        result = train(cfg)
    except FstError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_FAILED)
    if result["model_path"]:
        print(f"model: {result['model_path']}")
    return result["metrics"].get("train/total")


def main() -> None:
    # In place: Lightning's DDP launcher re-runs sys.argv for the other ranks.
    sys.argv[1:] = quote_braced_values(sys.argv[1:])
    try:
        check_group_overrides(sys.argv[1:])
    except UsageError as exc:
        print(f"error: {exc}", file=sys.stderr)
        sys.exit(EXIT_USAGE)
    _hydra_main()


if __name__ == "__main__":
    main()
