"""Encoder4Editing (e4e) with the IR-SE-50 backbone, as in the official ``e4e_ffhq_encode.pt``.

Module names are the checkpoint keys (``encoder.`` prefix removed), so the official weights load
with ``strict=True``. Architecture (Tov et al. 2021, ``Encoder4Editing`` at the "Inference"
progressive stage, i.e. all 18 styles):

- ``input_layer``: conv3x3(3->64, no bias), BatchNorm, PReLU.
- ``body``: 24 IR-SE bottlenecks (3 x 64, 4 x 128, 14 x 256, 3 x 512 channels); the first unit
  of each stage has stride 2 (its residual branch strides in the second conv).
- FPN taps: ``c1`` after body[6] (128 ch, 64 px), ``c2`` after body[20] (256 ch, 32 px),
  ``c3`` after body[23] (512 ch, 16 px); ``p2 = up(c3) + latlayer1(c2)``,
  ``p1 = up(p2) + latlayer2(c1)`` with bilinear, align_corners=True upsampling.
- ``styles[i]``: a stack of stride-2 conv3x3 + LeakyReLU(0.01) down to 1x1, then an equalised
  linear; styles 0-2 read ``c3``, 3-6 read ``p2``, 7-17 read ``p1``.
- Output: ``w = styles[0](c3)`` repeated 18 times, plus ``styles[i](features)`` on row i >= 1.
  The caller adds ``latent_avg`` (see model.py).

The input must be 256x256 (the style heads pool to exactly 1x1 from 16/32/64 px maps).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Encoder4Editing", "GradualStyleBlock", "BottleneckIRSE", "EqualLinear"]

# (in_channels, depth, units) of IR-50; each stage starts with a stride-2 unit.
IR50_STAGES = ((64, 64, 3), (64, 128, 4), (128, 256, 14), (256, 512, 3))
# body indices whose outputs feed the FPN (end of stages 2, 3 and 4)
C1_INDEX, C2_INDEX, C3_INDEX = 6, 20, 23
COARSE_END, MIDDLE_END = 3, 7  # styles [0,3) from c3, [3,7) from p2, [7,18) from p1


class EqualLinear(nn.Module):
    """Linear layer with equalised learning rate (weight scaled by lr_mul/sqrt(in_dim) at run time)."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Subsample(nn.Module):
    """The identity shortcut of a strided unit: MaxPool2d(kernel 1, stride s) is plain subsampling."""

    def __init__(self, stride: int):
        super().__init__()
        self.stride = stride

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x if self.stride == 1 else x[:, :, :: self.stride, :: self.stride]


class SEModule(nn.Module):
    """Squeeze-and-excitation gate (reduction 16, bias-free 1x1 convs)."""

    def __init__(self, channels: int, reduction: int = 16):
        super().__init__()
        self.fc1 = nn.Conv2d(channels, channels // reduction, 1, bias=False)
        self.fc2 = nn.Conv2d(channels // reduction, channels, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        gate = x.mean((2, 3), keepdim=True)
        gate = torch.sigmoid(self.fc2(F.relu(self.fc1(gate))))
        return x * gate


class BottleneckIRSE(nn.Module):
    """IR-SE unit: BN, conv3x3, PReLU, conv3x3 (stride), BN, SE; plus a (projected) shortcut."""

    def __init__(self, in_channel: int, depth: int, stride: int):
        super().__init__()
        if in_channel == depth:
            self.shortcut_layer = Subsample(stride)
        else:
            self.shortcut_layer = nn.Sequential(
                nn.Conv2d(in_channel, depth, 1, stride, bias=False), nn.BatchNorm2d(depth))
        self.res_layer = nn.Sequential(
            nn.BatchNorm2d(in_channel),
            nn.Conv2d(in_channel, depth, 3, 1, 1, bias=False),
            nn.PReLU(depth),
            nn.Conv2d(depth, depth, 3, stride, 1, bias=False),
            nn.BatchNorm2d(depth),
            SEModule(depth, 16),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.res_layer(x) + self.shortcut_layer(x)


class GradualStyleBlock(nn.Module):
    """log2(spatial) stride-2 conv3x3 + LeakyReLU(0.01) down to 1x1, then an equalised linear."""

    def __init__(self, in_c: int, out_c: int, spatial: int):
        super().__init__()
        self.out_c = out_c
        layers: list[nn.Module] = []
        for i in range(int(math.log2(spatial))):
            layers += [nn.Conv2d(in_c if i == 0 else out_c, out_c, 3, 2, 1), nn.LeakyReLU(0.01)]
        self.convs = nn.Sequential(*layers)
        self.linear = EqualLinear(out_c, out_c, lr_mul=1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.linear(self.convs(x).flatten(1))


def upsample_add(x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
    """FPN merge: bilinear (align_corners=True) upsample of x to y's size, plus y."""
    return F.interpolate(x, size=y.shape[-2:], mode="bilinear", align_corners=True) + y


class Encoder4Editing(nn.Module):
    """e4e encoder: (B,3,256,256) in [-1,1] -> (B, n_styles, 512) offsets from latent_avg."""

    def __init__(self, n_styles: int = 18):
        super().__init__()
        self.n_styles = n_styles
        self.input_layer = nn.Sequential(
            nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.BatchNorm2d(64), nn.PReLU(64))
        units = []
        for in_channel, depth, count in IR50_STAGES:
            units.append(BottleneckIRSE(in_channel, depth, 2))
            units += [BottleneckIRSE(depth, depth, 1) for _ in range(count - 1)]
        self.body = nn.Sequential(*units)
        self.styles = nn.ModuleList(
            GradualStyleBlock(512, 512, 16 if i < COARSE_END else 32 if i < MIDDLE_END else 64)
            for i in range(n_styles))
        self.latlayer1 = nn.Conv2d(256, 512, 1)
        self.latlayer2 = nn.Conv2d(128, 512, 1)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.input_layer(x)
        for i, unit in enumerate(self.body):
            x = unit(x)
            if i == C1_INDEX:
                c1 = x
            elif i == C2_INDEX:
                c2 = x
        c3 = x
        w0 = self.styles[0](c3)
        rows = [w0]
        features = c3
        for i in range(1, self.n_styles):
            if i == COARSE_END:
                p2 = upsample_add(c3, self.latlayer1(c2))
                features = p2
            elif i == MIDDLE_END:
                features = upsample_add(p2, self.latlayer2(c1))
            rows.append(w0 + self.styles[i](features))
        return torch.stack(rows, dim=1)
