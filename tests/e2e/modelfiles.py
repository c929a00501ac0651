"""Random-weight model files in the real layouts, for end-to-end runs of the example workflows.

Every file a workflow names is written here, with the file name the workflow uses, so the
committed workflows run unmodified against a temporary models folder:

    checkpoints/v1-5-pruned-emaonly-fp16.safetensors   SD1.5 single-file checkpoint (UNet, CLIP-L, VAE)
    vae/vae-ft-mse-840000-ema-pruned.safetensors        SD VAE alone (the original LDM key layout of sd-vae-ft-mse)
    controlnet/control_v11p_sd15_openpose_fp16.safetensors  SD1.5 ControlNet (.pth key layout)
    loras/sd15_lora.safetensors                         kohya-style LoRA on UNet attention + text encoder
    wplus/wplus_adapter.bin, wplus_adapter_stage1.bin   official W+ adapter layout (torch.save)
    e4e/e4e_ffhq_encode.pt                              official e4e layout (torch.save, ~1.2 GB)
    facexlib/parsing_parsenet.pth                       facexlib ParseNet (background whitening)
    psfrgan/psfrgan_epoch15_net_G.pth                   official PSFRGAN layout (spectral norm; W+ Restore Face)

Architectures and key names come from ComfyUI's own classes (built on the meta device, so nothing
is allocated twice), values are seeded random numbers scaled by fan-in so that sampling stays finite.
Files are built once into a cache keyed by FORMAT_VERSION (bump it when a layout changes):
$WPLUS_E2E_CACHE, else $XDG_CACHE_HOME/wplus-e2e, else ~/.cache/wplus-e2e.

Run as a script (a subprocess keeps the 1e9-parameter build out of the test process):
    python -m tests.e2e.modelfiles --comfyui ~/comfy/ComfyUI [--cache DIR]
"""
from __future__ import annotations

import argparse
import fcntl
import math
import os
import sys
import time
from pathlib import Path

import torch

FORMAT_VERSION = "v1"
ROOT = Path(__file__).resolve().parents[2]

CHECKPOINT = ("checkpoints", "v1-5-pruned-emaonly-fp16.safetensors")
VAE = ("vae", "vae-ft-mse-840000-ema-pruned.safetensors")
CONTROLNET = ("controlnet", "control_v11p_sd15_openpose_fp16.safetensors")
LORA = ("loras", "sd15_lora.safetensors")
ADAPTER = ("wplus", "wplus_adapter.bin")
ADAPTER_STAGE1 = ("wplus", "wplus_adapter_stage1.bin")
E4E = ("e4e", "e4e_ffhq_encode.pt")
PARSENET = ("facexlib", "parsing_parsenet.pth")
PSFRGAN = ("psfrgan", "psfrgan_epoch15_net_G.pth")
ALL_FILES = (CHECKPOINT, VAE, CONTROLNET, LORA, ADAPTER, ADAPTER_STAGE1, E4E, PARSENET, PSFRGAN)

from tests.host.sd15 import SD15_UNET  # noqa: E402  (one copy of the SD1.5 layout)
# diffusers names and widths of the 16 SD1.5 transformer blocks (wplus_core.adapter.SITES), for LoRA keys
SD15_ATTENTION_BLOCKS = (
    [(f"down_blocks_{b}_attentions_{i}", w) for b, w in ((0, 320), (1, 640), (2, 1280)) for i in range(2)]
    + [(f"up_blocks_{b}_attentions_{i}", w) for b, w in ((1, 1280), (2, 640), (3, 320)) for i in range(3)]
    + [("mid_block_attentions_0", 1280)]
)


def cache_dir() -> Path:
    env = os.environ.get("WPLUS_E2E_CACHE")
    if env:
        base = Path(env)
    else:
        base = Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "wplus-e2e"
    return base / FORMAT_VERSION


def randomize(shapes: dict, seed: int, dtype=torch.float16) -> dict:
    """Seeded values for a dict of key -> shape: norms ~1, biases small, weights ~N(0, 1/fan_in)."""
    g = torch.Generator().manual_seed(seed)
    out = {}
    for k, shape in shapes.items():
        shape = tuple(shape)
        if k.endswith("logit_scale"):
            t = torch.tensor(math.log(100.0))
        elif len(shape) <= 1 and "norm" in k and k.endswith("weight"):
            t = 1 + 0.05 * torch.randn(shape, generator=g)
        elif len(shape) <= 1:
            t = 0.02 * torch.randn(shape, generator=g)
        else:
            t = torch.randn(shape, generator=g) / math.sqrt(math.prod(shape[1:]))
        out[k] = t.to(dtype)
    return out


def _meta_shapes(module: torch.nn.Module) -> dict:
    return {k: tuple(v.shape) for k, v in module.state_dict().items()}


def sd15_checkpoint_state_dict(seed: int = 0) -> dict:
    """model.diffusion_model.* + cond_stage_model.transformer.text_model.* + first_stage_model.*,
    produced by ComfyUI's own SD15 model config (the keys its checkpoint saver writes)."""
    import comfy.model_detection
    import comfy.sd1_clip

    config = comfy.model_detection.model_config_from_unet_config(dict(SD15_UNET))
    assert type(config).__name__ == "SD15", type(config)
    with torch.device("meta"):
        unet = config.get_model({}, "").diffusion_model
        clip = comfy.sd1_clip.SD1ClipModel(device="meta")
    sd = config.process_unet_state_dict_for_saving(randomize(_meta_shapes(unet), seed))
    sd.update(config.process_clip_state_dict_for_saving(randomize(_meta_shapes(clip), seed + 1)))
    sd.update(config.process_vae_state_dict_for_saving(vae_state_dict(seed + 2)))
    return sd


