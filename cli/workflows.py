"""The example workflows: one Python description each, written out in both ComfyUI formats.

    example_workflows/<name>.json       UI format (graph editor; ComfyUI lists it under the pack's templates)
    example_workflows/api/<name>.json   API format (POST /prompt, headless runs, `python -m cli run`)

Both files come from the same description (SPECS below) and the node definitions that a running
ComfyUI reports on GET /object_info, so widget order, defaults and socket types are the host's
own. Regenerate after a node's inputs change:

    python -m cli workflows --write [--comfyui PATH]     # starts ComfyUI on loopback for /object_info

`build(spec, object_info) -> (ui, api)` is pure (no I/O); tests compare it with the committed files.
"""
from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path

from wplus_core import model_files

from . import blueprints
from .graph import (MODEL_INPUTS, WIDGET_TYPES, L, N, check_nodes, default, input_specs,  # noqa: F401 (re-exported)
                    is_widget, model_url, topo, widget_entries)

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "example_workflows"
API_DIR = WORKFLOWS_DIR / "api"
NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"  # the reference's negative prompt
# the files the workflows load: wplus_core/model_files.py says where each comes from (the frontend's
# missing-model dialog sends users there: node properties "models")
CHECKPOINT = model_files.name_of("sd15")
VAE = model_files.name_of("vae_ft_mse")  # the sd-vae-ft-mse VAE the official notebooks decode with
OPENPOSE = model_files.name_of("openpose")
ADAPTER, ADAPTER_STAGE1 = model_files.name_of("wplus_adapter"), model_files.name_of("wplus_adapter_stage1")
E4E, PSFRGAN = model_files.name_of("e4e"), model_files.name_of("psfrgan")
# Core nodes whose display name differs between supported ComfyUI versions get one fixed title, so
# the committed files are the same whichever host generated them (0.28 renamed LoraLoader's).
HOST_INDEPENDENT_TITLES = {"LoraLoader": "Load LoRA"}

BYPASS = 4  # LiteGraph's node mode "bypass": in the UI file, left out of the API twin (Ctrl+B toggles it)
# The official notebooks' sampling, in ComfyUI's terms (tests/host/test_reference_schedules.py
# compares the sigmas with diffusers' schedulers):
# - stage 2 (test_demo.ipynb): EulerDiscreteScheduler.from_config(SD1.5's config), i.e. its default
#   "linspace" timestep spacing from t=999 to t=0 = ComfyUI's euler sampler with the "normal"
#   scheduler; 30 steps, CFG 7.5, W+ after 20 % of the steps at scale 1.0, FreeU on.
# - stage 1 (test_demo_stage1.ipynb): DDIMScheduler(steps_offset=1), "leading" spacing
#   t = 981, 961, ..., 1 = ComfyUI's ddim sampler with the "ddim_uniform" scheduler; 50 steps,
#   CFG 7.5, scale 0.8, FreeU on; it runs the plain diffusers pipeline, so W+ acts from the first
#   step (start_at 0).
PAPER_STAGE2 = {"sampler_name": "euler", "scheduler": "normal", "steps": 30, "cfg": 7.5}
PAPER_STAGE1 = {"sampler_name": "ddim", "scheduler": "ddim_uniform", "steps": 50, "cfg": 7.5}
FAVOURITE = {"sampler_name": "dpmpp_2m", "scheduler": "karras", "steps": 30, "cfg": 7.5}
FREEU = {"b1": 1.1, "b2": 1.2, "s1": 0.6, "s2": 0.4}  # the reference's enable_freeu(...)

# titled groups of the graph editor, left to right in the order the data flows
FACE, MODEL, IMAGE = "Face → W+", "Model + W+ adapter", "Prompt → image"


@dataclass
class Spec:
    name: str
    note: str
    nodes: list


def _adapter_chain(first_id, *, photo="wild_1.jpg", adapter=ADAPTER, weight=1.0, model=L(1, 0),
                   edit=None, align_size="512", start_at=0.2):
    """Photo -> align -> e4e -> [edit] -> adapter applied to ``model``. Returns (nodes, ids)."""
    i = first_id
    ids = {"photo": i, "align": i + 1, "e4e": i + 2, "invert": i + 3, "adapter": i + 4, "apply": i + 5}
    wplus = L(ids["invert"], 0)
    nodes = [
        N(ids["photo"], "LoadImage", {"image": photo}, "Photo", FACE),
        N(ids["align"], "WPlusFaceAlign", {"image": L(ids["photo"]), "size": align_size}, group=FACE),
        N(ids["e4e"], "WPlusE4ELoader", {"e4e_name": E4E}, group=FACE),
        N(ids["invert"], "WPlusE4EInvert", {"e4e_model": L(ids["e4e"]), "image": L(ids["align"], 0),
                                            "background_mask": L(ids["align"], 1)}, group=FACE),
        N(ids["adapter"], "WPlusAdapterLoader", {"adapter_name": adapter}, group=MODEL),
    ]
    if edit is not None:
        ids["edit"] = i + 6
        nodes.append(N(ids["edit"], "WPlusEdit", dict(edit, wplus=wplus), group=FACE))
        wplus = L(ids["edit"], 0)
    nodes.append(N(ids["apply"], "ApplyWPlusAdapter", {"model": model, "wplus_adapter": L(ids["adapter"]),
                                                       "wplus": wplus, "weight": weight, "start_at": start_at,
                                                       "end_at": 1.0}, group=MODEL))
    return nodes, ids


