"""W+ latent files: validation, safe reading of the official .pth latents, .safetensors round trip
with metadata, no silent overwrite, atomic writes, refusal of pickles that run code."""
import json
import os
import pickle

import numpy as np
import pytest
import torch

from wplus_core.errors import WPlusError
from wplus_core.latents import (TOKEN_GROUPS, check_wplus, load_wplus, next_free_path, save_wplus,
                                sha256_of, wplus_metadata)


def test_token_groups_cover_the_18_layers_once():
    layers = [i for a, b in TOKEN_GROUPS for i in range(a, b)]
    assert layers == list(range(18)) and len(TOKEN_GROUPS) == 4


@pytest.mark.parametrize("shape", [(18, 512), (1, 18, 512), (3, 18, 512)])
def test_check_wplus_accepts_and_returns_3d(shape):
    w = check_wplus(torch.randn(shape))
    assert w.shape == (shape[0] if len(shape) == 3 else 1, 18, 512)


@pytest.mark.parametrize("shape", [(512,), (1, 512), (18, 511), (1, 17, 512), (2, 1, 18, 512), (0, 18, 512)])
def test_check_wplus_rejects_bad_shapes_naming_the_input(shape):
    with pytest.raises(WPlusError, match=r"my latent.*" + str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")):
        check_wplus(torch.zeros(shape), "my latent")


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_check_wplus_rejects_non_finite(bad):
    w = torch.zeros(1, 18, 512)
    w[0, 5, 7] = bad
    with pytest.raises(WPlusError, match="NaN or Inf"):
        check_wplus(w, "latent X")


def test_check_wplus_rejects_integer_tensors():
    with pytest.raises(WPlusError, match="floating point"):
        check_wplus(torch.zeros(1, 18, 512, dtype=torch.int64))


def test_official_pth_latents_load_as_float32_without_grad(reference_dir):
    files = sorted((reference_dir / "e4e_latents").glob("*.pth"))
    assert len(files) >= 5
    raw_grad = 0
    for f in files:
        raw = torch.load(f, map_location="cpu", weights_only=True)
        raw_grad += bool(raw.requires_grad)
        w, meta = load_wplus(f)
        assert w.shape == (1, 18, 512) and w.dtype == torch.float32
        assert not w.requires_grad and w.grad_fn is None and w.device.type == "cpu"
        assert meta == {}
        assert torch.equal(w, raw.detach())
    assert raw_grad > 0, "the reference set includes latents saved with requires_grad"


def test_round_trip_with_metadata(tmp_path):
    w = torch.randn(2, 18, 512)
    quad = [[10.5, 20.0], [10.5, 300.0], [300.0, 300.0], [300.0, 20.0]]
    meta = wplus_metadata(image_sha256=sha256_of(b"image bytes"), quad=quad, model="e4e_ffhq_encode.pt",
                          pack_version="0.1.0", note="hello", index=3)
    path = save_wplus(tmp_path / "a.safetensors", w, meta)
    w2, meta2 = load_wplus(path)
    assert torch.equal(w2, w) and w2.dtype == torch.float32
    assert meta2 == {"source_image_sha256": sha256_of(b"image bytes"), "alignment_quad": quad,
                     "model": "e4e_ffhq_encode.pt", "pack_version": "0.1.0", "note": "hello", "index": 3}
    # The file is readable by plain safetensors and carries the format tag.
    from safetensors import safe_open
    with safe_open(path, "pt") as f:
        assert list(f.keys()) == ["wplus"]
        assert f.metadata()["wplus.format"] == "wplus-latent"
        assert json.loads(f.metadata()["alignment_quad"]) == quad


def test_save_fp16_cuda_like_input_is_stored_as_float32(tmp_path):
    w = torch.randn(18, 512).half()
    w2, _ = load_wplus(save_wplus(tmp_path / "h.safetensors", w))
    assert w2.shape == (1, 18, 512) and w2.dtype == torch.float32
    assert torch.equal(w2[0], w.float())


def test_never_overwrites_silently(tmp_path):
    p = tmp_path / "x.safetensors"
    save_wplus(p, torch.zeros(1, 18, 512))
    with pytest.raises(WPlusError, match="already exists"):
        save_wplus(p, torch.ones(1, 18, 512))
    assert torch.equal(load_wplus(p)[0], torch.zeros(1, 18, 512))
    save_wplus(p, torch.ones(1, 18, 512), overwrite=True)
    assert torch.equal(load_wplus(p)[0], torch.ones(1, 18, 512))
    assert sorted(os.listdir(tmp_path)) == ["x.safetensors"], "no temp file left behind"


def test_failed_write_leaves_no_file(tmp_path, monkeypatch):
    import wplus_core.latents as L

    def boom(*a, **k):
        raise OSError("disk full")
    monkeypatch.setattr(L.os, "fsync", boom)
    with pytest.raises(OSError):
        save_wplus(tmp_path / "y.safetensors", torch.zeros(1, 18, 512))
    assert os.listdir(tmp_path) == []


def test_save_rejects_other_extensions_and_bad_metadata(tmp_path):
    with pytest.raises(WPlusError, match="safetensors"):
        save_wplus(tmp_path / "x.pt", torch.zeros(1, 18, 512))
    with pytest.raises(WPlusError, match="not allowed"):
        save_wplus(tmp_path / "x.safetensors", torch.zeros(1, 18, 512), {"wplus.format": "x"})
    with pytest.raises(WPlusError, match="cannot be stored"):
        save_wplus(tmp_path / "x.safetensors", torch.zeros(1, 18, 512), {"obj": object()})
    with pytest.raises(WPlusError, match="W\\+ latent to save"):
        save_wplus(tmp_path / "x.safetensors", torch.zeros(1, 512))
    assert os.listdir(tmp_path) == []


def test_next_free_path_counts_like_comfyui(tmp_path):
    p1 = next_free_path(tmp_path, "face")
    assert os.path.basename(p1) == "face_00001_.safetensors"
    save_wplus(p1, torch.zeros(1, 18, 512))
    (tmp_path / "face_00007_.safetensors").write_bytes(b"x")
    (tmp_path / "face_extra_00099_.safetensors").write_bytes(b"x")  # another prefix: ignored
    (tmp_path / "face_00050_.png").write_bytes(b"x")  # another extension: ignored
    assert os.path.basename(next_free_path(tmp_path, "face")) == "face_00008_.safetensors"
    sub = next_free_path(tmp_path, "sub/face")
    assert sub == os.path.join(str(tmp_path), "sub", "face_00001_.safetensors")
    with pytest.raises(WPlusError, match="outside"):
        next_free_path(tmp_path, "../escape")


@pytest.mark.parametrize("container", ["tensor", "dict", "2d", "npy", "batch"])
def test_load_accepts_other_containers(tmp_path, container):
    w = torch.randn(1, 18, 512)
    if container == "tensor":
        p = tmp_path / "w.pt"; torch.save(w.requires_grad_(), p)
    elif container == "dict":
        p = tmp_path / "w.pth"; torch.save({"latent": w}, p)
    elif container == "2d":
        p = tmp_path / "w.pt"; torch.save(w[0], p)
    elif container == "npy":
        p = tmp_path / "w.npy"; np.save(p, w.numpy().astype(np.float64))
    else:
        w = torch.randn(4, 18, 512)
        p = tmp_path / "w.pt"; torch.save(w, p)
    got, _ = load_wplus(p)
    assert got.dtype == torch.float32 and not got.requires_grad
    assert torch.allclose(got, w.detach().reshape(-1, 18, 512))


def test_load_rejects_bad_content_naming_the_file(tmp_path):
    p = tmp_path / "two.pt"
    torch.save({"a": torch.zeros(1, 18, 512), "b": torch.zeros(1, 18, 512)}, p)
    with pytest.raises(WPlusError, match="two.pt.*2 tensors"):
        load_wplus(p)
    p = tmp_path / "shape.pt"
    torch.save(torch.zeros(1, 14, 512), p)
    with pytest.raises(WPlusError, match=r"shape.pt.*\(1, 14, 512\)"):
        load_wplus(p)
    p = tmp_path / "nan.pt"
    torch.save(torch.full((1, 18, 512), float("nan")), p)
    with pytest.raises(WPlusError, match="nan.pt.*NaN"):
        load_wplus(p)
    p = tmp_path / "trunc.safetensors"
    p.write_bytes(b"\x10\x00\x00\x00")
    with pytest.raises(WPlusError, match="trunc.safetensors"):
        load_wplus(p)
    with pytest.raises(WPlusError, match="not found"):
        load_wplus(tmp_path / "missing.pth")
    p = tmp_path / "w.txt"
    p.write_text("x")
    with pytest.raises(WPlusError, match="unsupported extension"):
        load_wplus(p)


class _OpensAFile:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


class _RunsAShellCommand:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch '{self.marker}'",))


@pytest.mark.filterwarnings("ignore:Detected pickle protocol")
@pytest.mark.parametrize("payload", [_OpensAFile, _RunsAShellCommand])
@pytest.mark.parametrize("writer", ["torch.save", "pickle.dump"])
def test_pickle_that_runs_code_is_refused(tmp_path, payload, writer):
    marker = tmp_path / "pwned"
    evil = {"w": torch.zeros(1, 18, 512), "x": payload(str(marker))}
    path = tmp_path / "evil.pth"
    if writer == "torch.save":
        torch.save(evil, path)
    else:
        with open(path, "wb") as f:
            pickle.dump(evil, f)
    assert not marker.exists()
    with pytest.raises(WPlusError, match="evil.pth"):
        load_wplus(path)
    assert not marker.exists(), "loading a latent file ran code from the pickle"
    # Control: the payload is live, so the check above could have failed.
    if writer == "pickle.dump":
        with open(path, "rb") as f:
            obj = pickle.load(f)
        if hasattr(obj.get("x"), "close"):
            obj["x"].close()
        assert marker.exists()


def test_sha256_of_arrays_depends_on_values_shape_and_dtype():
    a = np.zeros((4, 4, 3), np.uint8)
    b = a.copy(); b[0, 0, 0] = 1
    assert sha256_of(a) == sha256_of(torch.from_numpy(a.copy()))
    assert len({sha256_of(a), sha256_of(b), sha256_of(a.reshape(16, 3)), sha256_of(a.astype(np.float32))}) == 4
    with pytest.raises(WPlusError):
        sha256_of(object())
    with pytest.raises(WPlusError, match="quad"):
        wplus_metadata(quad=[[0, 0]] * 3)
