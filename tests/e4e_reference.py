"""A deliberately naive, independent e4e + StyleGAN2 reference, for tests only.

Written from the maths over a plain state dict (no nn.Module from wplus_core), in a different
style from wplus_core/e4e so that a shared mistake is unlikely:
- BatchNorm, PReLU, leaky ReLU, SE gate, bilinear align_corners upsampling written out by hand;
- the modulated conv is a Python loop over samples with F.conv2d;
- upfirdn2d is explicit zero insertion + zero padding + F.conv2d with the flipped 2-D kernel,
  and the stride-2 transposed conv is zero insertion + padding + conv with the flipped kernel.
Also builds random-weight state dicts in the official key layout (shapes taken from the
wplus_core modules; tests/test_e4e.py checks those against the official key list).
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

IR50_UNITS = (3, 4, 14, 3)
IR50_DEPTHS = (64, 128, 256, 512)


# ----------------------------------------------------------------------------- encoder

def _bn(x, sd, p, eps=1e-5):
    shape = (1, -1, 1, 1)
    mean, var = sd[p + ".running_mean"].view(shape), sd[p + ".running_var"].view(shape)
    return (x - mean) / torch.sqrt(var + eps) * sd[p + ".weight"].view(shape) + sd[p + ".bias"].view(shape)


def _prelu(x, a):
    return torch.where(x > 0, x, a.view(1, -1, 1, 1) * x)


def _leaky(x, slope):
    return torch.where(x >= 0, x, slope * x)


def _unit(x, sd, p, in_c, depth, stride):
    r = _bn(x, sd, p + ".res_layer.0")
    r = F.conv2d(r, sd[p + ".res_layer.1.weight"], padding=1)
    r = _prelu(r, sd[p + ".res_layer.2.weight"])
    r = F.conv2d(r, sd[p + ".res_layer.3.weight"], stride=stride, padding=1)
    r = _bn(r, sd, p + ".res_layer.4")
    squeeze = r.mean(dim=(2, 3))                                       # (B, C)
    hidden = torch.relu(squeeze @ sd[p + ".res_layer.5.fc1.weight"].flatten(1).t())
    gate = torch.sigmoid(hidden @ sd[p + ".res_layer.5.fc2.weight"].flatten(1).t())
    r = r * gate[:, :, None, None]
    if in_c == depth:
        short = x[:, :, ::stride, ::stride]                            # MaxPool2d(1, stride)
    else:
        short = _bn(F.conv2d(x, sd[p + ".shortcut_layer.0.weight"], stride=stride), sd, p + ".shortcut_layer.1")
    return r + short


def _bilinear_align_corners(x, out_h, out_w):
    """Bilinear resize with align_corners=True, by explicit gathers and lerps."""
    in_h, in_w = x.shape[-2:]

    def coords(n_out, n_in):
        pos = torch.arange(n_out, dtype=torch.float64) * ((n_in - 1) / (n_out - 1) if n_out > 1 else 0.0)
        lo = pos.floor().long().clamp(max=n_in - 1)
        hi = (lo + 1).clamp(max=n_in - 1)
        return lo, hi, (pos - lo).to(x.dtype)

    y0, y1, fy = coords(out_h, in_h)
    x0, x1, fx = coords(out_w, in_w)
    top = x[:, :, y0] * (1 - fy)[:, None] + x[:, :, y1] * fy[:, None]
    return top[..., x0] * (1 - fx) + top[..., x1] * fx


def _style_head(x, sd, p):
    n = 0
    while f"{p}.convs.{n}.weight" in sd:
        x = _leaky(F.conv2d(x, sd[f"{p}.convs.{n}.weight"], sd[f"{p}.convs.{n}.bias"], stride=2, padding=1), 0.01)
        n += 2
    x = x.reshape(x.shape[0], -1)
    weight = sd[p + ".linear.weight"]
    return x @ (weight / math.sqrt(weight.shape[1])).t() + sd[p + ".linear.bias"]


def reference_encoder(sd: dict, x: torch.Tensor) -> torch.Tensor:
    """Encoder4Editing over a state dict with ``encoder.`` stripped: (B,3,256,256) -> (B,18,512)."""
    x = F.conv2d(x, sd["input_layer.0.weight"], padding=1)
    x = _prelu(_bn(x, sd, "input_layer.1"), sd["input_layer.2.weight"])
    feats, idx, in_c = [], 0, 64
    for units, depth in zip(IR50_UNITS, IR50_DEPTHS):
        for u in range(units):
            x = _unit(x, sd, f"body.{idx}", in_c if u == 0 else depth, depth, 2 if u == 0 else 1)
            idx += 1
        in_c = depth
        feats.append(x)
    _, c1, c2, c3 = feats  # ends of stages 2, 3, 4 = body[6], body[20], body[23]
    lat1 = F.conv2d(c2, sd["latlayer1.weight"], sd["latlayer1.bias"])
    p2 = _bilinear_align_corners(c3, *lat1.shape[-2:]) + lat1
    lat2 = F.conv2d(c1, sd["latlayer2.weight"], sd["latlayer2.bias"])
    p1 = _bilinear_align_corners(p2, *lat2.shape[-2:]) + lat2
    w0 = _style_head(c3, sd, "styles.0")
    out = [w0]
    for i in range(1, 18):
        source = c3 if i < 3 else p2 if i < 7 else p1
        out.append(w0 + _style_head(source, sd, f"styles.{i}"))
    return torch.stack(out, 1)


# ----------------------------------------------------------------------------- generator

def upfirdn2d_ref(x, kernel, up, pad0, pad1):
    """Zero insertion (up-1 zeros after each sample), zero pad, correlate with the flipped kernel."""
    b, c, h, w = x.shape
    z = x.new_zeros(b, c, h * up, w * up)
    z[:, :, ::up, ::up] = x
    z = F.pad(z, [pad0, pad1, pad0, pad1])
    k = torch.flip(kernel, [0, 1]).to(x.dtype).repeat(c, 1, 1, 1)        # same 2-D kernel per channel
    return F.conv2d(z, k, groups=c)


def _conv_transpose_stride2(x, weight):
    """conv_transpose2d(x, weight (in,out,k,k), stride=2, padding=0) as zero insertion + conv."""
    k = weight.shape[-1]
    h, w = x.shape[-2:]
    z = x.new_zeros(x.shape[0], x.shape[1], 2 * h - 1, 2 * w - 1)
    z[:, :, ::2, ::2] = x
    z = F.pad(z, [k - 1] * 4)
    return F.conv2d(z, torch.flip(weight, [2, 3]).transpose(0, 1))


def _modconv(x, sd, p, style, demodulate=True, upsample=False):
    weight = sd[p + ".weight"][0]                                      # (out, in, k, k)
    out_c, in_c, k, _ = weight.shape
    mod_w = sd[p + ".modulation.weight"]
    s_all = style @ (mod_w / math.sqrt(mod_w.shape[1])).t() + sd[p + ".modulation.bias"]
    outs = []
    for b in range(x.shape[0]):
        wb = weight / math.sqrt(in_c * k * k) * s_all[b][None, :, None, None]
        if demodulate:
            wb = wb / torch.sqrt((wb ** 2).sum(dim=(1, 2, 3), keepdim=True) + 1e-8)
        xb = x[b:b + 1]
        if upsample:
            ob = _conv_transpose_stride2(xb, wb.transpose(0, 1))
            ob = upfirdn2d_ref(ob, sd[p + ".blur.kernel"], 1, 1, 1)
        else:
            ob = F.conv2d(xb, wb, padding=k // 2)
        outs.append(ob)
    return torch.cat(outs)


def _styled(x, sd, p, style, noise, upsample=False):
    x = _modconv(x, sd, p + ".conv", style, upsample=upsample)
    x = x + sd[p + ".noise.weight"] * noise
    x = x + sd[p + ".activate.bias"].view(1, -1, 1, 1)
    return _leaky(x, 0.2) * math.sqrt(2)


def reference_generator(sd: dict, w: torch.Tensor) -> dict[int, torch.Tensor]:
    """StyleGAN2 synthesis from W+ over a state dict with ``decoder.`` stripped; stored noise.

    Returns the skip RGB at every resolution {4: ..., 8: ..., ..., size: final image}.
    """
    n_levels = 1 + max(int(k.split(".")[1]) for k in sd if k.startswith("to_rgbs."))
    x = sd["input.input"].repeat(w.shape[0], 1, 1, 1)
    x = _styled(x, sd, "conv1", w[:, 0], sd["noises.noise_0"])
    skip = _modconv(x, sd, "to_rgb1.conv", w[:, 1], demodulate=False) + sd["to_rgb1.bias"]
    skips = {4: skip}
    for level in range(n_levels):
        i = 1 + 2 * level
        x = _styled(x, sd, f"convs.{2 * level}", w[:, i], sd[f"noises.noise_{i}"], upsample=True)
        x = _styled(x, sd, f"convs.{2 * level + 1}", w[:, i + 1], sd[f"noises.noise_{i + 1}"])
        rgb = _modconv(x, sd, f"to_rgbs.{level}.conv", w[:, i + 2], demodulate=False) + sd[f"to_rgbs.{level}.bias"]
        skip = rgb + upfirdn2d_ref(skip, sd[f"to_rgbs.{level}.upsample.kernel"], 2, 2, 1)
        skips[x.shape[-1]] = skip
    return skips


# ----------------------------------------------------------------------------- random weights

def blur_kernel() -> torch.Tensor:
    k = torch.tensor([1.0, 3.0, 3.0, 1.0])
    k = k[:, None] * k[None, :]
    return k / k.sum() * 4  # the stored kernels already carry the factor**2 of 2x upsampling


def random_e4e_weights(seed: int = 0, size: int = 1024, random_kernels: bool = False,
                       encoder: bool = True):
    """(encoder_sd, decoder_sd, latent_avg) with official keys/shapes and tame random values.

    Scales keep activations O(1) through 24 residual units; ``random_kernels`` replaces the
    [1,3,3,1] blur kernels by asymmetric random ones (checks that the stored kernels are used,
    with the right orientation). ``encoder=False`` skips the 267 M encoder values (returns {});
    the decoder and latent_avg values do not depend on it.
    """
    from wplus_core.e4e import Encoder4Editing, Generator

    g = torch.Generator().manual_seed(seed)
    randn = lambda *s: torch.randn(*s, generator=g)  # noqa: E731
    with torch.device("meta"):
        enc_shapes = {k: v.shape for k, v in Encoder4Editing().state_dict().items()} if encoder else {}
        dec_shapes = {k: v.shape for k, v in Generator(size).state_dict().items()}
    enc = {}
    for k, s in enc_shapes.items():
        if k.endswith("num_batches_tracked"):
            enc[k] = torch.tensor(1000)
        elif k.endswith("running_var"):
            enc[k] = torch.rand(s, generator=g) + 0.5
        elif k.endswith(("running_mean", "bias")):
            enc[k] = 0.1 * randn(s)
        elif len(s) == 1 and (k.startswith("input_layer.2") or ".res_layer.2." in k):
            enc[k] = 0.25 + 0.05 * randn(s)                            # PReLU slopes
        elif len(s) == 1:
            enc[k] = 1 + 0.1 * randn(s)                                # BatchNorm gains
        elif k.endswith("linear.weight"):
            enc[k] = randn(s)                                          # EqualLinear scales at run time
        else:
            enc[k] = randn(s) / math.sqrt(math.prod(s[1:]))
    g = torch.Generator().manual_seed(seed + 1)  # decoder values independent of the encoder flag
    dec = {}
    for k, s in dec_shapes.items():
        if k.endswith("kernel"):
            dec[k] = blur_kernel() + (0.2 * torch.rand(s, generator=g) if random_kernels else 0)
        elif k.endswith("modulation.bias"):
            dec[k] = 1 + 0.1 * randn(s)
        elif k.endswith("bias") or k.endswith("noise.weight"):
            dec[k] = 0.1 * randn(s)
        else:
            dec[k] = randn(s)                                          # equalised lr: N(0,1) init
    latent_avg = 0.5 * randn(18, 512)
    return enc, dec, latent_avg


def official_checkpoint(enc: dict, dec: dict, latent_avg: torch.Tensor, **opts) -> dict:
    """The dict e4e_ffhq_encode.pt holds: state_dict with prefixes, latent_avg, plain opts."""
    state = {"encoder." + k: v for k, v in enc.items()}
    state.update({"decoder." + k: v for k, v in dec.items()})
    base = {"encoder_type": "Encoder4Editing", "stylegan_size": 1024, "start_from_latent_avg": True,
            "checkpoint_path": None, "lpips_lambda": 0.8, "progressive_steps": [0, 20000, 22000],
            "dataset_type": "ffhq_encode", "device": "cuda:0"}
    base.update(opts)
    return {"state_dict": state, "latent_avg": latent_avg, "opts": base}
