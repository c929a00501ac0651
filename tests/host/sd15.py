"""A random-weight UNet with the real SD1.5 layout, built by ComfyUI's own model classes."""
import torch

SD15_UNET = {
    "use_checkpoint": False, "image_size": 32, "out_channels": 4, "use_spatial_transformer": True,
    "legacy": False, "adm_in_channels": None, "in_channels": 4, "model_channels": 320,
    "num_res_blocks": [2, 2, 2, 2], "transformer_depth": [1, 1, 1, 1, 1, 1, 0, 0],
    "channel_mult": [1, 2, 4, 4], "transformer_depth_middle": 1, "use_linear_in_transformer": False,
    "context_dim": 768, "num_heads": 8, "transformer_depth_output": [1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0],
    "use_temporal_attention": False, "use_temporal_resblock": False,
}


def init_random_weights(diffusion_model, seed=0, std=None):
    """Random weights that keep every activation of the UNet in range, in fp16 too.

    ``std=None`` (default): each weight ~ N(0, 1/fan_in) (fan_in = inputs per output: in_channels
    x kernel area), biases ~ N(0, 0.02), norm scales 1 + N(0, 0.1). A fixed std such as 0.05 makes
    the 1280-wide layers grow activations by ~sqrt(fan_in)*0.05 per layer, which overflows fp16's
    65504 within the UNet (measured on an H200: NaN predictions at every fp16 comparison).
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for name, p in diffusion_model.state_dict(keep_vars=True).items():
            if p.dim() == 1 and "norm" in name and name.endswith("weight"):
                value = 1 + torch.randn(p.shape, generator=g) * 0.1
            elif std is not None:
                value = torch.randn(p.shape, generator=g) * std
            elif p.dim() > 1:
                value = torch.randn(p.shape, generator=g) / (p[0].numel() ** 0.5)
            else:
                value = torch.randn(p.shape, generator=g) * 0.02
            p.copy_(value)


def random_sd15_patcher(seed=0, std=None):
    import comfy.model_detection
    import comfy.model_patcher
    config = comfy.model_detection.model_config_from_unet_config(dict(SD15_UNET))
    assert type(config).__name__ == "SD15", type(config)
    model = config.get_model({}, "")
    init_random_weights(model.diffusion_model, seed, std)
    dev = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=dev)


def half_sd15_patcher(dtype, seed=0, std=None):
    """The same random UNet computing in ``dtype`` (fp16/bf16) on the CPU: weights stored in that
    type and no manual cast, so every layer runs in true half precision (ComfyUI itself would
    upcast to float32 on a CPU; this is what an NVIDIA GPU runs)."""
    import comfy.model_detection
    import comfy.model_patcher
    config = comfy.model_detection.model_config_from_unet_config(dict(SD15_UNET))
    config.set_inference_dtype(dtype, None)
    model = config.get_model({}, "")
    init_random_weights(model.diffusion_model, seed, std)
    model.diffusion_model.to(dtype)
    assert model.get_dtype() == dtype and model.manual_cast_dtype is None
    dev = torch.device("cpu")
    return comfy.model_patcher.ModelPatcher(model, load_device=dev, offload_device=dev)


def loaded_sd15_patcher(seed=0, std=None, dtype=None):
    """The same random UNet, loaded the way ComfyUI's UNETLoader loads a file: through
    comfy.sd.load_diffusion_model_state_dict, so device, dtype, manual cast and the patcher class
    (ModelPatcherDynamic under 0.28's dynamic VRAM) are ComfyUI's own choices."""
    import comfy.sd
    state = {k: v.detach().clone() for k, v in random_sd15_patcher(seed, std).model.diffusion_model.state_dict().items()}
    patcher = comfy.sd.load_diffusion_model_state_dict(state, model_options={} if dtype is None else {"dtype": dtype})
    assert patcher is not None and type(patcher.model.model_config).__name__ == "SD15", patcher
    return patcher


_shared = {}


def shared_sd15_patcher(dtype_name: str = "float32"):
    """The random SD1.5 UNet (3.4 GB in float32) shared by the whole test session: tests clone it
    and never change it (ComfyUI restores patched weights when another clone loads); one per test
    or per module ran a 24 GB machine out of memory beside the e2e servers. On a GPU it is loaded
    by ComfyUI's own loader in that dtype. Half precision on a CPU (true half computation) is built
    afresh and freed by its user."""
    from tests.host import device
    dtype = getattr(torch, dtype_name)
    if device.DEVICE == "cpu" and dtype != torch.float32:
        return half_sd15_patcher(dtype)  # not kept: only the half-precision comparisons use it
    if dtype_name not in _shared:
        _shared[dtype_name] = random_sd15_patcher() if device.DEVICE == "cpu" else loaded_sd15_patcher(dtype=dtype)
    return _shared[dtype_name]
