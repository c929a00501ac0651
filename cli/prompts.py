"""Filling an API-format workflow for a headless run (pure: no I/O except reading workflow files).

The nodes to change are found by class and by the links between them, never by node id, so every
example workflow (and any API export of a graph that uses the pack) works:

- the photo inputs are the LoadImage nodes whose image reaches a W+ Face Align (first by node id:
  the photo; second: photo B of an interpolation), or the one titled "Photo" / "Photo B";
- the ControlNet image is a LoadImage feeding a ControlNet apply node;
- the prompt and negative texts are the CLIPTextEncode nodes that the sampler's positive /
  negative inputs reach, through conditioning nodes such as ControlNet apply;
- seed, steps, cfg, sampler go to the sampler nodes; width/height/batch to EmptyLatentImage.

Options left unset keep the workflow's own values (its steps, CFG, sampler, weights...).
An option that no node of the workflow can take is an error that names the workflow and says
which example workflow has such a node.
"""
from __future__ import annotations

import json
from pathlib import Path

from wplus_core import model_files

from . import workflows

PHOTO, PHOTO_B, CONTROL = "photo", "photo_b", "control"
ROLE_TITLES = {"photo": PHOTO, "photo a": PHOTO, "photo b": PHOTO_B, "openpose skeleton": CONTROL,
               "controlnet image": CONTROL, "control image": CONTROL}
ROLE_OPTIONS = {PHOTO: "--photo", PHOTO_B: "--photo-b", CONTROL: "--control-image"}
SEED_INPUT = {"KSampler": "seed", "KSamplerAdvanced": "noise_seed", "SamplerCustom": "noise_seed",
              "RandomNoise": "noise_seed"}
CONTROLNET_APPLY = ("ControlNetApplyAdvanced", "ControlNetApply", "ControlNetApplySD3")
HEADLESS_DROP = ("PreviewImage", "WPlusSave")  # graph-editor conveniences: not wanted headless
# --restore: W+ Restore Face (PSFRGAN) between W+ Face Align and W+ e4e Invert, as the reference's -s
RESTORE_CLASS = "WPlusRestoreFace"
RESTORE_INPUTS = {"psfrgan_name": model_files.name_of("psfrgan"), "strength": 1.0, "precision": "auto"}


class WorkflowError(ValueError):
    """The workflow cannot be used as asked (bad name, wrong format, option with no target)."""


# ---------------------------------------------------------------------------- choosing a workflow
def workflow_names() -> list[str]:
    return [s.name for s in workflows.SPECS]


def resolve(value: str | None) -> tuple[str, dict]:
    """(name, API prompt) for --workflow: a number (1 = the first example workflow), a name or unique part of one, or a file."""
    names = workflow_names()
    if value is None:
        value = names[0]
    path = Path(value)
    if value.endswith(".json") or path.is_file():
        if not path.is_file():
            raise WorkflowError(f"--workflow {value}: no such file")
        return path.stem, load_api_file(path)
    if value.isdigit() and 1 <= int(value) <= len(names):
        name = names[int(value) - 1]
    else:
        hits = [n for n in names if n == value] or [n for n in names if value.lower() in n.lower()]
        if len(hits) != 1:
            what = "matches several" if hits else "is none"
            raise WorkflowError(f"--workflow {value!r} {what} of the example workflows: "
                                + ", ".join(f"{i} {n}" for i, n in enumerate(names, 1))
                                + " (or give the path of an API-format .json)")
        name = hits[0]
    return name, workflows.load_api(name)


def load_api_file(path: Path) -> dict:
    try:
        data = json.loads(Path(path).read_text())
    except ValueError as e:
        raise WorkflowError(f"--workflow {path}: not JSON ({e})") from None
    if isinstance(data, dict) and "nodes" in data and "links" in data:
        raise WorkflowError(f"--workflow {path} is in the graph editor's format; headless runs need the API "
                            "format: in ComfyUI use Workflow > Export (API), or take the twin in "
                            f"{workflows.API_DIR}")
    if isinstance(data, dict) and isinstance(data.get("prompt"), dict):
        data = data["prompt"]  # a saved POST /prompt body
    if not isinstance(data, dict) or not data or not all(
            isinstance(v, dict) and "class_type" in v and isinstance(v.get("inputs"), dict) for v in data.values()):
        raise WorkflowError(f"--workflow {path}: not an API-format workflow ({{node id: {{class_type, inputs}}}})")
    return data


