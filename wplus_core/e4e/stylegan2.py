"""StyleGAN2 generator (rosinality layout) in plain PyTorch, for the decoder of e4e_ffhq_encode.pt.

Module names are the checkpoint keys (``decoder.`` prefix removed): ``style.1..8`` (mapping MLP),
``input.input``, ``conv1``, ``to_rgb1``, ``convs.N``, ``to_rgbs.N``, ``noises.noise_N`` and the
blur kernels ``*.blur.kernel`` / ``*.upsample.kernel``. No compiled extension: rosinality's
``fused_leaky_relu`` and ``upfirdn2d`` are re-expressed with ordinary torch ops:

- fused leaky ReLU = ``leaky_relu(x + bias, 0.2) * sqrt(2)``; inside StyledConv it is fused further
  (leaky ReLU is positively homogeneous): sqrt(2) goes into the modulated weights, the bias into
  the conv call, then one in-place noise add and one in-place leaky ReLU;
- upfirdn2d (up=1) = zero padding (by the conv itself when symmetric) and a depthwise conv2d with
  the flipped kernel;
- upfirdn2d (up=2, the skip upsampler) = a depthwise stride-2 transposed conv with the kernel
  (the same sum as zero insertion + pad + convolution, without multiplying by the inserted zeros);
- modulated conv = one grouped conv with the batch folded into the groups (weights modulated and
  demodulated per sample); upsampling convs are a stride-2 transposed conv followed by the blur,
  exactly like the reference.

Modulation and demodulation are computed in float32 whatever the weights' dtype (the squared sum
over in_channels x 3 x 3 can overflow float16), then cast to the activations' dtype.

``Generator.forward(w, size=None)`` takes W+ (B, n_latent, 512) or W (B, 512) with
``input_is_latent=True`` semantics, uses the stored ``noises`` buffers (the reference's
``randomize_noise=False``), no truncation, and returns the raw RGB (not clamped). ``size`` below
the generator's resolution stops the skip architecture early and returns the accumulated RGB at
that resolution: exactly the image the full run holds at that point, i.e. a faithful, slightly
soft preview (the finer layers only add detail on top of it).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

__all__ = ["Generator", "upfirdn2d", "fused_leaky_relu"]

SQRT2 = math.sqrt(2.0)


def fused_leaky_relu(x: torch.Tensor, bias: torch.Tensor | None, negative_slope: float = 0.2,
                     scale: float = SQRT2) -> torch.Tensor:
    """rosinality's fused_leaky_relu: leaky_relu(x + bias) * scale (bias over dim 1)."""
    if bias is not None:
        x = x + bias.view(1, -1, *([1] * (x.ndim - 2))).to(x.dtype)
    return F.leaky_relu(x, negative_slope) * scale


def upfirdn2d(x: torch.Tensor, kernel: torch.Tensor, up: int = 1,
              pad: tuple[int, int] = (0, 0), bias: torch.Tensor | None = None) -> torch.Tensor:
    """rosinality's upfirdn2d for down=1 and non-negative pads, per channel (depthwise).

    up=1: pad (pad0 before, pad1 after, both axes) and correlate with the flipped kernel; an
    optional per-channel ``bias`` is added by the same conv call.
    up>1: zero insertion, pad and filtering fused into a transposed conv with the kernel; the
    transposed conv's full output starts ``kh-1-pad0`` samples before the padded filter output.
    """
    channels = x.shape[1]
    kh, kw = kernel.shape
    pad0, pad1 = pad
    if up == 1:
        weight = kernel.flip([0, 1]).to(x.dtype).expand(channels, 1, kh, kw)
        if pad0 == pad1:  # the conv pads by itself: no padded copy of a full-resolution tensor
            return F.conv2d(x, weight, bias, padding=pad0, groups=channels)
        return F.conv2d(F.pad(x, [pad0, pad1, pad0, pad1]), weight, bias, groups=channels)
    if bias is not None:
        raise NotImplementedError("upfirdn2d: bias with up > 1")
    if not (0 <= pad0 <= min(kh, kw) - 1 and pad1 >= 0):
        raise NotImplementedError(f"upfirdn2d pad {pad} with a {kh}x{kw} kernel")
    weight = kernel.to(x.dtype).expand(channels, 1, kh, kw)
    out = F.conv_transpose2d(x, weight, stride=up, groups=channels)
    h, w = x.shape[-2:]
    start_y, start_x = kh - 1 - pad0, kw - 1 - pad0
    out_h, out_w = h * up + pad0 + pad1 - kh + 1, w * up + pad0 + pad1 - kw + 1
    out = F.pad(out, [0, max(0, start_x + out_w - out.shape[-1]), 0, max(0, start_y + out_h - out.shape[-2])])
    return out[:, :, start_y:start_y + out_h, start_x:start_x + out_w]


