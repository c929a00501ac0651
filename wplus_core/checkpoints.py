"""Safe reading of weight files: torch pickles with ``weights_only=True``, or safetensors.

Never unpickles arbitrary code; every failure becomes a WPlusError naming the file.
"""
from __future__ import annotations

import os
import pickle
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
        raise WPlusError(f"{what} '{path}' holds Python objects beyond plain weights, so it was "
                         f"refused (only weights are loaded, never code): {str(e).splitlines()[0]}") from e
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError) as e:
        raise WPlusError(f"{what} '{path}' could not be read ({str(e).splitlines()[0]}); it is "
                         "probably truncated or not a PyTorch file: download it again.") from e
