"""FFHQ face alignment: the crop StyleGAN/e4e expect, its inverse, and pasting a result back.

Public API
    ffhq_quad(points) -> np.ndarray (4, 2)
        The FFHQ crop quadrilateral (a square) in photo pixels, corners in the order
        NW, SW, SE, NE (top-left, bottom-left, bottom-right, top-right of the crop).
    align_face(image, points, size=512, method="fast") -> AlignedFace
    paste_back(photo, crop, alignment, feather=0.06, mask=None) -> np.ndarray (photo's shape/dtype)
    landmarks_to_five(points) -> np.ndarray (5, 2)

Points are ``(5, 2)`` or ``(68, 2)`` arrays of (x, y) pixel coordinates:
    5 points: left eye centre, right eye centre, nose tip, left mouth corner, right mouth corner,
              where "left" means the smaller x in an upright face (the person's right eye), the
              order of RetinaFace and of the reference ``landmarks.json``;
    68 points: the dlib/iBUG layout; eyes = mean of 36-41 / 42-47, mouth corners = 48 and 54.

Coordinates are pixel *indices* (the centre of pixel row i, column j is (x=j, y=i)), like dlib,
RetinaFace and OpenCV. The quad corners lie on the crop's outer pixel *edges*: crop pixel (u, v)
samples the photo at ``nw + (ne-nw)*(u+0.5)/size + (sw-nw)*(v+0.5)/size``, which is exactly the
mapping of the reference (PIL ``Image.transform(QUAD, quad + 0.5)``).

Why the default ("fast") method looks like the reference: the reference warps the quad to 4096 px
with bilinear sampling, then shrinks to the output size with Lanczos-3. When the face is smaller
in the photo than the output (the usual case) that equals, up to ~50 dB PSNR, one bilinear warp
straight to the output size. When the face is larger than the output we warp bilinearly to twice
the output size (after an area pre-shrink of the source if it is more than 2x larger still) and
decimate by 2 with the same Lanczos-3 kernel PIL uses. Outside the photo is black, as in the
reference (it crops with a margin and does not reflect-pad); the edge of the photo is antialiased
by the exact pixel coverage, which is also returned as the validity mask.
``method="reference"`` runs the reference pipeline itself (PIL, slow, uint8 only) for checks.
"""
from __future__ import annotations

from dataclasses import dataclass

import cv2
import numpy as np

from .errors import WPlusError

__all__ = ["AlignedFace", "ffhq_quad", "align_face", "paste_back", "landmarks_to_five"]

_REFERENCE_TRANSFORM_SIZE = 4096


@dataclass
class AlignedFace:
    """Result of :func:`align_face`.

    image:   (size, size, 3) crop, uint8 for uint8 input, float32 for float input.
    matrix:  (3, 3) float64, photo pixel -> crop pixel (homogeneous; ``matrix[:2]`` is the
             2x3 affine for ``cv2.warpAffine``).
    inverse: (3, 3) float64, crop pixel -> photo pixel.
    quad:    (4, 2) float64 crop corners in the photo (NW, SW, SE, NE), see :func:`ffhq_quad`.
    valid:   (size, size) float32 in [0, 1]: the fraction of each crop pixel that lies inside the
             photo (0 where the crop is black because it left the photo).
    photo_shape: (height, width) of the photo.
    """

    image: np.ndarray
    matrix: np.ndarray
    inverse: np.ndarray
    quad: np.ndarray
    valid: np.ndarray
    photo_shape: tuple

    @property
    def size(self) -> int:
        return int(self.image.shape[0])

    def to_crop(self, points) -> np.ndarray:
        """Map (N, 2) photo pixel coordinates into the crop."""
        return _apply(self.matrix, points)

    def to_photo(self, points) -> np.ndarray:
        """Map (N, 2) crop pixel coordinates back into the photo."""
        return _apply(self.inverse, points)


def _apply(m: np.ndarray, points) -> np.ndarray:
    p = np.asarray(points, dtype=np.float64).reshape(-1, 2)
    return p @ m[:2, :2].T + m[:2, 2]


