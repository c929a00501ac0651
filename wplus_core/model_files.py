"""Every model file the pack and its example workflows use, described once.

    FILES: {key: ModelFile}      key = how the code names the file (a detector/parser option where
                                 there is one: "retinaface_resnet50", "parsenet", ...)
    FOLDERS: {folder name: (sub-folder of models/, extensions)}   the folders the pack registers
    LOADERS: {node: (input, folder)}   loader nodes whose input value IS a file name
    name_of(key) -> file name;  by_name(file name) -> ModelFile or None
    files_for_prompt(api_prompt) -> [(folder, file name)]   what an API-format prompt loads
    readme_table() / pyproject_models()   the README's table and pyproject's [[tool.comfy.Models]]

Downloads (download.py), the node layer's folders and messages, the CLI's missing-files check and
--download, pyproject.toml and the README read this table or are tested against it
(tests/test_model_files.py): a file name or URL written anywhere else is a test failure.

sha256 and exact sizes are recorded only where someone published them and we could compare:
facexlib's files (the Git LFS records of several independent Hugging Face mirrors, which agree) and
dlib's (the files shipped by the face-recognition-models package). The W+ release publishes no
checksum; neither sha256 nor size is recorded here for the SD1.5 files (Hugging Face shows an LFS
sha256 on each file's page, which could not be fetched to confirm from where this was written).
Files without a sha256 are checked after download by their announced length and, for torch
archives, by their zip structure, then by strict key/shape loading.
"""
from __future__ import annotations

import importlib.util
import os
from dataclasses import dataclass, field

__all__ = ["ModelFile", "Need", "FILES", "FOLDERS", "LOADERS", "name_of", "by_name",
           "files_for_prompt", "offered", "package_model_dir", "packaged_path", "readme_table",
           "pyproject_models"]


@dataclass(frozen=True)
class Need:
    """A node whose inputs make a file needed: ``node`` with every ``input`` in its allowed values
    (empty ``when`` = always). Files named by a loader's input are found through LOADERS."""
    node: str
    when: tuple[tuple[str, tuple], ...] = ()

    def matches(self, class_type: str, inputs: dict) -> bool:
        return class_type == self.node and all(inputs.get(k) in allowed for k, allowed in self.when)

    def describe(self) -> str:
        if not self.when:
            return NODE_TITLES.get(self.node, self.node)
        cond = ", ".join(f"{k}={'/'.join(_show(v) for v in allowed)}" for k, allowed in self.when)
        return f"{NODE_TITLES.get(self.node, self.node)} ({cond})"


def _show(value) -> str:
    return {True: "on", False: "off"}.get(value, str(value)) if isinstance(value, bool) else str(value)


@dataclass(frozen=True)
class ModelFile:
    name: str            # the file name in the folder (what the nodes and workflows name)
    folder: str          # ComfyUI folder_paths name = sub-folder of models/
    urls: tuple[str, ...]
    sha256: str | None   # None: none published (or none we could confirm): see the module docstring
    size: int | None     # exact bytes, recorded with the sha256
    approx_size: str     # for people
    licence: str
    purpose: str
    source: str          # link text for the README
    needed_by: tuple[Need, ...] = field(default=())
    pack: bool = True    # False: a host model (checkpoint, VAE, ControlNet) only the workflows name
    package: str | None = None  # a pip package that ships the same file in its models/ folder

    @property
    def url(self) -> str:
        return self.urls[0]


NODE_TITLES = {"WPlusFaceAlign": "W+ Face Align", "WPlusRestoreFace": "W+ Restore Face",
               "WPlusIdentityScore": "W+ Identity Score", "WPlusAdapterLoader": "W+ Adapter Loader",
               "WPlusE4ELoader": "W+ e4e Loader", "CheckpointLoaderSimple": "Load Checkpoint",
               "VAELoader": "Load VAE", "ControlNetLoader": "Load ControlNet Model"}

