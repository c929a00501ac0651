"""The checkpoint kinds the pack knows, recognised from their keys (spandrel style).

One table, most specific first: each kind says what it is, where it belongs, how its keys give it
away and what its shapes tell. ``checkpoints.identify`` walks it; every loader refuses a file of
another kind with ``checkpoints.foreign_sentence`` (one wording for all of them).
"""
from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Callable

import torch

from .model_files import name_of


@dataclass(frozen=True)
class Kind:
    name: str
    title: str                              # what it is, after "It is "
    home: str                               # where it belongs, after the colon
    match: Callable[[set], bool]            # the flattened key set -> is it this kind?
    note: Callable[[dict], str] = lambda flat: ""   # what its shapes tell, after the title


def _prefixed(keys, *prefixes) -> bool:
    return any(k.startswith(prefixes) for k in keys)


def indices(keys, prefix: str) -> set[int]:
    """{i} of the keys ``<prefix><i>.*`` (block counts for the shape inference)."""
    pattern = re.compile(re.escape(prefix) + r"(\d+)\.")
    return {int(m.group(1)) for k in keys if (m := pattern.match(k))}


def stylegan_size(decoder_keys) -> int | None:
    """The StyleGAN2 output size from its to_rgbs blocks (one per doubling from 8 px)."""
    n = len(indices(decoder_keys, "to_rgbs."))
    return 2 ** (n + 2) if n else None


def _e4e_note(flat: dict) -> str:
    size = stylegan_size([k[len("decoder."):] for k in flat if k.startswith("decoder.")])
    styles = len(indices(flat, "encoder.styles."))
    return f" for a {size} px StyleGAN2 ({styles} styles)" if size and size != 1024 else ""


def _adapter_note(flat: dict) -> str:
    norm = flat.get("w_proj.norm.weight")
    if isinstance(norm, torch.Tensor) and norm.ndim == 1 and norm.shape[0] != 768:
        return f" with {norm.shape[0]}-wide tokens (not SD1.5's 768)"
    return ""


def _psfrgan_note(flat: dict) -> str:
    if _prefixed(flat, "head.", "body.") and not any(k.endswith(".weight_orig") for k in flat) and \
            any(k.endswith(".weight") for k in flat):
        return (" saved without spectral norm (or with it removed): its convolutions have plain "
                "'weight' keys, while the official file keeps weight_orig/weight_u/weight_v")
    return ""


KINDS: tuple[Kind, ...] = (
    # stage 1 and stage 2 share one layout: the keys cannot tell them apart
    Kind("wplus_adapter", f"a W+ adapter file ({name_of('wplus_adapter')} or {name_of('wplus_adapter_stage1')})",
         "load it with W+ Adapter Loader (models/wplus)",
         lambda ks: bool({"w_proj", "wplus_adapter"} & ks) or _prefixed(ks, "w_proj.", "wplus_adapter."),
         _adapter_note),
    Kind("ip_adapter", "an IP-Adapter file", "load it with an IP-Adapter node",
         lambda ks: bool({"image_proj", "ip_adapter"} & ks) or _prefixed(ks, "image_proj.", "ip_adapter.")),
    # ParseNet has encoder.*/decoder.* keys too: it comes before e4e
    Kind("parsenet", "PSFRGAN's face-parsing net (ParseNet: parse_multi_iter_90000.pth or facexlib's "
         f"{name_of('parsenet')})", "the parser belongs in models/facexlib (the parsenet parser)",
         lambda ks: _prefixed(ks, "out_mask_conv.")),
    Kind("bisenet", f"a bisenet checkpoint (facexlib's BiSeNet face parser, {name_of('bisenet')})",
         "choose the bisenet parser for it (models/facexlib)",
         lambda ks: _prefixed(ks, "cp.") and _prefixed(ks, "ffm.")),
    Kind("retinaface_resnet50", "a RetinaFace face detector with the resnet50 backbone "
         f"({name_of('retinaface_resnet50')})", "choose the retinaface_resnet50 detector for it (models/facexlib)",
         lambda ks: _prefixed(ks, "BboxHead.", "ClassHead.") and "body.conv1.weight" in ks),
    Kind("retinaface_mobile0.25", "a RetinaFace face detector with the mobilenet0.25 backbone "
         f"({name_of('retinaface_mobile0.25')})", "choose the retinaface_mobile0.25 detector for it "
         "(models/facexlib)",
         lambda ks: _prefixed(ks, "BboxHead.", "ClassHead.") and _prefixed(ks, "body.stage1.")),
    Kind("psfrgan", f"a PSFRGAN generator ({name_of('psfrgan')})",
         "load it with W+ Restore Face (PSFRGAN) (models/psfrgan)",
         lambda ks: "const_input" in ks and _prefixed(ks, "head.", "img_out."), _psfrgan_note),
    Kind("e4e", f"an e4e checkpoint ({name_of('e4e')})", "load it with W+ e4e Loader (models/e4e)",
         lambda ks: "latent_avg" in ks or _prefixed(ks, "encoder.", "decoder."), _e4e_note),
    Kind("e4e_encoder", "a bare e4e/pSp encoder state dict, without the StyleGAN2 decoder and latent_avg",
         f"W+ e4e Loader needs the whole {name_of('e4e')} (models/e4e)",
         lambda ks: _prefixed(ks, "input_layer.") and _prefixed(ks, "styles.", "output_layer")),
    Kind("stylegan2", "a StyleGAN2 training checkpoint (g/d/g_ema), without an e4e encoder",
         f"W+ e4e Loader needs {name_of('e4e')}, which holds the encoder and this generator (models/e4e)",
         lambda ks: bool({"g_ema", "g", "d"} & ks)),
    Kind("basicsr", "a BasicSR-style face-restoration file (GFPGAN, CodeFormer, RestoreFormer...)",
         "it needs a face-restoration pack of its own",
         lambda ks: bool({"params_ema", "params"} & ks)),
    Kind("sd_checkpoint", "a Stable Diffusion checkpoint", "load it with Load Checkpoint (models/checkpoints)",
         lambda ks: _prefixed(ks, "model.diffusion_model.")),
    Kind("sd_unet", "a Stable Diffusion UNet (without VAE and text encoder)",
         "load it with Load Diffusion Model (models/diffusion_models)",
         lambda ks: _prefixed(ks, "input_blocks.") and _prefixed(ks, "output_blocks.")),
)
