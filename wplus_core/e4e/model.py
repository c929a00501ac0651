"""Loading ``e4e_ffhq_encode.pt`` and the two things the pack does with it: invert and synthesize.

    e4e = load_e4e("models/e4e/e4e_ffhq_encode.pt", device="cuda", dtype=torch.float16)
    w = e4e.invert(images)              # (B,3,256,256) in [-1,1] -> (B,18,512) float32 W+
    img = e4e.synthesize(w, size=256)   # -> (B,3,256,256) float32 in [-1,1] (fast preview)

Accepted inputs: the official file (``torch.save({'state_dict': {encoder.*, decoder.*},
'latent_avg': (18,512), 'opts': {...}})``, read with ``weights_only=True``), a ``.safetensors``
holding the same ``encoder.*``/``decoder.*`` keys plus ``latent_avg``, or such a dict already in
memory. The file is recognised from its keys (``checkpoints.identify``, spandrel style) and loaded
with ``strict=True``; anything else raises a WPlusError naming the file and saying what it is.
"""
from __future__ import annotations

import os

import torch
import torch.nn.functional as F
from torch import nn

from ..checkpoint_kinds import indices, stylegan_size
from ..checkpoints import describe, read_weights, require_kind
from ..errors import WPlusError
from ..model_files import name_of
from .encoder import Encoder4Editing
from .stylegan2 import Generator

__all__ = ["E4E", "load_e4e", "split_e4e_checkpoint", "E4E_INPUT_SIZE", "N_STYLES", "STYLEGAN_SIZE"]

E4E_INPUT_SIZE = 256
N_STYLES = 18
STYLEGAN_SIZE = 1024
WHAT = "e4e checkpoint"
EXPECTED = (f"the official {name_of('e4e')} (Encoder4Editing IR-SE-50 encoder + StyleGAN2 "
            "1024 px FFHQ generator + latent_avg), from the w-plus-adapter v1 release")


class E4E(nn.Module):
    """e4e encoder + StyleGAN2 decoder + latent_avg, in eval mode without gradients.

    Methods run under ``torch.no_grad()`` (not inference_mode: the returned tensors stay ordinary
    tensors, so callers may edit them in place) on the modules' current device and dtype, which
    the node layer may change with ``.to()``. Both return float32 tensors on that device.
    """

    def __init__(self, encoder: Encoder4Editing, generator: Generator, latent_avg: torch.Tensor,
                 opts: dict | None = None, source: str = ""):
        super().__init__()
        self.encoder = encoder
        self.generator = generator
        self.register_buffer("latent_avg", latent_avg)
        self.opts = dict(opts or {})
        self.source = source

    @property
    def device(self) -> torch.device:
        return self.latent_avg.device

    @property
    def dtype(self) -> torch.dtype:
        return self.generator.input.input.dtype

    @torch.no_grad()
    def invert(self, images: torch.Tensor) -> torch.Tensor:
        """Aligned faces (B,3,H,W) RGB in [-1,1] -> W+ (B,18,512) = encoder(x) + latent_avg.

        e4e was trained on 256 px: other square sizes are resized to 256 first (bicubic with
        antialiasing, so a 512/1024 px crop is downscaled without aliasing). Non-square images
        are refused: they cannot be FFHQ-aligned crops.
        """
        x = torch.as_tensor(images)
        if x.ndim == 3:
            x = x.unsqueeze(0)
        if x.ndim != 4 or x.shape[1] != 3:
            raise WPlusError(f"e4e invert expects RGB images shaped (B,3,H,W), got {tuple(x.shape)}.")
        if x.shape[-1] != x.shape[-2]:
            raise WPlusError(f"e4e invert expects square FFHQ-aligned crops, got {x.shape[-2]}x{x.shape[-1]}"
                             ": align the face first.")
        if x.numel() and (x.min() < -1.5 or x.max() > 1.5):
            raise WPlusError(f"e4e invert expects pixel values in [-1,1], got [{float(x.min()):.3g}, "
                             f"{float(x.max()):.3g}]: scale images with x*2-1 (from [0,1]) or x/127.5-1.")
        x = x.to(self.device, torch.float32)
        if x.shape[-1] != E4E_INPUT_SIZE:
            x = F.interpolate(x, size=(E4E_INPUT_SIZE, E4E_INPUT_SIZE), mode="bicubic",
                              align_corners=False, antialias=True)
        x = x.to(self.dtype).contiguous(memory_format=torch.channels_last)
        codes = self.encoder(x)
        return codes.float() + self.latent_avg.float()

    @torch.no_grad()
    def synthesize(self, w: torch.Tensor, size: int = STYLEGAN_SIZE) -> torch.Tensor:
        """W+ (B,18,512) or (18,512) -> images (B,3,size,size) in [-1,1].

        ``size`` is a power of two up to 1024; below 1024 the generator stops early and returns
        its skip RGB at that resolution (a faithful preview at a fraction of the cost). The
        output is clamped to [-1,1], as the reference does when it saves the reconstruction.
        """
        w = torch.as_tensor(w)
        if w.ndim == 2:
            w = w.unsqueeze(0)
        if w.ndim != 3 or tuple(w.shape[1:]) != (self.generator.n_latent, self.generator.style_dim):
            raise WPlusError(f"synthesize expects W+ latents shaped (B,{self.generator.n_latent},"
                             f"{self.generator.style_dim}), got {tuple(w.shape)}.")
        try:
            size = self.generator.check_size(size)
        except ValueError as e:
            raise WPlusError(f"synthesize: {e}.") from None
        # W+ stays float32: the modulation runs in float32 whatever the generator's dtype
        image = self.generator(w.to(self.device, torch.float32), size=size)
        return image.float().clamp_(-1.0, 1.0)


