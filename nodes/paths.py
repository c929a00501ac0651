"""Model folders of the pack, registered with ComfyUI's folder_paths, and weight resolution.

Folders: models/wplus (adapters), models/e4e, models/psfrgan (face restoration), models/facexlib,
models/wplus/directions. Entries that extra_model_paths.yaml already added are kept; ours are
appended.
"""
from __future__ import annotations

import os

import folder_paths

from ..wplus_core.errors import WPlusError

WEIGHT_EXTS = {".bin", ".pt", ".pth", ".safetensors"}
DIRECTION_EXTS = {".pt", ".pth", ".npy", ".safetensors"}
FOLDERS = {  # folder_paths name -> (sub-folder of models/, extensions, official files offered for download)
    "wplus": ("wplus", WEIGHT_EXTS, ("wplus_adapter.bin", "wplus_adapter_stage1.bin")),
    "e4e": ("e4e", WEIGHT_EXTS, ("e4e_ffhq_encode.pt",)),
    "psfrgan": ("psfrgan", WEIGHT_EXTS, ("psfrgan_epoch15_net_G.pth",)),
    "facexlib": ("facexlib", {".pth"}, ()),
    "dlib": ("dlib", {".dat"}, ()),  # the 68-point predictor, CNN detector, face recogniser
    "wplus_directions": (os.path.join("wplus", "directions"), DIRECTION_EXTS, ()),
    "wplus_latents": (os.path.join("wplus", "latents"), {".safetensors", ".pt", ".pth", ".npy"}, ()),
}


def register_folders() -> None:
    for name, (sub, exts, _) in FOLDERS.items():
        path = os.path.join(folder_paths.models_dir, sub)
        entry = folder_paths.folder_names_and_paths.get(name)
        if entry is None:
            folder_paths.folder_names_and_paths[name] = ([path], set(exts))
            continue
        paths, known = entry
        if path not in paths:
            paths.append(path)
        known.update(exts)
    # saved latents (output/wplus) are offered by Load W+ too
    saved = os.path.join(folder_paths.get_output_directory(), "wplus")
    if saved not in folder_paths.folder_names_and_paths["wplus_latents"][0]:
        folder_paths.folder_names_and_paths["wplus_latents"][0].append(saved)


def choices(name: str) -> list[str]:
    """Files present in the folder, plus the official ones (downloaded when picked)."""
    present = folder_paths.get_filename_list(name)
    official = [f for f in FOLDERS[name][2] if f not in present]
    return sorted(present) + official


def default_folder(name: str) -> str:
    return folder_paths.get_folder_paths(name)[0]


def resolve(name: str, filename: str) -> str:
    """Full path of a file of folder ``name``; official files missing locally are downloaded."""
    path = folder_paths.get_full_path(name, filename)
    if path is not None:
        return path
    from ..wplus_core.download import KNOWN_FILES
    if filename in KNOWN_FILES:
        return download(name, filename)
    raise WPlusError(f"'{filename}' was not found in the {name} model folders "
                     f"({', '.join(folder_paths.get_folder_paths(name))}). Put it there and refresh.")


def progress_callback():
    """A ``progress(done, total)`` for downloads that drives ComfyUI's progress bar."""
    import comfy.utils
    bar = None

    def progress(done, total):
        nonlocal bar
        if total:
            if bar is None:
                bar = comfy.utils.ProgressBar(total)
            bar.update_absolute(done, total)

    return progress


def download(name: str, filename: str) -> str:
    from ..wplus_core.download import ensure_known_file
    return ensure_known_file(default_folder(name), filename, progress=progress_callback())


def folder_holding(name: str, filename: str) -> str:
    """The registered folder of ``name`` that holds ``filename`` (else the default one)."""
    path = folder_paths.get_full_path(name, filename)
    return os.path.dirname(path) if path else default_folder(name)
