"""Face parsing and background whitening before e4e (the reference's step 2: ParseNet background and cloth, blurred, whitened).

Public API
    init_parsing_model(name="parsenet", model_dir=None, device=None, half=False, progress=None)
        -> FaceParser. Weights are facexlib's files, read from ``model_dir`` and downloaded there
        on demand: "parsenet" -> parsing_parsenet.pth (facexlib ``ParseNet``, PSFRGAN, the net the
        reference uses), "bisenet" -> parsing_bisenet.pth (facexlib ``BiSeNet``).
    FaceParser.from_file(name, path, device=None, half=False)
    parser.labels(images, size=512) -> torch.LongTensor (B, size, size), the 19-class label map
    background_mask(parser, images, size=256, blur=5, parse_size=512)
        -> torch.FloatTensor (B, size, size) in [0, 1], 1 = background or clothes
    mask_from_labels(labels, classes, size=256, blur=5) -> torch.FloatTensor (B, size, size)
    whiten_background(images, mask) -> images * (1 - mask) + mask   (images in [-1, 1])

``images`` for the parser: a float tensor (B, H, W, 3) in [0, 1] (ComfyUI's IMAGE layout) or a
uint8 numpy array (H, W, 3) / (B, H, W, 3); RGB, square aligned faces (any size: resized to 512).

Label maps of the two nets differ (both 19 classes, class 0 = background):
    parsenet (PSFRGAN/CelebAMask-HQ order): 1 skin, 2 nose, 3 eye_g, 4 l_eye, 5 r_eye, 6 l_brow,
        7 r_brow, 8 l_ear, 9 r_ear, 10 mouth, 11 u_lip, 12 l_lip, 13 hair, 14 hat, 15 ear_r,
        16 neck_l, 17 neck, 18 cloth      -> background + cloth = {0, 18}
    bisenet (face-parsing.PyTorch order): 1 skin, 2 l_brow, 3 r_brow, 4 l_eye, 5 r_eye, 6 eye_g,
        7 l_ear, 8 r_ear, 9 ear_r, 10 nose, 11 mouth, 12 u_lip, 13 l_lip, 14 neck, 15 neck_l,
        16 cloth, 17 hair, 18 hat         -> background + cloth = {0, 16}
Input normalisation follows facexlib: parsenet sees RGB in [-1, 1]; bisenet sees RGB normalised
with the ImageNet mean/std.

The mask follows the reference step by step: labels at 512 px -> 255 where background or cloth
-> Gaussian blur 5x5 (OpenCV, sigma from the size) on the uint8 mask -> PIL bicubic resize to
``size`` -> /255. Any other mask (e.g. a user's MASK, 1 = make white) can be given to
:func:`whiten_background` instead.
"""
from __future__ import annotations

import os
import warnings

import cv2
import numpy as np
import torch
import torch.nn.functional as F

from .checkpoints import check_state_dict, read_weights
from .model_files import name_of
from .errors import WPlusError

__all__ = ["PARSERS", "FaceParser", "init_parsing_model", "background_mask", "mask_from_labels",
           "whiten_background"]

# name: (file, background+cloth classes, normalisation mean, std)
PARSERS = {
    "parsenet": (name_of("parsenet"), (0, 18), (0.5, 0.5, 0.5), (0.5, 0.5, 0.5)),
    "bisenet": (name_of("bisenet"), (0, 16), (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)),
}
PARSE_SIZE = 512


def _build(name: str) -> torch.nn.Module:
    try:
        if name == "parsenet":
            from facexlib.parsing.parsenet import ParseNet
            return ParseNet(in_size=512, out_size=512, parsing_ch=19)
        from facexlib.parsing.bisenet import BiSeNet
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            return BiSeNet(num_class=19)
    except ImportError as e:
        raise WPlusError(f"face parsing ({name}) needs the facexlib package ({e}): pip install facexlib") from e


class FaceParser:
    """A facexlib parsing net with its normalisation and background classes."""

    def __init__(self, name: str, model: torch.nn.Module):
        self.name = name
        self.model = model
        _, self.background_classes, mean, std = PARSERS[name]
        self._mean = torch.tensor(mean).view(1, 3, 1, 1)
        self._std = torch.tensor(std).view(1, 3, 1, 1)

    @classmethod
    def from_file(cls, name: str, path, device=None, half: bool = False) -> "FaceParser":
        if name not in PARSERS:
            raise WPlusError(f'unknown face parser "{name}"; available: {", ".join(PARSERS)}')
        path = os.fspath(path)
        model = _build(name)
        state = read_weights(path, f"{name} face-parsing weights")
        other = "bisenet" if name == "parsenet" else "parsenet"

        def hint(found):
            if set(found) == set(_build(other).state_dict()):
                return f" It is a {other} checkpoint: choose the {other} parser for it."
            return ""

        state = check_state_dict(state, model.state_dict(), path, f"{name} face-parsing", hint)
        model.load_state_dict(state, strict=True)
        model.eval().requires_grad_(False)
        device = torch.device(device) if device is not None else torch.device("cpu")
        model.to(device)
        if half and device.type != "cpu":
            model.half()
        return cls(name, model)

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def dtype(self) -> torch.dtype:
        return next(self.model.parameters()).dtype

    def labels(self, images, size: int = PARSE_SIZE) -> torch.Tensor:
        """(B, size, size) int64 class map (on CPU) for aligned face images (see module doc).

        The reference parses the 512 px crop (other sizes are resized to ``size``); a smaller
        ``size`` (a multiple of 32) is much faster on CPU but is not the reference.
        """
        x = _to_nchw01(images).to(self.device)
        if x.shape[-1] != size:
            x = F.interpolate(x, size=(size, size), mode="bilinear", align_corners=False,
                              antialias=x.shape[-1] > size)
        x = (x - self._mean.to(x)) / self._std.to(x)
        with torch.inference_mode():
            logits = self.model(x.to(self.dtype))[0]
        return logits.argmax(dim=1).cpu()


