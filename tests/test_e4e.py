"""e4e encoder + StyleGAN2 generator: official key layout, strict loading of official-format files
(.pt and .safetensors), numerical equivalence with the naive reference in e4e_reference.py,
faithful low-resolution previews, and precise refusals of bad files (never running pickled code).

One full-size random-weight e4e_ffhq_encode.pt (~1.2 GB) is written per session and removed after.
"""
import argparse
import os
import shlex
from pathlib import Path

import pytest
import torch
from torch.utils.flop_counter import FlopCounterMode

from tests.e4e_reference import (official_checkpoint, random_e4e_weights, reference_encoder,
                                 reference_generator)
from wplus_core import WPlusError, load_e4e
from wplus_core.e4e import E4E, Encoder4Editing, Generator

ROOT = Path(__file__).resolve().parents[1]
FORMATS = Path(os.environ.get("WPLUS_FORMATS", ROOT.parent / "shared" / "formats"))
TSV = FORMATS / "e4e_ffhq_encode.state_dict.tsv"


def rel_err(a: torch.Tensor, b: torch.Tensor) -> float:
    """max |a - b| / max |b|"""
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def meta_shapes(size: int = 1024) -> dict:
    with torch.device("meta"):
        enc, gen = Encoder4Editing(), Generator(size)
    out = {"encoder." + k: (tuple(v.shape), v.dtype) for k, v in enc.state_dict().items()}
    out.update({"decoder." + k: (tuple(v.shape), v.dtype) for k, v in gen.state_dict().items()})
    return out


def tiny_state_dict(size: int = 1024) -> dict:
    """All official keys at full shapes, but every tensor a stride-0 view of one zero: a valid
    layout that torch.save writes in a few hundred kB (for the refusal tests)."""
    zero, zero_int = torch.zeros(()), torch.zeros((), dtype=torch.int64)
    return {k: zero_int if dtype == torch.int64 else zero.expand(shape)
            for k, (shape, dtype) in meta_shapes(size).items()}


# ----------------------------------------------------------------------------- fixtures

@pytest.fixture(scope="session")
def e4e_weights():
    return random_e4e_weights(seed=1234)


@pytest.fixture(scope="session")
def e4e_file(e4e_weights, tmp_path_factory):
    path = tmp_path_factory.mktemp("e4e") / "e4e_ffhq_encode.pt"
    torch.save(official_checkpoint(*e4e_weights), path)
    yield path
    path.unlink()  # 1.2 GB: do not leave it in pytest's kept temp dirs


@pytest.fixture(scope="session")
def e4e(e4e_file) -> E4E:
    return load_e4e(e4e_file)


@pytest.fixture(scope="module")
def full_run(e4e, e4e_weights):
    """One batch-1 W+ and the reference's skip images at every resolution up to 1024."""
    g = torch.Generator().manual_seed(5)
    w = e4e.latent_avg + 0.5 * torch.randn(1, 18, 512, generator=g)
    with torch.no_grad():
        return w, reference_generator(e4e_weights[1], w)


# ----------------------------------------------------------------------------- layout and loading

def test_state_dict_layout_equals_official_key_list():
    if not TSV.is_file():
        pytest.skip(f"official key list not found at {TSV} (only on the project's dev machines)")
    official = {}
    for line in TSV.read_text().splitlines():
        if line.startswith("#") or not line.strip():
            continue
        key, shape, dtype = line.split("\t")
        official[key] = (() if shape == "scalar" else tuple(int(s) for s in shape.split("x")),
                         getattr(torch, dtype))
    assert official.pop("latent_avg")[0] == (18, 512)
    ours = meta_shapes(1024)
    assert list(ours) == list(official)  # same keys, same order
    assert ours == official              # same shapes and dtypes
    assert len(ours) == 792


