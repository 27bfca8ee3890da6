"""fst: feed-forward fast style transfer (Johnson et al. 2016) with PyTorch Lightning and Hydra."""

__version__ = "0.1.0"

from fst.stylize import stylize  # noqa: E402

__all__ = ["__version__", "stylize"]
