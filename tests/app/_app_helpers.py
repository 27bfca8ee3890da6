"""Helpers shared by the app tests and their fixtures."""

from __future__ import annotations

import os
import socket
from pathlib import Path

CHROMIUM = Path(os.environ.get("FST_TEST_CHROMIUM", "/usr/bin/chromium"))


def real_cache_dir() -> str:
    """Where the VGG16 weights are cached outside the tests (before FST_HOME is redirected)."""
    return os.environ.get("FST_CACHE") or os.environ.get("FST_HOME") or str(Path.home() / ".cache" / "fst")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def multi_style_model(path: Path, styles: list[str]) -> Path:
    """A small random multi-style model file; skips the calling test where fst has no multi-style networks."""
    import dataclasses

    import pytest
    import torch

    from fst.infer.stylizer import Stylizer
    from fst.nets import TransformerNet, TransformerNetConfig, save_model

    if "num_styles" not in {f.name for f in dataclasses.fields(TransformerNetConfig)} or \
            not hasattr(Stylizer, "styles"):
        pytest.skip("this fst has no multi-style models (TransformerNetConfig.num_styles, Stylizer.styles)")
    from fst.nets.conditional_norm import style_tables

    torch.manual_seed(0)
    net = TransformerNet(TransformerNetConfig(width=8, num_residual=1, num_styles=len(styles)))
    with torch.no_grad():
        for table in style_tables(net).values():
            table.add_(0.6 * torch.randn_like(table))  # styles that differ visibly
    path.parent.mkdir(parents=True, exist_ok=True)
    return save_model(net, path, {"style_name": "blend_test", "styles": styles, "style_sha256": None, "loss": {},
                                  "steps": 0})
