"""Half precision (float16, bfloat16) against float32 on the same random weights, on the CPU.

What a GPU user runs: the folded W+ branch in the UNet's dtype (fp16 or bf16), e4e with the
loader's "auto" precision (fp16 on CUDA) and StyleGAN previews in that dtype. A dtype slip (a step
that should stay float32 rounded to half, the wrong half type, an overflow) shows here on any
machine; bench/gpu_check.py runs the same paths on CUDA.

Bounds are in units of the format's unit roundoff u (fp16: 2^-11 = 4.9e-4, bf16: 2^-8 = 3.9e-3),
measured as max|half - exact| / max|exact| unless said otherwise; each test says why its bound
holds. A bound of k*u still catches the wrong half type: bf16's u is 8x fp16's.

torch 2.14 on the CPU runs every op used here in fp16 and bf16 (convolutions, transposed and
depthwise convolutions, batch norm, PReLU, SDPA, bilinear resizes, matmuls): no kernel is
missing. Without AVX512-FP16/AMX, though (this project's 2-core AVX2 machines), oneDNN does not
take half-precision convolutions and PyTorch falls back to its reference kernels (depthwise ones
loop per channel): 10-30x slower than fp32. So e4e is inverted from 64 px input (its 24 residual
units, FPN and all 18 style heads still run; the style heads reduce to 1x1 from any input size)
and previews stop at 8 px (the constant input, the first styled conv and ToRGB, then one full
level: upsampling modulated conv + blur, styled conv, ToRGB with the skip upsample; every layer up
to 32 px has the same 512 channels, and the finer levels repeat these layers with fewer).
"""
import pytest
import torch

from tests.e4e_reference import official_checkpoint, random_e4e_weights
from tests.test_adapter import official_state_dict
from wplus_core import load_e4e, load_wplus_adapter
from wplus_core.adapter import SITES, FoldedSite, SiteWeights, wplus_attention
from wplus_core.e4e import model as e4e_model

HALF = [torch.float16, torch.bfloat16]
U = {torch.float16: 2.0 ** -11, torch.bfloat16: 2.0 ** -8}
E4E_TEST_INPUT = 64   # px fed to the encoder (see the module docstring)
PREVIEW = 8           # px of the preview checked here


def rel_max(a, b):
    return ((a.double() - b.double()).abs().max() / b.double().abs().max()).item()


def rel_rms(a, b):
    return ((a.double() - b.double()).pow(2).mean().sqrt() / b.double().pow(2).mean().sqrt()).item()


def ids(dtype):
    return str(dtype).replace("torch.", "")


# ----------------------------------------------------------------------------- W+ branch

@pytest.fixture(scope="module")
def adapter():
    # std 0.05 makes the W+ scores reach |s| ~ 5-10 (checked below): a peaked 4-way softmax, the
    # regime where rounding the scores matters (the error of exp grows with |s| * u)
    return load_wplus_adapter(official_state_dict(seed=2, std=0.05))


@pytest.mark.parametrize("dtype", HALF, ids=ids)
def test_folded_branch_in_half_precision(adapter, dtype):
    """All 16 sites, 3 token sets (2 identities + uncond) selected per batch row, as the patch
    runs them in a fp16/bf16 UNet, against the reference maths in float64.

    The folded branch rounds four times in the half type (text_out, the scores, the softmax
    probabilities, the output; A, Vb are computed in float32 and rounded once) and the softmax
    itself runs in float32, so a few u is expected (1.2-3.3 u measured); 8 u bounds it. The
    straightforward form (wplus_attention, the bench's naive port) rounds q, k, v and the
    attention output too (1.1-2.5 u measured)."""
    u = U[dtype]
    g = torch.Generator().manual_seed(0)
    tokens = torch.cat([adapter.project(torch.randn(2, 18, 512, generator=g)), adapter.uncond_tokens()])
    rows = torch.tensor([0, 1, 2])
    peak = 0.0
    for s in SITES:
        sw = adapter.sites[s.block]
        exact_site = SiteWeights(*(t.double() for t in (sw.to_q, sw.to_k, sw.to_v)))
        x = torch.randn(3, 64, s.hidden, generator=g)
        exact = wplus_attention(x.double(), exact_site, tokens.double(), 8) - x.double()  # the branch
        folded = FoldedSite(sw, tokens, 8)
        peak = max(peak, float((x @ folded.A[0]).abs().max()))
        got = folded.to(None, dtype).select(rows).branch(x.to(dtype))
        assert got.dtype == dtype and torch.isfinite(got).all(), s
        assert rel_max(got, exact) <= 8 * u, (s, rel_max(got, exact) / u)
        assert rel_max(got, exact) > 0  # it really ran in the half type

        plain = wplus_attention(x.to(dtype), sw, tokens, 8)
        exact_out = exact + x.double()
        assert plain.dtype == dtype and torch.isfinite(plain).all(), s
        assert rel_max(plain, exact_out) <= 8 * u, (s, rel_max(plain, exact_out) / u)
    assert peak >= 4, f"scores only reach {peak:.2f}: the test would not see score rounding"