# loader node -> (the input naming the file, its folder); LoRAs are the user's own (no table entry)
LOADERS = {
    "CheckpointLoaderSimple": ("ckpt_name", "checkpoints"),
    "VAELoader": ("vae_name", "vae"),
    "ControlNetLoader": ("control_net_name", "controlnet"),
    "LoraLoader": ("lora_name", "loras"),
    "WPlusAdapterLoader": ("adapter_name", "wplus"),
    "WPlusE4ELoader": ("e4e_name", "e4e"),
    "WPlusRestoreFace": ("psfrgan_name", "psfrgan"),
}
# nodes that load nothing at all with this input at or below this value: W+ Restore Face at strength
# 0 passes the faces through (nodes/restore_nodes.py; the W+ Identity from Photo blueprint holds it so)
LOADS_NOTHING_AT = {"WPlusRestoreFace": ("strength", 0.0)}

WEIGHT_EXTS = (".bin", ".pt", ".pth", ".safetensors")
DIRECTION_EXTS = (".safetensors", ".pt", ".pth", ".bin", ".npy")
LATENT_EXTS = (".safetensors", ".pt", ".pth", ".bin", ".npy")
FOLDERS = {  # the pack's folders: name -> (sub-folder of models/, extensions)
    "wplus": ("wplus", WEIGHT_EXTS),
    "e4e": ("e4e", WEIGHT_EXTS),
    "psfrgan": ("psfrgan", WEIGHT_EXTS),
    "facexlib": ("facexlib", (".pth",)),
    "dlib": ("dlib", (".dat",)),
    "wplus_directions": ("wplus/directions", DIRECTION_EXTS),
    "wplus_latents": ("wplus/latents", LATENT_EXTS),
}

_WPLUS = "https://github.com/csxmli2016/w-plus-adapter/releases/download/v1"
_FACEXLIB = "https://github.com/xinntao/facexlib/releases/download"
_HF = "https://huggingface.co"
_S_LAB = "NTU S-Lab License 1.0 (non-commercial)"
_MIT_FACEXLIB = "facexlib (MIT)"
_ALIGN = "WPlusFaceAlign"
_DLIB_DETECTORS = ("dlib_hog", "dlib_cnn")


def _f(key, name, folder, url, sha256, size, approx, licence, purpose, source, needed_by=(), pack=True,
       package=None):
    """One entry; ``{name}`` in the URL stands for the file name, so the name is written once."""
    return key, ModelFile(name, folder, (url.format(name=name),), sha256, size, approx, licence, purpose,
                          source, tuple(needed_by), pack, package)


_DLIB_MODELS = "face_recognition_models"  # ships dlib's three models (the same files, same sha256)


