"""A deliberately naive, independent PSFRGAN generator, and random files in the official layout.

For tests only. Written from the maths over a plain state dict (no nn.Module from wplus_core), in
a different style from wplus_core/restoration.py so that a shared mistake is unlikely:
- the spectral norm is sigma = u^T (W v) with the stored vectors, computed in float64;
- a 3x3 convolution is nine matrix products on the zero-padded image flattened row by row, each
  tap reading it at an offset (no F.conv2d);
- instance norm, leaky ReLU and the nearest x2 upsampling are written out;
- the bicubic resize of the guide is a pair of explicit interpolation matrices (Keys' cubic,
  a = -0.75, half-pixel centres, borders clamped: what torch's bicubic does without antialias).
The architecture is written out as a table of convolutions, not derived from the pack's module.

``official_state_dict(seed)`` builds random weights the way the official file came to be: each
convolution is an ``nn.Conv2d`` with ``torch.nn.utils.spectral_norm`` applied, run a few times in
training mode (power iterations updating ``weight_u``/``weight_v``), and saved with
``state_dict()``: keys ``<name>.bias``, ``.weight_orig``, ``.weight_u``, ``.weight_v``.
"""
from __future__ import annotations

import math

import torch

REF_CH = 22  # RGB + 19 parsing classes
CHANNELS = {16: 1024, 32: 512, 64: 256, 128: 128, 256: 64, 512: 32}
SIZES = (32, 64, 128, 256, 512)  # the body's five x2 stages; the official file is out_size 512


def _spade_block(prefix: str, ch: int) -> list:
    convs = [(f"{prefix}.conv_0", ch, ch), (f"{prefix}.conv_1", ch, ch)]
    for n in ("norm_0", "norm_1"):
        convs += [(f"{prefix}.{n}.conv1.0", REF_CH, 64), (f"{prefix}.{n}.gamma_conv", 64, ch),
                  (f"{prefix}.{n}.beta_conv", 64, ch)]
    return convs


def conv_table(out_size: int = 512) -> list:
    """(name, in channels, out channels) of every 3x3 convolution of the generator (the official
    one for out_size 512; smaller sizes stop the body early, for quick tests)."""
    convs = [("img_out", CHANNELS[out_size], 3), ("head.0", 1024, 1024)] + _spade_block("head.1", 1024)
    for i, size in enumerate(s for s in SIZES if s <= out_size):
        convs += [(f"body.{i}.1", CHANNELS[size // 2], CHANNELS[size])] + _spade_block(f"body.{i}.2", CHANNELS[size])
    return convs


def official_state_dict(seed: int = 0, power_iterations: int = 3, out_size: int = 512) -> dict:
    g = torch.Generator().manual_seed(seed)
    sd = {"const_input": torch.randn(1, 1024, 16, 16, generator=g)}
    for name, cin, cout in conv_table(out_size):
        conv = torch.nn.Conv2d(cin, cout, 3, padding=1)
        with torch.no_grad():
            conv.weight.copy_(torch.randn(cout, cin, 3, 3, generator=g) / math.sqrt(cin * 9))
            conv.bias.copy_(0.05 * torch.randn(cout, generator=g))
        torch.nn.utils.spectral_norm(conv)
        conv.train()
        probe = torch.zeros(1, cin, 1, 1)
        for _ in range(power_iterations):
            conv(probe)  # each training-mode call is one power iteration on weight_u/weight_v
        sd.update({f"{name}.{k}": v.detach().clone() for k, v in conv.state_dict().items()})
    return sd


# ----------------------------------------------------------------------------- forward

def _weight(sd, name):
    w = sd[name + ".weight_orig"].double()
    sigma = sd[name + ".weight_u"].double() @ (w.reshape(w.shape[0], -1) @ sd[name + ".weight_v"].double())
    return (w / sigma).float()


def _conv3x3(x, sd, name):
    w, b = _weight(sd, name), sd[name + ".bias"]
    n, c, h, wd = x.shape
    rows, cols = h + 2, wd + 2
    pad = torch.zeros(n, c, rows, cols, dtype=x.dtype)
    pad[:, :, 1:-1, 1:-1] = x
    flat = pad.reshape(n, c, rows * cols)
    out = torch.zeros(n, w.shape[0], rows * cols, dtype=x.dtype)
    for dy in range(3):
        for dx in range(3):
            # output pixel j = y*cols + x reads input pixel j + dy*cols + dx
            shift = dy * cols + dx
            out[:, :, : rows * cols - shift] += torch.matmul(w[:, :, dy, dx], flat[:, :, shift:])
    out = out.reshape(n, -1, rows, cols)[:, :, :h, :wd]
    return out + b.view(1, -1, 1, 1)


def _leaky(x):
    return torch.where(x >= 0, x, 0.2 * x)


def _instance_norm(x, eps=1e-5):
    mean = x.mean(dim=(2, 3), keepdim=True)
    var = ((x - mean) ** 2).mean(dim=(2, 3), keepdim=True)
    return (x - mean) / torch.sqrt(var + eps)


def _cubic(t, a=-0.75):
    t = abs(t)
    if t <= 1:
        return ((a + 2) * t - (a + 3)) * t * t + 1
    if t < 2:
        return ((a * t - 5 * a) * t + 8 * a) * t - 4 * a
    return 0.0


def _bicubic_matrix(n_out, n_in):
    m = torch.zeros(n_out, n_in, dtype=torch.float64)
    scale = n_in / n_out
    for i in range(n_out):
        src = (i + 0.5) * scale - 0.5
        base = math.floor(src)
        t = src - base
        for k in range(-1, 3):
            m[i, min(max(base + k, 0), n_in - 1)] += _cubic(k - t)
    return m


def _resize(ref, size):
    if ref.shape[-1] == size:
        return ref
    m = _bicubic_matrix(size, ref.shape[-1]).float()
    return torch.einsum("yh,nchw,xw->ncyx", m, ref, m)


def _spade(x, ref, sd, p):
    act = _leaky(_conv3x3(ref, sd, p + ".conv1.0"))
    return _instance_norm(x) * _conv3x3(act, sd, p + ".gamma_conv") + _conv3x3(act, sd, p + ".beta_conv")


def _res_block(x, ref, sd, p):
    r = _conv3x3(_leaky(_spade(x, ref, sd, p + ".norm_0")), sd, p + ".conv_0")
    r = _conv3x3(_leaky(_spade(r, ref, sd, p + ".norm_1")), sd, p + ".conv_1")
    return x + r


@torch.no_grad()
def generator(sd: dict, image: torch.Tensor, onehot: torch.Tensor) -> torch.Tensor:
    """PSFRGenerator forward over a plain state dict: (B,3,S,S), (B,19,S,S) -> (B,3,S,S), not
    clipped; S = 512 for the official file (the size follows the body's stages in ``sd``)."""
    sd = {k: v.float() for k, v in sd.items()}
    ref = torch.cat([image.float(), onehot.float()], dim=1)
    x = sd["const_input"].repeat(image.shape[0], 1, 1, 1)
    x = _res_block(_conv3x3(x, sd, "head.0"), _resize(ref, 16), sd, "head.1")
    for i in range(sum(1 for k in sd if k.startswith("body.") and k.endswith(".1.bias"))):
        x = x.repeat_interleave(2, dim=2).repeat_interleave(2, dim=3)
        x = _conv3x3(x, sd, f"body.{i}.1")
        x = _res_block(x, _resize(ref, x.shape[-1]), sd, f"body.{i}.2")
    return _conv3x3(x, sd, "img_out")
