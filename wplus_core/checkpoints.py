"""Safe reading of weight files, and recognising what a checkpoint is from its keys.

Files are read as torch pickles with ``weights_only=True``, or safetensors: never arbitrary code.
``identify`` names the kind of a loaded checkpoint from the table in ``checkpoint_kinds`` (spandrel
style); every loader calls ``require_kind`` first, so a file of another kind is refused with one
message, the same whichever loader got it. Every failure becomes a WPlusError naming the file.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile

import torch

from .checkpoint_kinds import KINDS, Kind
from .errors import WPlusError


def read_weights(path: str | os.PathLike, what: str = "weights file") -> dict:
    """Load a .pt/.pth/.bin (weights only) or .safetensors file into a dict of tensors/values."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise WPlusError(f"{what} not found: {path}")
    if os.path.getsize(path) == 0:
        raise WPlusError(f"{what} '{path}' is empty (0 bytes): download it again.")
    if path.endswith(".safetensors"):
        from safetensors.torch import load_file
        try:
            return load_file(path, device="cpu")
        except Exception as e:  # safetensors raises its own error types
            raise WPlusError(f"{what} '{path}' is not a readable .safetensors file ({e}); "
                             "it may be truncated: download it again.") from e
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        # torch's own text advises weights_only=False (i.e. running the code): not repeated here
        found = re.search(r"GLOBAL ([\w.]+)", _plain(e))
        refs = f" (it references {found.group(1)})" if found else ""
        raise WPlusError(f"{what} '{path}' holds Python objects beyond plain weights{refs}, so it was "
                         "refused: only weights are loaded, never code. Use the official file, or a "
                         ".safetensors copy of its tensors.") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise WPlusError(f"{what} '{path}' could not be read ({_first_sentence(e)}); it is "
                         "probably truncated or not a PyTorch file: download it again.") from e


def _plain(e: BaseException) -> str:
    """The exception text without terminal colour codes (some torch versions add them)."""
    return re.sub(r"\x1b\[[0-9;]*m", "", str(e))


def _first_sentence(e: BaseException, limit: int = 160) -> str:
    """The gist of a library error: its first line, up to the first full stop, bounded."""
    lines = _plain(e).strip().splitlines()
    text = lines[0] if lines else type(e).__name__
    text = re.split(r"(?<=[^.\s])\. ", text, maxsplit=1)[0].rstrip(".")
    return text if len(text) <= limit else text[: limit - 3] + "..."


# ----------------------------------------------------------------------------- recognition

def flat_keys(ckpt) -> dict:
    """The entries a checkpoint's kind is recognised by: a ``module.`` prefix dropped, a
    ``state_dict`` wrapper opened, and each nested section both as itself and as ``section.key``."""
    flat = {}
    if not isinstance(ckpt, dict):
        return flat
    for key, value in ckpt.items():
        key = str(key).removeprefix("module.")
        if key == "state_dict" and isinstance(value, dict):
            flat.update({str(k).removeprefix("module."): v for k, v in value.items()})
            continue
        flat[key] = value
        if isinstance(value, dict):
            flat.update({f"{key}.{k}": v for k, v in value.items()})
    return flat


def identify(ckpt) -> Kind | None:
    """The first kind of ``checkpoint_kinds.KINDS`` whose keys the checkpoint has, or None."""
    keys = set(flat_keys(ckpt))
    return next((kind for kind in KINDS if kind.match(keys)), None)


def kind_named(name: str) -> Kind:
    return next(kind for kind in KINDS if kind.name == name)


def describe(ckpt, wanted: str | None = None) -> str:
    """One sentence on what a checkpoint is: its kind and where it belongs, or what it holds.
    For a checkpoint of the ``wanted`` kind only what its shapes tell is said ("" if nothing)."""
    if not isinstance(ckpt, dict):
        return f"It holds a {type(ckpt).__name__}, not a dict of weights."
    kind = identify(ckpt)
    if kind is not None:
        note = kind.note(flat_keys(ckpt))
        if kind.name == wanted:
            return f"It is {kind.title}{note}." if note else ""
        return f"It is {kind.title}{note}: {kind.home}."
    keys = sorted(map(str, ckpt))
    return f"Its keys start with: {', '.join(keys[:5]) or 'nothing'}{', ...' if len(keys) > 5 else ''}."


def require_kind(ckpt, wanted: str, path: str, expected: str) -> Kind | None:
    """Refuse what is not a dict, or is a checkpoint of another kind than ``wanted`` (one message
    for every loader). Returns the wanted kind when recognised, None for unknown keys (the loader's
    own key check then says what differs)."""
    kind = identify(ckpt)
    if not isinstance(ckpt, dict) or (kind is not None and kind.name != wanted):
        raise WPlusError(f"'{path}' is not {kind_named(wanted).title}. {describe(ckpt)} "
                         f"Expected {expected}.")
    return kind


# ----------------------------------------------------------------------------- strict checks

def check_state_dict(state, expected: dict, path: str, what: str, hint=None) -> dict:
    """Validate a flat state dict against a module's ``state_dict()`` (keys and shapes), dropping
    a ``module.`` prefix (DataParallel saves). When the keys differ, a file the registry knows as
    another kind than ``expected``'s is named (``describe``); otherwise ``hint(state) -> str`` may
    say what it is. Returns the cleaned dict; a WPlusError names the file and the difference."""
    if not isinstance(state, dict) or not state or \
            not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WPlusError(f"'{path}' is not a {what} state dict (expected a flat dict of tensors)")
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        found = identify(state)
        if found is not None and found != identify(expected):
            extra = " " + describe(state)
        else:
            extra = hint(state) if hint else ""
        raise WPlusError(
            f"'{path}' is not a {what} checkpoint: {len(missing)} expected keys missing "
            f"(e.g. {missing[:3]}), {len(unexpected)} unexpected keys (e.g. {unexpected[:3]}).{extra} "
            f"Use the official {os.path.basename(path)}.")
    for k, v in expected.items():
        if tuple(state[k].shape) != tuple(v.shape):
            raise WPlusError(f"'{path}': tensor {k} has shape {tuple(state[k].shape)}, {what} expects "
                             f"{tuple(v.shape)}; the file is not the official {what} checkpoint")
    return state
