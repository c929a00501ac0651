"""Face parsing + background whitening: facexlib ParseNet/BiSeNet loaded from random-weight files
in the official format, the reference mask recipe, label maps, normalisation, whitening."""
import warnings

import cv2
import numpy as np
import pytest
import torch
from PIL import Image

from wplus_core import download
from wplus_core.errors import WPlusError
from wplus_core.parsing import (FaceParser, background_mask, init_parsing_model, mask_from_labels,
                                whiten_background)


@pytest.fixture(scope="module")
def parse_dir(tmp_path_factory):
    from facexlib.parsing.bisenet import BiSeNet
    from facexlib.parsing.parsenet import ParseNet
    folder = tmp_path_factory.mktemp("facexlib")
    torch.manual_seed(0)
    # facexlib's files are the plain state dicts of these classes
    torch.save(ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(), folder / "parsing_parsenet.pth")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        torch.save(BiSeNet(num_class=19).state_dict(), folder / "parsing_bisenet.pth")
    return folder


@pytest.fixture(autouse=True)
def offline(monkeypatch):
    monkeypatch.setenv(download.OFFLINE_ENV, "1")


@pytest.mark.parametrize("name", ["parsenet", "bisenet"])
def test_load_and_run_random_weights(name, parse_dir):
    parser = init_parsing_model(name, parse_dir, device="cpu")
    saved = torch.load(parse_dir / f"parsing_{name}.pth", weights_only=True)
    for key, value in parser.model.state_dict().items():
        assert torch.equal(value, saved[key]), key
    faces = np.random.default_rng(0).integers(0, 256, (2, 128, 128, 3), dtype=np.uint8)
    labels = parser.labels(faces, size=128)  # 128 px keeps the CPU test fast; the reference is 512
    assert labels.shape == (2, 128, 128) and labels.dtype == torch.int64
    assert 0 <= int(labels.min()) and int(labels.max()) <= 18
    mask = background_mask(parser, torch.from_numpy(faces).float() / 255, size=64, parse_size=128)
    assert mask.shape == (2, 64, 64) and mask.dtype == torch.float32
    assert float(mask.min()) >= 0 and float(mask.max()) <= 1
    expected = mask_from_labels(labels, parser.background_classes, size=64)
    torch.testing.assert_close(mask, expected)


def test_wrong_files(parse_dir, tmp_path):
    (tmp_path / "parsing_parsenet.pth").write_bytes((parse_dir / "parsing_bisenet.pth").read_bytes())
    with pytest.raises(WPlusError) as e:
        init_parsing_model("parsenet", tmp_path)
    msg = str(e.value)
    assert "parsing_parsenet.pth" in msg and "missing" in msg and "bisenet checkpoint" in msg
    data = (parse_dir / "parsing_bisenet.pth").read_bytes()
    (tmp_path / "parsing_bisenet.pth").write_bytes(data[:1000])
    with pytest.raises(WPlusError, match="parsing_bisenet.pth"):
        init_parsing_model("bisenet", tmp_path)
    empty = tmp_path / "empty"
    with pytest.raises(WPlusError) as e:
        init_parsing_model("parsenet", empty)
    assert "parsing_parsenet.pth" in str(e.value) and str(empty) in str(e.value)
    assert "https://github.com/xinntao/facexlib/releases/download/v0.2.2/parsing_parsenet.pth" in str(e.value)
    with pytest.raises(WPlusError, match="unknown face parser"):
        init_parsing_model("segformer", parse_dir)


class _Stub(torch.nn.Module):
    """Stands in for the net: remembers its input, answers fixed logits (first output)."""

    def __init__(self, top: int, bottom: int):
        super().__init__()
        self.w = torch.nn.Parameter(torch.zeros(1))
        self.top, self.bottom = top, bottom

    def forward(self, x):
        self.seen = x.detach().clone()
        b, _, h, w = x.shape
        logits = torch.zeros(b, 19, h, w)
        logits[:, self.top, : h // 2] = 1
        logits[:, self.bottom, h // 2:] = 1
        return logits, None


@pytest.mark.parametrize("name,cloth,mean,std", [("parsenet", 18, 0.5, 0.5), ("bisenet", 16, 0.485, 0.229)])
def test_label_maps_and_normalisation(name, cloth, mean, std):
    # top half = cloth, bottom half = skin (1 in both nets): only the top may be masked
    stub = _Stub(top=cloth, bottom=1)
    parser = FaceParser(name, stub)
    white = np.full((64, 64, 3), 255, np.uint8)
    mask = background_mask(parser, white, size=64, blur=0, parse_size=64)[0]
    assert torch.all(mask[:32] == 1) and torch.all(mask[32:] == 0)
    assert stub.seen[0, 0].mean().item() == pytest.approx((1 - mean) / std, rel=1e-5)
    # the other net's cloth index is not background here
    other = 16 if cloth == 18 else 18
    parser = FaceParser(name, _Stub(top=other, bottom=0))
    mask = background_mask(parser, white, size=64, blur=0, parse_size=64)[0]
    assert torch.all(mask[:32] == 0) and torch.all(mask[32:] == 1)


def _reference_mask(labels: np.ndarray) -> np.ndarray:
    """The reference recipe, written out: colour map (background black, cloth removed = black),
    channel mean > 0 -> 255, inverted, GaussianBlur 5x5, PIL resize to 256 (default filter)."""
    colors = np.random.default_rng(1).integers(1, 256, (19, 3))
    colors[0] = 0
    color = np.zeros(labels.shape + (3,))
    for idx in range(19):
        if idx != 18:
            color[labels == idx] = colors[idx]
    m = color.astype(np.uint8).mean(axis=2)
    m[m > 0] = 255
    m = (255 - m).astype(np.uint8)
    m = cv2.GaussianBlur(m, (5, 5), 0)
    return np.asarray(Image.fromarray(m).resize((256, 256))).astype(np.float32) / 255


def test_mask_matches_reference_recipe():
    rng = np.random.default_rng(0)
    labels = np.kron(rng.integers(0, 19, (16, 16)), np.ones((32, 32), np.int64))  # 512 x 512 blocks
    ours = mask_from_labels(torch.from_numpy(labels), (0, 18), size=256, blur=5)[0].numpy()
    np.testing.assert_allclose(ours, _reference_mask(labels), atol=1e-6)
    assert 0 < ours.mean() < 1


def test_whiten_background():
    img = torch.rand(2, 3, 32, 32) * 2 - 1
    m = torch.zeros(32, 32)
    m[:, :16] = 1
    out = whiten_background(img, m)
    assert torch.all(out[:, :, :, :16] == 1) and torch.equal(out[:, :, :, 16:], img[:, :, :, 16:])
    # a half mask blends halfway to white; a (B, H, W) numpy user mask of another size is resized
    half = whiten_background(img, np.full((2, 8, 8), 0.5, np.float32))
    torch.testing.assert_close(half, img * 0.5 + 0.5)
    # (B, 1, H, W) and dtype follow the images
    out16 = whiten_background(img.half(), torch.ones(1, 1, 32, 32))
    assert out16.dtype == torch.float16 and torch.all(out16 == 1)
    with pytest.raises(WPlusError):
        whiten_background(img, torch.ones(3, 32, 32))
    with pytest.raises(WPlusError):
        whiten_background(img[0], m)
