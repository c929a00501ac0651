"""FFHQ alignment: official crops (PSNR), the reference pipeline, transforms, validity mask,
paste-back and input handling."""
import json

import cv2
import numpy as np
import pytest
from PIL import Image

from wplus_core.alignment import AlignedFace, align_face, ffhq_quad, landmarks_to_five, paste_back
from wplus_core.errors import WPlusError


def psnr(a, b):
    mse = np.mean((np.asarray(a, np.float64) - np.asarray(b, np.float64)) ** 2)
    return 10 * np.log10(255.0 ** 2 / max(mse, 1e-12))


@pytest.fixture(scope="module")
def wild(reference_dir):
    data = json.loads((reference_dir / "alignment" / "landmarks.json").read_text())
    photo = np.asarray(Image.open(reference_dir / "photos" / "wild_1.jpg").convert("RGB"))
    faces = data["wild_1.jpg"]["faces"]
    assert len(faces) == 2
    official = [np.asarray(Image.open(reference_dir / "alignment" / f["official_aligned_512"]).convert("RGB"))
                for f in faces]
    return photo, faces, official


def test_official_crops_psnr(wild):
    photo, faces, official = wild
    for face, ref in zip(faces, official):
        for key in ("landmarks68", "landmarks5_eyeL_eyeR_nose_mouthL_mouthR"):
            out = align_face(photo, face[key], 512)
            assert isinstance(out, AlignedFace) and out.image.shape == (512, 512, 3)
            assert out.image.dtype == np.uint8
            assert psnr(out.image, ref) >= 40.0, (key, psnr(out.image, ref))
        quad = ffhq_quad(face["landmarks68"])
        assert quad[:, 0].max() - quad[:, 0].min() == pytest.approx(face["quad_width_px"], abs=1e-6)


def test_reference_method_reproduces_official(wild):
    photo, faces, official = wild
    for face, ref in zip(faces, official):
        out = align_face(photo, face["landmarks68"], 512, method="reference")
        assert psnr(out.image, ref) >= 60.0


def test_five_points_from_68(wild):
    _, faces, _ = wild
    for face in faces:
        np.testing.assert_allclose(landmarks_to_five(face["landmarks68"]),
                                   face["landmarks5_eyeL_eyeR_nose_mouthL_mouthR"], atol=1e-9)


def test_fast_matches_reference_when_downsampling(wild):
    """A face larger than the output (2x supersampling + Lanczos path)."""
    photo, faces, _ = wild
    scale = 4
    big = cv2.resize(photo, None, fx=scale, fy=scale, interpolation=cv2.INTER_CUBIC)
    points = (np.asarray(faces[0]["landmarks68"]) + 0.5) * scale - 0.5
    for size in (256, 512):  # quad ~ 760 px: 3x and 1.5x larger than the output
        fast = align_face(big, points, size)
        ref = align_face(big, points, size, method="reference")
        assert psnr(fast.image, ref.image) >= 40.0, size


def test_transforms_and_quad_geometry(wild):
    photo, faces, _ = wild
    for size in (256, 512, 1024):
        out = align_face(photo, faces[0]["landmarks68"], size)
        assert out.size == size and out.valid.shape == (size, size)
        np.testing.assert_allclose(out.matrix @ out.inverse, np.eye(3), atol=1e-9)
        corners = out.to_crop(out.quad)
        edge = [[-0.5, -0.5], [-0.5, size - 0.5], [size - 0.5, size - 0.5], [size - 0.5, -0.5]]
        np.testing.assert_allclose(corners, edge, atol=1e-6)
        np.testing.assert_allclose(out.to_photo(out.to_crop(out.quad)), out.quad, atol=1e-6)
        # the 2x3 part is what cv2 wants: warping the crop back lands the eyes where they were
        five = landmarks_to_five(faces[0]["landmarks68"])
        eyes = out.to_crop(five[:2])
        assert abs(eyes[0, 1] - eyes[1, 1]) < 0.02 * size  # eyes level in the crop