def _sampling(first_id, *, model, clip, vae, prompt, batch=1, prefix, seed=42, width=512, height=512,
              fixed_noise=False, positive=None, negative=None, sampler=FAVOURITE, prompt_group=IMAGE,
              group=IMAGE):
    """Prompt, empty latent, KSampler, decode, save. Returns (nodes, ids)."""
    i = first_id
    ids = {"pos": i, "neg": i + 1, "latent": i + 2, "sampler": i + 3, "decode": i + 4, "save": i + 5}
    latent = L(ids["latent"])
    nodes = [
        N(ids["pos"], "CLIPTextEncode", {"text": prompt, "clip": clip}, "Positive prompt", prompt_group),
        N(ids["neg"], "CLIPTextEncode", {"text": NEGATIVE, "clip": clip}, "Negative prompt", prompt_group),
        N(ids["latent"], "EmptyLatentImage", {"width": width, "height": height, "batch_size": batch}, group=group),
    ]
    if fixed_noise:  # every image of the batch gets the same noise: only the W+ edit differs
        ids["fixed"] = i + 6
        nodes.append(N(ids["fixed"], "LatentBatchSeedBehavior", {"samples": latent, "seed_behavior": "fixed"},
                       group=group))
        latent = L(ids["fixed"])
    nodes += [
        N(ids["sampler"], "KSampler", {"model": model, "seed": seed, **sampler,
                                       "positive": positive or L(ids["pos"]), "negative": negative or L(ids["neg"]),
                                       "latent_image": latent, "denoise": 1.0}, group=group),
        N(ids["decode"], "VAEDecode", {"samples": L(ids["sampler"]), "vae": vae}, group=group),
        N(ids["save"], "SaveImage", {"images": L(ids["decode"]), "filename_prefix": prefix}, group=group),
    ]
    return nodes, ids


def _photo_to_image() -> Spec:
    nodes = [N(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, group=MODEL),
             N(9, "VAELoader", {"vae_name": VAE}, "VAE (sd-vae-ft-mse)", MODEL)]
    chain, c = _adapter_chain(2)
    nodes += chain
    # the reference's -s restoration of low-quality faces, ready but bypassed (Ctrl+B turns it on)
    nodes.append(N(16, "WPlusRestoreFace", {"image": L(c["align"], 0), "psfrgan_name": PSFRGAN,
                                            "strength": 1.0}, group=FACE, mode=BYPASS))
    next(n for n in chain if n.id == c["invert"]).inputs["image"] = L(16)
    nodes.append(N(8, "FreeU", {"model": L(c["apply"]), **FREEU}, group=MODEL))
    samp, _ = _sampling(10, model=L(8), clip=L(1, 1), vae=L(9), prefix="wplus/photo_to_image", sampler=PAPER_STAGE2,
                        prompt="a photo of a person wearing a red sweater in a cafe, natural light")
    nodes += samp
    nodes += [
        N(20, "PreviewImage", {"images": L(c["align"], 0)}, "Aligned face", FACE),
        N(21, "PreviewImage", {"images": L(c["invert"], 1)}, "e4e reconstruction", FACE),
        N(22, "WPlusSave", {"wplus": L(c["invert"]), "filename_prefix": "wplus/face"}, group=FACE),
    ]
    return Spec("wplus_1_photo_to_image", (
        "## W+ Adapter: photo -> personalised image (the paper's settings)\n"
        "Upload a photo with a face in **Photo**, write the prompt, queue.\n\n"
        "- Face align (FFHQ crop, background whitened) -> e4e inversion to W+ (18x512) -> "
        "W+ adapter -> SD1.5.\n"
        "- **The paper's settings** (official notebook `test_demo.ipynb`): stage-2 adapter at weight "
        "1.0, identity joining after 20% of the steps (start_at 0.2); sampler **euler** with the "
        "**normal** scheduler (= diffusers' EulerDiscreteScheduler), 30 steps, CFG 7.5; FreeU b1 1.1, "
        "b2 1.2, s1 0.6, s2 0.4; the reference negative prompt; the **sd-vae-ft-mse** VAE.\n"
        "- Save W+ writes the latent to output/wplus/ so Load W+ can reuse it without the photo.\n"
        "- Blurry, small or compressed photo? Select **W+ Restore Face (PSFRGAN)** (bypassed) and press "
        "Ctrl+B: the face is restored before inversion, the reference's `-s` option "
        f"(`{PSFRGAN}`, models/psfrgan, downloaded on first use).\n\n"
        f"Models: any SD1.5 checkpoint in models/checkpoints; `{VAE}` "
        f"in models/vae (the page offers the download); `{ADAPTER}` (models/wplus) and "
        f"`{E4E}` (models/e4e) are downloaded on first use. Weights: NTU S-Lab License 1.0 "
        "(non-commercial)."), nodes)