def test_official_format_file_loads_strictly_with_all_values(e4e, e4e_weights):
    enc, dec, latent_avg = e4e_weights
    assert isinstance(e4e, E4E) and not e4e.training
    assert e4e.dtype == torch.float32 and e4e.device == torch.device("cpu")
    assert torch.equal(e4e.latent_avg, latent_avg)
    for module, source in ((e4e.encoder, enc), (e4e.generator, dec)):
        state = module.state_dict()
        assert state.keys() == source.keys()
        for k, v in source.items():
            assert torch.equal(state[k], v), k
        assert not any(p.requires_grad for p in module.parameters())


def test_safetensors_file_loads(e4e_weights, tmp_path):
    from safetensors.torch import save_file
    enc, dec, latent_avg = e4e_weights
    flat = dict(official_checkpoint(enc, dec, latent_avg)["state_dict"], latent_avg=latent_avg)
    path = tmp_path / "e4e_ffhq_encode.safetensors"
    save_file(flat, str(path))
    try:
        model = load_e4e(path)
    finally:
        path.unlink()
    assert torch.equal(model.latent_avg, latent_avg)
    for k in ("styles.17.linear.weight", "body.21.shortcut_layer.1.running_var", "input_layer.2.weight"):
        assert torch.equal(model.encoder.state_dict()[k], enc[k])
    for k in ("convs.15.conv.weight", "noises.noise_16", "to_rgbs.7.upsample.kernel"):
        assert torch.equal(model.generator.state_dict()[k], dec[k])
    del model
    model = load_e4e(official_checkpoint(enc, dec, latent_avg), dtype=torch.bfloat16)
    assert model.dtype == torch.bfloat16 and model.latent_avg.dtype == torch.float32
    assert model.encoder.body[3].shortcut_layer[1].num_batches_tracked.dtype == torch.int64


# ----------------------------------------------------------------------------- numerics

def test_encoder_matches_reference(e4e, e4e_weights):
    enc, _, latent_avg = e4e_weights
    x = torch.rand(1, 3, 256, 256, generator=torch.Generator().manual_seed(0)) * 2 - 1
    with torch.no_grad():
        expected = reference_encoder(enc, x)
    assert expected.std() > 0.1 and torch.isfinite(expected).all()
    w = e4e.invert(x)
    assert w.shape == (1, 18, 512) and w.dtype == torch.float32
    assert rel_err(w - latent_avg, expected) <= 1e-5
    assert rel_err(w, expected + latent_avg) <= 1e-5
    assert (w[:, 1:] - w[:, :1]).abs().amax() > 1e-3  # the per-row deltas were applied


def test_generator_matches_reference_at_32_px_with_asymmetric_kernels():
    # same code path as 1024 with fewer levels (the full size is checked below); asymmetric
    # random blur kernels prove the stored kernels are used with upfirdn2d's orientation (flip)
    # in both the blur and the skip upsampler
    _, dec, _ = random_e4e_weights(seed=7, size=32, random_kernels=True, encoder=False)
    gen = Generator(32).eval()
    gen.load_state_dict(dec, strict=True)
    w = torch.randn(3, 8, 512, generator=torch.Generator().manual_seed(1))
    with torch.no_grad():
        skips = reference_generator(dec, w)
        out = gen(w)
        assert out.shape == (3, 3, 32, 32) and out.std() > 0.1
        assert rel_err(out, skips[32]) <= 1e-4
        for size in (4, 8, 16):
            assert rel_err(gen(w, size=size), skips[size]) <= 1e-4, size
        # batch folding in the grouped conv: each sample as if alone
        assert rel_err(gen(w[1:2]), skips[32][1:2]) <= 1e-4
    # the in-place fusions keep autograd working (latent optimisation stays possible)
    w.requires_grad_(True)
    out = gen(w)
    out.square().mean().backward()
    assert rel_err(out.detach(), skips[32]) <= 1e-4 and w.grad.abs().amax() > 0


