"""fst: feed-forward fast style transfer (Johnson et al. 2016) with PyTorch Lightning and Hydra."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from fst._version import __version__

from fst.stylize import stylize  # noqa: E402

if TYPE_CHECKING:
    from fst.infer.stylizer import Stylizer

__all__ = ["__version__", "stylize", "Stylizer"]


def __getattr__(name: str) -> Any:
    # Stylizer pulls in torch; imported on first use so `import fst` stays light.
    if name == "Stylizer":
        from fst.infer.stylizer import Stylizer

        return Stylizer
    raise AttributeError(f"module 'fst' has no attribute {name!r}")
