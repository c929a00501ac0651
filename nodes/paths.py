"""Model folders of the pack, registered with ComfyUI's folder_paths, and weight resolution.

The folders and their extensions are wplus_core.model_files.FOLDERS (models/wplus, models/e4e,
models/psfrgan, models/facexlib, models/dlib, models/wplus/directions, models/wplus/latents).
Entries that extra_model_paths.yaml already added are kept; ours are appended.
"""
from __future__ import annotations

import os

import folder_paths

from ..wplus_core import model_files
from ..wplus_core.errors import WPlusError

FOLDERS = model_files.FOLDERS


def register_folders() -> None:
    for name, (sub, exts) in FOLDERS.items():
        path = os.path.join(folder_paths.models_dir, *sub.split("/"))
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


def _within(path: str, folder: str) -> bool:
    path, folder = os.path.normcase(os.path.abspath(path)), os.path.normcase(os.path.abspath(folder))
    return path == folder or path.startswith(folder.rstrip(os.sep) + os.sep)


def _nested_foreign_folders(name: str) -> list[str]:
    """Folders of the pack's other kinds that lie inside one of ``name``'s folders: models/wplus
    holds models/wplus/directions and models/wplus/latents, whose files are not adapters."""
    own = folder_paths.get_folder_paths(name)
    out = []
    for other in FOLDERS:
        if other == name:
            continue
        for path in folder_paths.get_folder_paths(other):
            if not any(_within(o, path) for o in own) and any(_within(path, o) for o in own):
                out.append(path)
    return out


def own_files(name: str) -> list[str]:
    """Files of kind ``name`` only: ComfyUI lists a folder recursively, so the files of the other
    kinds kept in its sub-folders (directions, latents under models/wplus) are left out."""
    present = folder_paths.get_filename_list(name)
    foreign = _nested_foreign_folders(name)
    if not foreign:
        return list(present)
    keep = []
    for f in present:
        full = folder_paths.get_full_path(name, f)
        if full is None or not any(_within(full, folder) for folder in foreign):
            keep.append(f)
    return keep


def choices(name: str) -> list[str]:
    """Files of this kind present in its folders, plus the official ones (downloaded when picked)."""
    present = own_files(name)
    official = [f for f in model_files.offered(name) if f not in present]
    return sorted(present) + official


def default_folder(name: str) -> str:
    return folder_paths.get_folder_paths(name)[0]


def resolve(name: str, filename: str) -> str:
    """Full path of a file of folder ``name``; official files missing locally are downloaded."""
    path = folder_paths.get_full_path(name, filename)
    if path is not None:
        return path
    known = model_files.by_name(filename)
    if known is not None and known.folder == name:
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