# ---------------------------------------------------------------------------- graph helpers
def of_class(prompt: dict, *class_types) -> list[str]:
    return sorted((k for k, v in prompt.items() if v["class_type"] in class_types), key=_id_key)


def _id_key(k):
    return (0, int(k), "") if str(k).isdigit() else (1, 0, str(k))


def _link(v):
    return isinstance(v, list) and len(v) == 2 and isinstance(v[0], str) and isinstance(v[1], int)


def consumers(prompt: dict) -> dict:
    """node id -> [(consumer id, input name, output slot)]."""
    out = {}
    for k, node in prompt.items():
        for name, v in node["inputs"].items():
            if _link(v):
                out.setdefault(v[0], []).append((k, name, v[1]))
    return out


def reaches(prompt: dict, start: str, class_types, cons=None, limit=50) -> bool:
    """Whether an output of ``start`` flows (through any nodes) into a node of ``class_types``."""
    cons = cons if cons is not None else consumers(prompt)
    seen, todo = set(), [start]
    while todo and len(seen) < 10 * limit:
        k = todo.pop()
        for c, _, _ in cons.get(k, []):
            if prompt[c]["class_type"] in class_types:
                return True
            if c not in seen:
                seen.add(c)
                todo.append(c)
    return False


def image_roles(prompt: dict) -> dict:
    """LoadImage node id -> PHOTO / PHOTO_B / CONTROL (titles first, then the graph)."""
    cons = consumers(prompt)
    roles = {}
    loads = of_class(prompt, "LoadImage")
    for k in loads:
        title = str(prompt[k].get("_meta", {}).get("title", "")).strip().lower()
        if title in ROLE_TITLES and ROLE_TITLES[title] not in roles.values():
            roles[k] = ROLE_TITLES[title]
    faces = [k for k in loads if k not in roles and reaches(prompt, k, ("WPlusFaceAlign",), cons)]
    for k in faces:
        for role in (PHOTO, PHOTO_B):
            if role not in roles.values():
                roles[k] = role
                break
    for k in loads:
        if k not in roles and CONTROL not in roles.values() and any(
                prompt[c]["class_type"] in CONTROLNET_APPLY and name == "image" for c, name, _ in cons.get(k, [])):
            roles[k] = CONTROL
    return roles


def fill_images(prompt: dict, values: dict) -> dict:
    """Set each role's LoadImage to ``values[role]`` (e.g. an uploaded file's name)."""
    for k, role in image_roles(prompt).items():
        if role in values:
            prompt[k]["inputs"]["image"] = values[role]
    return prompt


def text_nodes(prompt: dict, sampler: str, which: str) -> list[str]:
    """CLIPTextEncode nodes behind a sampler's ``positive`` / ``negative`` input."""
    found, todo, seen = [], [prompt[sampler]["inputs"].get(which)], set()
    while todo:
        v = todo.pop()
        if not _link(v) or v[0] in seen or v[0] not in prompt:
            continue
        seen.add(v[0])
        node = prompt[v[0]]
        if node["class_type"] == "CLIPTextEncode":
            found.append(v[0])
            continue
        ins = node["inputs"]
        # conditioning nodes: ControlNet apply (outputs positive, negative), combine/concat/set-area...
        name = ("positive", "negative")[v[1]] if v[1] in (0, 1) and "positive" in ins and "negative" in ins else None
        if name:
            todo.append(ins[name])
        else:
            todo += [x for key, x in ins.items() if key.startswith("conditioning")]
    return found


def samplers(prompt: dict) -> list[str]:
    return of_class(prompt, "KSampler", "KSamplerAdvanced", "SamplerCustom")


