"""ApplyWPlusAdapter through ComfyUI's real sampler vs an independent implementation of the reference.

One euler step returns the CFG-combined denoised prediction, so comparing sampler outputs compares
the patched model's predictions at that sigma.
"""
import math
import os

import pytest
import torch

from tests.host import device
from tests.host.sd15 import shared_sd15_patcher
from tests.test_adapter import official_state_dict

LATENT = (1, 4, 8, 8)
# The UNet's compute dtypes to compare in. On a CPU without WPLUS_TEST_DTYPE: float32 and true
# fp16/bf16 computation of the diffusion model (tests/host/sd15.py half_sd15_patcher), so a dtype
# slip or an fp16 overflow shows on any machine; on a GPU (bench/gpu_check.py) the one it asks for.
DTYPES = ([device.DTYPE_NAME] if device.DEVICE != "cpu" or "WPLUS_TEST_DTYPE" in os.environ
          else ["float32", "float16", "bfloat16"])


def unet(dtype_name):
    return shared_sd15_patcher(dtype_name)


@pytest.fixture(scope="module", params=DTYPES)
def base(comfy, request):
    """The sampling comparisons: in every dtype (half on a CPU runs slow reference kernels, so
    only the comparisons whose maths depends on the dtype take this fixture)."""
    return unet(request.param)


@pytest.fixture(scope="module")
def base1(comfy):
    """Composition and behaviour tests: the first dtype only (float32 on a CPU)."""
    return unet(DTYPES[0])


def compute_dtype(model):
    m = model.model
    return m.manual_cast_dtype if getattr(m, "manual_cast_dtype", None) is not None else m.get_dtype()


_record = [lambda *a: None]


@pytest.fixture(autouse=True)
def _recorder(record_property):
    _record[0] = record_property  # measured errors go to the junit report (bench/gpu_check.py)


def assert_matches_reference(got, want, plain_fn, dtype=torch.float32):
    """float32: the patched prediction equals the reference's to 1e-4 of the output.

    Half precision: the reference runs the same UNet and the same text attention kernel in the
    same dtype and computes the W+ branch in float32; the pack computes it in the half type (1-3 u,
    tests/test_half_precision.py), and the UNet's own rounding of everything after it differs
    between the two runs. Whatever the size of that noise, it must stay below a tenth of what the
    W+ branch changes (reference vs unpatched), or the comparison could not tell a right W+ effect
    from a wrong one. Every prediction must be finite first: NaN compared with NaN proves nothing."""
    name = str(dtype).replace("torch.", "")
    for what, value in (("W+ patched", got), ("reference", want)):
        assert torch.isfinite(value).all(), f"the {what} prediction in {name} is not finite"
    err = rel(got, want)
    _record[0]("rel_error_vs_reference", err)
    if dtype == torch.float32:
        assert err < 1e-4
        return
    plain = plain_fn()
    assert torch.isfinite(plain).all(), (f"the unpatched model's prediction in {name} is not finite: "
                                         "the test UNet overflows, so no comparison can mean anything")
    effect = rel(want, plain)
    _record[0]("wplus_effect", effect)
    assert err <= 0.1 * effect, f"error {err:.3g} vs W+ effect {effect:.3g} ({name})"


@pytest.fixture(scope="module")
def adapter(pack):
    from comfyui_wplus_adapter.wplus_core.adapter import load_wplus_adapter
    return load_wplus_adapter(official_state_dict(seed=3, std=0.05))


@pytest.fixture(scope="module")
def apply(pack):
    from comfyui_wplus_adapter.nodes.wplus_patch import apply_wplus
    return apply_wplus


def conds(batch=1, seed=0):
    g = torch.Generator().manual_seed(seed)
    pos = torch.randn(batch, 77, 768, generator=g)
    neg = torch.randn(batch, 77, 768, generator=g)
    return [[pos, {}]], [[neg, {}]]


def run(model, cfg, batch=1, seed=0):
    import comfy.sample
    pos, neg = conds(batch, seed)
    latent = torch.zeros(batch, *LATENT[1:])
    noise = torch.randn(latent.shape, generator=torch.Generator().manual_seed(seed + 1))
    return comfy.sample.sample(model, noise, 1, cfg, "euler", "normal", pos, neg, latent,
                               disable_pbar=True, seed=seed)


# ---- the reference maths, written plainly (independent of wplus_core's folded form)
def plain_attention(q, k, v, heads):
    b, n, c = q.shape
    d = c // heads
    q = q.reshape(b, n, heads, d).permute(0, 2, 1, 3)
    k = k.reshape(b, -1, heads, d).permute(0, 2, 1, 3)
    v = v.reshape(b, -1, heads, d).permute(0, 2, 1, 3)
    w = torch.softmax(q @ k.transpose(-1, -2) / math.sqrt(d), dim=-1)
    return (w @ v).permute(0, 2, 1, 3).reshape(b, n, c)


