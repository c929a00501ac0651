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
from dataclasses import dataclass, field
from pathlib import Path

WORKFLOWS_DIR = Path(__file__).resolve().parents[1] / "example_workflows"
API_DIR = WORKFLOWS_DIR / "api"
WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
NEGATIVE = "monochrome, lowres, bad anatomy, worst quality, low quality"  # the reference's negative prompt
CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
# where the frontend's missing-model dialog sends users (node properties "models"); the W+ files
# come from wplus_core.download.KNOWN_FILES
HF = "https://huggingface.co"
MODEL_URLS = {
    CHECKPOINT: ("checkpoints", f"{HF}/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/{CHECKPOINT}"),
    "control_v11p_sd15_openpose_fp16.safetensors": (
        "controlnet", f"{HF}/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/"
                      "control_v11p_sd15_openpose_fp16.safetensors"),
}
MODEL_INPUTS = {  # loader node -> (widget, models folder)
    "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
    "ControlNetLoader": ("control_net_name", "controlnet"),
    "LoraLoader": ("lora_name", "loras"),
    "WPlusAdapterLoader": ("adapter_name", "wplus"),
    "WPlusE4ELoader": ("e4e_name", "e4e"),
}


def model_url(filename: str):
    """(folder, url) of a file the workflows name, or None (e.g. a user's LoRA)."""
    if filename in MODEL_URLS:
        return MODEL_URLS[filename]
    try:
        from wplus_core.download import KNOWN_FILES
    except ImportError:
        return None
    if filename in KNOWN_FILES:
        folder = "e4e" if filename.startswith("e4e") else "wplus" if filename.startswith("wplus") else "facexlib"
        return folder, KNOWN_FILES[filename][0]
    return None


@dataclass
class L:
    """A link: output ``slot`` of node ``node``."""
    node: int
    slot: int = 0


@dataclass
class N:
    id: int
    type: str
    inputs: dict = field(default_factory=dict)
    title: str | None = None


@dataclass
class Spec:
    name: str
    note: str
    nodes: list


def _adapter_chain(first_id, *, photo="wild_1.jpg", adapter="wplus_adapter.bin", weight=1.0, model=L(1, 0),
                   edit=None, align_size="512"):
    """Photo -> align -> e4e -> [edit] -> adapter applied to ``model``. Returns (nodes, ids)."""
    i = first_id
    ids = {"photo": i, "align": i + 1, "e4e": i + 2, "invert": i + 3, "adapter": i + 4, "apply": i + 5}
    wplus = L(ids["invert"], 0)
    nodes = [
        N(ids["photo"], "LoadImage", {"image": photo}, "Photo"),
        N(ids["align"], "WPlusFaceAlign", {"image": L(ids["photo"]), "size": align_size}),
        N(ids["e4e"], "WPlusE4ELoader", {"e4e_name": "e4e_ffhq_encode.pt"}),
        N(ids["invert"], "WPlusE4EInvert", {"e4e_model": L(ids["e4e"]), "image": L(ids["align"], 0),
                                            "background_mask": L(ids["align"], 1)}),
        N(ids["adapter"], "WPlusAdapterLoader", {"adapter_name": adapter}),
    ]
    if edit is not None:
        ids["edit"] = i + 6
        nodes.append(N(ids["edit"], "WPlusEdit", dict(edit, wplus=wplus)))
        wplus = L(ids["edit"], 0)
    nodes.append(N(ids["apply"], "ApplyWPlusAdapter", {"model": model, "wplus_adapter": L(ids["adapter"]),
                                                       "wplus": wplus, "weight": weight, "start_at": 0.2,
                                                       "end_at": 1.0}))
    return nodes, ids