def landmarks_to_five(points) -> np.ndarray:
    """(5, 2) eye centres, nose, mouth corners from 5 or 68 landmarks (see module docstring)."""
    p = np.asarray(points, dtype=np.float64)
    if p.ndim != 2 or p.shape[1] != 2 or p.shape[0] not in (5, 68):
        raise WPlusError(f"face landmarks must be an array of shape (5, 2) or (68, 2), got "
                         f"{tuple(p.shape)}")
    if not np.all(np.isfinite(p)):
        raise WPlusError("face landmarks contain NaN or infinite values")
    if p.shape[0] == 5:
        return p.copy()
    return np.stack([p[36:42].mean(0), p[42:48].mean(0), p[30], p[48], p[54]])


def ffhq_quad(points) -> np.ndarray:
    """The FFHQ crop square (4, 2) for 5 or 68 landmarks (the FFHQ / reference alignment, see the module docstring)."""
    five = landmarks_to_five(points)
    eye_l, eye_r, _, mouth_l, mouth_r = five
    eye_avg = (eye_l + eye_r) * 0.5
    eye_to_eye = eye_r - eye_l
    eye_to_mouth = (mouth_l + mouth_r) * 0.5 - eye_avg
    x = eye_to_eye - np.flipud(eye_to_mouth) * [-1, 1]
    norm = np.hypot(*x)
    if norm < 1e-6:
        raise WPlusError("face landmarks are degenerate (eyes and mouth coincide): cannot align")
    x = x / norm * max(np.hypot(*eye_to_eye) * 2.0, np.hypot(*eye_to_mouth) * 1.8)
    y = np.flipud(x) * [-1, 1]
    c = eye_avg + eye_to_mouth * 0.1
    return np.stack([c - x - y, c - x + y, c + x + y, c + x - y])


def _crop_to_photo(quad: np.ndarray, size: int) -> np.ndarray:
    """3x3 crop pixel -> photo pixel for a crop of side ``size`` (pixel edges on the quad)."""
    nw, sw, _, ne = quad
    ex, ey = (ne - nw) / size, (sw - nw) / size
    origin = nw + 0.5 * (ex + ey)
    return np.array([[ex[0], ey[0], origin[0]], [ex[1], ey[1], origin[1]], [0.0, 0.0, 1.0]])


def _as_rgb(image, what: str = "image") -> np.ndarray:
    """HxWx3 view/copy of an RGB(A)/grayscale uint8 or float image; alpha is dropped."""
    if not isinstance(image, np.ndarray):
        raise WPlusError(f"{what} must be a numpy array (H, W, 3), got {type(image).__name__}")
    if image.ndim == 2:
        image = image[:, :, None]
    if image.ndim != 3 or image.shape[2] not in (1, 3, 4) or min(image.shape[:2]) < 1:
        raise WPlusError(f"{what} must have shape (H, W), (H, W, 1), (H, W, 3) or (H, W, 4), "
                         f"got {tuple(image.shape)}")
    if image.shape[2] == 1:
        image = np.repeat(image, 3, axis=2)
    elif image.shape[2] == 4:
        image = image[:, :, :3]
    if image.dtype == np.uint8:
        return np.ascontiguousarray(image)
    if image.dtype.kind == "f":
        return np.ascontiguousarray(image, dtype=np.float32)
    raise WPlusError(f"{what} must be uint8 (0..255) or float (0..1), got dtype {image.dtype}")


