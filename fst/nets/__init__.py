"""The style network and its model files.

>>> from fst import nets
>>> net, metadata = nets.load("starry_night.safetensors")  # or a pytorch/examples .pth
"""

from fst.nets.model_file import load, read_metadata, save_model
from fst.nets.transformer import TransformerNet, TransformerNetConfig

__all__ = ["TransformerNet", "TransformerNetConfig", "load", "read_metadata", "save_model"]