def _sampling(first_id, *, model, clip, vae, prompt, batch=1, prefix, seed=42, steps=30, width=512, height=512,
              fixed_noise=False, positive=None, negative=None):
    """Prompt, empty latent, KSampler, decode, save. Returns (nodes, ids)."""
    i = first_id
    ids = {"pos": i, "neg": i + 1, "latent": i + 2, "sampler": i + 3, "decode": i + 4, "save": i + 5}
    latent = L(ids["latent"])
    nodes = [
        N(ids["pos"], "CLIPTextEncode", {"text": prompt, "clip": clip}, "Positive prompt"),
        N(ids["neg"], "CLIPTextEncode", {"text": NEGATIVE, "clip": clip}, "Negative prompt"),
        N(ids["latent"], "EmptyLatentImage", {"width": width, "height": height, "batch_size": batch}),
    ]
    if fixed_noise:  # every image of the batch gets the same noise: only the W+ edit differs
        ids["fixed"] = i + 6
        nodes.append(N(ids["fixed"], "LatentBatchSeedBehavior", {"samples": latent, "seed_behavior": "fixed"}))
        latent = L(ids["fixed"])
    nodes += [
        N(ids["sampler"], "KSampler", {"model": model, "seed": seed, "steps": steps, "cfg": 7.5,
                                       "sampler_name": "dpmpp_2m", "scheduler": "karras",
                                       "positive": positive or L(ids["pos"]), "negative": negative or L(ids["neg"]),
                                       "latent_image": latent, "denoise": 1.0}),
        N(ids["decode"], "VAEDecode", {"samples": L(ids["sampler"]), "vae": vae}),
        N(ids["save"], "SaveImage", {"images": L(ids["decode"]), "filename_prefix": prefix}),
    ]
    return nodes, ids


def _photo_to_image() -> Spec:
    nodes = [N(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT})]
    chain, c = _adapter_chain(2)
    nodes += chain
    nodes.append(N(8, "FreeU", {"model": L(c["apply"]), "b1": 1.1, "b2": 1.2, "s1": 0.6, "s2": 0.4}))
    samp, _ = _sampling(10, model=L(8), clip=L(1, 1), vae=L(1, 2), prefix="wplus/photo_to_image",
                        prompt="a photo of a person wearing a red sweater in a cafe, natural light")
    nodes += samp
    nodes += [
        N(20, "PreviewImage", {"images": L(c["align"], 0)}, "Aligned face"),
        N(21, "PreviewImage", {"images": L(c["invert"], 1)}, "e4e reconstruction"),
        N(22, "WPlusSave", {"wplus": L(c["invert"]), "filename_prefix": "wplus/face"}),
    ]
    return Spec("wplus_1_photo_to_image", (
        "## W+ Adapter: photo -> personalised image\n"
        "Upload a photo with a face in **Photo**, write the prompt, queue.\n\n"
        "- Face align (FFHQ crop, background whitened) -> e4e inversion to W+ (18x512) -> "
        "W+ adapter (stage 2, weight 1.0, identity joins after 20% of the steps) -> SD1.5.\n"
        "- FreeU b1 1.1, b2 1.2, s1 0.6, s2 0.4 and the negative prompt are the reference's settings.\n"
        "- Save W+ writes the latent to output/wplus/ so Load W+ can reuse it without the photo.\n\n"
        "Models: any SD1.5 checkpoint in models/checkpoints; `wplus_adapter.bin` (models/wplus) and "
        "`e4e_ffhq_encode.pt` (models/e4e) are downloaded on first use. Weights: NTU S-Lab License 1.0 "
        "(non-commercial)."), nodes)


def _smile_sweep() -> Spec:
    nodes = [N(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT})]
    chain, c = _adapter_chain(2, edit={"direction": "interfacegan/smile", "strengths": "-4, -2, 0, 2, 4",
                                       "layer_start": -1, "layer_end": -1, "mode": "relative"})
    nodes += chain
    samp, _ = _sampling(10, model=L(c["apply"]), clip=L(1, 1), vae=L(1, 2), batch=5, fixed_noise=True,
                        prefix="wplus/smile_sweep", prompt="a photo of a person in a park, portrait, natural light")
    nodes += samp
    nodes += [
        N(20, "WPlusPreview", {"e4e_model": L(c["e4e"]), "wplus": L(c["edit"])}, "StyleGAN preview"),
        N(21, "SaveImage", {"images": L(20), "filename_prefix": "wplus/smile_sweep_stylegan"}),
    ]
    return Spec("wplus_2_smile_edit_sweep", (
        "## W+ Adapter: attribute edit sweep\n"
        "**W+ Edit** moves the face along InterFaceGAN's smile direction with strengths -4, -2, 0, 2, 4: "
        "one W+ per strength, so one batch of 5 images. The latent batch is 5 and its noise is fixed "
        "(LatentBatchSeedBehavior), so only the smile changes.\n\n"
        "The StyleGAN preview decodes the same 5 latents with e4e's generator: a quick check of the "
        "edit before diffusion. Try other directions (age, pose, GANSpace presets)."), nodes)


