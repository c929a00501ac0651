"""The example workflows, run by a real ComfyUI server over HTTP (POST /prompt, GET /history, /view).

Each committed API-format workflow runs unmodified except for speed settings (64 px latents,
2 sampler steps, 256 px crops and previews); every image it outputs is fetched and checked (count,
size, not constant). Also: the committed files are what cli/workflows.py builds from this server's
node definitions; the identity weight changes the image (and 0 equals no adapter); a photo without
a face and a wrong adapter file come back as execution errors with our message while the server
goes on serving.
"""
from __future__ import annotations

import copy
import io

import numpy as np
import pytest
from PIL import Image

from cli import workflows
from cli.comfy_server import ExecutionFailed, PromptRejected, output_images
from tests.e2e.conftest import BROKEN_ADAPTER

LATENT_PX, STEPS, CROP_PX, PREVIEW_PX = 64, 2, 256, 256


def fast(prompt: dict, steps: int = STEPS) -> dict:
    p = copy.deepcopy(prompt)
    for node in p.values():
        t, i = node["class_type"], node["inputs"]
        if t == "EmptyLatentImage":
            i["width"] = i["height"] = LATENT_PX
        elif t == "KSampler":
            i["steps"] = steps
        elif t == "WPlusFaceAlign":
            i["size"] = str(CROP_PX)
        elif t == "WPlusE4EInvert":
            i["preview_size"] = str(PREVIEW_PX)
        elif t == "WPlusPreview":
            i["size"] = str(PREVIEW_PX)
    return p


def fetch(server, entry) -> dict:
    """node id -> list of (H,W,C) float arrays of the images it output."""
    out = {}
    for node_id, ref in output_images(entry):
        img = Image.open(io.BytesIO(server.view(ref)))
        out.setdefault(node_id, []).append(np.asarray(img.convert("RGB"), dtype=np.float64))
    return out


def check_images(images, count, size, what):
    assert len(images) == count, f"{what}: {len(images)} images, expected {count}"
    for k, a in enumerate(images):
        assert a.shape[:2] == (size[1], size[0]), f"{what}[{k}]: {a.shape[1]}x{a.shape[0]}, expected {size}"
        assert np.isfinite(a).all()
        assert a.std() > 2.0, f"{what}[{k}] is (nearly) constant: std {a.std():.2f}"


def batch_of(prompt):
    (latent,) = [n for n in prompt.values() if n["class_type"] == "EmptyLatentImage"]
    return latent["inputs"]["batch_size"]


def expected_outputs(name, prompt, photo_size):
    """node id -> (count, (w, h)) for every node that outputs images."""
    exp = {}
    batch = batch_of(prompt)
    for nid, node in prompt.items():
        t = node["class_type"]
        if t not in ("SaveImage", "PreviewImage"):
            continue
        src = prompt[node["inputs"]["images"][0]]
        if src["class_type"] == "VAEDecode":
            exp[nid] = (batch, (LATENT_PX, LATENT_PX))
        elif src["class_type"] == "WPlusFaceAlign":
            exp[nid] = (1, (CROP_PX, CROP_PX))
        elif src["class_type"] in ("WPlusE4EInvert", "WPlusPreview"):
            exp[nid] = (batch if src["class_type"] == "WPlusPreview" and name != "wplus_3_identity_interpolation"
                        else 1, (PREVIEW_PX, PREVIEW_PX))
        elif src["class_type"] == "WPlusPasteBack":
            exp[nid] = (batch, photo_size)
        elif src["class_type"] == "WPlusIdentityScore":  # every sampler's images, sorted
            samplers = sum(n["class_type"] == "KSampler" for n in prompt.values())
            exp[nid] = (batch * samplers, (LATENT_PX, LATENT_PX))
        else:
            raise AssertionError(f"{name}: no expectation for images from {src['class_type']}")
    return exp


def test_committed_workflows_match_their_description(object_info):
    """example_workflows/*.json are what `python -m cli workflows --write` makes with this ComfyUI."""
    stale = workflows.write_all(object_info, check=True)
    assert not stale, f"out of date (regenerate with `python -m cli workflows --write`): {stale}"


@pytest.mark.parametrize("name", [s.name for s in workflows.SPECS])
def test_example_workflow_runs(server, photos, name, artifacts):
    prompt = fast(workflows.load_api(name))
    entry = server.run(prompt, timeout=900)
    images = fetch(server, entry)
    photo = Image.open(photos["wild_1.jpg"]).size
    expected = expected_outputs(name, prompt, photo)
    assert set(images) == set(expected), f"outputs {sorted(images)} != expected {sorted(expected)}"
    for nid, (count, size) in expected.items():
        check_images(images[nid], count, size, f"{name} node {nid} ({prompt[nid]['_meta']['title']})")
    # an edit sweep is a batch of different faces (StyleGAN preview of the edited W+); the diffusion
    # images of 2 random-weight steps differ too little to be a test of the edit
    for nid in expected:
        if prompt[prompt[nid]["inputs"]["images"][0]]["class_type"] == "WPlusPreview" and expected[nid][0] > 1:
            faces = images[nid]
            assert all(np.abs(faces[0] - f).mean() > 0.5 for f in faces[1:]), "the edited faces do not differ"
    for nid, node in prompt.items():
        if node["class_type"] == "WPlusSave":
            (rel,) = entry["outputs"][nid]["text"]
            assert (server.output_dir / rel).is_file(), rel
    first = next(iter(images.values()))[0]
    Image.fromarray(first.astype(np.uint8)).save(artifacts / f"{name}_first_output.png")