def test_full_generator_matches_reference(e4e, full_run):
    w, skips = full_run
    with torch.no_grad():
        raw = e4e.generator(w)  # unclamped: saturated pixels would hide errors
    assert raw.shape == (1, 3, 1024, 1024)
    assert rel_err(raw, skips[1024]) <= 1e-4


def test_preview_is_the_full_runs_skip_image_and_costs_less(e4e, full_run):
    w, skips = full_run
    for size in (64, 256):
        preview = e4e.synthesize(w[0], size=size)  # (18,512) accepted
        assert preview.shape == (1, 3, size, size) and preview.dtype == torch.float32
        assert preview.min() >= -1 and preview.max() <= 1
        assert (skips[size].abs() > 1).any()  # so the clamp is exercised
        assert rel_err(preview, skips[size].clamp(-1, 1)) <= 1e-4
    # the cost, counted on the meta device (same forward code, no arithmetic): deterministic,
    # unlike wall time on a shared CI box
    with torch.device("meta"):
        generator, w_meta = Generator(1024).requires_grad_(False), torch.empty(1, 18, 512)
    flops = {}
    for size in (64, 256, 1024):
        with FlopCounterMode(display=False) as counter:
            generator(w_meta, size=size)
        flops[size] = counter.get_total_flops()
    assert flops[256] < 0.7 * flops[1024] and flops[64] < 0.4 * flops[256]
    for bad in (3, 96, 2048):
        with pytest.raises(WPlusError, match="power of two"):
            e4e.synthesize(w, size=bad)


def test_bfloat16_generator_is_close_to_float32(e4e_weights, full_run):
    w, skips = full_run
    model = load_e4e(official_checkpoint(*e4e_weights), dtype=torch.bfloat16)
    image = model.synthesize(w, size=64)
    assert image.dtype == torch.float32
    assert rel_err(image, skips[64].clamp(-1, 1)) < 0.05


def test_invert_input_checks_and_resizing(e4e, monkeypatch):
    with pytest.raises(WPlusError, match="square"):
        e4e.invert(torch.zeros(1, 3, 256, 200))
    with pytest.raises(WPlusError, match=r"\[-1,1\]"):
        e4e.invert(torch.full((1, 3, 256, 256), 255.0))
    with pytest.raises(WPlusError, match=r"\(B,3,H,W\)"):
        e4e.invert(torch.zeros(1, 4, 256, 256))
    with pytest.raises(WPlusError, match=r"\(B,18,512\)"):
        e4e.synthesize(torch.zeros(1, 14, 512))
    seen = []
    monkeypatch.setattr(e4e.encoder, "forward", lambda x: seen.append(x) or torch.zeros(len(x), 18, 512))
    big = torch.rand(2, 3, 512, 512, generator=torch.Generator().manual_seed(3)) * 2 - 1
    w = e4e.invert(big)
    expected = torch.nn.functional.interpolate(big, size=(256, 256), mode="bicubic", antialias=True)
    assert torch.equal(w, e4e.latent_avg.expand(2, 18, 512))
    assert seen[0].shape == (2, 3, 256, 256) and torch.allclose(seen[0], expected, atol=1e-6)
    e4e.invert(expected[0])  # (3,H,W) accepted
    assert seen[1].shape == (1, 3, 256, 256) and torch.equal(seen[1], expected[:1])


def test_invert_resizes_512_crops_like_the_reference(e4e, monkeypatch, reference_dir):
    """The reference shrinks the 512 px aligned crop to 256 with PIL bicubic before e4e."""
    import numpy as np
    from PIL import Image
    crop = Image.open(reference_dir / "alignment" / "wild_1_face0_official_aligned512.png").convert("RGB")
    want = np.asarray(crop.resize((256, 256), Image.Resampling.BICUBIC), dtype=np.float64)
    seen = []
    monkeypatch.setattr(e4e.encoder, "forward", lambda x: seen.append(x) or torch.zeros(len(x), 18, 512))
    e4e.invert(torch.from_numpy(np.array(crop)).permute(2, 0, 1)[None].float() / 127.5 - 1)
    got = ((seen[0][0].permute(1, 2, 0).double() + 1) * 127.5).clamp(0, 255).numpy()
    psnr = 10 * np.log10(255.0 ** 2 / ((got - want) ** 2).mean())
    assert psnr > 50, psnr


