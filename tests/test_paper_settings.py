"""Workflows 1 and 4 carry the official notebooks' settings (stage 2: test_demo.ipynb, stage 1:
test_demo_stage1.ipynb), their note says so, and the sd-vae-ft-mse VAE is loaded by a VAELoader
whose file URL is in the node's "models" list, so the graph editor offers the download.
Read from the committed files (no ComfyUI needed); tests/host/test_reference_schedules.py ties the
sampler/scheduler names to diffusers' schedulers."""
import json
from pathlib import Path

import pytest

from cli import workflows

ROOT = Path(__file__).resolve().parents[1]
VAE_URL = "https://huggingface.co/stabilityai/sd-vae-ft-mse-original/resolve/main/vae-ft-mse-840000-ema-pruned.safetensors"
FREEU = {"b1": 1.1, "b2": 1.2, "s1": 0.6, "s2": 0.4}
PAPER = {  # workflow: (adapter, weight, start_at, sampler, scheduler, steps)
    "wplus_1_photo_to_image": ("wplus_adapter.bin", 1.0, 0.2, "euler", "normal", 30),
    "wplus_4_stage1_closeup_edits": ("wplus_adapter_stage1.bin", 0.8, 0.0, "ddim", "ddim_uniform", 50),
}


def nodes_of(api, class_type):
    return [n for n in api.values() if n["class_type"] == class_type]


def upstream(api, node, name):
    return api[node["inputs"][name][0]]


@pytest.mark.parametrize("name", list(PAPER))
def test_paper_workflows_use_the_reference_settings(name):
    adapter, weight, start_at, sampler, scheduler, steps = PAPER[name]
    api = workflows.load_api(name)
    (ks,) = nodes_of(api, "KSampler")
    assert (ks["inputs"]["sampler_name"], ks["inputs"]["scheduler"], ks["inputs"]["steps"], ks["inputs"]["cfg"]) == \
        (sampler, scheduler, steps, 7.5)
    assert ks["inputs"]["denoise"] == 1.0
    freeu = upstream(api, ks, "model")
    assert freeu["class_type"] == "FreeU" and {k: freeu["inputs"][k] for k in FREEU} == FREEU
    apply = upstream(api, freeu, "model")
    assert apply["class_type"] == "ApplyWPlusAdapter"
    assert (apply["inputs"]["weight"], apply["inputs"]["start_at"], apply["inputs"]["end_at"]) == (weight, start_at, 1.0)
    assert upstream(api, apply, "wplus_adapter")["inputs"]["adapter_name"] == adapter
    assert upstream(api, ks, "negative")["inputs"]["text"] == workflows.NEGATIVE
    (decode,) = nodes_of(api, "VAEDecode")
    vae = upstream(api, decode, "vae")
    assert vae["class_type"] == "VAELoader" and vae["inputs"]["vae_name"] == workflows.VAE


@pytest.mark.parametrize("name", list(PAPER))
def test_the_vae_download_is_offered_and_the_note_names_the_paper_settings(name):
    ui = json.loads((ROOT / "example_workflows" / f"{name}.json").read_text())
    (loader,) = [n for n in ui["nodes"] if n["type"] == "VAELoader"]
    assert loader["properties"]["models"] == [{"name": workflows.VAE, "url": VAE_URL, "directory": "vae"}]
    (note,) = [n for n in ui["nodes"] if n["type"] == "MarkdownNote"]
    text = note["widgets_values"][0]
    sampler, scheduler, steps = PAPER[name][3:]
    for words in ("paper's settings", f"**{sampler}**", f"**{scheduler}**", f"{steps} steps", "CFG 7.5",
                  "sd-vae-ft-mse", "FreeU b1 1.1, b2 1.2, s1 0.6, s2 0.4"):
        assert words in text, (name, words)


def test_headless_run_defaults_are_the_paper_settings():
    """`python -m cli run` without options runs workflow 1 as committed: the paper's settings."""
    from types import SimpleNamespace
    from cli import run
    assert run.WORKFLOW == "wplus_1_photo_to_image"
    args = SimpleNamespace(**{k: None for k in run.OPTION_NAMES})
    args.no_freeu = False
    prompt = run.prepare_prompt(workflows.load_api(run.WORKFLOW), args)
    (ks,) = nodes_of(prompt, "KSampler")
    assert (ks["inputs"]["sampler_name"], ks["inputs"]["scheduler"], ks["inputs"]["steps"], ks["inputs"]["cfg"]) == \
        ("euler", "normal", 30, 7.5)
    (apply,) = nodes_of(prompt, "ApplyWPlusAdapter")
    assert (apply["inputs"]["weight"], apply["inputs"]["start_at"]) == (1.0, 0.2)
    assert [n["inputs"]["vae_name"] for n in nodes_of(prompt, "VAELoader")] == [workflows.VAE]
    assert nodes_of(prompt, "FreeU")
    assert workflows.model_url(workflows.VAE) == ("vae", VAE_URL)  # named with its URL when missing
