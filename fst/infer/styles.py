"""Choosing and blending the styles of a multi-style model.

A multi-style model file (fst.nets.conditional_norm) lists its styles in its metadata
(``styles``, in the order of the network's per-style rows). A style choice is

* a style name: ``"starry_night"``;
* a blend, as a mapping ``{"starry_night": 0.7, "the_wave": 0.3}`` or as text
  ``"starry_night:0.7,the_wave:0.3"`` (the ``--style`` syntax; a name without
  ``:WEIGHT`` weighs 1).

Weights are finite and >= 0 with a positive sum, and are divided by that sum: the
network gets a vector of weights summing to 1 (one-hot for one style), which mixes the
styles' (gamma, beta) rows. A single-style model takes no style choice. Every problem is
one FstError naming the model and, for a bad name, the valid styles.
"""

from __future__ import annotations

import json
import math
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import torch

from fst.errors import FstError

StyleChoice = str | Mapping[str, float] | None

METADATA_KEY = "styles"


def styles_in(metadata: Mapping[str, Any]) -> list[str]:
    """The style names a model's metadata lists; [] for a single-style model."""
    styles = metadata.get(METADATA_KEY) or []
    return [str(s) for s in styles]


def parse_style_text(text: str) -> dict[str, float]:
    """``"a"`` -> {a: 1}; ``"a:0.7,b:0.3"`` -> {a: 0.7, b: 0.3}; FstError for malformed text."""
    choice: dict[str, float] = {}
    for part in text.split(","):
        name, sep, weight = part.strip().partition(":")
        name = name.strip()
        if not name:
            raise FstError(f"style {text!r}: expected NAME or NAME:WEIGHT,NAME:WEIGHT,...")
        if name in choice:
            raise FstError(f"style {text!r}: {name} given twice")
        try:
            choice[name] = float(weight) if sep else 1.0
        except ValueError:
            raise FstError(f"style {text!r}: weight {weight.strip()!r} of {name} is not a number") from None
    return choice


def style_weights(styles: Sequence[str], choice: StyleChoice, model: str = "model") -> torch.Tensor | None:
    """The network's style input for ``choice``: float32 (len(styles),) summing to 1, or None
    for a single-style model (``styles`` empty) given no choice."""
    listed = ", ".join(styles)
    if not styles:
        if choice is None:
            return None
        raise FstError(f"{model} holds one style: a style choice is for multi-style models")
    if choice is None:
        raise FstError(f"{model} holds {len(styles)} styles: choose one or a blend "
                       f"(style=NAME or NAME:WEIGHT,...; --style on the command line) among {listed}")
    if isinstance(choice, str):
        choice = parse_style_text(choice)
    if not isinstance(choice, Mapping) or not choice:
        raise FstError(f"{model}: a style choice is a name or a mapping of names to weights, got {choice!r}")
    weights = torch.zeros(len(styles), dtype=torch.float32)
    for name, weight in choice.items():
        if name not in styles:
            raise FstError(f"{model}: unknown style {name!r}: choose among {listed}")
        try:
            value = float(weight)
        except (TypeError, ValueError):
            raise FstError(f"{model}: the weight of {name} must be a number, got {weight!r}") from None
        if not math.isfinite(value) or value < 0:
            raise FstError(f"{model}: the weight of {name} must be a finite number >= 0, got {weight}")
        weights[styles.index(name)] += value
    total = float(weights.sum())
    if not total > 0:
        raise FstError(f"{model}: style weights {dict(choice)} sum to {total:g}; they must sum to a positive number")
    return weights / total


def style_label(choice: StyleChoice) -> str:
    """A file-name-safe label for ``choice``: ``starry_night``, ``starry_night0.7+the_wave0.3``."""
    if choice is None:
        return ""
    if isinstance(choice, str):
        choice = parse_style_text(choice)
    if len(choice) == 1:
        return next(iter(choice))
    total = sum(float(w) for w in choice.values()) or 1.0
    return "+".join(f"{name}{float(w) / total:.2g}" for name, w in choice.items())


def model_file_styles(path: str | Path) -> list[str]:
    """The styles of a model file (.safetensors or .onnx) from its metadata alone; [] if single-style or unreadable."""
    path = Path(path)
    try:
        if path.suffix.lower() == ".onnx":
            import onnx

            model = onnx.load(str(path), load_external_data=False)
            from fst.nets.export_formats import ONNX_METADATA_KEY

            raw = next((p.value for p in model.metadata_props if p.key == ONNX_METADATA_KEY), None)
            return styles_in(json.loads(raw)) if raw else []
        from fst.nets.model_file import read_metadata

        return styles_in(read_metadata(path))
    except (FstError, OSError, ValueError, ImportError):
        return []