FILES: dict[str, ModelFile] = dict([
    _f("wplus_adapter", "wplus_adapter.bin", "wplus", _WPLUS + "/{name}", None, None, "~155 MB", _S_LAB,
       "W+ adapter, stage 2: any prompt", "W+ release v1"),
    _f("wplus_adapter_stage1", "wplus_adapter_stage1.bin", "wplus", _WPLUS + "/{name}", None, None, "~155 MB",
       _S_LAB, "W+ adapter, stage 1: face close-ups", "W+ release v1"),
    _f("e4e", "e4e_ffhq_encode.pt", "e4e", _WPLUS + "/{name}", None, None, "1.2 GB", _S_LAB,
       "e4e encoder + StyleGAN2 generator", "W+ release v1"),
    _f("psfrgan", "psfrgan_epoch15_net_G.pth", "psfrgan", _WPLUS + "/{name}", None, None, "~185 MB",
       "PSFRGAN: CC BY-NC-SA 4.0 (non-commercial)", "face restoration of poor photos, optional", "W+ release v1"),
    _f("parsenet", "parsing_parsenet.pth", "facexlib", _FACEXLIB + "/v0.2.2/{name}",
       "3d558d8d0e42c20224f13cf5a29c79eba2d59913419f945545d8cf7b72920de2", 85331193, "85 MB",
       f"{_MIT_FACEXLIB} / PSFRGAN", "face parsing: background mask, PSFRGAN's guide", "facexlib v0.2.2",
       [Need(_ALIGN, (("remove_background", (True,)), ("parser", ("parsenet",)))), Need("WPlusRestoreFace")]),
    _f("bisenet", "parsing_bisenet.pth", "facexlib", _FACEXLIB + "/v0.2.0/{name}",
       "468e13ca13a9b43cc0881a9f99083a430e9c0a38abd935431d1c28ee94b26567", 53289463, "53 MB",
       _MIT_FACEXLIB, "face parsing, the alternative parser", "facexlib v0.2.0",
       [Need(_ALIGN, (("remove_background", (True,)), ("parser", ("bisenet",))))]),
    # the W+ release serves dlib's 68-point model under a name with its hash prefix
    _f("dlib_68", "shape_predictor_68_face_landmarks.dat", "dlib",
       _WPLUS + "/shape_predictor_68_face_landmarks-fbdc2cb8.dat",
       "fbdc2cb80eb9aa7a758672cbfdda32ba6300efe9b6e6c7a299ff7e736b11b92f", 99693937, "95 MB",
       "dlib's model, trained on iBUG 300-W: non-commercial use only",
       "dlib's 68 landmarks: the reference alignment", "W+ release v1 (or face-recognition-models)",
       [Need(_ALIGN, (("detector", _DLIB_DETECTORS),))], package=_DLIB_MODELS),
    _f("dlib_cnn", "mmod_human_face_detector.dat", "dlib", _WPLUS + "/{name}",
       "4cb19393e2fbaf2b1609a9319ad5386618c886a6234ec1b971f3e87c85d87fe6", 729940, "0.7 MB",
       "public domain (dlib-models, Davis King)", "dlib's CNN face detector", "W+ release v1",
       [Need(_ALIGN, (("detector", ("dlib_cnn",)),))], package=_DLIB_MODELS),
    _f("dlib_recogniser", "dlib_face_recognition_resnet_model_v1.dat", "dlib",
       "https://github.com/ageitgey/face_recognition_models/raw/master/face_recognition_models/models/{name}",
       "55533b28a95800a551ba546ba62fe69625c7e95a7061c338adffead08719da30", 22466066, "22 MB",
       "public domain (dlib-models, Davis King)", "face recognition: the identity score",
       "face-recognition-models", [Need("WPlusIdentityScore")], package=_DLIB_MODELS),
    _f("retinaface_resnet50", "detection_Resnet50_Final.pth", "facexlib", _FACEXLIB + "/v0.1.0/{name}",
       "6d1de9c2944f2ccddca5f5e010ea5ae64a39845a86311af6fdf30841b0a5a16d", 109497761, "104 MB",
       _MIT_FACEXLIB, "RetinaFace detector, 5 points", "facexlib v0.1.0",
       [Need(_ALIGN, (("detector", ("retinaface_resnet50",)),))]),
    _f("retinaface_mobile0.25", "detection_mobilenet0.25_Final.pth", "facexlib", _FACEXLIB + "/v0.1.0/{name}",
       "2979b33ffafda5d74b6948cd7a5b9a7a62f62b949cef24e95fd15d2883a65220", 1789735, "1.7 MB",
       _MIT_FACEXLIB, "RetinaFace detector, small, 5 points", "facexlib v0.1.0",
       [Need(_ALIGN, (("detector", ("retinaface_mobile0.25",)),))]),
    # host models the example workflows name (ComfyUI's own loaders read them)
    _f("sd15", "v1-5-pruned-emaonly-fp16.safetensors", "checkpoints",
       _HF + "/Comfy-Org/stable-diffusion-v1-5-archive/resolve/main/{name}", None, None, "~2.1 GB",
       "CreativeML OpenRAIL-M", "Stable Diffusion 1.5, the workflows' checkpoint",
       "Comfy-Org/stable-diffusion-v1-5-archive", pack=False),
    # the VAE the official notebooks decode with (diffusers' stabilityai/sd-vae-ft-mse) as the single
    # .safetensors file ComfyUI's VAELoader reads
    _f("vae_ft_mse", "vae-ft-mse-840000-ema-pruned.safetensors", "vae",
       _HF + "/stabilityai/sd-vae-ft-mse-original/resolve/main/{name}", None, None, "~335 MB", "MIT",
       "the sd-vae-ft-mse VAE of workflows 1 and 4", "stabilityai/sd-vae-ft-mse-original", pack=False),
    _f("openpose", "control_v11p_sd15_openpose_fp16.safetensors", "controlnet",
       _HF + "/comfyanonymous/ControlNet-v1-1_fp16_safetensors/resolve/main/{name}", None, None, "~723 MB",
       "CreativeML OpenRAIL-M", "OpenPose ControlNet of workflow 5",
       "comfyanonymous/ControlNet-v1-1_fp16_safetensors", pack=False),
])
_BY_NAME = {f.name: f for f in FILES.values()}


