"""State and load on the real ComfyUI server: patch hygiene, shared upstream models, interrupts,
a 50-prompt soak with a memory check, and W+ Save never overwriting.

Results are compared as latents (SaveLatent files) with torch.equal: sampling on the CPU is
deterministic, so "the same" means bit for bit. ComfyUI caches node outputs by their inputs; to
make a repeated run really run again, each run reads its W+ from a differently named copy of the
same file (``copies``), which changes the signature of W+ Load, Apply and KSampler but not the
numbers, while the checkpoint loader stays cached and its model object is shared, as in real use.
"""
from __future__ import annotations

import json
import re
import time
import urllib.request

import pytest
import torch

from cli.comfy_server import ExecutionFailed, PromptRejected
from tests.e2e.reliability import (CHECKPOINT, assert_same, cached_nodes, face_graph, run, sampling_graph, saved_latent,
                                   vm_rss_kib, wplus_graph)
from wplus_core.latents import save_wplus

N_COPIES = 12


@pytest.fixture(scope="module")
def copies(server, photos):
    """Names (W+ Load) of N_COPIES identical W+ files, plus a damaged one for the soak."""
    folder = server.output_dir / "wplus"
    folder.mkdir(parents=True, exist_ok=True)
    w = torch.randn(1, 18, 512, generator=torch.Generator().manual_seed(5))
    names = []
    for k in range(N_COPIES):
        name = f"zz_state_{k:02d}.safetensors"
        save_wplus(folder / name, w)
        names.append(name)
    bad = w.clone()
    bad[0, 3, 3] = float("nan")
    torch.save(bad, folder / "zz_state_nan.pt")
    return names


@pytest.fixture(scope="module")
def reference(server, copies):
    """Fresh runs: the plain model, the adapter at weight 1.0 and at 0.5 (filled by the first test)."""
    return {}


def _latent(server, latent_file, prefix, shared_model=True, **kw):
    """A sampling run's latent; asserts it really sampled and (shared_model) that the checkpoint's
    model object came from ComfyUI's cache, i.e. is the one earlier runs used."""
    g, ids = sampling_graph(latent_file, prefix=prefix, **kw)
    entry = run(server, g.prompt)
    cached = cached_nodes(entry)
    assert ids["sampler"] not in cached and ids.get("apply") not in cached, cached
    if shared_model:
        assert ids["ckpt"] in cached, "the checkpoint was loaded again: the model object is not shared"
    return saved_latent(server, entry, ids["save"])


def test_patch_hygiene_weight_1_then_half_then_1(server, copies, reference):
    """Same graph with weight 1.0, 0.5, 1.0: the third result equals the first exactly, so nothing
    of the 0.5 run stayed on the shared model, the adapter or the patch objects."""
    reference["plain"] = _latent(server, None, "reliability/state_plain", shared_model=False)
    reference[1.0] = first = _latent(server, copies[0], "reliability/state_w1", weight=1.0)
    reference[0.5] = half = _latent(server, copies[1], "reliability/state_w05", weight=0.5)
    third = _latent(server, copies[2], "reliability/state_w1_again", weight=1.0)
    assert torch.isfinite(first).all()
    assert (half - first).abs().max() > 1e-3 and (first - reference["plain"]).abs().max() > 1e-3
    assert_same(third, first, "weight 1.0 after a weight 0.5 run vs the first weight 1.0 run")


def test_one_model_output_feeds_two_branches(server, copies, reference):
    """One checkpoint output -> Apply(weight 1.0) and Apply(weight 0.5) and no adapter, in one
    prompt: every branch equals its own fresh single-branch run."""
    assert reference, "needs test_patch_hygiene_weight_1_then_half_then_1"
    g, one = sampling_graph(copies[3], weight=1.0, prefix="reliability/branch_w1")
    _, half = sampling_graph(copies[4], weight=0.5, prefix="reliability/branch_w05", g=g, ids=one)
    _, plain = sampling_graph(None, prefix="reliability/branch_plain", g=g, ids=one)
    assert len({one["apply"], half["apply"]}) == 2 and one["ckpt"] == half["ckpt"] == plain["ckpt"]
    entry = run(server, g.prompt)
    assert not {one["sampler"], half["sampler"], plain["sampler"]} & cached_nodes(entry)
    assert_same(saved_latent(server, entry, one["save"]), reference[1.0], "branch weight 1.0")
    assert_same(saved_latent(server, entry, half["save"]), reference[0.5], "branch weight 0.5")
    assert_same(saved_latent(server, entry, plain["save"]), reference["plain"], "branch without adapter")


def _post_interrupt(server, prompt_id):
    req = urllib.request.Request(server.url + "/interrupt", data=json.dumps({"prompt_id": prompt_id}).encode(),
                                 headers={"Content-Type": "application/json"})
    urllib.request.urlopen(req, timeout=30).read()


