"""Identity tools: does an image still show the person, one W+ from several photos, a direction
from examples. No ComfyUI import.

Public API
    FaceRecogniser(model_dir=None, progress=None, detector=None)
        .describe(image, how="largest") -> FaceDescriptor | None   (None: no face)
        .describe_batch(images, how="largest") -> list[FaceDescriptor | None]
    load_recogniser(model_dir=None, progress=None, detector=None) -> FaceRecogniser (a new one:
        keep it; the nodes keep theirs in a bounded cache)
    face_distance(a, b) -> float           Euclidean distance of two 128-d descriptors
    identity_distances(references, candidates) -> list[float | None]
    rank_by_distance(distances) -> list[int]    best first; images without a face last
    SAME_PERSON = 0.6                      dlib's threshold: below it, the same person
    average_wplus(w, weights=None) -> (1, 18, 512)
    direction_from_examples(a, b, normalize="overall", layers=(0, 18), name="examples") -> Direction

The recogniser is dlib's ``dlib_face_recognition_resnet_model_v1.dat`` (a ResNet trained so that
photos of one person lie within 0.6 of each other; public domain, dlib-models). Faces are found
like W+ Face Align's default (dlib HOG + RetinaFace guard, 68 points); the descriptor is computed
on dlib's own face chip from those 68 points. The model file is found like the 68-point model:
the given folder, the face-recognition-models package, else a download (sha256-checked).
"""
from __future__ import annotations

import math
import threading
from dataclasses import dataclass, replace

import numpy as np
import torch

from .errors import WPlusError
from .latents import check_wplus

__all__ = ["SAME_PERSON", "FaceDescriptor", "FaceRecogniser", "load_recogniser", "face_distance",
           "identity_distances", "rank_by_distance", "average_wplus", "direction_from_examples"]

SAME_PERSON = 0.6


@dataclass
class FaceDescriptor:
    vector: np.ndarray   # (128,) float64
    face: object         # the detection.Face it was computed from


class FaceRecogniser:
    def __init__(self, model_dir=None, progress=None, detector=None):
        from .detection import dlib_landmarks as dl
        self.dlib = dl.import_dlib()
        path = dl.model_path(dl.RECOGNISER_FILE, model_dir, progress)
        try:
            self.model = self.dlib.face_recognition_model_v1(path)
        except RuntimeError as e:
            raise WPlusError(f"{path} is not dlib's face recognition model ({e}); delete it so that it "
                             "is downloaded again") from e
        self.detector = detector or dl.DlibFaceDetector("hog", model_dir, progress=progress)
        self._lock = threading.Lock()

    def _descriptor(self, rgb: np.ndarray, face) -> np.ndarray:
        dlib = self.dlib
        pts = face.landmarks68
        if pts is None:  # RetinaFace points only: let the 68-point predictor place them in its box
            from .detection.dlib_landmarks import predict_68, retinaface_to_dlib_box
            pts = predict_68(self.detector.predictor, rgb, retinaface_to_dlib_box(face.landmarks), dlib)
        x0, y0 = pts.min(0)
        x1, y1 = pts.max(0)
        rect = dlib.rectangle(int(x0), int(y0), int(math.ceil(x1)), int(math.ceil(y1)))
        shape = dlib.full_object_detection(rect, [dlib.point(int(round(x)), int(round(y))) for x, y in pts])
        with self._lock:
            vec = self.model.compute_face_descriptor(rgb, shape)
        return np.asarray(vec, dtype=np.float64)

    def describe(self, image, how: str = "largest") -> FaceDescriptor | None:
        """The descriptor of one face of ``image`` (numpy (H, W, 3) uint8 or float in [0, 1]);
        None when the image has no face."""
        from .detection import _to_rgb_uint8, select_face
        rgb = _to_rgb_uint8(image)
        face = select_face(self.detector.detect(rgb, min_size=0), how)
        if face is None:
            return None
        return FaceDescriptor(self._descriptor(rgb, face), face)

    def describe_batch(self, images, how: str = "largest") -> list:
        return [self.describe(image, how) for image in images]