def split_e4e_checkpoint(ckpt, name: str = "<state dict>"):
    """Check a loaded checkpoint and split it: (encoder_sd, decoder_sd, latent_avg (18,512), opts).

    Raises WPlusError for anything that is not the official e4e FFHQ encode checkpoint.
    """
    require_kind(ckpt, "e4e", name, EXPECTED)  # another kind of file (or no dict) is refused here
    nested = isinstance(ckpt.get("state_dict"), dict)
    sd = ckpt["state_dict"] if nested else ckpt
    opts = ckpt.get("opts") if nested else None
    if opts is not None and not isinstance(opts, dict):
        raise WPlusError(f"{WHAT} '{name}': 'opts' is a {type(opts).__name__}, expected a dict of plain values.")
    opts = opts or {}
    latent_avg = ckpt.get("latent_avg", sd.get("latent_avg"))

    keys = [k for k in sd if k != "latent_avg"]
    enc = {k[len("encoder."):]: v for k, v in sd.items() if k.startswith("encoder.")}
    dec = {k[len("decoder."):]: v for k, v in sd.items() if k.startswith("decoder.")}
    if not enc and not dec:
        said = describe(ckpt, "e4e")
        raise WPlusError(f"{WHAT} '{name}' is not an e4e checkpoint: it has no encoder.*/decoder.* "
                         f"weights. {said + ' ' if said else ''}Expected {EXPECTED}.")
    bad = [k for k, v in sd.items() if not isinstance(v, torch.Tensor)]
    if bad:
        raise WPlusError(f"{WHAT} '{name}': entries {bad[:3]} are not tensors; expected {EXPECTED}.")

    encoder_type = opts.get("encoder_type")
    if encoder_type not in (None, "Encoder4Editing"):
        raise WPlusError(
            f"{WHAT} '{name}' is a pSp-family checkpoint with encoder_type={encoder_type!r}, not "
            "e4e's Encoder4Editing (a pSp GradualStyleEncoder has the same keys but computes W+ "
            f"differently, so its latents would be wrong for the W+ adapter); expected {EXPECTED}.")
    # sizes from the keys (spandrel style), then refuse what the W+ adapter cannot use
    n_styles = len(indices(enc, "styles."))
    gen_size = stylegan_size(dec)
    stated = opts.get("stylegan_size")
    if (gen_size and gen_size != STYLEGAN_SIZE) or stated not in (None, STYLEGAN_SIZE):
        raise WPlusError(
            f"{WHAT} '{name}' is an e4e for a {gen_size or stated} px StyleGAN2 ({n_styles} styles); "
            f"the W+ adapter was trained on the FFHQ 1024 px W+ space ({N_STYLES} styles): expected {EXPECTED}.")

    with torch.device("meta"):
        expected = {"encoder.": _shapes(Encoder4Editing(N_STYLES)), "decoder.": _shapes(Generator(STYLEGAN_SIZE))}
    missing, unexpected, mismatched = [], [], []
    for prefix, part in (("encoder.", enc), ("decoder.", dec)):
        want = expected[prefix]
        missing += [prefix + k for k in want if k not in part]
        unexpected += [prefix + k for k in part if k not in want]
        mismatched += [f"{prefix}{k} {tuple(v.shape)} (expected {want[k]})"
                       for k, v in part.items() if k in want and tuple(v.shape) != want[k]]
    unexpected += [k for k in keys if not k.startswith(("encoder.", "decoder."))]
    if missing or unexpected or mismatched:
        parts = []
        for label, items in (("missing", _summarise(missing)), ("unexpected", _summarise(unexpected))):
            if items:
                parts.append(f"{label}: {items}")
        if mismatched:
            parts.append(f"wrong shape: {', '.join(mismatched[:3])}{', ...' if len(mismatched) > 3 else ''}")
        hint = ""
        if not dec or not enc:
            hint = f" It holds no {'decoder (StyleGAN2 generator)' if not dec else 'encoder'} weights."
        elif any(k.startswith("encoder.output_layer") for k in unexpected):
            hint = " It looks like a single-style pSp/e4e encoder (BackboneEncoderUsingLastLayerIntoW)."
        raise WPlusError(f"{WHAT} '{name}' is not an e4e_ffhq_encode checkpoint: {'; '.join(parts)}.{hint} "
                         f"Expected {EXPECTED}.")

    if latent_avg is None:
        raise WPlusError(
            f"{WHAT} '{name}' has no 'latent_avg'. e4e's W+ is encoder(x) + latent_avg, and the "
            "official file stores it; without it the latents cannot match the W+ adapter's. "
            f"Use {EXPECTED}.")
    if not isinstance(latent_avg, torch.Tensor) or latent_avg.numel() not in (512, N_STYLES * 512) or \
            latent_avg.shape[-1] != 512:
        shape = tuple(latent_avg.shape) if isinstance(latent_avg, torch.Tensor) else type(latent_avg).__name__
        raise WPlusError(f"{WHAT} '{name}': latent_avg has shape {shape}, expected ({N_STYLES}, 512).")
    latent_avg = latent_avg.reshape(-1, 512).expand(N_STYLES, 512).contiguous()
    return enc, dec, latent_avg, opts