def name_of(key: str) -> str:
    return FILES[key].name


def by_name(filename: str) -> ModelFile | None:
    return _BY_NAME.get(filename)


def package_model_dir(package: str = _DLIB_MODELS) -> str | None:
    """The models/ folder of an installed package, located without importing it (importing
    face-recognition-models needs pkg_resources)."""
    try:
        spec = importlib.util.find_spec(package)
    except (ImportError, ValueError):
        return None
    for root in (spec.submodule_search_locations or []) if spec else []:
        folder = os.path.join(root, "models")
        if os.path.isdir(folder):
            return folder
    return None


def packaged_path(filename: str) -> str | None:
    """Where an installed package ships ``filename`` (dlib's models), else None."""
    known = by_name(filename)
    folder = package_model_dir(known.package) if known and known.package else None
    path = os.path.join(folder, filename) if folder else None
    return path if path and os.path.isfile(path) else None


def offered(folder: str) -> list[str]:
    """Official files a pack loader lists in ``folder`` even before they exist (fetched when picked)."""
    loaders = {f for node, (_, f) in LOADERS.items() if node.startswith("WPlus")}
    return [f.name for f in FILES.values() if f.folder == folder and folder in loaders]


def files_for_prompt(prompt: dict) -> list[tuple[str, str]]:
    """(folder, file name) of every model file an API-format prompt loads: the files its loaders
    name, and those its options imply (a detector's weights, the parser with remove_background...)."""
    need = []
    for node in prompt.values():
        class_type, inputs = node.get("class_type"), node.get("inputs", {})
        if class_type in LOADS_NOTHING_AT:
            name, off = LOADS_NOTHING_AT[class_type]
            if isinstance(inputs.get(name), (int, float)) and inputs[name] <= off:
                continue
        if class_type in LOADERS:
            key, folder = LOADERS[class_type]
            if isinstance(inputs.get(key), str):
                need.append((folder, inputs[key]))
        need += [(f.folder, f.name) for f in FILES.values() if any(n.matches(class_type, inputs) for n in f.needed_by)]
    return list(dict.fromkeys(need))


def _needed_by(f: ModelFile) -> list[str]:
    loaders = [NODE_TITLES.get(node, node) for node, (_, folder) in LOADERS.items()
               if folder == f.folder and folder not in ("loras",)]
    return [n.describe() for n in f.needed_by] or loaders


def readme_table() -> str:
    """The README's table of model files (tests/test_model_files.py keeps the README equal to it)."""
    rows = ["| file | what | folder | needed by | size | source | sha256 | licence |",
            "|---|---|---|---|---|---|---|---|"]
    for f in FILES.values():
        # the W+ release publishes no checksum; Hugging Face's LFS ones are not recorded here
        sha = f"`{f.sha256[:12]}…`" if f.sha256 else "none published" if f.pack else "not recorded"
        rows.append(f"| `{f.name}` | {f.purpose} | `models/{f.folder}/` | {'; '.join(_needed_by(f))} | "
                    f"{f.approx_size} | [{f.source}]({f.url}) | {sha} | {f.licence} |")
    return "\n".join(rows)


def pyproject_models() -> str:
    """pyproject.toml's [[tool.comfy.Models]] entries (the Registry's list of model files)."""
    return "\n\n".join(f'[[tool.comfy.Models]]\nlocation = "/{f.folder}/{f.name}"\nmodel_url = "{f.url}"'
                       for f in FILES.values())
