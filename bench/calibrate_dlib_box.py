"""Calibrate the RetinaFace -> dlib HOG box conversion (wplus_core.detection.dlib_landmarks).

    python bench/calibrate_dlib_box.py [photo ...]

Uses the reference photos (../shared/reference: wild_1.jpg, aligned_1.png, e4e_latents/*.png),
matplotlib's sample grace_hopper.jpg when matplotlib is installed, and any photos given. Each
photo is resampled at 6 scales, mirrored and shifted by 0-12 px (two draws), which moves dlib's
quantised HOG boxes around. For each HOG face that the offline RetinaFace also finds, it records
dlib's box in the frame of the FFHQ quad of RetinaFace's 5 points (centre offset / side, box side /
quad side), fits the mean and then scores it leave-one-photo-out: the 68 points predicted in the
converted box against those from dlib's own box, as the largest quad-corner distance over the
quad side. Prints the constants and the errors; also the same error between the two shifted
draws of one photo (how much dlib's own box moves) and for RetinaFace's own 5 points.
Not a test: it takes a few minutes on 2 cores.
"""
from __future__ import annotations

import sys
from collections import defaultdict
from pathlib import Path

import cv2
import numpy as np
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

from wplus_core.alignment import ffhq_quad  # noqa: E402
from wplus_core.detection import init_detection_model  # noqa: E402
from wplus_core.detection import dlib_landmarks as dl  # noqa: E402


def photos(extra):
    ref = ROOT.parent / "shared" / "reference"
    out = [ref / "photos" / "wild_1.jpg", ref / "photos" / "aligned_1.png"]
    out += sorted((ref / "e4e_latents").glob("*.png"))
    try:
        import matplotlib
        out.append(Path(matplotlib.get_data_path()) / "sample_data" / "grace_hopper.jpg")
    except ImportError:
        pass
    return [p for p in out + [Path(p) for p in extra] if p.is_file()]


def quad_frame(five):
    q = ffhq_quad(five)
    return q.mean(0), float(np.hypot(*(q[3] - q[0])))


def gap(a68, b68):
    qa, qb = ffhq_quad(a68), ffhq_quad(b68)
    return float(np.abs(qa - qb).max() / np.hypot(*(qb[3] - qb[0])))


def main(extra):
    dlib = dl.import_dlib()
    det = init_detection_model("dlib_hog")
    rng = np.random.default_rng(0)
    rows = []
    for pi, path in enumerate(photos(extra)):
        base = np.asarray(Image.open(path).convert("RGB"))
        for mirror in (0, 1):
            for scale in (0.55, 0.7, 0.85, 1.0, 1.2, 1.45):
                for draw in range(2):
                    img = np.ascontiguousarray(base[:, ::-1] if mirror else base)
                    dx, dy = rng.uniform(0, 12, 2)
                    m = np.array([[scale, 0, dx], [0, scale, dy]])
                    size = (int(img.shape[1] * scale + 16), int(img.shape[0] * scale + 16))
                    im = cv2.warpAffine(img, m, size, flags=cv2.INTER_AREA if scale < 1 else cv2.INTER_LINEAR)
                    boxes, scores = det.dlib_boxes(im)
                    retina = det.fallback.detect(im, threshold=0.5)
                    for box in boxes:
                        hit = [r for r in retina if dl._inside(r.landmarks, box)]
                        if not hit:
                            continue
                        r = max(hit, key=lambda f: f.score)
                        c, s = quad_frame(r.landmarks)
                        centre = (box[:2] + box[2:]) / 2
                        rows.append(dict(photo=pi, key=(pi, mirror, scale, draw), image=im, m=m,
                                         five=r.landmarks, box=box,
                                         p68=dl.predict_68(det.predictor, im, box, dlib),
                                         target=np.r_[(centre - c) / s, (box[2] - box[0]) / s]))
        print(f"{path.name}: {len(rows)} faces so far", flush=True)
    target = np.array([r["target"] for r in rows])
    which = np.array([r["photo"] for r in rows])
    errors = []
    for r in rows:
        mean = target[which != r["photo"]].mean(0)
        c, s = quad_frame(r["five"])
        centre, half = c + mean[:2] * s, mean[2] * s / 2
        box = np.r_[centre - half, centre + half]
        errors.append(gap(dl.predict_68(det.predictor, r["image"], box, dlib), r["p68"]))
    own = defaultdict(list)   # dlib's own points, mapped back to the photo, per draw
    for r in rows:
        inv = np.linalg.inv(np.vstack([r["m"], [0, 0, 1]]))
        pts = r["p68"] @ inv[:2, :2].T + inv[:2, 2]
        own[r["key"][:3] + (int(pts[:, 0].mean() // 20),)].append(pts)
    jitter = [gap(v[0], v[1]) for v in own.values() if len(v) == 2]
    five = [gap(r["five"], r["p68"]) for r in rows]

    def stats(name, v):
        v = np.asarray(v)
        print(f"{name}: n={len(v)} median {np.median(v):.4f} p90 {np.percentile(v, 90):.4f} max {v.max():.4f}")

    print("BOX_OFFSET =", target[:, :2].mean(0).round(4).tolist(), " BOX_SIDE =", round(float(target[:, 2].mean()), 4))
    print("in use:    ", dl.BOX_OFFSET.tolist(), dl.BOX_SIDE)
    print("quad error (largest corner distance / quad side) against dlib's own box:")
    stats("  converted RetinaFace box, leave one photo out", errors)
    stats("  dlib's own box, photo shifted by 0-12 px     ", jitter)
    stats("  RetinaFace's own 5 points                    ", five)


if __name__ == "__main__":
    main(sys.argv[1:])