def _edge_coverage(inv: np.ndarray, size: int, height: int, width: int) -> np.ndarray:
    """Fraction of each crop pixel inside the photo [-0.5, W-0.5] x [-0.5, H-0.5].

    For each photo edge the signed distance, in crop pixels, is affine in (u, v); a box filter
    of one crop pixel turns it into ``clip(d + 0.5, 0, 1)``. Edges that are far from every crop
    corner are skipped, so a face well inside the photo costs nothing.
    """
    cov = np.ones((size, size), np.float32)
    uv = np.arange(size, dtype=np.float32)
    corners = np.array([[0, 0], [size - 1, 0], [0, size - 1], [size - 1, size - 1]], np.float64)
    for row, lo, hi in ((0, -0.5, width - 0.5), (1, -0.5, height - 0.5)):
        a, b, c = inv[row]
        step = np.hypot(a, b)  # photo pixels per crop pixel along this axis' normal
        for sign, bound in ((1.0, lo), (-1.0, hi)):
            # d(u, v) = sign * (a u + b v + c - bound) / step, in crop pixels
            ca, cb, cc = sign * a / step, sign * b / step, sign * (c - bound) / step + 0.5
            at_corners = corners @ [ca, cb] + cc
            if at_corners.min() >= 1.0:
                continue
            d = (ca * uv)[None, :] + (cb * uv + cc)[:, None]
            np.clip(d, 0.0, 1.0, out=d)
            cov *= d
    return cov


_LANCZOS_HALF = None