def _smile_sweep() -> Spec:
    nodes = [N(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, group=MODEL)]
    chain, c = _adapter_chain(2, edit={"direction": "interfacegan/smile", "strengths": "-4, -2, 0, 2, 4",
                                       "layer_start": -1, "layer_end": -1, "mode": "relative"})
    nodes += chain
    samp, _ = _sampling(10, model=L(c["apply"]), clip=L(1, 1), vae=L(1, 2), batch=5, fixed_noise=True,
                        prefix="wplus/smile_sweep", prompt="a photo of a person in a park, portrait, natural light")
    nodes += samp
    nodes += [
        N(20, "WPlusPreview", {"e4e_model": L(c["e4e"]), "wplus": L(c["edit"])}, "StyleGAN preview", FACE),
        N(21, "SaveImage", {"images": L(20), "filename_prefix": "wplus/smile_sweep_stylegan"}, group=FACE),
    ]
    return Spec("wplus_2_smile_edit_sweep", (
        "## W+ Adapter: attribute edit sweep\n"
        "**W+ Edit** moves the face along InterFaceGAN's smile direction with strengths -4, -2, 0, 2, 4: "
        "one W+ per strength, so one batch of 5 images. The latent batch is 5 and its noise is fixed "
        "(LatentBatchSeedBehavior), so only the smile changes.\n\n"
        "The StyleGAN preview decodes the same 5 latents with e4e's generator: a quick check of the "
        "edit before diffusion. Try other directions (age, pose, GANSpace presets). Sampling uses "
        "ComfyUI's dpmpp_2m/karras; workflow 1 has the paper's settings."), nodes)


def _interpolation() -> Spec:
    nodes = [N(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, group=MODEL)]
    chain_a, a = _adapter_chain(2)
    nodes += [n for n in chain_a if n.type != "ApplyWPlusAdapter"]
    nodes += [
        N(30, "LoadImage", {"image": "aligned_1.png"}, "Photo B", FACE),
        N(31, "WPlusFaceAlign", {"image": L(30), "size": "512"}, group=FACE),
        N(32, "WPlusE4EInvert", {"e4e_model": L(a["e4e"]), "image": L(31, 0), "background_mask": L(31, 1)},
          group=FACE),
        N(33, "WPlusInterpolate", {"wplus_a": L(a["invert"]), "wplus_b": L(32), "weight": 0.5}, group=FACE),
        N(34, "ApplyWPlusAdapter", {"model": L(1), "wplus_adapter": L(a["adapter"]), "wplus": L(33),
                                    "weight": 1.0, "start_at": 0.2, "end_at": 1.0}, group=MODEL),
        N(35, "WPlusPreview", {"e4e_model": L(a["e4e"]), "wplus": L(33)}, "StyleGAN preview", FACE),
        N(36, "PreviewImage", {"images": L(35)}, group=FACE),
    ]
    samp, _ = _sampling(10, model=L(34), clip=L(1, 1), vae=L(1, 2), prefix="wplus/interpolation",
                        prompt="a photo of a person smiling, outdoors, natural light")
    nodes += samp
    return Spec("wplus_3_identity_interpolation", (
        "## W+ Adapter: identity interpolation\n"
        "Two faces are inverted to W+ and mixed: weight 0 = photo A, 1 = photo B. The per-group "
        "weights (-1 = use weight) act on the W+ layers behind each adapter token: layers 0-3 coarse "
        "(pose, face shape) ... 12-17 finest (colour, texture); e.g. shape from A, colours from B."), nodes)


def _stage1_closeup() -> Spec:
    nodes = [N(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, group=MODEL),
             N(9, "VAELoader", {"vae_name": VAE}, "VAE (sd-vae-ft-mse)", MODEL)]
    chain, c = _adapter_chain(2, adapter=ADAPTER_STAGE1, weight=0.8, start_at=0.0,
                              edit={"direction": "interfacegan/age", "strengths": "-3, 0, 3",
                                    "layer_start": -1, "layer_end": -1, "mode": "relative"})
    nodes += chain
    nodes.append(N(18, "FreeU", {"model": L(c["apply"]), **FREEU}, group=MODEL))
    samp, s = _sampling(10, model=L(18), clip=L(1, 1), vae=L(9), batch=3, fixed_noise=True, sampler=PAPER_STAGE1,
                        prefix="wplus/stage1_closeup", prompt="a close-up photo of a face, studio light, high quality")
    nodes += samp
    return Spec("wplus_4_stage1_closeup_edits", (
        "## W+ Adapter: stage-1 face close-ups with edits (the paper's settings)\n"
        f"The stage-1 adapter (`{ADAPTER_STAGE1}`) was trained on aligned face crops: it makes "
        "FFHQ-like close-ups. W+ Edit gives three ages (-3, 0, +3) in one batch with the same noise.\n\n"
        "**The paper's settings** (official notebook `test_demo_stage1.ipynb`): weight 0.8 from the "
        "first step (start_at 0: that notebook has no delayed conditioning); sampler **ddim** with the "
        "**ddim_uniform** scheduler (= diffusers' DDIMScheduler, steps_offset 1), 50 steps, CFG 7.5; "
        "FreeU b1 1.1, b2 1.2, s1 0.6, s2 0.4; the reference negative prompt; the **sd-vae-ft-mse** VAE "
        f"(`{VAE}` in models/vae; the page offers the download)."), nodes)


