"""Frozen VGG16 loss network: returns the activations at the requested taps."""
from __future__ import annotations

from collections import OrderedDict
from collections.abc import Sequence
from dataclasses import dataclass

import torch
from torch import Tensor, nn

CAFFE_MEAN_BGR = (103.939, 116.779, 123.68)  # Caffe VGG mean, 0-255 scale, BGR order
IMAGENET_MEAN_RGB = (0.485, 0.456, 0.406)
IMAGENET_STD_RGB = (0.229, 0.224, 0.225)
PREPROCESSINGS = ("caffe", "imagenet")

# (torchvision `features` index, in channels, out channels, Keras layer name)
CONV_LAYERS: tuple[tuple[int, int, int, str], ...] = (
    (0, 3, 64, "block1_conv1"), (2, 64, 64, "block1_conv2"), (5, 64, 128, "block2_conv1"),
    (7, 128, 128, "block2_conv2"), (10, 128, 256, "block3_conv1"), (12, 256, 256, "block3_conv2"),
    (14, 256, 256, "block3_conv3"), (17, 256, 512, "block4_conv1"), (19, 512, 512, "block4_conv2"),
    (21, 512, 512, "block4_conv3"), (24, 512, 512, "block5_conv1"), (26, 512, 512, "block5_conv2"),
    (28, 512, 512, "block5_conv3"),
)



@dataclass(frozen=True)
class VGGWeights:
    """Loss-network weights from any source (see fst.loss.weights) and their input convention."""

    state_dict: dict[str, torch.Tensor]  # torchvision `features` keys, fp32, OIHW
    preprocessing: str                   # "caffe" or "imagenet"
    source: str                          # where they came from, for logs


def _layer_names() -> list[str]:
    names = []
    for block, n_convs in enumerate((2, 2, 3, 3, 3), start=1):
        for i in range(1, n_convs + 1):
            names += [f"conv{block}_{i}", f"relu{block}_{i}"]
        names.append(f"pool{block}")
    return names


# Index i is torchvision's vgg16().features[i].
VGG16_LAYER_NAMES: list[str] = _layer_names()


class VGG16Features(nn.Module):
    """VGG16 conv base truncated after the deepest tap, frozen and always in eval mode.

    ``forward`` takes NCHW RGB images in [0, 1] and applies the weights' own input
    convention (caffe: BGR, 0-255, mean-subtracted; imagenet: mean/std) internally, so
    callers never need to know which network they got. Returns ``{tap: activation}``
    for exactly the requested taps. Gradients flow to the input, not to the weights.
    """

    def __init__(self, taps: Sequence[str], weights: VGGWeights) -> None:
        super().__init__()
        if isinstance(taps, str):  # a bare "relu3_3" would otherwise be split into chars
            taps = [taps]
        unknown = [t for t in taps if t not in VGG16_LAYER_NAMES]
        if unknown or not taps:
            what = f"unknown VGG16 tap(s) {unknown}" if unknown else "no VGG16 taps given"
            raise ValueError(f"{what}; valid names: {', '.join(VGG16_LAYER_NAMES)}")
        self.taps: tuple[str, ...] = tuple(dict.fromkeys(taps))  # dedupe, keep order
        self.preprocessing = weights.preprocessing
        self.source = weights.source

        # Only build up to the deepest tap: deeper layers would cost compute and memory
        # on every training step for activations nobody reads.
        depth = max(VGG16_LAYER_NAMES.index(t) for t in self.taps) + 1
        conv_channels = {idx: (cin, cout) for idx, cin, cout, _ in CONV_LAYERS}
        layers: OrderedDict[str, nn.Module] = OrderedDict()
        for idx, name in enumerate(VGG16_LAYER_NAMES[:depth]):
            if name.startswith("conv"):
                cin, cout = conv_channels[idx]
                # skip_init: the random init would be overwritten at once (and costs ~0.5 s).
                conv = torch.nn.utils.skip_init(nn.Conv2d, cin, cout, kernel_size=3, padding=1)
                with torch.no_grad():
                    conv.weight.copy_(weights.state_dict[f"{idx}.weight"])
                    conv.bias.copy_(weights.state_dict[f"{idx}.bias"])
                layers[name] = conv
            elif name.startswith("relu"):
                # Never in-place: an in-place ReLU would overwrite the conv output it
                # follows, corrupting a tap on that conv (and its saved autograd input).
                layers[name] = nn.ReLU(inplace=False)
            else:
                layers[name] = nn.MaxPool2d(kernel_size=2, stride=2)
        self.layers = nn.Sequential(layers)
        self.requires_grad_(False)

        # Input convention as an affine map x' = flip?(x) * scale - shift. Non-persistent
        # buffers: they follow .to(device) but stay out of checkpoints (derived from spec).
        if self.preprocessing == "caffe":
            scale = torch.full((3,), 255.0)
            shift = torch.tensor(CAFFE_MEAN_BGR)
            self.flip_to_bgr = True
        elif self.preprocessing == "imagenet":
            std = torch.tensor(IMAGENET_STD_RGB)
            scale = 1.0 / std
            shift = torch.tensor(IMAGENET_MEAN_RGB) / std
            self.flip_to_bgr = False
        else:
            raise ValueError(f"unknown preprocessing {self.preprocessing!r}")
        self.register_buffer("scale", scale.view(1, 3, 1, 1), persistent=False)
        self.register_buffer("shift", shift.view(1, 3, 1, 1), persistent=False)
        self.train(False)

    def train(self, mode: bool = True) -> VGG16Features:
        # The loss network is a fixed measuring instrument: ignore Lightning/parent
        # .train() calls (VGG16 has no dropout/BN here, but stay explicit and safe).
        return super().train(False)

    def preprocess(self, image: Tensor) -> Tensor:
        """[0, 1] RGB -> the network's input convention."""
        if self.flip_to_bgr:
            image = image.flip(1)
        return image * self.scale - self.shift

    def forward(self, image: Tensor) -> dict[str, Tensor]:
        if image.ndim != 4 or image.shape[1] != 3:
            raise ValueError(f"expected an NCHW RGB batch, got shape {tuple(image.shape)}")
        x = self.preprocess(image)
        wanted = set(self.taps)
        found: dict[str, Tensor] = {}
        for name, layer in self.layers.named_children():
            x = layer(x)
            if name in wanted:
                found[name] = x
        return {t: found[t] for t in self.taps}