@pytest.mark.parametrize("dtype", HALF, ids=ids)
@pytest.mark.parametrize("with_scratch", [True, False], ids=["eager", "functional"])
def test_sampling_path_in_half_precision(adapter, dtype, with_scratch):
    """What sampling runs (``add_branch``, both its eager form with scratch buffers and the
    functional form torch.compile traces): the text output plus the branch, the softmax now in the
    half type too, per batch row as ``FoldedSite.rows`` lays them out, against float64.

    Compared on the branch (output minus the text output it was added to): one more rounding
    than the folded form above (the softmax output; the sum with the text output is one fused
    multiply-add), so 8 u still bounds it with room (measured on the 2-core CPU: 2.5 u fp16,
    2.8 u bf16, the same for both forms)."""
    from wplus_core.adapter import Scratch, add_branch
    u = U[dtype]
    g = torch.Generator().manual_seed(1)
    tokens = torch.cat([adapter.project(torch.randn(2, 18, 512, generator=g)), adapter.uncond_tokens()])
    rows = (0, 1, 2)
    worst = 0.0
    for s in SITES:
        sw = adapter.sites[s.block]
        exact_site = SiteWeights(*(t.double() for t in (sw.to_q, sw.to_k, sw.to_v)))
        x = torch.randn(3, 64, s.hidden, generator=g)
        exact = wplus_attention(x.double(), exact_site, tokens.double(), 8) - x.double()
        A, Vb = FoldedSite(sw, tokens, 8).rows(rows, None, dtype)
        xh = x.to(dtype)
        scratch = Scratch(3, 64, 8, None, dtype) if with_scratch else None
        got = add_branch(xh.clone(), xh, A, Vb, 8, scratch)
        assert got.dtype == dtype and torch.isfinite(got).all(), s
        branch = got.double() - xh.double()
        err = rel_max(branch, exact)
        worst = max(worst, err / u)
        assert 0 < err <= 8 * u, (s, err / u)
    print(f"add_branch {ids(dtype)} {'eager' if with_scratch else 'functional'}: worst {worst:.2f} u")
    assert worst > 0.1  # measured in u: a few


def test_folded_branch_fp16_scores_of_real_magnitude_do_not_overflow(adapter):
    """Large text-attention outputs (|text_out| ~ 100, beyond SD1.5's usual range) give scores of
    several hundred (870 here): far below fp16's 65504, and the float32 softmax keeps them finite."""
    s = SITES[8]
    sw = adapter.sites[s.block]
    tokens = adapter.project(torch.randn(1, 18, 512, generator=torch.Generator().manual_seed(1)))
    x = 100 * torch.randn(2, 16, s.hidden, generator=torch.Generator().manual_seed(2))
    folded = FoldedSite(sw, tokens, 8)
    got = folded.to(None, torch.float16).select(0).branch(x.half())
    want = folded.select(0).branch(x)
    assert torch.isfinite(got).all()
    # the softmax is saturated (one-hot) here: the output is one v row, exact to the output rounding
    assert rel_max(got, want) <= 8 * U[torch.float16]


# ----------------------------------------------------------------------------- e4e and previews