def _to_nchw01(images) -> torch.Tensor:
    if isinstance(images, np.ndarray):
        if images.ndim == 3:
            images = images[None]
        if images.ndim != 4 or images.shape[-1] != 3:
            raise WPlusError(f"face images must be (H, W, 3) or (B, H, W, 3) RGB, got {images.shape}")
        scale = 1.0 / 255.0 if images.dtype == np.uint8 else 1.0
        x = torch.from_numpy(np.ascontiguousarray(images)).float() * scale
    elif isinstance(images, torch.Tensor):
        x = images if images.ndim == 4 else images[None]
        if x.ndim != 4 or x.shape[-1] != 3:
            raise WPlusError(f"face images must be a (B, H, W, 3) tensor in [0, 1], got "
                             f"{tuple(images.shape)}")
        x = x.float()
    else:
        raise WPlusError(f"face images must be a numpy array or a torch tensor, got {type(images).__name__}")
    if x.shape[1] != x.shape[2]:
        raise WPlusError(f"face parsing expects square aligned faces, got {x.shape[2]}x{x.shape[1]}")
    return x.permute(0, 3, 1, 2).contiguous()


def mask_from_labels(labels, classes, size: int = 256, blur: int = 5) -> torch.Tensor:
    """Reference mask from label maps: 1 where the label is in ``classes``, blurred, resized."""
    from PIL import Image

    labels = torch.as_tensor(labels)
    if labels.ndim == 2:
        labels = labels[None]
    out = []
    for lab in labels.cpu().numpy():
        m = np.where(np.isin(lab, classes), 255, 0).astype(np.uint8)
        if blur and blur > 1:
            m = cv2.GaussianBlur(m, (int(blur) | 1, int(blur) | 1), 0)
        if m.shape != (size, size):
            m = np.asarray(Image.fromarray(m).resize((size, size), Image.Resampling.BICUBIC))
        out.append(torch.from_numpy(m.astype(np.float32) / 255.0))
    return torch.stack(out)


def background_mask(parser: FaceParser, images, size: int = 256, blur: int = 5,
                    parse_size: int = PARSE_SIZE) -> torch.Tensor:
    """(B, size, size) float mask, 1 = background or clothes, as the reference computes it."""
    return mask_from_labels(parser.labels(images, parse_size), parser.background_classes, size, blur)


def whiten_background(images: torch.Tensor, mask) -> torch.Tensor:
    """``images * (1 - mask) + mask`` for images (B, 3, H, W) in [-1, 1].

    mask: (H, W), (B, H, W) or (B, 1, H, W), tensor or numpy, values in [0, 1], 1 = turn white;
    resized to the images' size if needed, and broadcast over a batch when it has one item.
    """
    if not isinstance(images, torch.Tensor) or images.ndim != 4 or images.shape[1] != 3:
        raise WPlusError("whiten_background expects images as a (B, 3, H, W) tensor in [-1, 1]")
    m = torch.as_tensor(np.asarray(mask) if not isinstance(mask, torch.Tensor) else mask)
    if m.ndim == 2:
        m = m[None, None]
    elif m.ndim == 3:
        m = m[:, None]
    if m.ndim != 4 or m.shape[1] != 1:
        raise WPlusError(f"background mask must be (H, W), (B, H, W) or (B, 1, H, W); got "
                         f"{tuple(torch.as_tensor(mask).shape)}")
    if m.shape[0] not in (1, images.shape[0]):
        raise WPlusError(f"{m.shape[0]} background masks for {images.shape[0]} images")
    m = m.to(device=images.device, dtype=torch.float32).clamp(0, 1)
    if m.shape[-2:] != images.shape[-2:]:
        m = F.interpolate(m, size=images.shape[-2:], mode="bilinear", align_corners=False,
                          antialias=m.shape[-1] > images.shape[-1])
    m = m.to(images.dtype)
    return images * (1 - m) + m


def init_parsing_model(name: str = "parsenet", model_dir=None, device=None, half: bool = False,
                       progress=None) -> FaceParser:
    """facexlib-style factory: weights from ``model_dir`` (downloaded there if missing)."""
    if name not in PARSERS:
        raise WPlusError(f'unknown face parser "{name}"; available: {", ".join(PARSERS)}')
    if model_dir is None:
        raise WPlusError(f"the {name} face parser needs a model folder holding {PARSERS[name][0]}")
    from .download import ensure_known_file
    path = ensure_known_file(model_dir, PARSERS[name][0], progress=progress)
    return FaceParser.from_file(name, path, device=device, half=half)