def _summarise(keys: list[str], groups: int = 6) -> str:
    """'encoder.styles.17.* (14 keys), encoder.latlayer1.* (2 keys), ...' for an error message."""
    counts: dict[str, int] = {}
    for k in keys:
        parts = k.split(".")
        depth = 3 if len(parts) > 3 and parts[1] in ("body", "styles", "convs", "to_rgbs") else 2
        group = ".".join(parts[:depth]) + (".*" if len(parts) > depth else "")
        counts[group] = counts.get(group, 0) + 1
    shown = [f"{g} ({n} key{'s' if n > 1 else ''})" if g.endswith("*") else g
             for g, n in list(counts.items())[:groups]]
    return ", ".join(shown) + (f", ... ({len(keys)} keys in all)" if len(counts) > groups else "")


def _shapes(module: nn.Module) -> dict[str, tuple]:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def load_e4e(path_or_state_dict, device=None, dtype=None) -> E4E:
    """Load e4e_ffhq_encode (path to .pt/.pth/.safetensors, or a loaded dict) -> E4E.

    device: default CPU. dtype: default float32; float16/bfloat16 are meant for CUDA (BatchNorm
    counters stay int64, modulation/demodulation run in float32). On CPU, bfloat16 is fast but
    float16 generator convolutions are extremely slow in PyTorch: use float32 or bfloat16 there.
    Weights are loaded with strict=True (assign) into modules built on the meta device, so no
    random initialisation is spent on 300 M parameters; a dict passed in may share its tensors
    with the returned model.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        name = os.fspath(path_or_state_dict)
        ckpt = read_weights(name, WHAT)
    else:
        name, ckpt = "<state dict>", path_or_state_dict
    enc_sd, dec_sd, latent_avg, opts = split_e4e_checkpoint(ckpt, name)

    device = torch.device(device) if device is not None else torch.device("cpu")
    dtype = dtype or torch.float32
    if not dtype.is_floating_point:
        raise WPlusError(f"load_e4e: dtype must be a floating point type, got {dtype}.")
    with torch.device("meta"):
        encoder, generator = Encoder4Editing(N_STYLES), Generator(STYLEGAN_SIZE)
    try:
        encoder.load_state_dict(enc_sd, strict=True, assign=True)
        generator.load_state_dict(dec_sd, strict=True, assign=True)
    except RuntimeError as e:  # keys were checked above; this is a last line of defence
        raise WPlusError(f"{WHAT} '{name}' does not fit the e4e architecture: {str(e).splitlines()[0]}") from e
    model = E4E(encoder, generator, latent_avg.float(), opts, source=name)
    model.requires_grad_(False).eval()
    model.to(device=device, dtype=dtype)
    # channels_last: oneDNN / cuDNN run these convs markedly faster in NHWC (the generator's
    # weights are 5-D and modulated per call; it switches its activations itself)
    model.encoder.to(memory_format=torch.channels_last)
    model.latent_avg = model.latent_avg.float()
    return model
