"""What the pack relies on in ComfyUI, where 0.28 changed it, on whichever host runs:
- LoadImage: 0.28 decodes with PyAV; the IMAGE is still float32 (1,H,W,3) in 0..1, PNGs decode
  exactly as PIL does, JPEGs close to it (the bound the alignment tests allow for);
- ModelPatcher.clone(): 0.28 shares patch objects instead of deep-copying them, so nothing the pack
  does to a clone may reach the model it came from, and other packs' shared entries stay untouched;
- W+ Apply Adapter refuses, naming its input, a finite W+ that projects to non-finite tokens.
"""
from __future__ import annotations

import shutil

import numpy as np
import pytest
import torch
from PIL import Image

from tests.host import device
from tests.host.sd15 import random_sd15_patcher, shared_sd15_patcher
from tests.host.v3 import run
from tests.test_adapter import official_state_dict


@pytest.fixture(scope="module")
def base(comfy):
    return shared_sd15_patcher("float32") if device.DEVICE == "cpu" else random_sd15_patcher(seed=0)


@pytest.fixture(scope="module")
def adapter(pack):
    from comfyui_wplus_adapter.wplus_core.adapter import load_wplus_adapter
    return load_wplus_adapter(official_state_dict(seed=1))


@pytest.mark.parametrize("name, max_mean_diff", [("aligned_1.png", 0.0), ("wild_1.jpg", 3.0)])
def test_load_image_gives_the_image_the_pack_expects(comfy, reference_dir, tmp_path, name, max_mean_diff):
    import folder_paths
    import nodes
    src = reference_dir / "photos" / name
    shutil.copy2(src, tmp_path / name)
    before = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(tmp_path))
    try:
        image, mask = nodes.LoadImage().load_image(name)
    finally:
        folder_paths.set_input_directory(before)
    pil = np.asarray(Image.open(src).convert("RGB"), dtype=np.float32)
    assert image.dtype == torch.float32 and tuple(image.shape) == (1, *pil.shape)
    assert 0.0 <= float(image.min()) and float(image.max()) <= 1.0
    diff = np.abs(image[0].numpy() * 255.0 - pil)
    assert diff.mean() <= max_mean_diff, (name, diff.mean(), diff.max())
    if max_mean_diff == 0.0:
        assert diff.max() < 0.5  # lossless: the same pixels


def _attn2(model):
    return model.model_options.get("transformer_options", {}).get("patches_replace", {}).get("attn2", {})


def test_apply_on_a_clone_never_reaches_its_source(base, adapter, pack):
    from comfyui_wplus_adapter.nodes.wplus_patch import WRAPPER_KEY, apply_wplus

    other = object.__new__(type("OtherPackPatch", (), {"__call__": lambda self, q, k, v, extra: q}))
    src = base.clone()
    src.set_model_attn2_replace(other, "input", 1)
    entries = dict(_attn2(src))
    wrappers = {k: {kk: list(vv) for kk, vv in v.items()} for k, v in src.wrappers.items()}

    patched = apply_wplus(src, adapter, torch.randn(1, 18, 512), 1.0, 0.0, 1.0)
    downstream = patched.clone()
    downstream.set_model_attn2_replace(lambda q, k, v, extra: q, "input", 2)
    apply_wplus(downstream, adapter, torch.randn(1, 18, 512), 0.5, 0.0, 1.0)

    assert _attn2(src) == entries and _attn2(src)[("input", 1)] is other       # untouched, not copied
    assert {k: {kk: list(vv) for kk, vv in v.items()} for k, v in src.wrappers.items()} == wrappers
    assert ("input", 2) not in _attn2(patched)
    ours = patched.wrappers["apply_model"][WRAPPER_KEY]
    assert len(ours) == 1 and downstream.clone().wrappers["apply_model"][WRAPPER_KEY][0] is ours[0]


def test_absurd_wplus_is_refused_naming_the_input(base, adapter, pack):
    from comfyui_wplus_adapter.nodes.adapter_nodes import ApplyWPlusAdapter
    from comfyui_wplus_adapter.wplus_core.errors import WPlusError

    w = torch.randn(2, 18, 512)
    w[1] *= 1e30   # finite, as an extreme edit strength leaves it
    assert torch.isfinite(w).all()
    with pytest.raises(WPlusError, match=r"wplus input projects to non-finite.*W\+ \[1\] of 2"):
        run(ApplyWPlusAdapter, base, adapter, w, 1.0, 0.2, 1.0)
    (model,) = run(ApplyWPlusAdapter, base, adapter, w[:1], 1.0, 0.2, 1.0)   # a sane one still works
    assert model is not base
