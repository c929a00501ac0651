"""Where the host tests run: device, UNet/e4e dtype and extra ComfyUI arguments, from the environment.

    WPLUS_TEST_DEVICE      cpu (default) | cuda
    WPLUS_TEST_DTYPE       float32 (default) | float16 | bfloat16: the UNet's and e4e's dtype
    WPLUS_TEST_COMFY_ARGS  extra ComfyUI command-line flags, e.g. "--disable-dynamic-vram"

With cuda the in-process host starts the way ComfyUI's main.py starts it: on 0.28+ that enables
dynamic VRAM (comfy-aimdo, ``ModelPatcherDynamic`` as ``CoreModelPatcher``) unless the flags turn
it off; ``host_state()`` reports what is in effect. bench/gpu_check.py sets these variables.
"""
from __future__ import annotations

import logging
import os
import shlex

import torch

DEVICE = os.environ.get("WPLUS_TEST_DEVICE", "cpu").strip() or "cpu"
DTYPE_NAME = os.environ.get("WPLUS_TEST_DTYPE", "float32").strip() or "float32"
COMFY_ARGS = os.environ.get("WPLUS_TEST_COMFY_ARGS", "")
if DEVICE not in ("cpu", "cuda"):
    raise RuntimeError(f"WPLUS_TEST_DEVICE={DEVICE!r}: use cpu or cuda")
if DTYPE_NAME not in ("float32", "float16", "bfloat16"):
    raise RuntimeError(f"WPLUS_TEST_DTYPE={DTYPE_NAME!r}: use float32, float16 or bfloat16")
DTYPE = getattr(torch, DTYPE_NAME)
HALF = DTYPE != torch.float32
# unit roundoff of the test dtype (fp16 2^-11, bf16 2^-8); float32's is 2^-24
U = {torch.float32: 2.0 ** -24, torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}[DTYPE]


def configure_comfy_args() -> None:
    """Before comfy.model_management is imported: --cpu for cpu, plus WPLUS_TEST_COMFY_ARGS."""
    import comfy.cli_args
    args = comfy.cli_args.args
    if DEVICE == "cpu":
        args.cpu = True
        return
    if DEVICE == "cuda" and not torch.cuda.is_available():
        raise RuntimeError("WPLUS_TEST_DEVICE=cuda but torch sees no CUDA device")
    parser = comfy.cli_args.parser
    given = parser.parse_args(shlex.split(COMFY_ARGS))
    defaults = parser.parse_args([])
    for key, value in vars(given).items():
        if value != getattr(defaults, key):
            setattr(args, key, value)
    enables = getattr(comfy.cli_args, "enables_dynamic_vram", None)  # 0.28+
    if enables is not None and enables():
        import comfy_aimdo.control  # main.py initialises it before the device is touched
        try:
            comfy_aimdo.control.init(simple_vram_headroom=None if args.reserve_vram is None
                                     else int(args.reserve_vram * 1024 ** 3))
        except TypeError:
            comfy_aimdo.control.init()


def enable_dynamic_vram_like_main() -> None:
    """After comfy.model_management is imported: main.py's dynamic-VRAM switch (0.28+)."""
    import comfy.cli_args
    enables = getattr(comfy.cli_args, "enables_dynamic_vram", None)
    if DEVICE != "cuda" or enables is None:
        return
    import comfy.memory_management
    import comfy.model_management as mm
    import comfy.model_patcher
    args = comfy.cli_args.args
    if not (args.enable_dynamic_vram or (enables() and mm.is_nvidia() and not mm.is_wsl())):
        return
    if not args.enable_dynamic_vram and mm.torch_version_numeric < (2, 8):
        logging.warning("dynamic VRAM needs torch >= 2.8: legacy ModelPatcher")
        return
    import comfy_aimdo.control
    devices = mm.get_all_torch_devices()
    try:
        ok = comfy_aimdo.control.init_devices((d.index, int(args.vram_headroom * 1024 ** 3)) for d in devices)
    except TypeError:
        ok = comfy_aimdo.control.init_devices(d.index for d in devices)
    if ok:
        comfy.model_patcher.CoreModelPatcher = comfy.model_patcher.ModelPatcherDynamic
        comfy.memory_management.aimdo_enabled = True
    else:
        logging.warning("no working comfy-aimdo: dynamic VRAM disabled (legacy ModelPatcher)")


def core_model_patcher():
    """The patcher class ComfyUI's loaders use (0.28+: CoreModelPatcher; 0.3.x: ModelPatcher)."""
    import comfy.model_patcher
    return getattr(comfy.model_patcher, "CoreModelPatcher", comfy.model_patcher.ModelPatcher)


def host_state() -> dict:
    """What the in-process host runs with (for reports and assertions)."""
    import comfy.model_management as mm
    try:
        import comfy.memory_management as memm
        aimdo = bool(getattr(memm, "aimdo_enabled", False))
    except ImportError:
        aimdo = False
    return {"device": DEVICE, "dtype": DTYPE_NAME, "comfy_args": COMFY_ARGS,
            "torch_device": str(mm.get_torch_device()), "vram_state": str(mm.vram_state),
            "core_model_patcher": core_model_patcher().__name__,
            "dynamic_vram": aimdo}
