"""fst: feed-forward fast style transfer (Johnson et al. 2016) with PyTorch Lightning and Hydra."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fst._version import __version__

if TYPE_CHECKING:
    from fst.infer.stylizer import Stylizer, stylize

__all__ = ["__version__", "stylize", "Stylizer"]


def __getattr__(name: str) -> Any:
    # Both pull in torch: imported on first use so that `import fst` stays light.
    if name in ("stylize", "Stylizer"):
        from fst.infer import stylizer

        return getattr(stylizer, name)
    raise AttributeError(f"module 'fst' has no attribute {name!r}")