def drop_node(prompt: dict, key: str, through: str | None = None) -> None:
    """Remove a node; with ``through`` (an input name) its consumers are rewired to that input."""
    src = prompt[key]["inputs"].get(through) if through else None
    for node in prompt.values():
        for name, v in list(node["inputs"].items()):
            if _link(v) and v[0] == key:
                if src is None:
                    raise WorkflowError(f"node {key} ({prompt[key]['class_type']}) feeds other nodes")
                node["inputs"][name] = src
    del prompt[key]


def headless(prompt: dict) -> dict:
    """Drop previews and the W+ latent file (graph-editor conveniences), keep every saved image."""
    for key in of_class(prompt, *HEADLESS_DROP):
        del prompt[key]
    cons = consumers(prompt)
    for key in of_class(prompt, "WPlusE4EInvert"):  # its reconstruction preview now goes nowhere:
        if not any(slot == 1 for _, _, slot in cons.get(key, [])) and "preview_size" in prompt[key]["inputs"]:
            prompt[key]["inputs"]["preview_size"] = "128"  # the cheapest StyleGAN pass it offers
    return prompt


# ---------------------------------------------------------------------------- options
def _set(prompt, keys, name, value, option, where, hint=""):
    if value is None:
        return 0
    keys = [k for k in keys if name in prompt[k]["inputs"] and not _link(prompt[k]["inputs"][name])]
    if not keys:
        raise WorkflowError(f"{option}: this workflow has no {where} to take it{hint}")
    for k in keys:
        prompt[k]["inputs"][name] = value
    return len(keys)


def apply_options(prompt: dict, opts: dict) -> dict:
    """Apply the headless options (``None`` = keep the workflow's value). ``opts`` keys are the
    option names with underscores (prompt, negative, seed, steps, cfg, sampler, scheduler, width,
    height, batch, weight, start_at, end_at, checkpoint, adapter, vae, face_index, no_freeu, direction,
    strengths, mix, lora, lora_strength, controlnet, control_strength, restore)."""
    g = opts.get
    sam = samplers(prompt)
    if g("prompt") is not None or g("negative") is not None:
        for which, opt in (("positive", "prompt"), ("negative", "negative")):
            if g(opt) is None:
                continue
            nodes = sorted({t for s in sam for t in text_nodes(prompt, s, which)}, key=_id_key)
            if not nodes:
                raise WorkflowError(f"--{opt}: no CLIPTextEncode reaches a sampler's {which} input")
            for k in nodes:
                prompt[k]["inputs"]["text"] = g(opt)
    for s in sam:
        if g("seed") is not None and SEED_INPUT[prompt[s]["class_type"]] in prompt[s]["inputs"]:
            prompt[s]["inputs"][SEED_INPUT[prompt[s]["class_type"]]] = g("seed")
    if g("seed") is not None:
        for k in of_class(prompt, "RandomNoise"):
            prompt[k]["inputs"]["noise_seed"] = g("seed")
    for name in ("steps", "cfg"):
        _set(prompt, sam, name, g(name), f"--{name}", "sampler with a widget for it")
    _set(prompt, sam, "sampler_name", g("sampler"), "--sampler", "KSampler")
    _set(prompt, sam, "scheduler", g("scheduler"), "--scheduler", "KSampler")
    latents = of_class(prompt, "EmptyLatentImage")
    for name, opt in (("width", "width"), ("height", "height"), ("batch_size", "batch")):
        _set(prompt, latents, name, g(opt), f"--{opt}", "EmptyLatentImage")
    applies = of_class(prompt, "ApplyWPlusAdapter")
    for name in ("weight", "start_at", "end_at"):
        _set(prompt, applies, name, g(name), "--" + name.replace("_", "-"), "W+ Apply Adapter")
    _set(prompt, of_class(prompt, "CheckpointLoaderSimple"), "ckpt_name", g("checkpoint"), "--checkpoint",
         "Load Checkpoint")
    _set(prompt, of_class(prompt, "WPlusAdapterLoader"), "adapter_name", g("adapter"), "--adapter",
         "W+ Adapter Loader")
    _set(prompt, of_class(prompt, "VAELoader"), "vae_name", g("vae"), "--vae", "Load VAE",
         " (workflows 1 and 4 load the sd-vae-ft-mse VAE)")
    if g("face_index") is not None:
        aligns = of_class(prompt, "WPlusFaceAlign")
        _set(prompt, aligns, "face_index", g("face_index"), "--face-index", "W+ Face Align")
        for k in aligns:
            if "face_select" in prompt[k]["inputs"]:
                prompt[k]["inputs"]["face_select"] = "index"
    edits = of_class(prompt, "WPlusEdit")
    hint = " (workflows 2 and 4 have a W+ Edit)"
    _set(prompt, edits, "direction", g("direction"), "--direction", "W+ Edit", hint)
    _set(prompt, edits, "strengths", g("strengths"), "--strengths", "W+ Edit", hint)
    _set(prompt, of_class(prompt, "WPlusInterpolate"), "weight", g("mix"), "--mix", "W+ Interpolate",
         " (workflow 3 mixes two faces)")
    hint = " (workflow 5 has a LoRA and a ControlNet)"
    loras = of_class(prompt, "LoraLoader", "LoraLoaderModelOnly")
    _set(prompt, loras, "lora_name", g("lora"), "--lora", "LoRA loader", hint)
    _set(prompt, loras, "strength_model", g("lora_strength"), "--lora-strength", "LoRA loader", hint)
    if g("lora_strength") is not None:
        for k in loras:
            if "strength_clip" in prompt[k]["inputs"]:
                prompt[k]["inputs"]["strength_clip"] = g("lora_strength")
    _set(prompt, of_class(prompt, "ControlNetLoader"), "control_net_name", g("controlnet"), "--controlnet",
         "ControlNet loader", hint)
    _set(prompt, of_class(prompt, *CONTROLNET_APPLY), "strength", g("control_strength"), "--control-strength",
         "ControlNet apply node", hint)
    if g("no_freeu"):
        for k in of_class(prompt, "FreeU", "FreeU_V2"):
            drop_node(prompt, k, through="model")
    if g("restore") is not None:
        add_restoration(prompt, g("restore"))
    return prompt