class ReferenceSite:
    """text_out + sum_i weight_i * mask_i * attn(text_out Wq^T, tok Wk^T, tok Wv^T) per batch row."""

    def __init__(self, site_sd, identities, inner=None):
        self.sd, self.identities, self.inner = site_sd, identities, inner

    def __call__(self, q, k, v, extra):
        heads = extra["n_heads"]
        if self.inner:
            text = self.inner(q, k, v, extra)
        elif q.dtype != torch.float32:  # half: the pack's text-attention kernel, so only W+ differs
            import comfy.ldm.modules.attention as attention
            text = attention.optimized_attention(q, k, v, heads, attn_precision=extra.get("attn_precision"),
                                                 transformer_options=extra)
        else:
            text = plain_attention(q, k, v, heads)
        t32 = text.float()  # the W+ branch in float32 (a no-op in float32), added in the UNet's dtype
        chunks = extra["cond_or_uncond"]
        per = q.shape[0] // len(chunks)
        out = text
        for cond_tokens, uncond_tokens, weight, mask in self.identities:
            toks = []
            for c in chunks:
                t = uncond_tokens if c == 1 else cond_tokens
                toks.append(t.expand(per, -1, -1) if t.shape[0] == 1 else t)
            toks = torch.cat(toks).to(t32)
            qw = t32 @ self.sd["q"].to(t32).T
            kw, vw = toks @ self.sd["k"].to(t32).T, toks @ self.sd["v"].to(t32).T
            branch = weight * plain_attention(qw, kw, vw, heads)
            if mask is not None:
                hw = text.shape[1]
                H, W = extra["original_shape"][-2:]
                f = int(round(math.sqrt(H * W / hw)))
                m = torch.nn.functional.interpolate(mask[:, None].to(t32), size=(H // f, W // f), mode="bilinear")
                branch = branch * m.reshape(m.shape[0], hw, 1).repeat(len(chunks), 1, 1) if m.shape[0] > 1 \
                    else branch * m.reshape(1, hw, 1)
            out = out + branch.to(text.dtype)
        return out


def reference_model(base, sd, identities, inner_patch=None):
    from comfyui_wplus_adapter.wplus_core.adapter import SITES
    m = base.clone()
    for s in SITES:
        site_sd = {p: sd["wplus_adapter"][f"{s.index}.to_{p}_wplus.weight"] for p in "qkv"}
        m.set_model_attn2_replace(ReferenceSite(site_sd, identities, inner_patch), s.block[0], s.block[1])
    return m


def project(sd, w):
    p = sd["w_proj"]
    toks = [w[:, a:b].reshape(w.shape[0], -1) @ p[f"proj_{i}.weight"].T
            for i, (a, b) in enumerate(((0, 4), (4, 8), (8, 12), (12, 18)))]
    return torch.nn.functional.layer_norm(torch.stack(toks, 1), (768,), p["norm.weight"], p["norm.bias"])


SD = official_state_dict(seed=3, std=0.05)


def rel(a, b):
    return ((a - b).abs().max() / b.abs().max()).item()


@pytest.mark.parametrize("cfg", [1.0, 5.0])
def test_patched_prediction_equals_reference(base, adapter, apply, cfg):
    _record[0]("unet_patcher", type(base).__name__)
    _record[0]("unet_dtype", str(base.model.get_dtype()))
    _record[0]("unet_compute_dtype", str(base.model.manual_cast_dtype or base.model.get_dtype()))
    if device.DEVICE == "cuda":  # the class ComfyUI's loader picks (ModelPatcherDynamic under dynamic VRAM)
        assert type(base) is device.core_model_patcher()
    w = torch.randn(1, 18, 512)
    got = run(apply(base, adapter, w, 0.8, 0.0, 1.0), cfg)
    ident = (project(SD, w), project(SD, torch.zeros(1, 18, 512)), 0.8, None)
    want = run(reference_model(base, SD, [ident]), cfg)
    plain = run(base, cfg)
    assert_matches_reference(got, want, lambda: plain, compute_dtype(base))
    assert rel(got, plain) > 1e-3  # the adapter really changed the prediction


def test_weight_zero_and_outside_window_are_exactly_unpatched(base1, adapter, apply):
    w = torch.randn(1, 18, 512)
    plain = run(base1, 5.0)
    assert torch.equal(run(apply(base1, adapter, w, 0.0, 0.0, 1.0), 5.0), plain)
    # one step runs at sigma_max (percent 0): a window starting at 0.5 excludes it
    assert torch.equal(run(apply(base1, adapter, w, 1.0, 0.5, 1.0), 5.0), plain)


def test_batch_maps_one_to_one_and_broadcasts(base, adapter, apply):
    w = torch.randn(2, 18, 512)
    got = run(apply(base, adapter, w, 1.0, 0.0, 1.0), 4.0, batch=2)
    ident = (project(SD, w), project(SD, torch.zeros(1, 18, 512)), 1.0, None)
    want = run(reference_model(base, SD, [ident]), 4.0, batch=2)
    plain = lambda: run(base, 4.0, batch=2)  # noqa: E731 (only run in half precision)
    assert_matches_reference(got, want, plain, compute_dtype(base))
    one = run(apply(base, adapter, w[:1], 1.0, 0.0, 1.0), 4.0, batch=2)
    ident1 = (project(SD, w[:1]), project(SD, torch.zeros(1, 18, 512)), 1.0, None)
    assert_matches_reference(one, run(reference_model(base, SD, [ident1]), 4.0, batch=2), plain, compute_dtype(base))


def test_wplus_batch_mismatch_is_a_clear_error(base1, adapter, apply):
    from comfyui_wplus_adapter.wplus_core.errors import WPlusError
    with pytest.raises(WPlusError, match="WPLUS batch has 3"):
        run(apply(base1, adapter, torch.randn(3, 18, 512), 1.0, 0.0, 1.0), 4.0, batch=2)


class IPAdapterLike:
    """Another pack's attn2 replace patch: plain attention plus its own extra-token attention."""

    def __init__(self, seed=7):
        g = torch.Generator().manual_seed(seed)
        self.k = torch.randn(1, 4, 1280, generator=g)
        self.v = torch.randn(1, 4, 1280, generator=g)

    def __call__(self, q, k, v, extra):
        heads = extra["n_heads"]
        c = q.shape[-1]
        kk = self.k[..., :c].to(q).expand(q.shape[0], -1, -1)
        vv = self.v[..., :c].to(q).expand(q.shape[0], -1, -1)
        return plain_attention(q, k, v, heads) + 0.5 * plain_attention(q, kk, vv, heads)


def with_ipa(model, ipa):
    from comfyui_wplus_adapter.wplus_core.adapter import SITES
    m = model.clone()
    for s in SITES:
        m.set_model_attn2_replace(ipa, s.block[0], s.block[1])
    return m


def test_composes_with_ip_adapter_style_patch_in_both_orders(base1, adapter, apply):
    ipa = IPAdapterLike()
    w = torch.randn(1, 18, 512)
    before = run(apply(with_ipa(base1, ipa), adapter, w, 1.0, 0.0, 1.0), 5.0)
    after = run(with_ipa(apply(base1, adapter, w, 1.0, 0.0, 1.0), ipa), 5.0)
    ident = (project(SD, w), project(SD, torch.zeros(1, 18, 512)), 1.0, None)
    want = run(reference_model(base1, SD, [ident], inner_patch=ipa), 5.0)
    ipa_only = run(with_ipa(base1, ipa), 5.0)
    assert_matches_reference(before, want, lambda: ipa_only, compute_dtype(base1))
    assert_matches_reference(after, want, lambda: ipa_only, compute_dtype(base1))
    assert rel(before, ipa_only) > 1e-3  # both stay active


def test_lora_patched_weights_compose(base1, adapter, apply):
    key = "diffusion_model.input_blocks.1.1.transformer_blocks.0.attn2.to_k.weight"
    lora = base1.clone()
    delta = torch.randn(320, 768, generator=torch.Generator().manual_seed(5)) * 0.05
    lora.add_patches({key: (delta,)}, 1.0)
    w = torch.randn(1, 18, 512)
    ident = (project(SD, w), project(SD, torch.zeros(1, 18, 512)), 1.0, None)
    got_after = run(apply(lora, adapter, w, 1.0, 0.0, 1.0), 5.0)   # LoRA before W+
    lora2 = apply(base1, adapter, w, 1.0, 0.0, 1.0)
    lora2.add_patches({key: (delta,)}, 1.0)                        # LoRA after W+
    got_before = run(lora2, 5.0)
    want = run(reference_model(lora, SD, [ident]), 5.0)
    plain = lambda: run(lora, 5.0)  # noqa: E731
    assert_matches_reference(got_after, want, plain, compute_dtype(base1))
    assert_matches_reference(got_before, want, plain, compute_dtype(base1))


def test_two_identities_with_masks(base, adapter, apply):
    wa, wb = torch.randn(1, 18, 512), torch.randn(1, 18, 512)
    ma = torch.zeros(1, 64, 64)
    ma[:, :, :32] = 1
    mb = 1 - ma
    m = apply(apply(base, adapter, wa, 1.0, 0.0, 1.0, ma), adapter, wb, 0.7, 0.0, 1.0, mb)
    zero = project(SD, torch.zeros(1, 18, 512))
    want = run(reference_model(base, SD, [(project(SD, wa), zero, 1.0, ma), (project(SD, wb), zero, 0.7, mb)]), 5.0)
    assert_matches_reference(run(m, 5.0), want, lambda: run(base, 5.0), compute_dtype(base))


def test_no_mutation_and_no_pile_up(base1, adapter, apply):
    import copy
    options_before = copy.deepcopy(base1.model_options)
    wrappers_before = {k: {kk: list(vv) for kk, vv in v.items()} for k, v in base1.wrappers.items()}
    w = torch.randn(1, 18, 512)
    first = run(apply(base1, adapter, w, 1.0, 0.0, 1.0), 5.0)
    run(apply(base1, adapter, w, 0.5, 0.0, 1.0), 5.0)
    third = run(apply(base1, adapter, w, 1.0, 0.0, 1.0), 5.0)
    assert torch.equal(first, third)
    assert base1.model_options == options_before
    assert {k: {kk: list(vv) for kk, vv in v.items()} for k, v in base1.wrappers.items()} == wrappers_before
    # no weight copies: the patch holds the adapter's own tensors, and downstream clones share the patch
    patched = apply(base1, adapter, w, 1.0, 0.0, 1.0)
    patch = patched.wrappers["apply_model"]["wplus_adapter"][0]
    assert patch.sites is adapter.sites
    assert patched.clone().wrappers["apply_model"]["wplus_adapter"][0] is patch


@pytest.mark.parametrize("arch", ["SDXL", "SD20"])
def test_non_sd15_models_are_refused(comfy, adapter, apply, arch):
    import comfy.model_patcher
    import comfy.supported_models as sm
    from comfyui_wplus_adapter.wplus_core.errors import WPlusError
    unet = {"SDXL": {"model_channels": 320, "use_linear_in_transformer": True, "transformer_depth": [0, 0, 2, 2, 10, 10],
                     "context_dim": 2048, "adm_in_channels": 2816, "use_temporal_attention": False},
            "SD20": {"context_dim": 1024, "model_channels": 320, "use_linear_in_transformer": True,
                     "adm_in_channels": None, "use_temporal_attention": False}}[arch]
    # ComfyUI's real config class for that family (real checkpoints: tests/e2e/test_bad_inputs.py)
    config = getattr(sm, arch)(dict(unet))
    model = comfy.model_patcher.ModelPatcher(type("M", (torch.nn.Module,), {})(), load_device=torch.device("cpu"),
                                             offload_device=torch.device("cpu"))
    model.model.model_config = config
    with pytest.raises(WPlusError, match="not an SD1.5"):
        apply(model, adapter, torch.randn(1, 18, 512), 1.0, 0.2, 1.0)


@pytest.mark.parametrize("with_mask", [False, True])
def test_kohya_deep_shrink_inside_the_unet(base1, adapter, apply, with_mask):
    """ComfyUI's PatchModelAddDownscale rescales the latent inside the UNet, so some sites see a
    token count the W+ plan did not foresee: the branch still runs there (mask resized too)."""
    from comfy_extras.nodes_model_downscale import PatchModelAddDownscale
    shrink = lambda m: PatchModelAddDownscale.execute(m, 1, 1.5, 0.0, 1.0, True, "bicubic", "bicubic").args[0]  # noqa: E731
    g = torch.Generator().manual_seed(4)
    w = torch.randn(1, 18, 512, generator=g)
    mask = torch.ones(1, 64, 64) if with_mask else None
    lat = (1, 4, 24, 24)

    def run_big(model):
        import comfy.sample
        pos, neg = conds(1, 0)
        noise = torch.randn(lat, generator=torch.Generator().manual_seed(1))
        return comfy.sample.sample(model, noise, 1, 5.0, "euler", "normal", pos, neg, torch.zeros(lat),
                                   disable_pbar=True, seed=0)

    plain = run_big(shrink(base1))
    got = run_big(shrink(apply(base1, adapter, w, 1.0, 0.0, 1.0, mask)))
    assert torch.isfinite(got).all() and rel(got, plain) > 1e-3
    if with_mask:  # an all-white mask is no mask
        assert rel(got, run_big(shrink(apply(base1, adapter, w, 1.0, 0.0, 1.0)))) < 1e-5
