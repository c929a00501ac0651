"""PSFRGAN face restoration: the reference's ``-s`` step for blurry, small or compressed faces.

    model = load_psfrgan("models/psfrgan/psfrgan_epoch15_net_G.pth", device="cuda", dtype=torch.float16)
    onehot = parse_onehot(parser, images)          # ParseNet labels as the reference builds them
    out = model.restore(images, onehot)            # (B,3,512,512) in [-1,1] -> same, restored
    out = model.restore_aligned(images, parser, strength=1.0)   # any square size, blended

The reference (``script/ProcessWildImage.py -s``) restores each 512 px FFHQ crop with
``PSFRGenerator(3, 3, in_size=512, out_size=512, relu_type='LeakyReLU', parse_ch=19,
norm_type='spade')`` with ``torch.nn.utils.spectral_norm`` on every Conv2d, weights
``psfrgan_epoch15_net_G.pth``, guided by the one-hot ``(logits == logits.max(1))`` of the ParseNet
labels of the same crop. e4e then reads the restored crop; the background mask stays the one of
the original crop.

The generator (46 M parameters, all 3x3 convs):
    const (1,1024,16,16) -> head: conv, SPADE res-block (1024)
    -> body: 5 x [nearest x2, conv, SPADE res-block]  (512, 256, 128, 64, 32 channels; 32 -> 512 px)
    -> img_out conv (3 channels)
A SPADE res-block is ``x + conv_1(lrelu(norm_1(conv_0(lrelu(norm_0(x))))))``; a SPADE norm is
``instance_norm(x) * gamma(ref) + beta(ref)`` where ``ref`` is the image concatenated with the
one-hot (22 channels), resized bicubically to the feature size, through conv1 (22 -> 64, leaky
ReLU 0.2) and the gamma/beta convs. The module names below ARE the checkpoint's keys.

Spectral norm is kept as stored: each conv holds ``weight_orig``, ``bias``, ``weight_u`` and
``weight_v`` and uses ``weight_orig / (u . (W v))`` with the stored vectors, which is what torch's
spectral norm computes in eval mode (no power iteration at inference). Files are read with
``weights_only=True`` (or safetensors), recognised from their keys (``checkpoints.identify``) and
matched key for key and shape for shape; anything else is refused with a WPlusError naming the file
and what it is instead.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from .checkpoints import describe, read_weights, require_kind
from .errors import WPlusError
from .model_files import name_of

__all__ = ["PSFRGAN", "PSFRGenerator", "load_psfrgan", "parse_onehot", "PSFRGAN_FILE", "RESTORE_SIZE",
           "PARSE_CHANNELS"]

PSFRGAN_FILE = name_of("psfrgan")
RESTORE_SIZE = 512
PARSE_CHANNELS = 19
MIN_FEAT = 16
WHAT = "PSFRGAN"
EXPECTED = (f"the official {PSFRGAN_FILE} (PSFRGAN generator with spectral norm, from the "
            "w-plus-adapter v1 release or PSFRGAN's v0.1.0 release)")


def _channels(size: int) -> int:
    return max(32, min(1024 * 16 // size, 1024))


class SNConv2d(nn.Module):
    """A 3x3 convolution (padding 1) parametrised like ``torch.nn.utils.spectral_norm`` saves it."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.bias = nn.Parameter(torch.empty(cout))  # registration order = the file's key order
        self.weight_orig = nn.Parameter(torch.empty(cout, cin, 3, 3))
        self.register_buffer("weight_u", torch.empty(cout))
        self.register_buffer("weight_v", torch.empty(cin * 9))

    def weight(self) -> torch.Tensor:
        """``weight_orig / sigma`` with ``sigma = u . (W_mat v)`` (eval-mode spectral norm);
        sigma in float32 whatever the weights' dtype."""
        w = self.weight_orig
        sigma = torch.dot(self.weight_u.float(), torch.mv(w.flatten(1).float(), self.weight_v.float()))
        return (w.float() / sigma).to(w.dtype)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight(), self.bias, padding=1)