def test_weight_sweep_is_scored_and_reported(server, photos):
    """Workflow 6's report names every image of the sweep once; random-weight images hold no face,
    which is reported as such (never scored)."""
    prompt = fast(workflows.load_api("wplus_6_weight_sweep_identity_score"))
    entry = server.run(prompt, timeout=900)
    (report_id,) = [k for k, v in prompt.items() if v["class_type"] == "PreviewAny"]
    text = "".join(entry["outputs"][report_id]["text"])
    samplers = sum(v["class_type"] == "KSampler" for v in prompt.values())
    assert "W+ Identity Score" in text and "reference face" in text
    for i in range(samplers):
        assert text.count(f": image {i}:") == 1, text
    assert "no face found" in text or "same person" in text


def _decoded(server, prompt):
    (save,) = [k for k, v in prompt.items() if v["class_type"] == "SaveImage"]
    entry = server.run(prompt, timeout=900)
    return fetch(server, entry)[save][0]


def test_identity_weight_changes_the_image(server, photos):
    """Same seed: weight 1 differs from weight 0, and weight 0 equals the model without the adapter.
    start_at 0 so that the identity acts from the first (high-noise) step of the short schedule."""
    base = fast(workflows.load_api("wplus_1_photo_to_image"))
    for k in [k for k, v in base.items() if v["class_type"] in ("PreviewImage", "WPlusSave")]:
        del base[k]
    (apply_id,) = [k for k, v in base.items() if v["class_type"] == "ApplyWPlusAdapter"]
    base[apply_id]["inputs"]["start_at"] = 0.0
    images = {}
    for weight in (0.0, 1.0):
        p = copy.deepcopy(base)
        p[apply_id]["inputs"]["weight"] = weight
        images[weight] = _decoded(server, p)
    bypass = copy.deepcopy(base)
    for node in bypass.values():  # FreeU reads the checkpoint's model directly
        if node["inputs"].get("model") == [apply_id, 0]:
            node["inputs"]["model"] = base[apply_id]["inputs"]["model"]
    del bypass[apply_id]
    without = _decoded(server, bypass)
    assert np.abs(images[1.0] - images[0.0]).mean() > 1.0, "weight 1 and weight 0 give the same image"
    assert np.abs(images[0.0] - without).max() <= 1.0, "weight 0 is not a no-op"


def _small_prompt(photo="wild_1.jpg"):
    """Photo -> align -> preview: a quick prompt to show the server still serves."""
    full = workflows.load_api("wplus_1_photo_to_image")
    (load,) = [k for k, v in full.items() if v["class_type"] == "LoadImage"]
    (align,) = [k for k, v in full.items() if v["class_type"] == "WPlusFaceAlign"]
    p = {load: copy.deepcopy(full[load]), align: copy.deepcopy(full[align]),
         "900": {"class_type": "PreviewImage", "inputs": {"images": [align, 0]}}}
    p[load]["inputs"]["image"] = photo
    p[align]["inputs"]["size"] = str(CROP_PX)
    return p


def test_photo_without_face_is_a_clear_execution_error(server, photos):
    prompt = fast(workflows.load_api("wplus_1_photo_to_image"))
    (load,) = [k for k, v in prompt.items() if v["class_type"] == "LoadImage"]
    prompt[load]["inputs"]["image"] = "pose_1.png"
    with pytest.raises(ExecutionFailed) as info:
        server.run(prompt, timeout=600)
    err = info.value.error
    assert err["node_type"] == "WPlusFaceAlign"
    assert err["exception_type"].endswith("WPlusError"), err["exception_type"]
    assert "face" in err["exception_message"].lower()
    assert server.alive()
    entry = server.run(_small_prompt(), timeout=300)
    assert fetch(server, entry)["900"][0].shape[:2] == (CROP_PX, CROP_PX)


def test_wrong_adapter_file_is_a_clear_execution_error(server, photos):
    prompt = fast(workflows.load_api("wplus_1_photo_to_image"))
    (loader,) = [k for k, v in prompt.items() if v["class_type"] == "WPlusAdapterLoader"]
    prompt[loader]["inputs"]["adapter_name"] = BROKEN_ADAPTER
    with pytest.raises(ExecutionFailed) as info:
        server.run(prompt, timeout=600)
    err = info.value.error
    assert err["node_type"] == "WPlusAdapterLoader"
    assert "IP-Adapter" in err["exception_message"] and BROKEN_ADAPTER in err["exception_message"]
    assert server.alive()
    server.run(_small_prompt("aligned_1.png"), timeout=300)


def test_unknown_file_name_is_rejected_before_running(server, photos):
    prompt = fast(workflows.load_api("wplus_1_photo_to_image"))
    (loader,) = [k for k, v in prompt.items() if v["class_type"] == "WPlusE4ELoader"]
    prompt[loader]["inputs"]["e4e_name"] = "no_such_e4e.pt"
    with pytest.raises(PromptRejected) as info:
        server.queue(prompt)
    assert loader in info.value.data["node_errors"]
    assert "no_such_e4e.pt" in str(info.value)