def _interpolation() -> Spec:
    nodes = [N(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT})]
    chain_a, a = _adapter_chain(2)
    nodes += [n for n in chain_a if n.type != "ApplyWPlusAdapter"]
    nodes += [
        N(30, "LoadImage", {"image": "aligned_1.png"}, "Photo B"),
        N(31, "WPlusFaceAlign", {"image": L(30), "size": "512"}),
        N(32, "WPlusE4EInvert", {"e4e_model": L(a["e4e"]), "image": L(31, 0), "background_mask": L(31, 1)}),
        N(33, "WPlusInterpolate", {"wplus_a": L(a["invert"]), "wplus_b": L(32), "weight": 0.5}),
        N(34, "ApplyWPlusAdapter", {"model": L(1), "wplus_adapter": L(a["adapter"]), "wplus": L(33),
                                    "weight": 1.0, "start_at": 0.2, "end_at": 1.0}),
        N(35, "WPlusPreview", {"e4e_model": L(a["e4e"]), "wplus": L(33)}, "StyleGAN preview"),
        N(36, "PreviewImage", {"images": L(35)}),
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
    nodes = [N(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT})]
    chain, c = _adapter_chain(2, adapter="wplus_adapter_stage1.bin", weight=0.8,
                              edit={"direction": "interfacegan/age", "strengths": "-3, 0, 3",
                                    "layer_start": -1, "layer_end": -1, "mode": "relative"})
    nodes += chain
    samp, s = _sampling(10, model=L(c["apply"]), clip=L(1, 1), vae=L(1, 2), batch=3, fixed_noise=True,
                        prefix="wplus/stage1_closeup", prompt="a close-up photo of a face, studio light, high quality")
    nodes += samp
    return Spec("wplus_4_stage1_closeup_edits", (
        "## W+ Adapter: stage-1 face close-ups with edits\n"
        "The stage-1 adapter (`wplus_adapter_stage1.bin`, weight 0.8 as in the reference) was trained on "
        "aligned face crops: it makes FFHQ-like close-ups. W+ Edit gives three ages (-3, 0, +3) in one "
        "batch with the same noise."), nodes)


def _controlnet_lora() -> Spec:
    nodes = [
        N(1, "CheckpointLoaderSimple", {"ckpt_name": CHECKPOINT}),
        N(2, "LoraLoader", {"model": L(1, 0), "clip": L(1, 1), "lora_name": "sd15_lora.safetensors",
                            "strength_model": 0.8, "strength_clip": 0.8}),
    ]
    chain, c = _adapter_chain(3, model=L(2, 0))
    nodes += chain
    nodes += [
        N(30, "ControlNetLoader", {"control_net_name": "control_v11p_sd15_openpose_fp16.safetensors"}),
        N(31, "LoadImage", {"image": "pose_1.png"}, "OpenPose skeleton"),
        N(32, "ControlNetApplyAdvanced", {"positive": L(10), "negative": L(11), "control_net": L(30),
                                          "image": L(31), "strength": 1.0, "start_percent": 0.0,
                                          "end_percent": 1.0}),
    ]
    samp, _ = _sampling(10, model=L(c["apply"]), clip=L(2, 1), vae=L(1, 2), prefix="wplus/controlnet_lora",
                        prompt="a photo of a person dancing on a stage, full body", positive=L(32, 0),
                        negative=L(32, 1))
    nodes += samp
    return Spec("wplus_5_controlnet_lora_composition", (
        "## W+ Adapter with ControlNet and a LoRA\n"
        "The adapter is applied after the LoRA (the LoRA's attention weights and the W+ branch compose), "
        "and an OpenPose ControlNet (`control_v11p_sd15_openpose`, models/controlnet) sets the pose from a "
        "skeleton image. Replace `sd15_lora.safetensors` with any SD1.5 LoRA of yours."), nodes)


