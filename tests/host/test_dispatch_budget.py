"""How many operations the W+ branch dispatches per model call, counted through ComfyUI's real sampler.

On a fast GPU a UNet step is bound by dispatching operations, not by arithmetic (an H200 ran a
512 px SD1.5 step in fp16 as fast as a 1024 px one), so the W+ branch is budgeted in dispatched
aten operations: at most 3 per attention site, 48 per model call for one identity with CFG
(batch 2 = cond + uncond), 48 more per added identity, nothing allocated or cast per call.
Counts are deterministic, so they are asserted; speed itself lives in bench/run.py.
"""
import collections

import pytest
import torch
from torch.utils._python_dispatch import TorchDispatchMode

from tests.host import device
from tests.host.sd15 import random_sd15_patcher, shared_sd15_patcher
from tests.test_adapter import official_state_dict

SITES = 16
PER_SITE = 3
LATENT = (1, 4, 8, 8)


class CountOps(TorchDispatchMode):
    def __init__(self):
        super().__init__()
        self.ops = collections.Counter()

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        self.ops[str(func.overloadpacket).replace("aten.", "")] += 1
        return func(*args, **(kwargs or {}))


@pytest.fixture(scope="module")
def adapter(pack):
    from comfyui_wplus_adapter.wplus_core.adapter import load_wplus_adapter
    return load_wplus_adapter(official_state_dict(seed=3, std=0.05))


def sample_once(model):
    """One euler step with CFG: exactly one model call on a batch of 2 (cond + uncond)."""
    import comfy.sample
    g = torch.Generator().manual_seed(0)
    pos, neg = [[torch.randn(1, 77, 768, generator=g), {}]], [[torch.randn(1, 77, 768, generator=g), {}]]
    noise = torch.randn(LATENT, generator=g)
    return comfy.sample.sample(model, noise, 1, 5.0, "euler", "normal", pos, neg, torch.zeros(LATENT),
                               disable_pbar=True, seed=0)


def count(model):
    sample_once(model)  # warm: the first call of a run builds the W+ plan
    with torch.no_grad(), CountOps() as c:
        sample_once(model)
    return c.ops


_plain_counts = {}


def extra_ops(base, patched):
    if id(base) not in _plain_counts:  # the shared UNets live for the whole session
        _plain_counts[id(base)] = count(base)
    plain, ours = _plain_counts[id(base)], count(patched)
    diff = collections.Counter(ours)
    diff.subtract(plain)
    return sum(ours.values()) - sum(plain.values()), {k: v for k, v in diff.items() if v}, sum(plain.values())


def unet(dtype):
    return shared_sd15_patcher(str(dtype).replace("torch.", ""))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16])
def test_one_identity_costs_at_most_three_ops_per_site(comfy, adapter, dtype, record_property):
    from comfyui_wplus_adapter.nodes.wplus_patch import apply_wplus
    base = unet(dtype)
    # a window that is not the whole schedule, so the per-call sigma read is counted too
    patched = apply_wplus(base, adapter, torch.randn(1, 18, 512), 1.0, 0.0, 0.9)
    extra, by_op, plain = extra_ops(base, patched)
    record_property("unpatched_ops", plain)
    record_property("wplus_extra_ops", extra)
    # a CPU reads sigma without dispatching; a GPU copies it to the host once per call (_to_copy)
    budget = SITES * PER_SITE + (1 if device.DEVICE == "cuda" else 0)
    assert extra <= budget, f"{extra} extra ops per model call (budget {budget}): {by_op}"
    # nothing allocated, copied or cast per call: only the three kernels of each site
    assert set(by_op) <= {"bmm", "softmax", "baddbmm", "baddbmm_", "select", "_local_scalar_dense", "_to_copy"}, by_op
    assert by_op.get("bmm") == SITES and by_op.get("softmax") == SITES, by_op


def test_each_added_identity_costs_at_most_three_ops_per_site_with_masks_one_more(comfy, adapter):
    from comfyui_wplus_adapter.nodes.wplus_patch import apply_wplus
    base = unet(torch.float32)
    one = apply_wplus(base, adapter, torch.randn(1, 18, 512), 1.0, 0.0, 1.0)
    two = apply_wplus(one, adapter, torch.randn(1, 18, 512), 0.7, 0.0, 1.0)
    e1, _, _ = extra_ops(base, one)
    e2, by_op, _ = extra_ops(base, two)
    assert e1 <= SITES * PER_SITE and e2 - e1 <= SITES * PER_SITE, (e1, e2, by_op)
    mask = torch.zeros(1, 64, 64)
    mask[:, :, :32] = 1
    masked = apply_wplus(base, adapter, torch.randn(1, 18, 512), 1.0, 0.0, 1.0, mask)
    em, by_op, _ = extra_ops(base, masked)
    assert em <= SITES * (PER_SITE + 1), (em, by_op)


def test_outside_the_window_costs_nothing_but_the_sigma_read(comfy, adapter):
    from comfyui_wplus_adapter.nodes.wplus_patch import apply_wplus
    base = unet(torch.float32)
    # the one step runs at sigma_max (percent 0): a window from 0.5 excludes it
    patched = apply_wplus(base, adapter, torch.randn(1, 18, 512), 1.0, 0.5, 1.0)
    extra, by_op, _ = extra_ops(base, patched)
    assert extra <= 2, by_op


def test_cond_and_uncond_in_separate_calls_build_nothing_per_call(comfy, adapter):
    """ComfyUI runs cond and uncond as separate model calls when they do not fit in one batch (low
    memory, areas, different ControlNets): the two batch layouts alternate, and each keeps its plan."""
    from comfyui_wplus_adapter.nodes.wplus_patch import apply_wplus
    base = shared_sd15_patcher("float32") if device.DEVICE == "cpu" else random_sd15_patcher()  # called directly
    patched = apply_wplus(base, adapter, torch.randn(1, 18, 512), 1.0, 0.0, 1.0)
    g = torch.Generator().manual_seed(0)
    x, ctx = torch.randn(LATENT, generator=g), torch.randn(1, 77, 768, generator=g)
    sigma = torch.full((1,), 5.0)

    def call(model, chunk):
        options = dict(model.model_options["transformer_options"], wrappers=model.wrappers,
                       cond_or_uncond=[chunk], sigmas=sigma)
        return base.model.apply_model(x, sigma, c_crossattn=ctx, transformer_options=options)

    with torch.no_grad():
        for chunk in (0, 1, 0, 1):  # both layouts seen
            call(patched, chunk)
        counts = []
        for model in (base, patched, base, patched):
            with CountOps() as c:
                call(model, 1 if len(counts) < 2 else 0)
            counts.append(sum(c.ops.values()))
    assert counts[1] - counts[0] <= SITES * PER_SITE and counts[3] - counts[2] <= SITES * PER_SITE, counts
    patch = patched.wrappers["apply_model"]["wplus_adapter"][0]
    assert len(patch._plans) == 2