def test_validity_mask_outside_photo(wild):
    photo, faces, _ = wild
    out = align_face(photo, faces[1]["landmarks68"], 256)  # this quad leaves the photo's top
    valid = out.valid
    assert valid.min() == 0.0 and valid.max() == 1.0
    # brute force: 8x8 samples per crop pixel, fraction inside [-0.5, W-0.5] x [-0.5, H-0.5]
    h, w = photo.shape[:2]
    sub = (np.arange(8) + 0.5) / 8 - 0.5
    u = (np.arange(256)[:, None] + sub[None, :]).ravel()
    pu, pv = np.meshgrid(u, u)
    pts = out.to_photo(np.stack([pu.ravel(), pv.ravel()], 1))
    inside = ((pts[:, 0] >= -0.5) & (pts[:, 0] <= w - 0.5) & (pts[:, 1] >= -0.5) & (pts[:, 1] <= h - 0.5))
    brute = inside.reshape(256, 8, 256, 8).mean(axis=(1, 3))
    assert np.abs(brute - valid).max() < 0.15
    # black where nothing of the photo is seen
    assert out.image[valid == 0].max() == 0
    assert out.image[valid == 1].mean() > 20


def test_paste_back_roundtrip(wild):
    photo, faces, _ = wild
    out = align_face(photo, faces[0]["landmarks68"], 512)
    back = paste_back(photo, out.image, out, feather=0.06)
    assert back.shape == photo.shape and back.dtype == np.uint8
    # pixels well inside the quad come back almost unchanged
    quad = out.quad
    centre = quad.mean(0)
    inner = centre + (quad - centre) * 0.8
    m = np.zeros(photo.shape[:2], np.uint8)
    cv2.fillConvexPoly(m, np.round(inner).astype(np.int32), 1)
    assert psnr(back[m == 1], photo[m == 1]) > 30
    # outside the quad's bounding box nothing changes
    x0, y0 = np.floor(quad.min(0)).astype(int) - 3
    x1, y1 = np.ceil(quad.max(0)).astype(int) + 3
    keep = np.ones(photo.shape[:2], bool)
    keep[max(y0, 0):y1, max(x0, 0):x1] = False
    assert np.array_equal(back[keep], photo[keep])
    # a red 1024 crop pasted hard (feather 0): the face centre turns red, the photo is untouched
    red = np.zeros((1024, 1024, 3), np.uint8)
    red[..., 0] = 255
    pasted = paste_back(photo, red, out, feather=0.0)
    cx, cy = np.round(out.to_photo([[255.5, 255.5]])[0]).astype(int)
    assert tuple(pasted[cy, cx]) == (255, 0, 0)
    assert not np.array_equal(pasted, photo) and np.array_equal(photo, wild[0])
    # an optional crop-space mask limits the paste
    none = paste_back(photo, red, out, mask=np.zeros((64, 64), np.float32))
    assert np.array_equal(none, photo)
    # float photo in, float32 out
    fl = paste_back(photo.astype(np.float32) / 255, out.image.astype(np.float32) / 255, out)
    assert fl.dtype == np.float32 and psnr(fl * 255, back) > 40
    with pytest.raises(WPlusError, match="photo"):
        paste_back(photo[:100], out.image, out)
    with pytest.raises(WPlusError, match="square"):
        paste_back(photo, out.image[:, :100], out)


def test_input_variants_and_errors(wild):
    photo, faces, _ = wild
    pts = faces[0]["landmarks68"]
    ref = align_face(photo, pts, 256).image
    gray = cv2.cvtColor(photo, cv2.COLOR_RGB2GRAY)
    g = align_face(gray, pts, 256).image
    assert g.shape == (256, 256, 3) and np.array_equal(g[..., 0], g[..., 2])
    rgba = np.dstack([photo, np.zeros(photo.shape[:2], np.uint8)])
    assert np.array_equal(align_face(rgba, pts, 256).image, ref)
    fl = align_face(photo.astype(np.float32) / 255, pts, 256).image
    assert fl.dtype == np.float32 and psnr(fl * 255, ref) > 45
    with pytest.raises(WPlusError, match=r"\(5, 2\) or \(68, 2\)"):
        align_face(photo, np.zeros((4, 2)), 256)
    with pytest.raises(WPlusError, match="degenerate"):
        align_face(photo, np.ones((5, 2)), 256)
    with pytest.raises(WPlusError, match="NaN"):
        align_face(photo, np.full((5, 2), np.nan), 256)
    with pytest.raises(WPlusError, match="size"):
        align_face(photo, pts, 0)
    with pytest.raises(WPlusError, match="method"):
        align_face(photo, pts, 256, method="magic")
    with pytest.raises(WPlusError):
        align_face(photo[..., :2], pts, 256)
    # a face entirely outside the photo gives a black crop and an all-zero validity mask
    far = np.asarray(landmarks_to_five(pts)) + [5000, 5000]
    out = align_face(photo, far, 64)
    assert out.image.max() == 0 and out.valid.max() == 0