def _lanczos_half(image: np.ndarray) -> np.ndarray:
    """Decimate by 2 with a Lanczos-3 kernel centred like PIL's resize (output j <- 2j + 0.5).

    One axis at a time, decimating in between (filter2D with a 1-D kernel + nearest-neighbour
    halving is ~3x faster than a full-resolution sepFilter2D).
    """
    global _LANCZOS_HALF
    if _LANCZOS_HALF is None:
        t = (np.arange(12) - 5.5) / 2.0
        k = np.sinc(t) * np.sinc(t / 3.0)
        _LANCZOS_HALF = (k / k.sum()).astype(np.float32)
    k = _LANCZOS_HALF
    h, w = image.shape[:2]
    # anchor 5: filtered[2j] = sum_t k[t] x[2j + t - 5], centred on 2j + 0.5; INTER_NEAREST
    # halving keeps the even samples.
    rows = cv2.filter2D(image, -1, k[None, :], anchor=(5, 0), borderType=cv2.BORDER_REPLICATE)
    rows = cv2.resize(rows, (w // 2, h), interpolation=cv2.INTER_NEAREST)
    cols = cv2.filter2D(rows, -1, k[:, None], anchor=(0, 5), borderType=cv2.BORDER_REPLICATE)
    return cv2.resize(cols, (w // 2, h // 2), interpolation=cv2.INTER_NEAREST)


def _source_window(quad: np.ndarray, margin: float, height: int, width: int):
    x0 = max(int(np.floor(quad[:, 0].min() - margin)), 0)
    y0 = max(int(np.floor(quad[:, 1].min() - margin)), 0)
    x1 = min(int(np.ceil(quad[:, 0].max() + margin)) + 1, width)
    y1 = min(int(np.ceil(quad[:, 1].max() + margin)) + 1, height)
    return x0, y0, x1, y1


def _warp_fast(img: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    height, width = img.shape[:2]
    inv = _crop_to_photo(quad, size)
    scale = float(np.hypot(inv[0, 0], inv[1, 0]))  # photo pixels per crop pixel
    flags = cv2.WARP_INVERSE_MAP
    if scale <= 1.0:
        # Upsampling: one bilinear warp matches bilinear-at-4096 + Lanczos to ~50 dB.
        return cv2.warpAffine(img, inv[:2], (size, size), flags=flags | cv2.INTER_LINEAR,
                              borderMode=cv2.BORDER_REPLICATE)
    # Downsampling: bilinear at 2x the output, then Lanczos-3 decimation, like the reference.
    inv2 = inv.copy()
    inv2[:2, :2] /= 2.0
    inv2[:2, 2] += (inv[:2, 0] + inv[:2, 1]) * (0.25 - 0.5)  # crop2 pixel (u+0.5)/2 - 0.5
    src, interp = img, cv2.INTER_LINEAR
    if scale > 2.0:
        # Area pre-shrink of just the face's window so the warp sees <= 1 source px per sample.
        x0, y0, x1, y1 = _source_window(quad, 4 * scale + 2, height, width)
        if x1 <= x0 or y1 <= y0:
            return np.zeros((size, size, img.shape[2]), img.dtype)
        f = 2.0 / scale
        w2, h2 = max(1, int(round((x1 - x0) * f))), max(1, int(round((y1 - y0) * f)))
        src = cv2.resize(img[y0:y1, x0:x1], (w2, h2), interpolation=cv2.INTER_AREA)
        fx, fy = w2 / (x1 - x0), h2 / (y1 - y0)
        shrink = np.array([[fx, 0, (0.5 - x0) * fx - 0.5], [0, fy, (0.5 - y0) * fy - 0.5], [0, 0, 1]])
        inv2 = shrink @ inv2
        interp = cv2.INTER_CUBIC  # the pre-shrink already blurred; cubic keeps the rest sharp
    big = cv2.warpAffine(src, inv2[:2], (2 * size, 2 * size), flags=flags | interp,
                         borderMode=cv2.BORDER_REPLICATE)
    return _lanczos_half(big)


def _warp_reference(img: np.ndarray, quad: np.ndarray, size: int) -> np.ndarray:
    """The reference pipeline: integer pre-shrink, margin crop, 4096 bilinear quad, Lanczos."""
    from PIL import Image

    if img.dtype != np.uint8:
        raise WPlusError('align_face(method="reference") needs a uint8 image')
    pil = Image.fromarray(img)
    quad = quad.copy()
    qsize = np.hypot(*(quad[3] - quad[0]))
    shrink = int(np.floor(qsize / size * 0.5))
    if shrink > 1:
        pil = pil.resize((int(np.rint(pil.size[0] / shrink)), int(np.rint(pil.size[1] / shrink))),
                         Image.Resampling.LANCZOS)
        quad /= shrink
        qsize /= shrink
    border = max(int(np.rint(qsize * 0.1)), 3)
    box = (max(int(np.floor(quad[:, 0].min())) - border, 0),
           max(int(np.floor(quad[:, 1].min())) - border, 0),
           min(int(np.ceil(quad[:, 0].max())) + border, pil.size[0]),
           min(int(np.ceil(quad[:, 1].max())) + border, pil.size[1]))
    if box[2] - box[0] < pil.size[0] or box[3] - box[1] < pil.size[1]:
        pil = pil.crop(box)
        quad -= box[:2]
    t = _REFERENCE_TRANSFORM_SIZE
    pil = pil.transform((t, t), Image.Transform.QUAD, tuple((quad + 0.5).flatten()),
                        Image.Resampling.BILINEAR)
    if size < t:
        pil = pil.resize((size, size), Image.Resampling.LANCZOS)
    return np.asarray(pil)


def align_face(image, points, size: int = 512, method: str = "fast") -> AlignedFace:
    """FFHQ-align one face of an RGB photo (see the module docstring).

    image: (H, W, 3) uint8 RGB (float in [0, 1], grayscale and RGBA are accepted too);
    points: (5, 2) or (68, 2) landmarks in pixels; size: output side in pixels (e.g. 256, 512,
    1024); method: "fast" (default) or "reference" (the original PIL pipeline, slow).
    """
    img = _as_rgb(image)
    size = int(size)
    if size < 8 or size > 8192:
        raise WPlusError(f"alignment size must be between 8 and 8192 pixels, got {size}")
    quad = ffhq_quad(points)
    height, width = img.shape[:2]
    if method == "fast":
        out = _warp_fast(img, quad, size)
    elif method == "reference":
        out = _warp_reference(img, quad, size)
    else:
        raise WPlusError(f'unknown alignment method "{method}" (use "fast" or "reference")')
    inv = _crop_to_photo(quad, size)
    valid = _edge_coverage(inv, size, height, width)
    if method == "fast" and valid.min() < 1.0:
        if out.dtype == np.uint8:
            out = cv2.multiply(out, cv2.merge([valid] * 3), dtype=cv2.CV_8U)
        else:
            out = out * valid[:, :, None]
    return AlignedFace(image=out, matrix=np.linalg.inv(inv), inverse=inv, quad=quad,
                       valid=valid, photo_shape=(height, width))


def _feather_mask(size: int, feather: float) -> np.ndarray:
    """Square mask, 1 inside, ramping linearly to 0 over ``feather * size`` px at each edge."""
    width = max(float(feather) * size, 1e-6)
    uv = np.arange(size, dtype=np.float32) + 0.5
    ramp = np.clip(np.minimum(uv, size - uv) / width, 0.0, 1.0)
    return np.minimum(ramp[None, :], ramp[:, None])


def paste_back(photo, crop, alignment: AlignedFace, feather: float = 0.06, mask=None) -> np.ndarray:
    """Warp an aligned ``crop`` (any square size, e.g. an edited/generated face) back into
    ``photo`` at the place ``alignment`` came from, blending with a feathered square mask.

    feather: width of the soft edge as a fraction of the crop side (0 = hard edge);
    mask: optional (n, n) float mask in crop space (1 = take the crop), multiplied in.
    Returns a new (H, W, 3) array: uint8 for a uint8 photo, float32 for a float photo.
    """
    base = _as_rgb(photo, "photo")
    face = _as_rgb(crop, "crop")
    if face.shape[0] != face.shape[1]:
        raise WPlusError(f"crop must be square, got {face.shape[1]}x{face.shape[0]}")
    if base.shape[:2] != tuple(alignment.photo_shape):
        raise WPlusError(f"photo is {base.shape[1]}x{base.shape[0]} but the alignment was made on "
                         f"a {alignment.photo_shape[1]}x{alignment.photo_shape[0]} photo")
    height, width = base.shape[:2]
    n = face.shape[0]
    soft = _feather_mask(n, feather)
    if mask is not None:
        m = np.asarray(mask, dtype=np.float32)
        if m.shape[:2] != (n, n):
            m = cv2.resize(m, (n, n), interpolation=cv2.INTER_LINEAR)
        soft = soft * np.clip(m.reshape(n, n), 0.0, 1.0)
    face = face.astype(np.float32) * (1.0 / 255.0 if face.dtype == np.uint8 else 1.0)
    quad = alignment.quad
    qsize = float(np.hypot(*(quad[3] - quad[0])))
    if n > qsize * 1.25:  # the crop is finer than the photo: area-shrink it first (antialiasing)
        n2 = max(int(round(qsize)), 1)
        face = cv2.resize(face, (n2, n2), interpolation=cv2.INTER_AREA)
        soft = cv2.resize(soft, (n2, n2), interpolation=cv2.INTER_AREA)
        n = n2
    x0, y0, x1, y1 = _source_window(quad, 2, height, width)
    out = base.copy()
    if x1 <= x0 or y1 <= y0:
        return out
    # photo window pixel -> crop pixel
    to_crop = np.linalg.inv(_crop_to_photo(quad, n)) @ np.array([[1, 0, x0], [0, 1, y0], [0, 0, 1.0]])
    size = (x1 - x0, y1 - y0)
    warped = cv2.warpAffine(face, to_crop[:2], size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                            borderMode=cv2.BORDER_REPLICATE)
    alpha = cv2.warpAffine(soft, to_crop[:2], size, flags=cv2.INTER_LINEAR | cv2.WARP_INVERSE_MAP,
                           borderMode=cv2.BORDER_CONSTANT, borderValue=0)[:, :, None]
    region = out[y0:y1, x0:x1].astype(np.float32)
    if base.dtype == np.uint8:
        blended = region * (1.0 - alpha) + warped * 255.0 * alpha
        out[y0:y1, x0:x1] = np.clip(blended + 0.5, 0, 255).astype(np.uint8)
    else:
        out[y0:y1, x0:x1] = region * (1.0 - alpha) + warped * alpha
    return out