def test_interrupt_mid_sampling_then_next_run_equals_a_fresh_run(server, copies, reference):
    assert reference, "needs test_patch_hygiene_weight_1_then_half_then_1"
    steps = 40
    g, _ = sampling_graph(copies[5], weight=1.0, steps=steps, seed=99, prefix="reliability/interrupted")
    offset = len(server.log_text())
    prompt_id = server.queue(g.prompt)
    progress = re.compile(rf"\b([1-9]\d*)/{steps} \[")
    deadline = time.monotonic() + 600
    while not progress.search(server.log_text()[offset:]):  # tqdm: a sampling step is done
        assert time.monotonic() < deadline, "sampling did not start:\n" + server.log_tail()
        time.sleep(0.2)
    _post_interrupt(server, prompt_id)
    with pytest.raises(ExecutionFailed) as info:
        server.wait(prompt_id, timeout=600)
    kinds = [m[0] for m in info.value.entry["status"]["messages"]]
    assert "execution_interrupted" in kinds, kinds
    done = [int(n) for n in progress.findall(server.log_text()[offset:])]
    assert max(done) < steps, f"the prompt ran to the end ({max(done)}/{steps}) before the interrupt"
    again = _latent(server, copies[6], "reliability/after_interrupt", weight=1.0)
    assert_same(again, reference[1.0], "the run after the interrupt vs a fresh run")


# ------------------------------------------------------------------------------------- soak
def _soak_prompts(copies):
    """50 prompts, 10 kinds in turn; the first 5 already hold every valid kind. Each prompt
    differs from the others (strength, seed, weight...), so each one really runs. Every prompt
    names the checkpoint, as real workflows do, which keeps the loaded model in ComfyUI's cache."""
    def keep(g):
        g.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
        return g.prompt

    def sample(k):
        return "ok", sampling_graph(copies[7 + k % 4], weight=0.5 + 0.01 * k, seed=1000 + k, steps=1,
                                    prefix="reliability/soak_sample")[0].prompt

    def light(k):
        return "ok", keep(wplus_graph(copies[11], strengths=f"{0.3 + 0.01 * k:.2f}", prefix="reliability/soak_w")[0])

    def face(k):
        return "ok", keep(face_graph("wild_1.jpg", min_face_size=20 + k)[0])

    def bad_file(k):
        return "fails", keep(wplus_graph("zz_state_nan.pt", strengths=f"{k}")[0])

    def bad_value(k):
        g, ids = wplus_graph(copies[11], strengths="1")
        g.nodes[ids["edit"]]["inputs"]["layer_start"] = 40 + k  # beyond the widget's max: HTTP 400
        return "rejected", keep(g)

    def bad_edit(k):
        return "fails", keep(wplus_graph(copies[11], strengths=f"much{k}")[0])

    def bad_apply(k):
        return "fails", sampling_graph(copies[10], start_at=0.9, end_at=0.1 + 0.001 * k, prefix="reliability/x")[0].prompt

    kinds = [sample, light, face, bad_file, bad_value, light, sample, bad_edit, face, bad_apply]
    return [kinds[k % len(kinds)](k) for k in range(50)]


def test_soak_50_prompts_back_to_back(server, copies, photos):
    prompts = _soak_prompts(copies)
    pid = server.proc.pid
    outcome = {"ok": 0, "fails": 0, "rejected": 0}

    def submit(batch):
        queued = []
        for expect, prompt in batch:
            if expect == "rejected":
                with pytest.raises(PromptRejected):
                    server.queue(prompt)
                outcome["rejected"] += 1
            else:
                queued.append((expect, server.queue(prompt)))
        return queued

    def settle(queued):
        for expect, prompt_id in queued:
            if expect == "ok":
                server.wait(prompt_id, timeout=900)
            else:
                with pytest.raises(ExecutionFailed) as info:
                    server.wait(prompt_id, timeout=900)
                assert info.value.error.get("exception_type", "").endswith("WPlusError"), info.value.error
            outcome[expect] += 1
        time.sleep(2.0)  # same settling time before both readings
        return vm_rss_kib(pid)

    t0 = time.monotonic()
    rss_first5 = settle(submit(prompts[:5]))
    rss_end = settle(submit(prompts[5:]))
    elapsed = time.monotonic() - t0
    assert server.alive()
    assert outcome == {"ok": 30, "fails": 15, "rejected": 5}, outcome
    growth = (rss_end - rss_first5) / rss_first5
    print(f"\nsoak: 50 prompts in {elapsed:.0f} s; server VmRSS after 5: {rss_first5 / 1024:.0f} MiB, "
          f"after 50: {rss_end / 1024:.0f} MiB ({100 * growth:+.1f} %)")
    assert abs(growth) <= 0.10, f"VmRSS {rss_first5} KiB after 5 prompts, {rss_end} KiB after 50"


# ------------------------------------------------------------------------------------- files
def test_wplus_save_never_overwrites(server, copies):
    """Same prefix twice: two files, the first unchanged; a foreign file with the next counter is
    skipped, not replaced."""
    prefix = "reliability/no_overwrite"
    folder = server.output_dir / "reliability"

    def save(strength):
        g, ids = wplus_graph(copies[11], strengths=strength, prefix=prefix)
        (rel,) = run(server, g.prompt)["outputs"][ids["save"]]["text"]
        return server.output_dir / rel

    first = save("0.25")
    before = first.read_bytes()
    second = save("0.5")
    assert first != second and first.read_bytes() == before and second.read_bytes() != before
    n = int(re.search(r"_(\d+)_\.safetensors$", second.name).group(1))
    foreign = folder / f"no_overwrite_{n + 1:05d}_.safetensors"
    foreign.write_bytes(b"not mine")
    third = save("0.75")
    assert third != foreign and foreign.read_bytes() == b"not mine" and third.is_file()
    assert first.read_bytes() == before
