"""Optimisation-based stylization (Gatys et al. 2016): the baseline fst is measured against.

The one implementation behind both the quality report's Gatys rows (fst.research.quality) and
``fst optimize`` (fst.research.optimize). The pixels of one image are optimised to minimise the
same :class:`~fst.loss.perceptual.PerceptualLoss` a feed-forward model is trained on, starting
from the photo itself (or, ``init="noise"``, from uniform noise; the content target is always
the photo).

With L-BFGS (the default), one *step* is one L-BFGS iteration: ``LBFGS(max_iter=1,
line_search_fn=None)`` is stepped once per iteration, so every step costs exactly one
loss + gradient evaluation and "N steps" means the same thing as a forward/backward
budget. The curvature history lives in the optimiser state and carries over between
``.step()`` calls, so this is one continuous L-BFGS run. With Adam (``optimizer="adam"``)
one step is one Adam update, also one loss + gradient evaluation.

Keeping the image in [0, 1] (the range every fst image lives in):

* ``"clamp"`` (default): optimise the pixels directly, starting exactly at the photo, and
  project them onto [0, 1] after every step (what most public implementations do). The
  projection moves the iterate behind L-BFGS's back, so its curvature pairs are slightly
  inconsistent, but it converges much faster than the sigmoid variant early on (starry_night
  loss, 64 px chelsea: total 5.73 vs 8.57 after 10 steps; 64 px astronaut: best 1.44 vs
  1.72 within 100 steps), which is the budget range the quality report compares at.
* ``"sigmoid"``: optimise logits ``z`` with ``image = sigmoid(z)``: smooth and
  unconstrained, as L-BFGS assumes. The photo is clipped to [SIGMOID_EPS, 1 - SIGMOID_EPS]
  before its logit is taken (at most 1/4 of a grey level), else pure black/white pixels
  would start at +-inf; near-saturated pixels then move slowly (sigmoid' is small there).

Without a line search (and, for "clamp", with the projection) L-BFGS does not decrease
the loss at every step: measured on astronaut at 96 px with the starry_night loss,
"clamp" reached 1.237 after 67 steps and then wandered between ~1.25 and ~1.5, ending at
1.30 after 300. So a budget's result is the *best iterate so far*: the lowest-loss image
among those after 0..N steps, as any practical implementation would keep. Every iterate
is a valid [0, 1] image (the clamp happens before the next evaluation), so this costs
nothing but a copy, and Gatys@N can only improve with N. Each snapshot records which
iterate it is (``best_step``). The reported loss is that of the [0, 1] image delivered.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

import torch

from fst.loss.perceptual import PerceptualLoss

PARAMETRISATIONS = ("clamp", "sigmoid")
OPTIMIZERS = ("lbfgs", "adam")
INITS = ("photo", "noise")
# Learning rates by optimizer: L-BFGS takes its own step length (1 = the quasi-Newton step);
# Adam moves each pixel by about lr per step (0.02 = 5 grey levels of 255).
DEFAULT_LR = {"lbfgs": 1.0, "adam": 0.02}
SIGMOID_EPS = 1e-3
LOSS_TERMS = ("content", "style", "tv", "total")
# A progress callback: (steps done, the loss terms of the iterate that step evaluated, the new iterate).
StepCallback = Callable[[int, dict[str, float], torch.Tensor], None]


@dataclass(frozen=True)
class GatysSnapshot:
    """The result of a ``steps``-iteration budget: the best image among the iterates after
    0..``steps`` iterations (it is the one after ``best_step``), its loss terms, and the
    optimisation time from the start of the run (snapshot bookkeeping not counted)."""

    steps: int
    image: torch.Tensor  # (1, 3, H, W) in [0, 1], detached, on the loss's device
    terms: dict[str, float]
    wall_s: float
    best_step: int


@dataclass(frozen=True)
class GatysRun:
    """One optimisation: its snapshots and the loss curve.

    ``totals[i]`` is the total loss of the iterate after ``i`` steps (the value L-BFGS
    saw at the start of step ``i + 1``), for ``i = 0 .. max(steps) - 1``, plus the final
    iterate's at the end; it costs nothing extra and shows where the run first reaches a
    given loss (e.g. the fst model's).
    """

    snapshots: list[GatysSnapshot]
    totals: list[float]

    def snapshot(self, steps: int) -> GatysSnapshot:
        for snap in self.snapshots:
            if snap.steps == steps:
                return snap
        raise KeyError(f"no snapshot at {steps} steps (have {[s.steps for s in self.snapshots]})")

    def steps_to_reach(self, total: float) -> int | None:
        """The fewest steps after which the total loss is <= ``total`` (None: not within the run)."""
        for i, value in enumerate(self.totals):
            if value <= total:
                return i
        return None


def loss_terms(loss: PerceptualLoss, image: torch.Tensor, photo: torch.Tensor) -> dict[str, float]:
    """content / style / tv / total of ``image`` against ``photo`` as Python floats."""
    with torch.no_grad():
        terms = loss(image, photo)
    return {name: float(terms[name]) for name in LOSS_TERMS}


def scalar_terms(terms: dict[str, torch.Tensor]) -> dict[str, float]:
    """Every summed term of a loss's output (content, style, tv, palette, ..., total) as floats."""
    return {name: float(value.detach()) for name, value in terms.items() if "/" not in name}


def initial_image(photo: torch.Tensor, init: str, generator: torch.Generator | None = None) -> torch.Tensor:
    """Where the optimisation starts: the photo itself, or uniform noise in [0, 1] of its size
    (drawn on the CPU from ``generator``, so a seed gives the same start on every device)."""
    if init == "photo":
        return photo.detach().float().clone()
    if init == "noise":
        return torch.rand(photo.shape, generator=generator).to(photo.device)
    raise ValueError(f"init must be one of {INITS}, got {init!r}")


def gatys_stylize(
    loss: PerceptualLoss,
    photo: torch.Tensor,
    steps: Sequence[int],
    parametrisation: str = "clamp",
    lr: float | None = None,
    history_size: int = 100,
    optimizer: str = "lbfgs",
    init: str = "photo",
    generator: torch.Generator | None = None,
    callback: StepCallback | None = None,
) -> GatysRun:
    """Optimise an image of ``photo``'s size (1, 3, H, W), in [0, 1], against ``photo`` for
    ``max(steps)`` steps of ``optimizer`` (lbfgs | adam, at ``lr``, default
    :data:`DEFAULT_LR`), starting from ``init`` (photo | noise, drawn from ``generator``);
    one snapshot (best iterate so far) per entry of ``steps`` (sorted, deduplicated). A
    budget of 0 is allowed and snapshots the starting image. ``callback`` is called after
    every step (progress bars, intermediate pictures).
    """
    if parametrisation not in PARAMETRISATIONS:
        raise ValueError(f"parametrisation must be one of {PARAMETRISATIONS}, got {parametrisation!r}")
    if optimizer not in OPTIMIZERS:
        raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {optimizer!r}")
    budgets = sorted(set(int(s) for s in steps))
    if not budgets or budgets[0] < 0:
        raise ValueError(f"steps must be non-negative integers, got {list(steps)}")
    if photo.dim() != 4 or photo.shape[:2] != (1, 3):
        raise ValueError(f"photo must have shape (1, 3, H, W), got {tuple(photo.shape)}")
    photo = photo.detach().float()
    start_image = initial_image(photo, init, generator)

    if parametrisation == "sigmoid":
        variable = torch.logit(start_image.clamp(SIGMOID_EPS, 1 - SIGMOID_EPS)).requires_grad_(True)

        def current_image() -> torch.Tensor:
            return torch.sigmoid(variable)
    else:
        variable = start_image.requires_grad_(True)

        def current_image() -> torch.Tensor:
            return variable

    lr = DEFAULT_LR[optimizer] if lr is None else float(lr)
    if optimizer == "lbfgs":
        solver: torch.optim.Optimizer = torch.optim.LBFGS(
            [variable], lr=lr, max_iter=1, history_size=history_size, line_search_fn=None,
            tolerance_grad=0.0, tolerance_change=0.0)
    else:
        solver = torch.optim.Adam([variable], lr=lr)

    totals: list[float] = []  # totals[i]: loss of the iterate after i steps
    best: dict[str, Any] = {"total": float("inf"), "image": None, "step": -1}
    done = 0  # steps completed so far == index of the current iterate

    def consider(total: float) -> None:
        """Record the current iterate's loss (once) and keep the iterate if it is the best so far."""
        if len(totals) > done:  # already recorded (re-evaluated at the start of a step)
            return
        totals.append(total)
        if total < best["total"]:
            best.update(total=total, image=current_image().detach().clone(), step=done)

    evaluated: dict[str, float] = {}  # the terms of the iterate the latest step evaluated

    def closure() -> torch.Tensor:
        solver.zero_grad(set_to_none=True)
        terms = loss(current_image(), photo)
        total = terms["total"]
        total.backward()
        # VGG's input convention can hand back a strided gradient; LBFGS views it flat.
        variable.grad = variable.grad.contiguous()
        evaluated.clear()
        evaluated.update(scalar_terms(terms) if callback is not None else {"total": float(total.detach())})
        consider(evaluated["total"])
        return total

    snapshots: list[GatysSnapshot] = []
    elapsed = 0.0
    for budget in budgets:
        start = time.perf_counter()
        while done < budget:
            solver.step(closure)
            if parametrisation == "clamp":
                with torch.no_grad():
                    variable.clamp_(0.0, 1.0)
            done += 1
            if callback is not None:
                elapsed += time.perf_counter() - start  # the callback's time is not the optimisation's
                with torch.no_grad():
                    callback(done, dict(evaluated), current_image().detach())
                start = time.perf_counter()
        elapsed += time.perf_counter() - start
        # The iterate after `budget` steps is only evaluated by the next step: do it now.
        with torch.no_grad():
            consider(float(loss(current_image(), photo)["total"]))
        image = best["image"]
        snapshots.append(GatysSnapshot(budget, image, loss_terms(loss, image, photo), elapsed, best["step"]))
    return GatysRun(snapshots, totals)