def _controlnet_lora() -> Spec:
    pose = "Prompt + pose (ControlNet)"
    nodes = [
        N(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, group=MODEL),
        N(2, "LoraLoader", {"model": L(1, 0), "clip": L(1, 1), "lora_name": "sd15_lora.safetensors",
                            "strength_model": 0.8, "strength_clip": 0.8}, group=MODEL),
    ]
    chain, c = _adapter_chain(3, model=L(2, 0))
    nodes += chain
    nodes += [
        N(30, "ControlNetLoader", {"control_net_name": OPENPOSE}, group=pose),
        N(31, "LoadImage", {"image": "pose_1.png"}, "OpenPose skeleton", pose),
        N(32, "ControlNetApplyAdvanced", {"positive": L(10), "negative": L(11), "control_net": L(30),
                                          "image": L(31), "strength": 1.0, "start_percent": 0.0,
                                          "end_percent": 1.0}, group=pose),
    ]
    samp, _ = _sampling(10, model=L(c["apply"]), clip=L(2, 1), vae=L(1, 2), prefix="wplus/controlnet_lora",
                        prompt="a photo of a person dancing on a stage, full body", positive=L(32, 0),
                        negative=L(32, 1), prompt_group=pose, group="Sampling")
    nodes += samp
    return Spec("wplus_5_controlnet_lora_composition", (
        "## W+ Adapter with ControlNet and a LoRA\n"
        "The adapter is applied after the LoRA (the LoRA's attention weights and the W+ branch compose), "
        "and an OpenPose ControlNet (`control_v11p_sd15_openpose`, models/controlnet) sets the pose from a "
        "skeleton image. Replace `sd15_lora.safetensors` with any SD1.5 LoRA of yours."), nodes)


SWEEP_WEIGHTS = (0.5, 0.75, 1.0)


def _weight_sweep_identity() -> Spec:
    """One prompt and seed at several adapter weights, sorted by W+ Identity Score."""
    score = "Identity score"
    nodes = [N(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, group=MODEL)]
    chain, c = _adapter_chain(2, weight=SWEEP_WEIGHTS[0])
    nodes += chain
    prompt = "a photo of a person as an astronaut, portrait, natural light"
    nodes += [
        N(10, "CLIPTextEncode", {"text": prompt, "clip": L(1, 1)}, "Positive prompt", IMAGE),
        N(11, "CLIPTextEncode", {"text": NEGATIVE, "clip": L(1, 1)}, "Negative prompt", IMAGE),
        N(12, "EmptyLatentImage", {"width": 512, "height": 512, "batch_size": 1}, group=IMAGE),
    ]
    decoded = []
    for k, weight in enumerate(SWEEP_WEIGHTS):
        apply_id = c["apply"] if k == 0 else 40 + k
        if k:
            nodes.append(N(apply_id, "ApplyWPlusAdapter", {"model": L(1), "wplus_adapter": L(c["adapter"]),
                                                           "wplus": L(c["invert"]), "weight": weight,
                                                           "start_at": 0.2, "end_at": 1.0},
                           f"W+ Apply Adapter (weight {weight:g})", MODEL))
        nodes += [
            N(50 + k, "KSampler", {"model": L(apply_id), "seed": 42, **FAVOURITE, "positive": L(10),
                                   "negative": L(11), "latent_image": L(12), "denoise": 1.0},
              f"KSampler (weight {weight:g})", IMAGE),
            N(60 + k, "VAEDecode", {"samples": L(50 + k), "vae": L(1, 2)}, group=IMAGE),
        ]
        decoded.append(L(60 + k))
    nodes += [
        N(70, "WPlusIdentityScore", {"reference": L(c["align"], 0), "images": decoded[0],
                                     **{f"images_{k + 1}": d for k, d in enumerate(decoded) if k}}, group=score),
        N(71, "SaveImage", {"images": L(70, 2), "filename_prefix": "wplus/weight_sweep_best_first"},
          "Best first", score),
        N(72, "PreviewAny", {"source": L(70, 1)}, "Identity report", score),
    ]
    return Spec("wplus_6_weight_sweep_identity_score", (
        "## W+ Adapter: which weight keeps the person?\n"
        f"The same prompt and seed at adapter weights {', '.join(f'{w:g}' for w in SWEEP_WEIGHTS)} "
        "(one W+ Apply Adapter and KSampler each). **W+ Identity Score** compares every result with the "
        "aligned photo using dlib's face recogniser: distance below 0.6 = the same person for dlib. "
        "**Best first** shows the images sorted by that distance; the **Identity report** lists each "
        "image (0 = the first weight) with its distance, or 'no face found'.\n\n"
        "Change the weights, or sweep start_at the same way. Needs dlib (README) and "
        f"`{model_files.name_of('dlib_recogniser')}` in models/dlib (downloaded on first use)."), nodes)