def make_kernel(k=(1, 3, 3, 1)) -> torch.Tensor:
    k = torch.tensor(k, dtype=torch.float32)
    k = k[None, :] * k[:, None]
    return k / k.sum()


class PixelNorm(nn.Module):
    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * torch.rsqrt(x.pow(2).mean(dim=1, keepdim=True) + 1e-8)


class EqualLinear(nn.Module):
    """Equalised linear; ``activation=True`` applies the fused leaky ReLU (mapping network)."""

    def __init__(self, in_dim: int, out_dim: int, lr_mul: float = 1.0, activation: bool = False):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(out_dim, in_dim))
        self.bias = nn.Parameter(torch.empty(out_dim))
        self.scale = lr_mul / math.sqrt(in_dim)
        self.lr_mul = lr_mul
        self.activation = activation

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if self.activation:
            return fused_leaky_relu(F.linear(x, self.weight * self.scale), self.bias * self.lr_mul)
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


class Blur(nn.Module):
    """upfirdn2d(up=1) with a stored kernel (the checkpoint holds it, already scaled by factor^2)."""

    def __init__(self, pad: tuple[int, int], kernel_size: int = 4):
        super().__init__()
        self.register_buffer("kernel", torch.empty(kernel_size, kernel_size))
        self.pad = pad

    def forward(self, x: torch.Tensor, bias: torch.Tensor | None = None) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, pad=self.pad, bias=bias)


