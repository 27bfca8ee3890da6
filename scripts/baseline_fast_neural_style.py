"""Reference training step: the pytorch/examples ``fast_neural_style`` recipe, re-implemented.

Used by ``scripts/bench_train.py`` as the yardstick fst's own step is measured against.
Written from the recipe's description, not copied; what it reproduces, on purpose:

* its transformation network: reflection-padded convs, affine ``InstanceNorm2d``,
  5 residual blocks, upsampling by nearest ``F.interpolate(scale_factor=2)`` followed
  by a conv, no output activation; images travel in the 0-255 range;
* its loss network: torchvision's VGG16 ``features`` layout up to relu4_3 (in-place
  ReLUs), cut into four slices that return relu1_2, relu2_2, relu3_3 and relu4_3,
  run on BOTH the stylised batch and the content batch, all the way to relu4_3;
* its input normalisation: divide the 0-255 batch by 255 in place, then ImageNet
  mean/std;
* its Gram matrix ``F F^T / (C*H*W)``, MSE content loss on relu2_2 and MSE style
  loss summed over the four layers, weights 1e5 (content) and 1e10 (style);
* Adam with lr 1e-3, fp32 everywhere, NCHW (no channels_last), no autocast, and the
  two ``.item()`` calls per step that accumulate the logged losses.

The VGG weights are whatever ``vgg_state`` holds (the bench passes fst's caffe
tensors); their values do not change the work done per step.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn
from torchvision.models.vgg import cfgs as torchvision_vgg_configs
from torchvision.models.vgg import make_layers as torchvision_vgg_layers

CONTENT_WEIGHT = 1e5
STYLE_WEIGHT = 1e10
LEARNING_RATE = 1e-3
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
# torchvision vgg16().features indices that close each slice: relu1_2, relu2_2, relu3_3, relu4_3.
SLICE_ENDS = (4, 9, 16, 23)


class PaddedConv(nn.Module):
    """Reflection padding of kernel // 2, then a strided conv."""

    def __init__(self, c_in: int, c_out: int, kernel: int, stride: int) -> None:
        super().__init__()
        self.pad = nn.ReflectionPad2d(kernel // 2)
        self.conv = nn.Conv2d(c_in, c_out, kernel, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(self.pad(x))


class UpsampledConv(nn.Module):
    """Nearest-neighbour x``factor`` upsampling by interpolation, then a padded conv."""

    def __init__(self, c_in: int, c_out: int, kernel: int, factor: int) -> None:
        super().__init__()
        self.factor = factor
        self.conv = PaddedConv(c_in, c_out, kernel, stride=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.conv(F.interpolate(x, mode="nearest", scale_factor=self.factor))


class Residual(nn.Module):
    def __init__(self, channels: int) -> None:
        super().__init__()
        self.conv_a = PaddedConv(channels, channels, 3, 1)
        self.norm_a = nn.InstanceNorm2d(channels, affine=True)
        self.conv_b = PaddedConv(channels, channels, 3, 1)
        self.norm_b = nn.InstanceNorm2d(channels, affine=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.norm_a(self.conv_a(x)))
        return x + self.norm_b(self.conv_b(h))


class ExampleTransformerNet(nn.Module):
    """The example's image transformation network (0-255 in, unbounded 0-255-ish out)."""

    def __init__(self) -> None:
        super().__init__()
        self.down = nn.ModuleList([
            PaddedConv(3, 32, 9, 1), nn.InstanceNorm2d(32, affine=True),
            PaddedConv(32, 64, 3, 2), nn.InstanceNorm2d(64, affine=True),
            PaddedConv(64, 128, 3, 2), nn.InstanceNorm2d(128, affine=True),
        ])
        self.residuals = nn.Sequential(*[Residual(128) for _ in range(5)])
        self.up = nn.ModuleList([
            UpsampledConv(128, 64, 3, 2), nn.InstanceNorm2d(64, affine=True),
            UpsampledConv(64, 32, 3, 2), nn.InstanceNorm2d(32, affine=True),
        ])
        self.out = PaddedConv(32, 3, 9, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        for conv, norm in zip(self.down[0::2], self.down[1::2]):
            x = F.relu(norm(conv(x)))
        x = self.residuals(x)
        for conv, norm in zip(self.up[0::2], self.up[1::2]):
            x = F.relu(norm(conv(x)))
        return self.out(x)


class ExampleVGG16(nn.Module):
    """torchvision's VGG16 ``features[:23]`` split into the example's four slices."""

    def __init__(self, vgg_state: Mapping[str, torch.Tensor]) -> None:
        super().__init__()
        features = torchvision_vgg_layers(torchvision_vgg_configs["D"], batch_norm=False)[: SLICE_ENDS[-1]]
        own = features.state_dict()
        features.load_state_dict({k: vgg_state[k] for k in own})
        starts = (0, *SLICE_ENDS[:-1])
        self.slices = nn.ModuleList(features[a:b] for a, b in zip(starts, SLICE_ENDS))
        self.requires_grad_(False)

    def forward(self, x: torch.Tensor) -> list[torch.Tensor]:
        taps = []
        for block in self.slices:
            x = block(x)
            taps.append(x)
        return taps  # relu1_2, relu2_2, relu3_3, relu4_3


def example_gram(features: torch.Tensor) -> torch.Tensor:
    b, c, h, w = features.shape
    flat = features.view(b, c, h * w)
    return flat.bmm(flat.transpose(1, 2)) / (c * h * w)


def example_normalise(batch_0_255: torch.Tensor) -> torch.Tensor:
    """In-place /255 (as the example does), then ImageNet mean/std."""
    mean = batch_0_255.new_tensor(IMAGENET_MEAN).view(-1, 1, 1)
    std = batch_0_255.new_tensor(IMAGENET_STD).view(-1, 1, 1)
    batch = batch_0_255.div_(255.0)
    return (batch - mean) / std


class BaselineTrainer:
    """Holds the example's network, loss network, style Grams and Adam; ``step`` is one iteration."""

    def __init__(self, style_0_255: torch.Tensor, batch_size: int, vgg_state: Mapping[str, torch.Tensor],
                 device: torch.device | str) -> None:
        self.device = torch.device(device)
        self.net = ExampleTransformerNet().to(self.device)
        self.vgg = ExampleVGG16(vgg_state).to(self.device)
        self.optimizer = torch.optim.Adam(self.net.parameters(), lr=LEARNING_RATE)
        style = style_0_255.to(self.device).unsqueeze(0).repeat(batch_size, 1, 1, 1)
        with torch.no_grad():
            self.style_grams = [example_gram(f) for f in self.vgg(example_normalise(style))]
        self.content_total = 0.0
        self.style_total = 0.0

    def losses(self, photos_0_255: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Forward half of an iteration: (weighted content loss, weighted style loss)."""
        n = len(photos_0_255)
        self.optimizer.zero_grad()
        x = photos_0_255.to(self.device)
        y = example_normalise(self.net(x))
        x = example_normalise(x.clone())  # the example normalises its freshly loaded batch in place
        features_y = self.vgg(y)
        features_x = self.vgg(x)
        content = CONTENT_WEIGHT * F.mse_loss(features_y[1], features_x[1])
        style = 0.0
        for fy, gram_s in zip(features_y, self.style_grams):
            style = style + F.mse_loss(example_gram(fy), gram_s[:n])
        return content, STYLE_WEIGHT * style

    def update(self, content: torch.Tensor, style: torch.Tensor) -> torch.Tensor:
        """Backward half: backprop, Adam, and the example's loss bookkeeping."""
        total = content + style
        total.backward()
        self.optimizer.step()
        # The example accumulates its logged losses with .item(): a host sync per step.
        self.content_total += content.item()
        self.style_total += style.item()
        return total.detach()

    def step(self, photos_0_255: torch.Tensor) -> torch.Tensor:
        """One training iteration on a 0-255 NCHW batch; returns the (detached) total loss."""
        return self.update(*self.losses(photos_0_255))