def _blueprint_photo_to_image() -> Spec:
    """Workflow 1's identity path in one node: the W+ Personalize Model blueprint."""
    personalize = blueprints.BY_NAME["W+ Personalize Model"]
    group = "Photo + model → personalised model"
    nodes = [N(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}, group=group),
             N(9, "VAELoader", {"vae_name": VAE}, "VAE (sd-vae-ft-mse)", group),
             N(2, "LoadImage", {"image": "wild_1.jpg"}, "Photo", group),
             N(3, personalize.name, {"model": L(1, 0), "image": L(2)}, group=group),
             N(8, "FreeU", {"model": L(3), **FREEU}, group=group)]
    samp, _ = _sampling(10, model=L(8), clip=L(1, 1), vae=L(9), prefix="wplus/blueprint_photo_to_image",
                        sampler=PAPER_STAGE2, prompt="a photo of a person wearing a red sweater in a cafe, natural light")
    nodes += samp
    return Spec("wplus_7_blueprint_photo_to_image", (
        "## W+ Adapter in one node: the W+ Personalize Model blueprint\n"
        "Workflow 1 with the face path folded into **W+ Personalize Model**, a subgraph blueprint of the "
        "pack: an SD1.5 MODEL and a photo in, the MODEL that draws that person out. Inside (double-click the "
        "node): W+ Face Align -> W+ e4e Loader + Invert -> W+ Adapter Loader + W+ Apply Adapter; weight and "
        "start_at are its widgets (1.0 and 0.2, the paper's).\n\n"
        "On ComfyUI 0.28 and later the node library lists the pack's blueprints under *Subgraph Blueprints* "
        "(W+ Identity from Photo, W+ Personalize Model): drag one into any graph. Sampling as in workflow 1: "
        "euler/normal, 30 steps, CFG 7.5, FreeU, the sd-vae-ft-mse VAE."), nodes)


SPECS = [_photo_to_image(), _smile_sweep(), _interpolation(), _stage1_closeup(), _controlnet_lora(),
         _weight_sweep_identity(), _blueprint_photo_to_image()]
SPEC_BY_NAME = {s.name: s for s in SPECS}