def add_restoration(prompt: dict, strength: float = 1.0) -> dict:
    """--restore: restore the aligned faces with W+ Restore Face before e4e sees them (the UI
    workflows hold it bypassed, which leaves it out of their API twins). A W+ Restore Face already
    in the workflow only gets the strength."""
    present = of_class(prompt, RESTORE_CLASS)
    if present:
        _set(prompt, present, "strength", strength, "--restore", "W+ Restore Face")
        return prompt
    cons = consumers(prompt)
    done = 0
    for align in of_class(prompt, "WPlusFaceAlign"):
        readers = [(c, name) for c, name, slot in cons.get(align, [])
                   if slot == 0 and prompt[c]["class_type"] == "WPlusE4EInvert"]
        if not readers:
            continue
        key = str(1 + max([int(k) for k in prompt if str(k).isdigit()], default=0))
        prompt[key] = {"class_type": RESTORE_CLASS,
                       "inputs": dict(RESTORE_INPUTS, image=[align, 0], strength=strength),
                       "_meta": {"title": "W+ Restore Face (PSFRGAN)"}}
        for c, name in readers:
            prompt[c]["inputs"][name] = [key, 0]
        done += 1
    if not done:
        raise WorkflowError("--restore: this workflow has no W+ Face Align whose faces go to W+ e4e Invert")
    return prompt


def output_labels(prompt: dict) -> dict:
    """SaveImage-like node id -> label for the local file names: '' for the main image (the one
    decoded from a sampler), else the tail of its filename_prefix (e.g. 'smile_sweep_stylegan')."""
    saves = [k for k, v in prompt.items() if "filename_prefix" in v["inputs"] and v["class_type"] != "WPlusSave"]
    saves.sort(key=_id_key)
    labels, main = {}, None
    for k in saves:
        src = prompt[k]["inputs"].get("images")
        if main is None and _link(src) and src[0] in prompt and prompt[src[0]]["class_type"] == "VAEDecode":
            main = k
    for k in saves:
        tail = str(prompt[k]["inputs"].get("filename_prefix", "")).rstrip("/").split("/")[-1]
        labels[k] = "" if k == main else (tail or f"node{k}")
    if main is None and len(saves) == 1:
        labels[saves[0]] = ""
    return labels