SPECS = [_photo_to_image(), _smile_sweep(), _interpolation(), _stage1_closeup(), _controlnet_lora()]
SPEC_BY_NAME = {s.name: s for s in SPECS}


# ---------------------------------------------------------------------------------------- builder
def _is_widget(spec) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def _input_specs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) in the host's order: required then optional, as /object_info's input_order says."""
    order = info.get("input_order") or {}
    out = []
    for section in ("required", "optional"):
        specs = info.get("input", {}).get(section, {}) or {}
        for name in order.get(section, list(specs)):
            if name in specs:
                out.append((name, specs[name]))
    return out


def _default(spec):
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0] if kind else None
    if kind == "COMBO":
        options = opts.get("options") or []
        return options[0] if options else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def _topo(spec: Spec) -> list[N]:
    by_id = {n.id: n for n in spec.nodes}
    done, order = set(), []

    def visit(n):
        if n.id in done:
            return
        done.add(n.id)
        for v in n.inputs.values():
            if isinstance(v, L):
                visit(by_id[v.node])
        order.append(n)

    for n in sorted(spec.nodes, key=lambda n: n.id):
        visit(n)
    return order


def build(spec: Spec, object_info: dict) -> tuple[dict, dict]:
    """(UI workflow, API prompt) for one description, with the host's node definitions."""
    by_id = {n.id: n for n in spec.nodes}
    missing = sorted({n.type for n in spec.nodes if n.type not in object_info})
    if missing:
        raise KeyError(f"{spec.name}: node types unknown to this ComfyUI: {', '.join(missing)}")
    for n in spec.nodes:
        names = {name for name, _ in _input_specs(object_info[n.type])}
        unknown = set(n.inputs) - names
        if unknown:
            raise KeyError(f"{spec.name}: node {n.id} ({n.type}) has no input(s) {sorted(unknown)}; "
                           f"it has {sorted(names)}")

    order = _topo(spec)
    depth = {}
    for n in order:
        depth[n.id] = 1 + max([depth[v.node] for v in n.inputs.values() if isinstance(v, L)], default=-1)

    # links, numbered in the order of the consumers' inputs
    links, out_links = [], {}
    api = {}
    ui_nodes = []
    for rank, n in enumerate(order):
        info = object_info[n.type]
        inputs_ui, widgets, api_inputs = [], [], {}
        for name, ispec in _input_specs(info):
            value = n.inputs.get(name)
            if _is_widget(ispec) and not isinstance(value, L):
                value = _default(ispec) if value is None else value
                widgets.append(value)
                opts = ispec[1] if len(ispec) > 1 and isinstance(ispec[1], dict) else {}
                if opts.get("control_after_generate"):
                    widgets.append("fixed")
                if opts.get("image_upload"):
                    widgets.append("image")
                api_inputs[name] = value
                continue
            link_id = None
            if isinstance(value, L):
                link_id = len(links) + 1
                src = by_id[value.node]
                out_type = object_info[src.type]["output"][value.slot]
                links.append([link_id, value.node, value.slot, n.id, len(inputs_ui), out_type])
                out_links.setdefault((value.node, value.slot), []).append(link_id)
                api_inputs[name] = [str(value.node), value.slot]
            kind = ispec[0] if not isinstance(ispec[0], list) else "COMBO"
            entry = {"name": name, "type": kind, "link": link_id}
            if _is_widget(ispec):
                entry["widget"] = {"name": name}
            inputs_ui.append(entry)
        title = n.title or info.get("display_name") or n.type
        api[str(n.id)] = {"class_type": n.type, "inputs": api_inputs, "_meta": {"title": title}}
        height = 46 + 22 * max(len(inputs_ui), len(info["output"])) + 26 * len(widgets)
        if n.type in ("PreviewImage", "SaveImage"):
            height = max(height, 300)
        node = {"id": n.id, "type": n.type, "pos": [0, 0], "size": [320, height], "flags": {}, "order": rank,
                "mode": 0, "inputs": inputs_ui, "outputs": [], "properties": {"Node name for S&R": n.type},
                "widgets_values": widgets}
        if n.title:
            node["title"] = n.title
        if n.type in MODEL_INPUTS:
            known = model_url(str(api_inputs.get(MODEL_INPUTS[n.type][0])))
            if known:
                node["properties"]["models"] = [{"name": api_inputs[MODEL_INPUTS[n.type][0]], "url": known[1],
                                                 "directory": known[0]}]
        ui_nodes.append(node)
    for node in ui_nodes:
        info = object_info[node["type"]]
        names = info.get("output_name") or info["output"]
        node["outputs"] = [{"name": names[i], "type": t, "links": out_links.get((node["id"], i), []),
                            "slot_index": i} for i, t in enumerate(info["output"])]
    _layout(ui_nodes, depth, links)
    top = min(node["pos"][1] for node in ui_nodes)
    note_id = max(by_id) + 1
    ui_nodes.append({"id": note_id, "type": "MarkdownNote", "pos": [40, top - 280], "size": [700, 240], "flags": {},
                     "order": len(ui_nodes), "mode": 0, "inputs": [], "outputs": [], "properties": {},
                     "widgets_values": [spec.note], "title": "About this workflow", "color": "#432",
                     "bgcolor": "#653"})
    ui = {"last_node_id": note_id, "last_link_id": len(links), "nodes": ui_nodes,
          "links": links, "groups": [], "config": {},
          "extra": {"ds": _fit(ui_nodes)}, "version": 0.4}
    return ui, api