# ----------------------------------------------------------------------------- refusals

def _refused(path, *patterns):
    with pytest.raises(WPlusError) as info:
        load_e4e(path)
    message = str(info.value)
    assert str(path) in message, message
    for pattern in patterns:
        assert pattern in message, message
    return message


def test_empty_and_truncated_files_are_refused(tmp_path):
    empty = tmp_path / "empty_e4e.pt"
    empty.write_bytes(b"")
    _refused(empty, "empty")
    whole = tmp_path / "whole.pt"
    torch.save({"state_dict": tiny_state_dict(), "latent_avg": torch.zeros(18, 512), "opts": {}}, whole)
    data = whole.read_bytes()
    truncated = tmp_path / "half_e4e.pt"
    truncated.write_bytes(data[: len(data) // 2])
    _refused(truncated, "truncated")


def test_psp_encoder_checkpoint_is_refused(tmp_path):
    path = tmp_path / "psp_ffhq_encode.pt"
    torch.save({"state_dict": tiny_state_dict(), "latent_avg": torch.zeros(18, 512),
                "opts": {"encoder_type": "GradualStyleEncoder", "stylegan_size": 1024}}, path)
    _refused(path, "pSp", "GradualStyleEncoder")


def test_key_mismatch_names_missing_and_unexpected_keys(tmp_path):
    sd = tiny_state_dict()
    for k in [k for k in sd if k.startswith(("encoder.latlayer", "encoder.styles.17."))]:
        del sd[k]
    sd["encoder.output_layer_2.0.weight"] = torch.zeros(512)
    sd["encoder.input_layer.0.weight"] = torch.zeros(64, 19, 3, 3)  # a 19-channel pSp input
    path = tmp_path / "other_encoder.pt"
    torch.save({"state_dict": sd, "latent_avg": torch.zeros(18, 512), "opts": {}}, path)
    msg = _refused(path, "not an e4e_ffhq_encode checkpoint", "missing", "unexpected", "wrong shape")
    assert "encoder.latlayer1.*" in msg and "encoder.styles.17.*" in msg
    assert "encoder.output_layer_2.*" in msg and "(64, 19, 3, 3)" in msg


def test_other_stylegan_size_is_refused(tmp_path):
    sd = tiny_state_dict(256)
    path = tmp_path / "e4e_256.pt"
    torch.save({"state_dict": sd, "latent_avg": torch.zeros(14, 512), "opts": {}}, path)
    _refused(path, "256 px", "1024")


def test_missing_latent_avg_is_refused(tmp_path):
    path = tmp_path / "no_avg.pt"
    torch.save({"state_dict": tiny_state_dict(), "opts": {"start_from_latent_avg": True}}, path)
    _refused(path, "latent_avg")


def test_adapter_file_is_recognised_as_such(tmp_path):
    path = tmp_path / "wplus_adapter.bin"
    torch.save({"w_proj": {"proj.weight": torch.zeros(2, 2)}, "wplus_adapter": {"1.to_k_wplus.weight": torch.zeros(2, 2)}}, path)
    _refused(path, "W+ adapter")


def test_non_plain_opts_are_refused(tmp_path):
    path = tmp_path / "namespace_opts.pt"
    torch.save({"state_dict": {"encoder.x": torch.zeros(1)}, "opts": argparse.Namespace(a=1)}, path)
    _refused(path, "refused")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_e4e.pt"
    torch.save({"state_dict": tiny_state_dict(), "latent_avg": torch.zeros(18, 512),
                "opts": {"encoder_type": _RunsCode(marker)}}, path)
    assert not marker.exists()
    _refused(path, "refused")
    assert not marker.exists()