@pytest.fixture(scope="module")
def e4e_case():
    """Random official-format e4e weights, one aligned face, one W+ batch; float32 results."""
    enc, dec, latent_avg = random_e4e_weights(seed=21)
    ckpt = official_checkpoint(enc, dec, latent_avg)
    g = torch.Generator().manual_seed(3)
    face = torch.rand(1, 3, E4E_TEST_INPUT, E4E_TEST_INPUT, generator=g) * 2 - 1
    w = latent_avg + 0.5 * torch.randn(2, 18, 512, generator=g)
    model = load_e4e(ckpt)
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(e4e_model, "E4E_INPUT_SIZE", E4E_TEST_INPUT)
        w32 = model.invert(face)
    with torch.no_grad():
        raw32 = model.generator(w, size=PREVIEW)  # unclamped: saturated pixels would hide errors
    return {"ckpt": ckpt, "face": face, "w": w, "w32": w32, "raw32": raw32, "latent_avg": latent_avg}


@pytest.fixture(scope="module", params=HALF, ids=ids)
def half_model(request, e4e_case):
    return request.param, load_e4e(e4e_case["ckpt"], dtype=request.param)


def test_e4e_loads_in_half_precision_with_float32_latent_avg(half_model):
    dtype, model = half_model
    assert model.dtype == dtype
    assert model.encoder.body[0].res_layer[1].weight.dtype == dtype
    assert model.encoder.input_layer[1].num_batches_tracked.dtype == torch.int64
    assert model.latent_avg.dtype == torch.float32


def test_e4e_invert_in_half_precision(half_model, e4e_case):
    """E4E.invert as the node calls it. W+ = encoder(x) + latent_avg, the sum in float32, so the
    error is the encoder's, measured against its output codes (W+ minus latent_avg). The 24
    residual units each round their output once; the residual sums keep the error relative to
    the signal instead of compounding it, so a few u is expected (2-3 u measured at 64-256 px);
    8 u bounds it, which also catches the other half type."""
    dtype, model = half_model
    with pytest.MonkeyPatch.context() as mp:
        mp.setattr(e4e_model, "E4E_INPUT_SIZE", E4E_TEST_INPUT)
        w = model.invert(e4e_case["face"])
    assert w.dtype == torch.float32 and torch.isfinite(w).all()
    codes32 = e4e_case["w32"] - e4e_case["latent_avg"]
    err = rel_max(w - e4e_case["latent_avg"], codes32)
    assert 0 < err <= 8 * U[dtype], err / U[dtype]


def test_stylegan_preview_in_half_precision(half_model, e4e_case):
    """The generator in the half type on a batch of 2 (the batch-in-groups path). Each layer
    rounds its modulated weights, conv output, blur, noise add and activation once, and the skip
    sum adds up the levels; demodulation renormalises every layer, so the errors add rather than
    multiply: 1.5-3.6 u max and 1.6-2.8 u rms measured over seeds; bounds 10 u and 5 u. The
    float32 modulation matters here: the demodulation energy of a 512-channel 3x3 layer sums
    4608 squared weights times squared styles before its 1/4608 scale, past fp16's 65504 once
    the styles reach ~4 (the random weights are N(0,1), equalised at run time like the real ones)."""
    dtype, model = half_model
    u = U[dtype]
    with torch.no_grad():
        raw = model.generator(e4e_case["w"], size=PREVIEW).float()
    assert torch.isfinite(raw).all()
    assert 0 < rel_max(raw, e4e_case["raw32"]) <= 10 * u, rel_max(raw, e4e_case["raw32"]) / u
    assert rel_rms(raw, e4e_case["raw32"]) <= 5 * u, rel_rms(raw, e4e_case["raw32"]) / u
    # synthesize: the same image, clamped, float32
    image = model.synthesize(e4e_case["w"], size=PREVIEW)
    assert image.dtype == torch.float32 and torch.equal(image, raw.clamp(-1, 1))


def test_preview_styles_are_not_rounded_to_half_precision(half_model, e4e_case):
    """The modulation runs in float32, so W+ must reach it unrounded: rounding W+ to bf16 first
    (3 significant digits) would erase edits of a few thousandths. W+ and its half-rounded copy
    must therefore give different previews (with W+ cast to the half type they are identical)."""
    dtype, model = half_model
    w = e4e_case["w"][:1]
    rounded = w.to(dtype).float()
    assert not torch.equal(w, rounded)
    assert not torch.equal(model.synthesize(w, size=PREVIEW), model.synthesize(rounded, size=PREVIEW))
