"""Learning-rate schedules for ``model/scheduler=...`` (configs/model/scheduler/*.yaml).

Each is a factory ``(optimizer, **settings) -> LRScheduler`` that Hydra binds as a
partial; StyleTransferModule calls it with its optimizer and steps it every training step.
"""

from __future__ import annotations

import math

import torch


class WarmupCosine:
    """Picklable LambdaLR factor (lambdas cannot be checkpointed): linear warm-up over
    ``warmup_steps``, then cosine decay from 1 to ``min_ratio`` at ``total_steps``."""

    def __init__(self, total_steps: int, min_ratio: float, warmup_steps: int) -> None:
        self.total_steps = total_steps
        self.min_ratio = min_ratio
        self.warmup_steps = warmup_steps

    def __call__(self, step: int) -> float:
        if step < self.warmup_steps:
            return (step + 1) / self.warmup_steps
        span = max(1, self.total_steps - self.warmup_steps)
        progress = min(step - self.warmup_steps, span) / span
        return self.min_ratio + (1 - self.min_ratio) * 0.5 * (1 + math.cos(math.pi * progress))


def warmup_cosine(
    optimizer: torch.optim.Optimizer, total_steps: int, min_lr_ratio: float, warmup_steps: int
) -> torch.optim.lr_scheduler.LambdaLR:
    """Cosine decay to ``min_lr_ratio`` x lr over ``total_steps``, after a linear warm-up."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    total_steps = max(1, int(total_steps))
    # A run shorter than the warm-up (a debug run, a smoke test) warms up over half of it.
    warmup_steps = min(int(warmup_steps), total_steps // 2)
    factor = WarmupCosine(total_steps, float(min_lr_ratio), warmup_steps)
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)
