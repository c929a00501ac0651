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