class Upsample(nn.Module):
    """2x upsampling of the RGB skip: upfirdn2d(up=2, pad=(2, 1)) with the stored kernel."""

    def __init__(self, factor: int = 2, kernel_size: int = 4):
        super().__init__()
        self.register_buffer("kernel", torch.empty(kernel_size, kernel_size))
        self.factor = factor
        p = kernel_size - factor
        self.pad = ((p + 1) // 2 + factor - 1, p // 2)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return upfirdn2d(x, self.kernel, up=self.factor, pad=self.pad)


class ModulatedConv2d(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 demodulate: bool = True, upsample: bool = False, blur_kernel_size: int = 4):
        super().__init__()
        self.in_channel, self.out_channel, self.kernel_size = in_channel, out_channel, kernel_size
        self.upsample = upsample
        self.demodulate = demodulate
        if upsample:  # registered first, like the reference, so state_dict order matches too
            factor = 2
            p = (blur_kernel_size - factor) - (kernel_size - 1)
            self.blur = Blur(((p + 1) // 2 + factor - 1, p // 2 + 1), blur_kernel_size)
        self.weight = nn.Parameter(torch.empty(1, out_channel, in_channel, kernel_size, kernel_size))
        self.modulation = EqualLinear(style_dim, in_channel)
        self.scale = 1 / math.sqrt(in_channel * kernel_size ** 2)
        self.padding = kernel_size // 2

    def modulated_weight(self, style: torch.Tensor, gain: float = 1.0, transposed: bool = False) -> torch.Tensor:
        """(B, out, in, k, k) per-sample weights, times ``gain``, computed in float32;
        ``transposed`` lays them out contiguously as (B, in, out, k, k) for conv_transpose2d.

        Demodulation uses sum_{i,k}(scale*W[o,i,k]*s[i])^2 = scale^2 * sum_i s[i]^2 sum_k W[o,i,k]^2,
        so the big weight tensor is read twice and written once.
        """
        lin = self.modulation
        s = F.linear(style.float(), lin.weight.float() * lin.scale, lin.bias.float() * lin.lr_mul)
        weight = self.weight.float()
        coef = (self.scale * gain) * s[:, None, :]                                   # (B, 1, in)
        if self.demodulate:
            energy = (s * s) @ weight[0].square().sum([2, 3]).t() * self.scale ** 2  # (B, out)
            coef = coef * torch.rsqrt(energy + 1e-8)[:, :, None]                   # (B, out, in)
        coef = coef[..., None, None]
        if not transposed:
            return weight * coef
        weight, coef = weight.transpose(1, 2), coef.transpose(1, 2)
        if torch.is_grad_enabled() and (weight.requires_grad or coef.requires_grad):
            return (weight * coef).contiguous()  # out= below has no autograd
        out = weight.new_empty(len(s), self.in_channel, self.out_channel, *weight.shape[-2:])
        return torch.mul(weight, coef, out=out)

    def forward(self, x: torch.Tensor, style: torch.Tensor, bias: torch.Tensor | None = None,
                gain: float = 1.0) -> torch.Tensor:
        """Modulated conv of x; ``gain`` scales the output and ``bias`` (per out channel) is added
        by the conv (or blur) call itself, which saves full-resolution elementwise passes."""
        batch, in_channel, height, width = x.shape
        k = self.kernel_size
        weight = self.modulated_weight(style, gain, transposed=self.upsample).to(x.dtype)
        if bias is not None:
            bias = bias.to(x.dtype)
        if batch > 1:  # batch folded into the groups: one conv call whatever the batch size
            x = x.reshape(1, batch * in_channel, height, width)
        if self.upsample:
            weight = weight.view(batch * in_channel, self.out_channel, k, k)
            out = F.conv_transpose2d(x, weight, stride=2, groups=batch)
            return self.blur(out.view(batch, self.out_channel, *out.shape[-2:]), bias)
        weight = weight.reshape(batch * self.out_channel, in_channel, k, k)
        out = F.conv2d(x, weight, None if bias is None else bias.repeat(batch), padding=self.padding, groups=batch)
        return out.view(batch, self.out_channel, *out.shape[-2:])


class NoiseInjection(nn.Module):
    def __init__(self):
        super().__init__()
        self.weight = nn.Parameter(torch.empty(1))

    def forward(self, x: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        return x + self.weight.to(x.dtype) * noise.to(x.dtype)


class FusedLeakyReLU(nn.Module):
    def __init__(self, channel: int):
        super().__init__()
        self.bias = nn.Parameter(torch.empty(channel))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return fused_leaky_relu(x, self.bias)


class StyledConv(nn.Module):
    def __init__(self, in_channel: int, out_channel: int, kernel_size: int, style_dim: int,
                 upsample: bool = False):
        super().__init__()
        self.conv = ModulatedConv2d(in_channel, out_channel, kernel_size, style_dim, upsample=upsample)
        self.noise = NoiseInjection()
        self.activate = FusedLeakyReLU(out_channel)

    def forward(self, x: torch.Tensor, style: torch.Tensor, noise: torch.Tensor) -> torch.Tensor:
        # = fused_leaky_relu(conv(x) + w_noise*noise, bias): leaky ReLU is positively homogeneous,
        # so the sqrt(2) gain goes into the conv weights and the bias into the conv call, leaving
        # one in-place noise add and one in-place activation at full resolution.
        out = self.conv(x, style, bias=self.activate.bias * SQRT2, gain=SQRT2)
        out.add_((self.noise.weight * SQRT2).to(out.dtype) * noise.to(out.dtype))
        return F.leaky_relu_(out, 0.2)


class ConstantInput(nn.Module):
    def __init__(self, channel: int, size: int = 4):
        super().__init__()
        self.input = nn.Parameter(torch.empty(1, channel, size, size))

    def forward(self, batch: int) -> torch.Tensor:
        return self.input.expand(batch, -1, -1, -1)


class ToRGB(nn.Module):
    def __init__(self, in_channel: int, style_dim: int, upsample: bool = True):
        super().__init__()
        if upsample:
            self.upsample = Upsample()
        self.conv = ModulatedConv2d(in_channel, 3, 1, style_dim, demodulate=False)
        self.bias = nn.Parameter(torch.empty(1, 3, 1, 1))

    def forward(self, x: torch.Tensor, style: torch.Tensor, skip: torch.Tensor | None = None):
        out = self.conv(x, style, bias=self.bias.view(-1))
        if skip is not None:
            out.add_(self.upsample(skip))
        return out


def channels_for(size: int, channel_multiplier: int = 2) -> int:
    return 512 if size <= 32 else {64: 256, 128: 128, 256: 64, 512: 32, 1024: 16}[size] * channel_multiplier


class Generator(nn.Module):
    """rosinality StyleGAN2 generator (skip architecture); see the module docstring."""

    def __init__(self, size: int = 1024, style_dim: int = 512, n_mlp: int = 8,
                 channel_multiplier: int = 2, lr_mlp: float = 0.01):
        super().__init__()
        if size < 4 or size & (size - 1):
            raise ValueError(f"StyleGAN2 size must be a power of two >= 4, got {size}")
        self.size = size
        self.style_dim = style_dim
        self.log_size = int(math.log2(size))
        self.num_layers = (self.log_size - 2) * 2 + 1
        self.n_latent = self.log_size * 2 - 2
        ch = lambda res: channels_for(res, channel_multiplier)  # noqa: E731

        self.style = nn.Sequential(PixelNorm(), *(
            EqualLinear(style_dim, style_dim, lr_mul=lr_mlp, activation=True) for _ in range(n_mlp)))
        self.input = ConstantInput(ch(4))
        self.conv1 = StyledConv(ch(4), ch(4), 3, style_dim)
        self.to_rgb1 = ToRGB(ch(4), style_dim, upsample=False)
        self.convs = nn.ModuleList()
        self.to_rgbs = nn.ModuleList()
        self.noises = nn.Module()
        for layer_idx in range(self.num_layers):
            res = 2 ** ((layer_idx + 5) // 2)
            self.noises.register_buffer(f"noise_{layer_idx}", torch.empty(1, 1, res, res))
        in_channel = ch(4)
        for i in range(3, self.log_size + 1):
            out_channel = ch(2 ** i)
            self.convs.append(StyledConv(in_channel, out_channel, 3, style_dim, upsample=True))
            self.convs.append(StyledConv(out_channel, out_channel, 3, style_dim))
            self.to_rgbs.append(ToRGB(out_channel, style_dim))
            in_channel = out_channel

    def check_size(self, size: int | None) -> int:
        if size is None:
            return self.size
        size = int(size)
        if size < 4 or size > self.size or size & (size - 1):
            raise ValueError(f"output size must be a power of two from 4 to {self.size}, got {size}")
        return size

    def forward(self, w: torch.Tensor, input_is_latent: bool = True, size: int | None = None) -> torch.Tensor:
        """W+ (B, n_latent, 512) or W (B, 512) -> raw RGB (B, 3, size, size), roughly [-1, 1].

        With ``input_is_latent=False``, ``w`` is Z (B, 512) and goes through the mapping MLP first.
        Activations are computed in the generator's own dtype (its weights' dtype, e.g. float16 on a
        GPU); the styles stay in ``w``'s dtype (give float32) because the modulation runs in
        float32: rounding W+ to half precision first would blur small edits (bfloat16 keeps 3
        significant digits, so a W+ edit of 0.005 on a value of 2 would vanish).
        """
        size = self.check_size(size)
        dtype = self.input.input.dtype
        if not input_is_latent:
            w = self.style(w.to(dtype))
        if w.ndim == 2:
            w = w.unsqueeze(1).expand(-1, self.n_latent, -1)
        if w.shape[1] != self.n_latent:
            raise ValueError(f"expected {self.n_latent} style vectors, got shape {tuple(w.shape)}")
        noise = [getattr(self.noises, f"noise_{i}") for i in range(self.num_layers)]

        # channels_last: oneDNN (CPU) and cuDNN run these convs markedly faster in NHWC
        out = self.input(w.shape[0]).contiguous(memory_format=torch.channels_last)
        out = self.conv1(out, w[:, 0], noise[0])
        skip = self.to_rgb1(out, w[:, 1])
        res, i = 4, 1
        for conv_up, conv, to_rgb in zip(self.convs[::2], self.convs[1::2], self.to_rgbs):
            if res >= size:
                break
            out = conv_up(out, w[:, i], noise[i])
            out = conv(out, w[:, i + 1], noise[i + 1])
            skip = to_rgb(out, w[:, i + 2], skip)
            res, i = res * 2, i + 2
        return skip
