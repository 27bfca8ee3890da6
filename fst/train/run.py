"""Training entry point: ``python -m fst.train [group=option ...] [key=value ...]``.

Only instantiates and connects what the configs describe: ``data`` (a LightningDataModule),
``loss`` (fst.loss.perceptual), ``model`` (fst.train.module with its net, optimizer and
scheduler), ``callbacks``, ``logger`` and ``trainer``. In a multirun (``-m``) each job runs
through the configured ``sweep.job`` wrapper (fst.sweep.job), which records the job's
outcome for the sweep report instead of ending the sweep at the first failure.

Rerunning a command with the same run directory continues it (fst.train.resume): from the
newest sound checkpoint, with the config it started with (or ``resume.allow_changes=true``);
a finished run says so and exits 0. SIGTERM/SIGUSR1 save a checkpoint and exit 0
(fst.train.reliability). docs/reliability.md lists what is promised.
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
from omegaconf import DictConfig, OmegaConf, open_dict

from fst.errors import EXIT_FAILED, EXIT_USAGE, FstError, UsageError
from fst.fsutil import atomic_write_text
from fst.images import open_rgb
from fst.train import resume as resuming
from fst.train.callbacks import ExportModel
from fst.train.config import CONFIG_DIR, check_group_overrides, instantiate, quote_braced_values, register_resolvers
from fst.train.reliability import AtomicCheckpointIO

log = logging.getLogger(__name__)
register_resolvers()
# The frozen VGG is in eval mode on purpose, and small photo folders make epochs shorter
# than the logging interval (logging follows the global step anyway): both warnings are noise.
warnings.filterwarnings("ignore", message=r".*module\(s\) in eval mode.*")
warnings.filterwarnings("ignore", message=r".*smaller than the logging interval.*")


# A painting smaller than this on its shorter side has too little texture for Gram targets.
MIN_STYLE_SIDE = 64


def check_style_image(cfg: DictConfig) -> None:
    """The cheapest check first: a typo in style.image should not wait for data or VGG16."""
    path = Path(str(cfg.style.image)).expanduser()
    if not path.is_file():
        raise FstError(f"style.image={cfg.style.image}: no such file")
    image = open_rgb(path)  # FstError naming the file if it does not decode
    if min(image.size) < MIN_STYLE_SIDE:
        raise FstError(f"style.image={cfg.style.image}: {image.size[0]}x{image.size[1]} px is too small "
                       f"(at least {MIN_STYLE_SIDE} px on the shorter side)")


def _normalized(config: dict[str, Any], run_dir: Path) -> dict[str, Any]:
    """``config`` with its run directory written as ``<run>`` (so runs of one config compare equal)."""
    prefix = str(run_dir)

    def norm(value: Any) -> Any:
        if isinstance(value, dict):
            return {k: norm(v) for k, v in value.items()}
        if isinstance(value, list):
            return [norm(v) for v in value]
        return value.replace(prefix, "<run>") if isinstance(value, str) else value

    return norm(config)


def _plan_resume(cfg: DictConfig) -> dict[str, Any]:
    """Where this run writes and what it continues from: {"output_dir", "ckpt_path", "finished", "write_config"}.

    Raises FstError for a changed config (unless ``resume.allow_changes``). May move
    ``paths.output_dir`` to an earlier run's folder (``resume=auto``).
    """
    output_dir = Path(cfg.paths.output_dir)
    plan: dict[str, Any] = {"output_dir": output_dir, "ckpt_path": cfg.get("ckpt_path"), "finished": None,
                            "write_config": True}
    if plan["ckpt_path"]:  # an explicit checkpoint: continue from it, wherever it is
        return plan
    mode = OmegaConf.select(cfg, "resume.mode", default="dir")
    allow_changes = bool(OmegaConf.select(cfg, "resume.allow_changes", default=False))

    if mode == "auto" and resuming.read_config(output_dir) is None:
        mine = _normalized(resuming.resolved(cfg), output_dir)
        runs = output_dir.parent
        for run in sorted((p for p in runs.iterdir() if p.is_dir() and p != output_dir), reverse=True) if runs.is_dir() else ():
            old = resuming.read_config(run)
            if old is None or resuming.config_differences(_normalized(old, run), mine):
                continue
            if (run / resuming.FINISHED_FILE).is_file() or any((run / resuming.CHECKPOINT_DIR).glob("*.ckpt")):
                output_dir = run
                with open_dict(cfg):
                    cfg.paths.output_dir = str(run)
                print(f"resume=auto: continuing {run}", file=sys.stderr, flush=True)
                break
        plan["output_dir"] = output_dir
    elif mode not in ("dir", "auto"):
        raise FstError(f"resume.mode must be dir or auto, got {mode!r}")

    old = resuming.read_config(output_dir)
    if old is not None:
        diffs = resuming.config_differences(_normalized(old, output_dir),
                                            _normalized(resuming.resolved(cfg), output_dir))
        if diffs and not allow_changes:
            shown = "; ".join(diffs[:8]) + (f"; and {len(diffs) - 8} more" if len(diffs) > 8 else "")
            raise FstError(f"{output_dir} was started with other settings ({shown}): rerun with the same "
                           "settings, pass another hydra.run.dir, or resume.allow_changes=true")
        if diffs:
            print(f"warning: continuing {output_dir} with changed settings: {'; '.join(diffs)}",
                  file=sys.stderr, flush=True)
        plan["write_config"] = bool(diffs)
        finished = resuming.read_finished(output_dir)
        if finished is not None and int(finished.get("steps", 0)) >= int(cfg.trainer.max_steps) > 0:
            plan["finished"] = finished
            return plan
    ckpt_dir = Path(OmegaConf.select(cfg, "callbacks.model_checkpoint.dirpath", default=None)
                    or output_dir / resuming.CHECKPOINT_DIR)
    found = resuming.find_resume_checkpoint(ckpt_dir)
    if found is not None:
        plan["ckpt_path"] = str(found[0])
        print(f"resuming from {found[0]} (step {found[1]})", file=sys.stderr, flush=True)
    return plan


def _instantiate_all(group: DictConfig | None) -> list[Any]:
    return [instantiate(node) for node in (group or {}).values() if node]


def train(cfg: DictConfig, extra_callbacks: Sequence[pl.Callback] = ()) -> dict[str, Any]:
    """Train one style network as configured; returns the output dir, model path and final losses.

    ``extra_callbacks`` are added to the configured ones (programmatic use, tests, sweeps).
    """
    pl.seed_everything(cfg.seed, workers=True)
    check_style_image(cfg)

    datamodule: pl.LightningDataModule = instantiate(cfg.data)
    datamodule.setup("fit")  # surfaces data errors before the loss network is loaded
    plan = _plan_resume(cfg)  # may move paths.output_dir (resume=auto): before anything is instantiated
    output_dir = Path(cfg.paths.output_dir)
    if plan["finished"] is not None:
        model = plan["finished"].get("model")
        print(f"{output_dir}: training already finished at step {plan['finished']['steps']}"
              + (f" (model: {output_dir / model})" if model else "") + "; nothing to do", file=sys.stderr)
        return {"output_dir": str(output_dir), "model_path": str(output_dir / model) if model else None,
                "metrics": {}, "finished": True, "preempted": False}
    module: pl.LightningModule = instantiate(cfg.model, loss=instantiate(cfg.loss))
    callbacks = [*_instantiate_all(cfg.get("callbacks")), *extra_callbacks]
    loggers = _instantiate_all(cfg.get("logger"))
    trainer: pl.Trainer = instantiate(cfg.trainer, callbacks=callbacks, logger=loggers, plugins=[AtomicCheckpointIO()])
    check_trainer = getattr(module, "check_trainer", None)
    if check_trainer is not None:  # one line naming the key, before Lightning's own traceback
        check_trainer(trainer)

    if getattr(datamodule, "resumes_mid_epoch", False) and trainer.world_size == 1:
        # It keeps its data position in checkpoints itself (FolderDataModule.state_dict).
        warnings.filterwarnings("ignore", message=r".*your dataloader is not resumable.*")
    if trainer.is_global_zero:
        output_dir.mkdir(parents=True, exist_ok=True)
        if plan["write_config"]:
            atomic_write_text(output_dir / resuming.CONFIG_FILE, OmegaConf.to_yaml(cfg, resolve=True))
        if plan["ckpt_path"]:
            resuming.remove_stale_temporaries(Path(plan["ckpt_path"]).parent)
    trainer.fit(module, datamodule=datamodule, ckpt_path=plan["ckpt_path"])

    preempted = any(getattr(c, "preempted", False) for c in callbacks)
    reached = int(trainer.max_steps) > 0 and trainer.global_step >= trainer.max_steps
    exporter = next((c for c in callbacks if isinstance(c, ExportModel)), None)
    if exporter is not None and exporter.written is None and reached and not preempted and not trainer.interrupted:
        # Resumed from the final checkpoint of a run killed before its export: Lightning skips
        # the (finished) loop, so export here.
        exporter.export(trainer, module)
    exported = next((c.written for c in callbacks if getattr(c, "written", None)), None)
    if trainer.is_global_zero and reached and not preempted and not trainer.interrupted:
        resuming.write_finished(output_dir, trainer.global_step, exported)
    metrics = {k: float(v) for k, v in trainer.callback_metrics.items() if k.startswith(("train/", "val/"))}
    return {"output_dir": str(output_dir), "model_path": str(exported) if exported else None, "metrics": metrics,
            "finished": False, "preempted": preempted, "global_step": trainer.global_step}


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
    if result.get("preempted"):
        print(f"stopped at step {result['global_step']}: rerun the same command to continue", file=sys.stderr)
        return None
    if result["model_path"] and not result.get("finished"):
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
