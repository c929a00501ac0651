"""PSFRGAN restoration (wplus_core.restoration): the official layout loads strictly, the numerics
equal an independent naive implementation (tests/psfrgan_reference.py), torch's eval-mode spectral
norm is what the stored vectors give, the ParseNet one-hot is the reference's, and every other
file is refused with a message naming it (never running pickled code)."""
from __future__ import annotations

import os
import shlex
from pathlib import Path

import pytest
import torch
import torch.nn.functional as F

import psfrgan_reference as ref
from wplus_core.errors import WPlusError
from wplus_core.restoration import (PSFRGAN, PSFRGenerator, SNConv2d, load_psfrgan, parse_onehot)

TSV = Path(__file__).resolve().parents[2] / "shared" / "formats" / "psfrgan_epoch15_net_G.state_dict.tsv"


def rel_err(a, b):
    return float((a.float() - b.float()).abs().max() / b.float().abs().max())


def random_guide(batch, size, seed=1, cell=16):
    """Images in [-1,1] and a blocky one-hot of 19 classes, like a face's parsing."""
    g = torch.Generator().manual_seed(seed)
    x = torch.rand(batch, 3, size, size, generator=g) * 2 - 1
    labels = torch.randint(0, 19, (batch, size // cell, size // cell), generator=g)
    onehot = F.one_hot(labels, 19).permute(0, 3, 1, 2).float()
    return x, onehot.repeat_interleave(cell, 2).repeat_interleave(cell, 3)


@pytest.fixture(scope="session")
def official_sd():
    return ref.official_state_dict(seed=0)


@pytest.fixture(scope="session")
def psfrgan_file(official_sd, tmp_path_factory):
    path = tmp_path_factory.mktemp("psfrgan") / "psfrgan_epoch15_net_G.pth"
    torch.save(official_sd, path)  # a bare state dict, as the official file is
    return path


@pytest.fixture(scope="session")
def model(psfrgan_file):
    return load_psfrgan(psfrgan_file)


# ----------------------------------------------------------------------------- layout and loading

def test_layout_equals_official_key_list(official_sd):
    if not TSV.is_file():
        pytest.skip(f"official key list not found at {TSV} (only on the project's dev machines)")
    official = {}
    for line in TSV.read_text().splitlines()[2:]:
        key, shape = line.split("\t")
        official[key] = tuple(int(s) for s in shape.strip("()").split(",") if s.strip())
    with torch.device("meta"):
        ours = {k: tuple(v.shape) for k, v in PSFRGenerator().state_dict().items()}
    assert list(ours) == list(official)        # same keys, in the order the official module saves them
    assert ours == official                    # same shapes
    built = {k: tuple(v.shape) for k, v in official_sd.items()}
    assert built == official                   # the test files are in the official layout too
    assert len(ours) == 221 and abs(sum(map(_numel, ours.values())) / 1e6 - 46.05) < 0.01


def _numel(shape):
    n = 1
    for s in shape:
        n *= s
    return n


def test_official_format_file_loads_strictly_with_all_values(model, official_sd):
    assert isinstance(model, PSFRGAN) and not model.training and not model.net.training
    assert model.dtype == torch.float32 and model.device == torch.device("cpu")
    loaded = model.net.state_dict()
    assert set(loaded) == set(official_sd)
    for k, v in official_sd.items():
        assert torch.equal(loaded[k], v), k
    assert not any(p.requires_grad for p in model.parameters())


def test_restore_runs_and_equals_the_naive_reference_at_512(model, official_sd):
    """The official configuration (512 px, 46 M parameters) in fp32, against the naive port."""
    x, onehot = random_guide(1, 512)
    out = model.restore(x, onehot)
    assert out.shape == (1, 3, 512, 512) and out.dtype == torch.float32
    assert torch.isfinite(out).all() and out.min() >= -1 and out.max() <= 1
    want = ref.generator(official_sd, x, onehot)
    assert want.std() > 0.1  # the random net does something measurable
    assert rel_err(out, want.clamp(-1, 1)) < 1e-5
    assert rel_err(model.net(x, onehot), want) < 1e-5


def test_small_configuration_equals_the_naive_reference_batched():
    """Every layer kind at a quick 32 px configuration, batch 2 (samples must not mix)."""
    sd = ref.official_state_dict(seed=3, out_size=32)
    net = PSFRGenerator(out_size=32)
    net.load_state_dict(sd, strict=True)
    net.eval()
    x, onehot = random_guide(2, 32, seed=4, cell=4)
    with torch.no_grad():
        got = net(x, onehot)
        single = net(x[1:], onehot[1:])
    want = ref.generator(sd, x, onehot)
    assert rel_err(got, want) < 1e-5
    assert rel_err(single, want[1:]) < 1e-5
    assert rel_err(got[0], got[1]) > 1e-2


def test_spectral_norm_is_torchs_eval_mode_with_the_stored_vectors():
    g = torch.Generator().manual_seed(7)
    conv = torch.nn.Conv2d(22, 64, 3, padding=1)
    torch.nn.utils.spectral_norm(conv)
    x = torch.randn(2, 22, 9, 9, generator=g)
    conv.train()
    conv(x)  # one power iteration: u, v now differ from their initial values
    conv.eval()
    sd = {k: v.clone() for k, v in conv.state_dict().items()}
    ours = SNConv2d(22, 64)
    ours.load_state_dict(sd, strict=True)
    with torch.no_grad():
        want = conv(x)
        got = ours(x)
    assert torch.equal(conv.weight_u, sd["weight_u"])  # eval mode did not iterate
    assert rel_err(got, want) < 1e-6
    # the stored vectors matter: a fully converged sigma would give a different result
    w = sd["weight_orig"].flatten(1)
    exact = F.conv2d(x, sd["weight_orig"] / torch.linalg.matrix_norm(w, 2), sd["bias"], padding=1)
    assert rel_err(got, exact) > 1e-6


def test_fp16_and_bf16_weights_load(official_sd):
    m = load_psfrgan({k: v.half() for k, v in official_sd.items()})
    assert m.dtype == torch.float32  # the default dtype is float32 whatever the file holds
    b = load_psfrgan(official_sd, dtype=torch.bfloat16)
    assert b.dtype == torch.bfloat16 and b.net.img_out.weight_v.dtype == torch.bfloat16


# ----------------------------------------------------------------------------- inputs and helpers

def test_restore_input_checks(model):
    x, onehot = random_guide(1, 512)
    with pytest.raises(WPlusError, match=r"\(B,3,512,512\)"):
        model.restore(x[:, :, :256, :256], onehot)
    with pytest.raises(WPlusError, match="one-hot"):
        model.restore(x, onehot[:, :18])
    with pytest.raises(WPlusError, match=r"\[-1,1\]"):
        model.restore(x * 127.5 + 127.5, onehot)


class FakeParser:
    """A FaceParser-shaped object around a tiny logit function (parse_onehot only needs these)."""

    def __init__(self, fn, name="parsenet"):
        self.name, self.fn = name, fn
        self.device, self.dtype = torch.device("cpu"), torch.float32

    def model(self, x):
        return self.fn(x), None


def test_parse_onehot_is_the_references_max_equality():
    g = torch.Generator().manual_seed(2)
    logits = torch.randn(2, 19, 512, 512, generator=g)
    logits[0, 3, 0, 0] = logits[0, 5, 0, 0] = 100.0   # a tie marks both classes, as the reference does
    parser = FakeParser(lambda x: logits)
    onehot = parse_onehot(parser, torch.zeros(2, 3, 512, 512))
    assert onehot.shape == (2, 19, 512, 512) and onehot.dtype == torch.float32
    assert torch.equal(onehot, (logits == logits.max(dim=1, keepdim=True)[0]).float())
    assert onehot[0, :, 0, 0].sum() == 2 and (onehot.sum(1) >= 1).all()
    with pytest.raises(WPlusError, match="parsenet"):
        parse_onehot(FakeParser(lambda x: logits, name="bisenet"), torch.zeros(2, 3, 512, 512))


def test_parse_onehot_with_the_packs_face_parser():
    """Through wplus_core.parsing.FaceParser (its model returns (logits, image) like ParseNet)."""
    from wplus_core.parsing import FaceParser

    class TinyParseNet(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = torch.nn.Conv2d(3, 19, 1)

        def forward(self, x):
            return self.conv(x), x

    torch.manual_seed(0)
    parser = FaceParser("parsenet", TinyParseNet().eval())
    x, _ = random_guide(1, 512)
    onehot = parse_onehot(parser, x)
    with torch.no_grad():
        logits = parser.model(x)[0]
    assert torch.equal(onehot.argmax(1), logits.argmax(1))
    assert torch.equal(onehot, (logits == logits.max(dim=1, keepdim=True)[0]).float())
    per_pixel = onehot.sum(1)
    assert (per_pixel >= 1).all() and (per_pixel == 1).float().mean() > 0.999  # rare exact ties


def test_restore_aligned_any_size_and_strength(model, monkeypatch):
    """Resizing to 512 and back, and the blend, with the generator replaced by a known function."""
    seen = []

    def fake_restore(images, onehot):
        seen.append((tuple(images.shape), tuple(onehot.shape)))
        return -images  # "restored" = the negative, so the blend is easy to check

    monkeypatch.setattr(model, "restore", fake_restore)
    parser = FakeParser(lambda x: torch.zeros(x.shape[0], 19, 512, 512))
    for size in (256, 512, 1024):
        smooth = torch.rand(2, 3, 8, 8, generator=torch.Generator().manual_seed(size)) * 1.6 - 0.8
        x = F.interpolate(smooth, size=(size, size), mode="bilinear", align_corners=False)
        full = model.restore_aligned(x, parser, strength=1.0)
        assert full.shape == x.shape
        none = model.restore_aligned(x, parser, strength=0.0)
        assert torch.equal(none, x)
        half = model.restore_aligned(x, parser, strength=0.5)
        assert torch.allclose(half, (x + full) / 2, atol=1e-6)
        if size == 512:
            assert torch.equal(full, -x)
        else:  # restored at 512, back at the input size: close to -x except for resampling
            assert 0 < (full + x).abs().max() < 0.02
    assert all(s == ((2, 3, 512, 512), (2, 19, 512, 512)) for s in seen)
    with pytest.raises(WPlusError, match="square"):
        model.restore_aligned(torch.zeros(1, 3, 512, 384), parser)


# ----------------------------------------------------------------------------- refusals

def _refused(path, *patterns):
    with pytest.raises(WPlusError) as info:
        load_psfrgan(path)
    message = str(info.value)
    assert str(path) in message, message
    for pattern in patterns:
        assert pattern in message, message
    return message


def test_empty_and_truncated_files_are_refused(tmp_path, psfrgan_file):
    empty = tmp_path / "psfrgan_epoch15_net_G.pth"
    empty.write_bytes(b"")
    _refused(empty, "empty")
    cut = tmp_path / "cut.pth"
    with open(psfrgan_file, "rb") as f:
        cut.write_bytes(f.read(4 << 20))
    _refused(cut, "truncated")


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return os.system, (f"touch {shlex.quote(str(self.marker))}",)


def test_pickle_that_would_run_code_is_refused_without_running_it(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil_psfrgan.pth"
    torch.save({"const_input": torch.zeros(1), "extra": _RunsCode(marker)}, path)
    assert not marker.exists()
    _refused(path, "refused", "never code")
    assert not marker.exists()


def test_parsenet_file_is_recognised(tmp_path):
    pytest.importorskip("facexlib")
    from facexlib.parsing.parsenet import ParseNet
    path = tmp_path / "parse_multi_iter_90000.pth"
    torch.save(ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(), path)
    _refused(path, "face-parsing net", "models/facexlib", "psfrgan_epoch15_net_G.pth")


@pytest.mark.parametrize("kind, pattern", [
    ("adapter", "W+ adapter"), ("e4e", "e4e checkpoint"), ("gfpgan", "BasicSR"),
    ("plain", "without spectral norm"), ("missing", "keys missing"), ("shape", "another shape"),
    ("nan", "NaN"), ("tensor", "not a dict"),
])
def test_other_files_are_refused_with_what_they_are(tmp_path, kind, pattern):
    # the official layout with one-element storages (stride 0): small files, real shapes
    with torch.device("meta"):
        shapes = {k: v.shape for k, v in PSFRGenerator().state_dict().items()}
    sd = {k: torch.full((1,), 0.5).expand(shape) for k, shape in shapes.items()}
    if kind == "adapter":
        data = {"w_proj": {"proj.weight": torch.zeros(2, 2)}, "wplus_adapter": {"1.to_k_wplus.weight": torch.zeros(2)}}
    elif kind == "e4e":
        data = {"state_dict": {"encoder.x": torch.zeros(1)}, "latent_avg": torch.zeros(18, 512)}
    elif kind == "gfpgan":
        data = {"params_ema": {"conv_body_first.weight": torch.zeros(1)}}
    elif kind == "plain":  # spectral norm folded into plain weights
        data = {}
        for k, v in sd.items():
            if k.endswith(".weight_orig"):
                data[k[:-5]] = v
            elif not k.endswith((".weight_u", ".weight_v")):
                data[k] = v
    elif kind == "missing":
        data = {k: v for k, v in sd.items() if not k.startswith("body.4.")}
    elif kind == "shape":
        data = dict(sd, const_input=torch.zeros(1, 512, 16, 16))
    elif kind == "nan":
        bad = torch.zeros(3)
        bad[0] = float("nan")
        data = dict(sd, **{"img_out.bias": bad})
    else:
        data = torch.zeros(3)
    path = tmp_path / f"{kind}.pth"
    torch.save(data, path)
    msg = _refused(path, pattern)
    if kind == "missing":
        assert "body.4." in msg


def test_module_prefix_and_safetensors_copy_load(tmp_path, official_sd):
    from safetensors.torch import save_file
    m = load_psfrgan({f"module.{k}": v for k, v in official_sd.items()})
    assert torch.equal(m.net.const_input, official_sd["const_input"])
    path = tmp_path / "psfrgan.safetensors"
    save_file({k: v.contiguous() for k, v in official_sd.items()}, str(path))
    assert torch.equal(load_psfrgan(path).net.head[0].weight_u, official_sd["head.0.weight_u"])