# ---------------------------------------------------------------------------------------- builder
def build(spec: Spec, object_info: dict) -> tuple[dict, dict]:
    """(UI workflow, API prompt) for one description, with the host's node definitions. A node
    whose type is the name of one of the pack's blueprints (cli/blueprints.py) is placed as that
    subgraph: the UI file carries its definition, the API twin its inner nodes, flattened as the
    page queues them ("<node>:<inner node>")."""
    placed = {n.id: blueprints.BY_NAME[n.type] for n in spec.nodes if n.type in blueprints.BY_NAME}
    # a placed blueprint's definition (its ports) joins the host's, under the blueprint's name
    object_info = {**object_info, **{bp.name: blueprints.node_info(bp, object_info) for bp in placed.values()}}
    by_id = check_nodes(spec, object_info)

    order = topo(spec)

    def through_bypass(link: L) -> L:
        """The API twin's source of a link: a bypassed node passes on its input of the output's
        type (same slot first), as the graph editor does when it queues the graph."""
        while by_id[link.node].mode == BYPASS:
            n = by_id[link.node]
            want = object_info[n.type]["output"][link.slot]
            ins = [v for v in n.inputs.values() if isinstance(v, L)
                   and object_info[by_id[v.node].type]["output"][v.slot] == want]
            if not ins:
                raise KeyError(f"{spec.name}: bypassed node {n.id} ({n.type}) has no {want} input to pass on")
            link = ins[0]
        return link

    def api_source(link: L) -> list:
        """A link's value in the API twin: [node id, slot], or the inner node behind a blueprint's output."""
        source = through_bypass(link)
        if source.node in placed:
            return blueprints.output_source(placed[source.node], source.node, source.slot)
        return [str(source.node), source.slot]

    groups = _group_order(spec)

    # links, numbered in the order of the consumers' inputs
    links, out_links = [], {}
    api = {}
    ui_nodes = []
    for rank, n in enumerate(order):
        info = object_info[n.type]
        if n.id in placed:
            ui_nodes.append(_placed_blueprint(n, placed[n.id], rank, by_id, object_info, links, out_links,
                                              api_source, api))
            continue
        inputs_ui, widgets, api_inputs = [], [], {}
        for name, ispec in input_specs(info):
            value = n.inputs.get(name)
            if is_widget(ispec) and not isinstance(value, L):
                value = default(ispec) if value is None else value
                widgets += widget_entries(ispec, value)
                api_inputs[name] = value
                continue
            link_id = None
            if isinstance(value, L):
                link_id = len(links) + 1
                src = by_id[value.node]
                out_type = object_info[src.type]["output"][value.slot]
                links.append([link_id, value.node, value.slot, n.id, len(inputs_ui), out_type])
                out_links.setdefault((value.node, value.slot), []).append(link_id)
                api_inputs[name] = api_source(value)
            kind = ispec[0] if not isinstance(ispec[0], list) else "COMBO"
            entry = {"name": name, "type": kind, "link": link_id}
            if is_widget(ispec):
                entry["widget"] = {"name": name}
            inputs_ui.append(entry)
        title = n.title or HOST_INDEPENDENT_TITLES.get(n.type) or info.get("display_name") or n.type
        if n.mode != BYPASS:
            api[str(n.id)] = {"class_type": n.type, "inputs": api_inputs, "_meta": {"title": title}}
        node = {"id": n.id, "type": n.type, "pos": [0, 0], "size": list(_size(n, info, inputs_ui, widgets)),
                "flags": {}, "order": rank, "mode": n.mode, "inputs": inputs_ui, "outputs": [],
                "properties": {"Node name for S&R": n.type}, "widgets_values": widgets}
        if n.title:
            node["title"] = n.title
        if n.type in MODEL_INPUTS:
            known = model_url(str(api_inputs.get(MODEL_INPUTS[n.type][0])))
            if known:
                node["properties"]["models"] = [{"name": api_inputs[MODEL_INPUTS[n.type][0]], "url": known[1],
                                                 "directory": known[0]}]
        ui_nodes.append(node)
    for node in ui_nodes:
        info = object_info[by_id[node["id"]].type]
        names = info.get("output_name") or info["output"]
        outputs = [{"name": names[i], "type": t, "links": out_links.get((node["id"], i), []),
                    "slot_index": i} for i, t in enumerate(info["output"])]
        if info.get("output_node"):  # SaveImage/PreviewImage gained an `images` output in 0.28: list
            while outputs and not outputs[-1]["links"]:  # only what is linked, the same on every host
                outputs.pop()
        node["outputs"] = outputs
    group_boxes = _layout(ui_nodes, _groups_of(spec), groups, links)
    note_box = group_boxes.pop(NOTE)
    note_id = max(by_id) + 1
    ui_nodes.append({"id": note_id, "type": "MarkdownNote", "pos": [note_box[0], note_box[1] + TITLE_H],
                     "size": [NOTE_W, NOTE_H],
                     "flags": {}, "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                     "widgets_values": [spec.note], "title": "About this workflow", "color": "#432",
                     "bgcolor": "#653"})
    ui_groups = [{"id": k + 1, "title": title, "bounding": list(group_boxes[title]), "color": GROUP_COLORS[k % 4],
                  "font_size": GROUP_FONT, "flags": {}} for k, title in enumerate(groups)]
    ui = {"last_node_id": note_id, "last_link_id": len(links), "nodes": ui_nodes,
          "links": links, "groups": ui_groups, "config": {},
          "extra": {"ds": _fit(ui_nodes, ui_groups)}, "version": 0.4}
    if placed:  # each blueprint's definition once, in the order first placed
        used = list({bp.name: bp for bp in placed.values()}.values())
        ui["definitions"] = {"subgraphs": [blueprints.definition(bp, object_info) for bp in used]}
    return ui, api


def _placed_blueprint(n, bp, rank, by_id, object_info, links, out_links, api_source, api) -> dict:
    """The UI node of blueprint ``bp`` placed as node ``n`` (its socket inputs linked; links are
    added to ``links``/``out_links``), and its inner nodes added to the API twin ``api``. The
    exposed widgets keep the blueprint's values: the definition in the file is the blueprint's own."""
    node = blueprints.outer_node(bp, object_info, n.id)
    port_values = {}
    for slot, entry in enumerate(node["inputs"]):
        value = n.inputs.get(entry["name"])
        if value is None:
            continue
        if not isinstance(value, L):
            raise ValueError(f"node {n.id} ({bp.name}): {entry['name']} is the blueprint's own "
                             "value; give links only")
        link_id = len(links) + 1
        links.append([link_id, value.node, value.slot, n.id, slot, object_info[by_id[value.node].type]["output"][value.slot]])
        out_links.setdefault((value.node, value.slot), []).append(link_id)
        entry["link"] = link_id
        port_values[entry["name"]] = api_source(value)
    node["order"] = rank
    if n.title:
        node["title"] = n.title
    if n.mode != BYPASS:
        api.update(blueprints.flatten(bp, n.id, port_values, object_info))
    return node