def _fused_conv(x: torch.Tensor, convs) -> torch.Tensor:
    """Several SNConv2d on the same input as one convolution (outputs concatenated on channels)."""
    weight = torch.cat([c.weight() for c in convs])
    bias = torch.cat([c.bias for c in convs])
    return F.conv2d(x, weight, bias, padding=1)


class SPADENorm(nn.Module):
    def __init__(self, channels: int, ref_channels: int = 3 + PARSE_CHANNELS, hidden: int = 64):
        super().__init__()
        self.conv1 = nn.Sequential(SNConv2d(ref_channels, hidden), nn.LeakyReLU(0.2))
        self.gamma_conv = SNConv2d(hidden, channels)
        self.beta_conv = SNConv2d(hidden, channels)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        """``ref`` is already at x's size (PSFRGenerator resizes it once per size)."""
        return self.modulate(x, F.leaky_relu(self.conv1[0](ref), 0.2))

    def modulate(self, x: torch.Tensor, act: torch.Tensor) -> torch.Tensor:
        """``instance_norm(x) * gamma + beta`` from conv1's activation (gamma and beta in one conv)."""
        gamma, beta = _fused_conv(act, (self.gamma_conv, self.beta_conv)).chunk(2, dim=1)
        normalized = F.instance_norm(x.float(), eps=1e-5).to(x.dtype)
        return normalized * gamma + beta


class SPADEResBlock(nn.Module):
    def __init__(self, channels: int):
        super().__init__()
        self.conv_0 = SNConv2d(channels, channels)
        self.conv_1 = SNConv2d(channels, channels)
        self.norm_0 = SPADENorm(channels)
        self.norm_1 = SPADENorm(channels)

    def forward(self, x: torch.Tensor, ref: torch.Tensor) -> torch.Tensor:
        # both norms read the same ref: their conv1 run as one convolution
        act = F.leaky_relu(_fused_conv(ref, (self.norm_0.conv1[0], self.norm_1.conv1[0])), 0.2)
        act_0, act_1 = act.chunk(2, dim=1)
        res = self.conv_0(F.leaky_relu(self.norm_0.modulate(x, act_0), 0.2))
        res = self.conv_1(F.leaky_relu(self.norm_1.modulate(res, act_1), 0.2))
        return x + res