def load_recogniser(model_dir=None, progress=None, detector=None) -> FaceRecogniser:
    """A FaceRecogniser (loading takes about a second: keep it for the next images). ``detector``:
    a dlib detector to share (e.g. W+ Face Align's dlib_hog); by default its own HOG one."""
    return FaceRecogniser(model_dir, progress, detector)


def _vec(d) -> np.ndarray:
    v = d.vector if isinstance(d, FaceDescriptor) else np.asarray(d, dtype=np.float64)
    if v.shape != (128,):
        raise WPlusError(f"a face descriptor has 128 values, got shape {tuple(v.shape)}")
    return v


def face_distance(a, b) -> float:
    return float(np.linalg.norm(_vec(a) - _vec(b)))


def identity_distances(references, candidates) -> list:
    """For each candidate descriptor (None = no face): the mean distance to the reference
    descriptors that have a face, or None. A WPlusError when no reference has a face."""
    refs = [r for r in references if r is not None]
    if not refs:
        raise WPlusError(f"none of the {len(references)} reference image(s) has a face: give a photo "
                         "of the person with a clearly visible face")
    return [None if c is None else float(np.mean([face_distance(c, r) for r in refs])) for c in candidates]


def rank_by_distance(distances) -> list:
    """Indices best first (smallest distance); images without a face (None) last, in input order."""
    scored = sorted((d, i) for i, d in enumerate(distances) if d is not None)
    return [i for _, i in scored] + [i for i, d in enumerate(distances) if d is None]


def average_wplus(w, weights=None) -> torch.Tensor:
    """The (optionally weighted) mean of a W+ batch (B, 18, 512) -> (1, 18, 512), in float64
    summation. ``weights``: B non-negative numbers (normalised to sum 1), or None for equal."""
    w = check_wplus(w, "W+ latents to average")
    if w.ndim == 2:
        w = w[None]
    n = w.shape[0]
    if weights is None:
        k = torch.full((n,), 1.0 / n, dtype=torch.float64)
    else:
        k = torch.as_tensor(np.asarray(weights, dtype=np.float64).reshape(-1))
        if k.numel() != n:
            raise WPlusError(f"{k.numel()} weight(s) for {n} W+ latent(s): give one weight per latent "
                             "of the batch, or none for equal weights")
        if not bool(torch.isfinite(k).all()) or bool((k < 0).any()) or float(k.sum()) <= 0:
            raise WPlusError(f"the weights {k.tolist()} must be finite, non-negative and not all zero")
        k = k / k.sum()
    out = (w.detach().to(torch.float64) * k.to(w.device).view(-1, 1, 1)).sum(0, keepdim=True)
    return out.to(torch.float32)


def direction_from_examples(a, b, normalize: str = "overall", layers=(0, 18), name: str = "examples"):
    """A W+ direction from example sets: mean(b) - mean(a) on the layers [start, end) (zero
    elsewhere), normalised over those layers as in directions.direction_from_latents: "overall"
    (mean squared per-layer norm 1), "per_layer" (each moved layer unit norm) or "none". Its
    default layer range is ``layers``; applied with strength s it moves w by s * direction."""
    from . import directions
    start, end = directions._layer_range(layers)
    raw = directions.direction_from_latents(a, b, normalize="none", name=name).vector.double()
    diff = torch.zeros_like(raw)
    diff[start:end] = raw[start:end]
    total = float(diff.norm())
    if total < 1e-8:
        raise WPlusError(f"the two example sets have the same mean on layers {start}..{end - 1}: no "
                         "direction between them (widen the layer range or use other examples)")
    if normalize == "overall":
        diff = diff * (math.sqrt(end - start) / total)
    elif normalize == "per_layer":
        norms = diff.norm(dim=1, keepdim=True)
        diff = torch.where(norms > 1e-8 * total, diff / norms.clamp_min(1e-30), torch.zeros_like(diff))
    elif normalize != "none":
        raise WPlusError(f"normalize must be one of {directions.NORMALIZE}; got {normalize!r}.")
    d = directions.direction_from_latents(a, b, normalize="none", name=name)
    return replace(d, vector=diff.float().contiguous(), layers=(start, end), kind="user")