# ---------------------------------------------------------------------------------------- layout
# What the graph editor draws, in canvas units: a node's title bar sits ABOVE its pos (LiteGraph's
# NODE_TITLE_HEIGHT, 30 in both frontends); a group's title bar is inside its bounding box, at the top.
# The browser test (tests/e2e/test_browser.py) reads the boxes the page really draws, after the
# photos have loaded, and fails on any overlap: sizes here must be at least what the page makes.
TITLE_H = 30
GAP = 40            # clear space between two boxes (title bars included)
COL_GAP = 50        # between columns
GROUP_PAD = 20      # group border to the nodes inside
GROUP_FONT = 24
GROUP_TITLE_H = 50  # room for the group's title above its first node's title bar
GROUP_GAP = 60      # between two groups
GROUP_COLORS = ["#3f789e", "#8A8", "#b58b2a", "#a1309b"]
NOTE = "About this workflow"  # the MarkdownNote, placed like a group
NOTE_W, NOTE_H = 700, 300
# The first view: the browser test's window is 1800x1100; in canvas pixels, this part of it is clear
# of the side bar, tab bar and menus of both frontends (1.27's canvas starts below its menu bar and is
# 1736x1022; 1.45's covers the window under floating panels).
VISIBLE = (70, 90, 1700, 1000)  # left, top, right, bottom
READABLE = 0.6  # below 8/14 = 0.57 both frontends draw nodes without text (MinFontSizeForLOD 8 px, 14 px text)
WIDTH = 320
# (width, height) of nodes whose height the frontend sets by content: LoadImage grows to show its
# photo below the widgets (up to the image preview's room), text prompts have a multi-line box
IMAGE_NODE_H = {"LoadImage": 420, "PreviewImage": 300, "SaveImage": 300}
MIN_H = {"CLIPTextEncode": 170, "PreviewAny": 200}  # PreviewAny: its text box (the page makes it ~130)


def _size(n: N, info: dict, inputs_ui: list, widgets: list) -> tuple[int, int]:
    """Node size in canvas units: slots (20 each), widgets (24 + 4), image previews, text boxes."""
    slots = max(len([i for i in inputs_ui if "widget" not in i]), len(info["output"]))
    shown = [w for w in widgets if w not in ("fixed", "image")] if n.type in ("KSampler", "LoadImage") else widgets
    height = 16 + 22 * slots + 28 * len(shown)
    if n.type == "KSampler":
        height += 28  # control_after_generate is a widget row of its own
    height = max(height, IMAGE_NODE_H.get(n.type, 0), MIN_H.get(n.type, 0))
    return WIDTH, int(math.ceil(height / 10.0) * 10)


def _groups_of(spec: Spec) -> dict:
    """{node id: group title}: a node without a group joins the group of what feeds it (its
    first linked input), else of what it feeds, so that every node sits in a titled group."""
    group = {n.id: n.group for n in spec.nodes}
    consumers = {}
    for n in spec.nodes:
        for v in n.inputs.values():
            if isinstance(v, L):
                consumers.setdefault(v.node, []).append(n.id)
    if not any(group.values()):
        return group
    changed = True
    while changed:
        changed = False
        for n in sorted(spec.nodes, key=lambda n: n.id):
            if group[n.id]:
                continue
            near = [v.node for v in n.inputs.values() if isinstance(v, L)] + consumers.get(n.id, [])
            found = next((group[i] for i in near if group[i]), None)
            if found:
                group[n.id], changed = found, True
    return group


def _group_order(spec: Spec) -> list[str]:
    """Group titles in data-flow order (a group comes after every group that feeds it)."""
    group = _groups_of(spec)
    titles = []
    for n in sorted(spec.nodes, key=lambda n: n.id):
        if group[n.id] and group[n.id] not in titles:
            titles.append(group[n.id])
    feeds = {t: set() for t in titles}
    for n in spec.nodes:
        for v in n.inputs.values():
            if isinstance(v, L):
                src = group[v.node]
                if src and group[n.id] and src != group[n.id]:
                    feeds[group[n.id]].add(src)
    order, seen = [], set()

    def visit(t, path=()):
        if t in seen:
            return
        if t in path:
            raise ValueError(f"{spec.name}: groups feed each other in a loop: {' -> '.join(path + (t,))}")
        for u in sorted(feeds[t], key=titles.index):
            visit(u, path + (t,))
        seen.add(t)
        order.append(t)

    for t in titles:
        visit(t)
    return order


