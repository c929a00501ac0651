"""Safe reading of weight files: torch pickles with ``weights_only=True``, or safetensors.

Never unpickles arbitrary code; every failure becomes a WPlusError naming the file.
"""
from __future__ import annotations

import os
import pickle
import re
import zipfile

import torch

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


def check_state_dict(state, expected: dict, path: str, what: str, hint=None) -> dict:
    """Validate a flat state dict against a module's ``state_dict()`` (keys and shapes), dropping
    a ``module.`` prefix (DataParallel saves). ``hint(state) -> str`` may say what the file is
    instead. Returns the cleaned dict; a WPlusError names the file and the difference otherwise."""
    if not isinstance(state, dict) or not state or \
            not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise WPlusError(f"'{path}' is not a {what} state dict (expected a flat dict of tensors)")
    state = {k[7:] if k.startswith("module.") else k: v for k, v in state.items()}
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
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
