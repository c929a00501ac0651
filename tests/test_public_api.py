"""The public API of wplus_core as a script user sees it (names the issue fixes), end to end on
random weights: photo -> alignment -> e4e -> edit -> adapter tokens."""
import numpy as np
import torch

import wplus_core
from e4e_reference import official_checkpoint, random_e4e_weights
from test_adapter import official_state_dict


def test_public_names_exist_without_comfyui():
    import subprocess
    import sys
    from conftest import ROOT
    code = ("import sys, wplus_core\n"
            "for n in ('load_e4e', 'load_wplus_adapter', 'ffhq_quad', 'align_face', 'WPlusError'):\n"
            "    assert callable(getattr(wplus_core, n)), n\n"
            "import wplus_core.directions, wplus_core.detection, wplus_core.parsing, wplus_core.latents\n"
            "bad = [m for m in sys.modules if m == 'comfy' or m.startswith(('comfy.', 'folder_paths'))]\n"
            "assert not bad, bad\n")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True)


def test_script_pipeline_on_random_weights():
    rng = np.random.default_rng(0)
    photo = rng.integers(0, 255, (400, 300, 3), dtype=np.uint8)
    points = np.array([[120, 150], [180, 150], [150, 185], [128, 220], [172, 220]], float)
    quad = wplus_core.ffhq_quad(points)
    assert quad.shape == (4, 2)
    crop = wplus_core.align_face(photo, points, 256).image
    assert crop.shape == (256, 256, 3) and crop.dtype == np.uint8
    e4e = wplus_core.load_e4e(official_checkpoint(*random_e4e_weights(seed=5)))
    assert isinstance(e4e.encoder, torch.nn.Module) and isinstance(e4e.generator, torch.nn.Module)
    assert e4e.latent_avg.shape == (18, 512)
    w = e4e.invert(torch.from_numpy(crop).permute(2, 0, 1)[None].float() / 127.5 - 1)
    assert w.shape == (1, 18, 512)
    from wplus_core.directions import edit
    older = edit(w, "interfacegan/age", 3.0)
    assert older.shape == w.shape and not torch.equal(older, w)
    img = e4e.synthesize(older, size=64)
    assert img.shape == (1, 3, 64, 64) and img.abs().max() <= 1
    adapter = wplus_core.load_wplus_adapter(official_state_dict())
    assert adapter.project(older).shape == (1, 4, 768)
    assert len(adapter.sites) == 16