def _layout(ui_nodes, group_of, groups, links):
    """Groups in data-flow order, read like text: left to right, in as many rows as show the graph
    largest in the editor's window; inside a group, columns by the longest chain of links within
    the group; in a column, nodes ordered by the mean height of what feeds them (the first column
    also by what it feeds), so links cross little. Returns {group title: bounding}."""
    nodes = {n["id"]: n for n in ui_nodes}
    sources, consumers = {}, {}
    for _, src, _, dst, _, _ in links:
        sources.setdefault(dst, []).append(src)
        consumers.setdefault(src, []).append(dst)
    members = {g: [i for i in nodes if group_of.get(i) == g] for g in groups}
    loose = [i for i in nodes if group_of.get(i) not in members]
    if loose:
        members[None] = loose
        groups = list(groups) + [None]

    def mean(values, default):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else default

    def arrange(g, x, top, centre):
        """Place group g's nodes with its top-left corner at (x, top); returns its bounding box."""
        ids = members[g]
        depth = {}

        def local_depth(i):
            if i not in depth:
                depth[i] = 1 + max([local_depth(s) for s in sources.get(i, []) if group_of.get(s) == g],
                                   default=-1)
            return depth[i]

        for i in ids:
            local_depth(i)
        cols = {}
        for i in sorted(ids):
            cols.setdefault(depth[i], []).append(i)
        first_y = top + GROUP_TITLE_H + TITLE_H

        def place(col_ids, cx):
            y = first_y
            for i in col_ids:
                nodes[i]["pos"] = [cx, y]
                centre[i] = y + nodes[i]["size"][1] / 2
                y += nodes[i]["size"][1] + GAP + TITLE_H

        col_x, cx = {}, x + GROUP_PAD
        for d in sorted(cols):
            col = cols[d]
            col.sort(key=lambda i: (mean([centre.get(s) for s in sources.get(i, [])], 1e9), i))
            place(col, cx)
            col_x[d] = cx
            cx += max(nodes[i]["size"][0] for i in col) + COL_GAP
        first = cols[min(cols)]
        first.sort(key=lambda i: (mean([centre.get(s) for s in sources.get(i, [])]
                                       + [centre.get(c) for c in consumers.get(i, [])], 1e9), i))
        place(first, col_x[min(cols)])
        x1 = max(nodes[i]["pos"][0] + nodes[i]["size"][0] for i in ids) + GROUP_PAD
        y1 = max(nodes[i]["pos"][1] + nodes[i]["size"][1] for i in ids) + GROUP_PAD
        return (x, top, x1 - x, y1 - top)

    items = [NOTE] + list(groups)  # the note about the workflow comes first, top left

    def pack(breaks):
        """Items in rows (a new row starts at each index in ``breaks``); returns (scale, boxes)."""
        centre, boxes, x, top, row_h = {}, {}, 40, 0, 0
        for k, g in enumerate(items):
            if k in breaks:
                x, top, row_h = 40, top + row_h + GROUP_GAP, 0
            box = (x, top, NOTE_W, NOTE_H + TITLE_H) if g is NOTE else arrange(g, x, top, centre)
            boxes[g] = box
            x, row_h = box[0] + box[2] + GROUP_GAP, max(row_h, box[3])
        width = max(b[0] + b[2] for b in boxes.values()) - 40
        height = max(b[1] + b[3] for b in boxes.values())
        return min((VISIBLE[2] - VISIBLE[0]) / width, (VISIBLE[3] - VISIBLE[1]) / height), boxes

    best = None
    for mask in range(2 ** (len(items) - 1)):
        breaks = {k + 1 for k in range(len(items) - 1) if mask >> k & 1}
        scale = pack(breaks)[0]
        if best is None or scale > best[0] + 1e-9:
            best = (scale, breaks)
    boxes = pack(best[1])[1]  # places the nodes for the best rows
    return {g: b for g, b in boxes.items() if g is not None}


def boxes(ui: dict) -> list[tuple]:
    """(id, x, y, w, h) of every node as drawn, title bar included (the layout's own view; the
    browser test reads the same from the page)."""
    return [(n["id"], n["pos"][0], n["pos"][1] - TITLE_H, n["size"][0], n["size"][1] + TITLE_H) for n in ui["nodes"]]


def _fit(ui_nodes, ui_groups) -> dict:
    """The first view (canvas scale and offset): the whole graph in the part of the editor's window
    that no panel covers, when that keeps it readable; else the readable scale with the graph's top
    left corner (the note and the first group) in view, the titled groups showing the rest."""
    rects = [(n["pos"][0], n["pos"][1] - TITLE_H, n["size"][0], n["size"][1] + TITLE_H) for n in ui_nodes]
    rects += [tuple(g["bounding"]) for g in ui_groups]
    x0 = min(r[0] for r in rects)
    y0 = min(r[1] for r in rects)
    x1 = max(r[0] + r[2] for r in rects)
    y1 = max(r[1] + r[3] for r in rects)
    left, top, right, bottom = VISIBLE
    scale = min(1.0, (right - left) / (x1 - x0), (bottom - top) / (y1 - y0))
    scale = max(READABLE, math.floor(scale * 1000) / 1000)
    return {"scale": scale, "offset": [round(left / scale - x0, 1), round(top / scale - y0, 1)]}


def dump(data) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_all(object_info: dict, check: bool = False) -> list[str]:
    """Write (or with check=True only compare) every workflow; returns the names that differ."""
    API_DIR.mkdir(parents=True, exist_ok=True)
    stale = []
    for spec in SPECS:
        ui, api = build(spec, object_info)
        for path, data in ((WORKFLOWS_DIR / f"{spec.name}.json", ui), (API_DIR / f"{spec.name}.json", api)):
            text = dump(data)
            if not path.is_file() or path.read_text() != text:
                stale.append(str(path.relative_to(WORKFLOWS_DIR.parent)))
                if not check:
                    path.write_text(text)
    return stale


def load_api(name: str) -> dict:
    return json.loads((API_DIR / f"{name}.json").read_text())


def load_ui(name: str) -> dict:
    return json.loads((WORKFLOWS_DIR / f"{name}.json").read_text())