def _layout(ui_nodes, depth, links, dx=360, gap=40):
    """Columns by depth; within a column, nodes ordered by the mean height of their neighbours in
    the previous column (then the first column by its consumers), so links cross little."""
    nodes = {n["id"]: n for n in ui_nodes}
    sources, consumers = {}, {}
    for _, src, _, dst, _, _ in links:
        sources.setdefault(dst, []).append(src)
        consumers.setdefault(src, []).append(dst)
    cols = {}
    for n in ui_nodes:
        cols.setdefault(depth[n["id"]], []).append(n["id"])
    centre = {}

    def place(ids):
        y = 0
        for i in ids:
            nodes[i]["pos"] = [40 + dx * depth[i], y]
            centre[i] = y + nodes[i]["size"][1] / 2
            y += nodes[i]["size"][1] + gap

    def mean(values, default):
        values = [v for v in values if v is not None]
        return sum(values) / len(values) if values else default

    for d in sorted(cols):
        ids = cols[d]
        if d:
            ids.sort(key=lambda i: (mean([centre.get(s) for s in sources.get(i, [])], 0.0), i))
        place(ids)
    first = cols.get(0, [])
    first.sort(key=lambda i: (mean([centre.get(c) for c in consumers.get(i, [])], 0.0), i))
    place(first)


def _fit(ui_nodes, viewport=(1800, 1100), left=90, top=100, margin=80):
    """The canvas view (scale, offset) that shows the whole graph in the editor's window, clear of
    its side bar (left) and tab bar (top)."""
    x0 = min(n["pos"][0] for n in ui_nodes)
    y0 = min(n["pos"][1] for n in ui_nodes)
    x1 = max(n["pos"][0] + n["size"][0] for n in ui_nodes)
    y1 = max(n["pos"][1] + n["size"][1] for n in ui_nodes)
    scale = min(1.0, (viewport[0] - left - margin) / (x1 - x0), (viewport[1] - top - margin) / (y1 - y0))
    scale = round(max(0.35, scale), 3)
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