def vae_state_dict(seed: int = 5) -> dict:
    """The SD1.5 VAE (AutoencoderKL, 4 latent channels) with the original LDM keys (encoder.*,
    decoder.*, quant_conv.*, post_quant_conv.*), as in sd-vae-ft-mse's single-file release."""
    from comfy.ldm.models.autoencoder import AutoencoderKL
    ddconfig = {"double_z": True, "z_channels": 4, "resolution": 256, "in_channels": 3, "out_ch": 3,
                "ch": 128, "ch_mult": [1, 2, 4, 4], "num_res_blocks": 2, "attn_resolutions": [], "dropout": 0.0}
    with torch.device("meta"):
        vae = AutoencoderKL(ddconfig=ddconfig, embed_dim=4)
    return randomize(_meta_shapes(vae), seed)


def controlnet_state_dict(seed: int = 10) -> dict:
    """An SD1.5 ControlNet (OpenPose-style: 3-channel hint) in the v1.1 .pth layout (no prefix)."""
    import comfy.cldm.cldm
    cfg = {k: v for k, v in SD15_UNET.items() if k != "out_channels"}
    with torch.device("meta"):
        net = comfy.cldm.cldm.ControlNet(hint_channels=3, num_head_channels=-1, **cfg)
    return randomize(_meta_shapes(net), seed)


def lora_state_dict(seed: int = 20, rank: int = 4) -> dict:
    """kohya-style LoRA: every UNet attention projection and the text encoder's self-attention."""
    shapes = {}

    def add(name, out_f, in_f):
        shapes[f"{name}.lora_down.weight"] = (rank, in_f)
        shapes[f"{name}.lora_up.weight"] = (out_f, rank)

    for block, width in SD15_ATTENTION_BLOCKS:
        p = f"lora_unet_{block}_transformer_blocks_0"
        for attn, ctx in (("attn1", width), ("attn2", 768)):
            add(f"{p}_{attn}_to_q", width, width)
            add(f"{p}_{attn}_to_k", width, ctx)
            add(f"{p}_{attn}_to_v", width, ctx)
            add(f"{p}_{attn}_to_out_0", width, width)
    for layer in range(12):
        for proj in ("q_proj", "k_proj", "v_proj", "out_proj"):
            add(f"lora_te_text_model_encoder_layers_{layer}_self_attn_{proj}", 768, 768)
    sd = randomize(shapes, seed)
    for k in list(sd):
        if k.endswith(".lora_down.weight"):
            sd[k[: -len(".lora_down.weight")] + ".alpha"] = torch.tensor(float(rank), dtype=torch.float16)
    return sd


def adapter_state_dict(seed: int) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.test_adapter import official_state_dict
    return official_state_dict(seed=seed, std=0.05)


def e4e_checkpoint(seed: int = 30) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.e4e_reference import official_checkpoint, random_e4e_weights
    enc, dec, latent_avg = random_e4e_weights(seed=seed)
    return official_checkpoint(enc, dec, latent_avg)


def parsenet_state_dict(seed: int = 40) -> dict:
    from facexlib.parsing.parsenet import ParseNet
    torch.manual_seed(seed)
    return ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict()


def psfrgan_state_dict(seed: int = 50) -> dict:
    sys.path.insert(0, str(ROOT))
    from tests.psfrgan_reference import official_state_dict
    return official_state_dict(seed=seed, power_iterations=1)


def _write(path: Path, build, save) -> None:
    tmp = path.with_name(path.name + ".partial")
    t0 = time.time()
    save(build(), tmp)
    os.replace(tmp, path)
    print(f"built {path} ({path.stat().st_size / 2**20:.0f} MiB, {time.time() - t0:.1f} s)", flush=True)


def build_all(cache: Path | None = None) -> Path:
    """Build the missing files under <cache>/models/<folder>/<name>; returns the models folder."""
    from safetensors.torch import save_file

    models = (cache or cache_dir()) / "models"
    models.mkdir(parents=True, exist_ok=True)
    st = lambda sd, p: save_file({k: v.contiguous() for k, v in sd.items()}, str(p))  # noqa: E731
    pt = lambda sd, p: torch.save(sd, p)  # noqa: E731
    builders = {
        CHECKPOINT: (sd15_checkpoint_state_dict, st),
        VAE: (vae_state_dict, st),
        CONTROLNET: (controlnet_state_dict, st),
        LORA: (lora_state_dict, st),
        ADAPTER: (lambda: adapter_state_dict(seed=1), pt),
        ADAPTER_STAGE1: (lambda: adapter_state_dict(seed=2), pt),
        E4E: (e4e_checkpoint, pt),
        PARSENET: (parsenet_state_dict, pt),
        PSFRGAN: (psfrgan_state_dict, pt),
    }
    with open(models.parent / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # a second test run waits instead of building twice
        for (folder, name), (build, save) in builders.items():
            path = models / folder / name
            if not path.is_file():
                path.parent.mkdir(parents=True, exist_ok=True)
                _write(path, build, save)
    return models


def missing(models: Path) -> list[str]:
    return [f"{folder}/{name}" for folder, name in ALL_FILES if not (models / folder / name).is_file()]


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--comfyui", required=True, help="ComfyUI root (its classes give the layouts)")
    ap.add_argument("--cache", type=Path, default=None)
    args = ap.parse_args(argv)
    sys.path.append(str(Path(args.comfyui).resolve()))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True  # only shapes are needed: never touch a GPU
    torch.set_num_threads(max(1, os.cpu_count() or 1))
    print(build_all(args.cache))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