class PSFRGenerator(nn.Module):
    """PSFRGAN's generator at 512 px (the only configuration the official file has)."""

    def __init__(self, out_size: int = RESTORE_SIZE):
        super().__init__()
        ch = _channels(MIN_FEAT)
        self.const_input = nn.Parameter(torch.empty(1, ch, MIN_FEAT, MIN_FEAT))
        self.img_out = SNConv2d(_channels(out_size), 3)
        self.head = nn.Sequential(SNConv2d(ch, ch), SPADEResBlock(ch))
        body, size = [], MIN_FEAT
        while size < out_size:
            size *= 2
            cin, cout = _channels(size // 2), _channels(size)
            body.append(nn.Sequential(nn.Upsample(scale_factor=2), SNConv2d(cin, cout), SPADEResBlock(cout)))
        self.body = nn.Sequential(*body)
        self.out_size = out_size

    def forward(self, image: torch.Tensor, parse_onehot: torch.Tensor) -> torch.Tensor:
        ref = torch.cat((image, parse_onehot), dim=1)
        refs = {}

        def ref_at(size):  # the reference resizes per norm layer; once per size gives the same values
            if size == ref.shape[-1]:
                return ref
            if size not in refs:
                refs[size] = F.interpolate(ref, size=(size, size), mode="bicubic", align_corners=False)
            return refs[size]

        x = self.const_input.expand(image.shape[0], -1, -1, -1)
        x = self.head[1](self.head[0](x), ref_at(x.shape[-1]))
        for stage in self.body:
            x = stage[1](F.interpolate(x, scale_factor=2.0, mode="nearest"))
            x = stage[2](x, ref_at(x.shape[-1]))
        return self.img_out(x)


def _expected_state() -> dict:
    with torch.device("meta"):
        return PSFRGenerator().state_dict()


def _split_tensors(state, name: str) -> dict:
    require_kind(state, "psfrgan", name, EXPECTED)  # another kind of file (or no dict) is refused here
    if isinstance(state.get("state_dict"), dict) and not any(isinstance(v, torch.Tensor) for v in state.values()):
        state = state["state_dict"]  # a wrapped save of the same weights
    if not state or not all(isinstance(v, torch.Tensor) for v in state.values()):
        said = describe(state, "psfrgan")
        raise WPlusError(f"{WHAT} file '{name}' is not a PSFRGAN generator state dict (a flat dict of "
                         f"tensors). {said + ' ' if said else ''}Expected {EXPECTED}.")
    return state


class PSFRGAN(nn.Module):
    """The generator in eval mode, with the reference's input/output conventions.

    Methods run under ``torch.no_grad()`` on the module's current device and dtype (the node layer
    may move it with ``.to()``) and return float32 tensors on that device.
    """

    def __init__(self, net: PSFRGenerator, source: str = ""):
        super().__init__()
        self.net = net
        self.source = source

    @property
    def device(self) -> torch.device:
        return self.net.const_input.device

    @property
    def dtype(self) -> torch.dtype:
        return self.net.const_input.dtype

    @torch.no_grad()
    def restore(self, images: torch.Tensor, parse_onehot: torch.Tensor) -> torch.Tensor:
        """(B,3,512,512) RGB in [-1,1] and their ParseNet one-hot (B,19,512,512) -> restored faces
        (B,3,512,512) in [-1,1] (clipped, as the reference does when it saves them)."""
        x, p = torch.as_tensor(images), torch.as_tensor(parse_onehot)
        size = RESTORE_SIZE
        if x.ndim != 4 or tuple(x.shape[1:]) != (3, size, size):
            raise WPlusError(f"PSFRGAN restore expects images shaped (B,3,{size},{size}), got "
                             f"{tuple(x.shape)}: resize the aligned crops to {size} px (restore_aligned does).")
        if p.ndim != 4 or tuple(p.shape[1:]) != (PARSE_CHANNELS, size, size) or p.shape[0] != x.shape[0]:
            raise WPlusError(f"PSFRGAN restore expects the parsing one-hot shaped ({x.shape[0]},"
                             f"{PARSE_CHANNELS},{size},{size}) (ParseNet's 19 classes, see parse_onehot), "
                             f"got {tuple(p.shape)}.")
        if x.numel() and (x.min() < -1.5 or x.max() > 1.5):
            raise WPlusError(f"PSFRGAN restore expects pixel values in [-1,1], got [{float(x.min()):.3g}, "
                             f"{float(x.max()):.3g}]: scale images with x*2-1 (from [0,1]).")
        out = self.net(x.to(self.device, self.dtype), p.to(self.device, self.dtype))
        return out.float().clamp_(-1.0, 1.0)

    @torch.no_grad()
    def restore_aligned(self, images: torch.Tensor, parser, strength: float = 1.0) -> torch.Tensor:
        """Aligned faces (B,3,S,S) in [-1,1], any square size S -> restored faces at S.

        Like the reference, each crop is resized to 512 (bilinear, antialiased when shrinking),
        parsed by ``parser`` (ParseNet) and restored; the result is resized back to S (bicubic) and
        blended: ``x + strength * (restored - x)`` (1 = the reference, 0 = unchanged).
        """
        x = torch.as_tensor(images)
        if x.ndim != 4 or x.shape[1] != 3 or x.shape[-1] != x.shape[-2]:
            raise WPlusError(f"face restoration expects square aligned faces shaped (B,3,S,S), got "
                             f"{tuple(x.shape)}: align the faces first (W+ Face Align).")
        x = x.float()
        s = x.shape[-1]
        x512 = x if s == RESTORE_SIZE else F.interpolate(
            x, size=(RESTORE_SIZE, RESTORE_SIZE), mode="bilinear", align_corners=False, antialias=s > RESTORE_SIZE)
        out = self.restore(x512, parse_onehot(parser, x512))
        if s != RESTORE_SIZE:
            out = F.interpolate(out, size=(s, s), mode="bicubic", align_corners=False,
                                antialias=s < RESTORE_SIZE).clamp_(-1.0, 1.0)
        x = x.to(out.device)
        return x + float(strength) * (out - x) if strength != 1 else out


@torch.no_grad()
def parse_onehot(parser, images: torch.Tensor) -> torch.Tensor:
    """The reference's parsing guide for PSFRGAN: ParseNet logits of the 512 px crops (B,3,512,512)
    in [-1,1] (ParseNet's own input range) -> ``(logits == logits.max(dim=1)).float()``, a
    (B,19,512,512) float32 one-hot (a tie would mark both classes, as in the reference), on the
    parser's device. ``parser``: a ``wplus_core.parsing.FaceParser`` named "parsenet"."""
    if getattr(parser, "name", None) != "parsenet":
        raise WPlusError(f"PSFRGAN is guided by ParseNet's 19 labels (its class order); got the "
                         f"'{getattr(parser, 'name', type(parser).__name__)}' parser: use parsenet.")
    x = torch.as_tensor(images)
    if x.ndim != 4 or tuple(x.shape[1:]) != (3, RESTORE_SIZE, RESTORE_SIZE):
        raise WPlusError(f"parse_onehot expects (B,3,{RESTORE_SIZE},{RESTORE_SIZE}) crops in [-1,1], "
                         f"got {tuple(x.shape)}.")
    logits = parser.model(x.to(parser.device, parser.dtype))[0].float()
    return (logits == logits.amax(dim=1, keepdim=True)).float()


def load_psfrgan(path_or_state_dict, device=None, dtype=None) -> PSFRGAN:
    """Load ``psfrgan_epoch15_net_G.pth`` (a path, or its state dict already in memory) strictly.

    ``device`` defaults to the CPU, ``dtype`` to the file's (float32). Raises WPlusError for any
    other file: empty, truncated, pickled code, another model, a mismatched key or shape.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        name = os.fspath(path_or_state_dict)
        state = read_weights(name, f"{WHAT} weights file")
    else:
        name, state = "<state dict>", path_or_state_dict
    state = _split_tensors(state, name)
    expected = _expected_state()
    state = {k.removeprefix("module."): v for k, v in state.items()}  # a DataParallel save
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        said = describe(state, "psfrgan")  # e.g. saved without spectral norm
        raise WPlusError(f"{WHAT} file '{name}' is not the PSFRGAN generator: {len(missing)} of its "
                         f"{len(expected)} keys missing (e.g. {missing[:3]}), {len(unexpected)} unexpected "
                         f"(e.g. {unexpected[:3]}). {said + ' ' if said else ''}Expected {EXPECTED}.")
    wrong = [f"{k} {tuple(v.shape)} (expected {tuple(expected[k].shape)})" for k, v in state.items()
             if tuple(v.shape) != tuple(expected[k].shape)]
    if wrong:
        raise WPlusError(f"{WHAT} file '{name}' has the generator's keys but {len(wrong)} tensor(s) of "
                         f"another shape: {', '.join(wrong[:3])}; it is another PSFRGAN configuration. "
                         f"Expected {EXPECTED}.")
    with torch.device("meta"):
        net = PSFRGenerator()
    net.load_state_dict(state, strict=True, assign=True)
    for k, v in net.state_dict().items():
        if not torch.isfinite(v).all():
            raise WPlusError(f"{WHAT} file '{name}': tensor {k} holds NaN or infinite values; the file is "
                             "damaged: download it again.")
    net.eval().requires_grad_(False)
    net.to(device=torch.device(device) if device is not None else torch.device("cpu"),
           dtype=dtype if dtype is not None else torch.float32)
    return PSFRGAN(net, source=name).eval()
