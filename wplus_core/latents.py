"""W+ latents: validation, and reading/writing latent files.

A W+ latent is a float tensor of shape (B, 18, 512): one 512-d style vector per StyleGAN layer.
The adapter flattens layer groups TOKEN_GROUPS into its 4 tokens, which is why interpolation and
editing work on those groups.

API:
    NUM_LAYERS = 18, LATENT_DIM = 512, TOKEN_GROUPS = ((0,4), (4,8), (8,12), (12,18))
    check_wplus(w, what="W+ latent")                   -> (B,18,512) view; WPlusError on bad shape,
                                                          non-float dtype, NaN/Inf
    load_wplus(path)                                   -> (w float32 CPU (B,18,512), metadata dict)
    save_wplus(path, w, metadata=None, overwrite=False) -> path (.safetensors, atomic, never
                                                          overwrites unless overwrite=True)
    next_free_path(directory, prefix="wplus", ext=".safetensors") -> "<dir>/<prefix>_00001_.safetensors"
    wplus_metadata(image_sha256=None, quad=None, model=None, pack_version=None, **extra) -> dict
    sha256_of(data)                                    -> hex digest of bytes / array / tensor pixels
    save_safetensors_atomic(path, tensors, metadata=None, overwrite=False, what="file") -> path
    read_tensor_file(path, what="file")                -> (content, safetensors metadata), safely
    single_tensor(content, path, preferred="wplus")    -> the one tensor/array in a file's content

Files read by load_wplus:
    .pth/.pt/.bin  a tensor (1,18,512)/(18,512)/(B,18,512) or a dict holding one tensor (the
                   official e4e outputs are (1,18,512) float32 saved on CUDA, some with
                   requires_grad: they come back on CPU, detached). Read with weights_only=True.
    .npy           a numeric array (allow_pickle=False).
    .safetensors   tensor "wplus" (or the only tensor) plus metadata written by save_wplus.

Metadata: values that are not strings (a quad, numbers, lists) are stored as JSON and decoded on
load; keys starting with "wplus." are reserved for the format itself.
"""
from __future__ import annotations

import hashlib
import json
import os
import re
import tempfile
from typing import Any, Mapping

import numpy as np
import torch

from .checkpoints import read_weights
from .errors import WPlusError

NUM_LAYERS = 18
LATENT_DIM = 512
# Layer ranges [start, end) the adapter's projection turns into its 4 tokens.
TOKEN_GROUPS = ((0, 4), (4, 8), (8, 12), (12, 18))

TENSOR_KEY = "wplus"
FORMAT_NAME = "wplus-latent"
FORMAT_VERSION = "1"
_RESERVED = "wplus."
_JSON_KEYS = "wplus.json_keys"


def check_wplus(w, what: str = "W+ latent") -> torch.Tensor:
    """Return `w` as (B,18,512); raise WPlusError naming `what` if it is not a finite W+ latent."""
    if isinstance(w, np.ndarray):
        w = torch.from_numpy(w)
    if not isinstance(w, torch.Tensor):
        raise WPlusError(f"{what} must be a tensor of shape (B,18,512); got {type(w).__name__}.")
    shape = tuple(w.shape)
    if w.dim() == 2:
        w = w.unsqueeze(0)
    if w.dim() != 3 or tuple(w.shape[1:]) != (NUM_LAYERS, LATENT_DIM) or w.shape[0] < 1:
        raise WPlusError(f"{what} has shape {shape}; a W+ latent must be (B,18,512) or (18,512) "
                         "(18 StyleGAN layers of 512 values, as e4e produces).")
    if not w.is_floating_point():
        raise WPlusError(f"{what} has dtype {w.dtype}; a W+ latent must be floating point.")
    if not bool(torch.isfinite(w).all()):
        raise WPlusError(f"{what} contains NaN or Inf values; re-create it (an edit strength or "
                         "interpolation weight may be too large, or the file is damaged).")
    return w


# ---------------------------------------------------------------------------------------- reading

def single_tensor(obj, path: str, preferred: str = TENSOR_KEY):
    """The one tensor in `obj` (a tensor, an array or a dict holding one tensor)."""
    if isinstance(obj, (torch.Tensor, np.ndarray)):
        return obj
    if isinstance(obj, Mapping):
        tensors = {k: v for k, v in obj.items() if isinstance(v, (torch.Tensor, np.ndarray))}
        if preferred in tensors:
            return tensors[preferred]
        if len(tensors) == 1:
            return next(iter(tensors.values()))
        raise WPlusError(f"'{path}' holds {len(tensors)} tensors ({', '.join(map(str, list(tensors)[:6]))}); "
                         f"expected a single tensor (or one named '{preferred}').")
    raise WPlusError(f"'{path}' holds a {type(obj).__name__}, not a tensor.")


def _read_npy(path: str, what: str):
    try:
        return np.load(path, allow_pickle=False)
    except ValueError as e:  # object arrays need pickle: refused
        raise WPlusError(f"{what} '{path}' holds Python objects, not a plain numeric array; refused.") from e
    except (OSError, EOFError) as e:
        raise WPlusError(f"{what} '{path}' is not a readable .npy file ({e}).") from e


def _read_safetensors(path: str, what: str) -> tuple[dict, dict]:
    """(tensors, metadata) of a .safetensors file, errors as WPlusError."""
    from safetensors import safe_open
    if not os.path.isfile(path):
        raise WPlusError(f"{what} not found: {path}")
    try:
        with safe_open(path, framework="pt", device="cpu") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except Exception as e:  # safetensors raises its own error types
        raise WPlusError(f"{what} '{path}' is not a readable .safetensors file ({e}); "
                         "it may be truncated.") from e
    return tensors, meta


def read_tensor_file(path: str | os.PathLike, what: str = "file") -> tuple[Any, dict]:
    """(content, safetensors metadata) of a .pt/.pth/.bin/.npy/.safetensors file, safely."""
    path = os.fspath(path)
    ext = os.path.splitext(path)[1].lower()
    if ext == ".safetensors":
        return _read_safetensors(path, what)
    if ext == ".npy":
        if not os.path.isfile(path):
            raise WPlusError(f"{what} not found: {path}")
        return _read_npy(path, what), {}
    if ext in (".pt", ".pth", ".bin", ".ckpt"):
        return read_weights(path, what), {}
    raise WPlusError(f"{what} '{path}' has an unsupported extension '{ext}'; "
                     "use .safetensors, .pt, .pth, .bin or .npy.")


def _decode_metadata(meta: Mapping[str, str]) -> dict:
    try:
        json_keys = set(json.loads(meta.get(_JSON_KEYS, "[]")))
    except ValueError:
        json_keys = set()
    out = {}
    for k, v in meta.items():
        if k.startswith(_RESERVED):
            continue
        if k in json_keys:
            try:
                v = json.loads(v)
            except ValueError:
                pass  # keep the raw string rather than fail on a hand-edited file
        out[k] = v
    return out


def load_wplus(path: str | os.PathLike) -> tuple[torch.Tensor, dict]:
    """Read a W+ latent file -> (float32 CPU tensor (B,18,512) without grad, metadata dict)."""
    path = os.fspath(path)
    content, meta = read_tensor_file(path, "W+ latent file")
    t = single_tensor(content, path)
    if isinstance(t, np.ndarray):
        if not np.issubdtype(t.dtype, np.floating):
            raise WPlusError(f"W+ latent file '{path}' holds a {t.dtype} array; expected floats.")
        t = torch.from_numpy(np.ascontiguousarray(t))
    w = check_wplus(t.detach(), f"W+ latent file '{path}'")
    w = w.to(device="cpu", dtype=torch.float32).contiguous().clone()
    return w, _decode_metadata(meta)


# ---------------------------------------------------------------------------------------- writing

def _encode_metadata(metadata: Mapping[str, Any] | None) -> dict[str, str]:
    out: dict[str, str] = {}
    json_keys = []
    for k, v in (metadata or {}).items():
        if not isinstance(k, str) or k.startswith(_RESERVED):
            raise WPlusError(f"metadata key {k!r} is not allowed (keys are strings not starting "
                             f"with '{_RESERVED}').")
        if isinstance(v, str):
            out[k] = v
            continue
        try:
            out[k] = json.dumps(v)
        except (TypeError, ValueError) as e:
            raise WPlusError(f"metadata '{k}' ({type(v).__name__}) cannot be stored: use strings, "
                             "numbers, lists or dicts.") from e
        json_keys.append(k)
    out[_JSON_KEYS] = json.dumps(json_keys)
    return out


def save_safetensors_atomic(path: str | os.PathLike, tensors: Mapping[str, torch.Tensor],
                            metadata: Mapping[str, str] | None = None, overwrite: bool = False,
                            what: str = "file") -> str:
    """Write a .safetensors file via a temp file in the same folder, so a crash never leaves a
    half-written file, and (unless overwrite) without ever replacing an existing file."""
    from safetensors.torch import save as st_save
    path = os.path.abspath(os.fspath(path))
    if not overwrite and os.path.exists(path):
        raise WPlusError(f"{what} '{path}' already exists; choose another name or allow overwriting.")
    folder = os.path.dirname(path)
    os.makedirs(folder, exist_ok=True)
    data = st_save({k: v.detach().to("cpu").contiguous() for k, v in tensors.items()},
                   metadata=dict(metadata) if metadata else None)
    fd, tmp = tempfile.mkstemp(prefix="." + os.path.basename(path) + ".", suffix=".tmp", dir=folder)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if overwrite:
            os.replace(tmp, path)
            return path
        try:
            os.link(tmp, path)  # fails if `path` appeared meanwhile: no race with another writer
        except FileExistsError:
            raise WPlusError(f"{what} '{path}' already exists; choose another name or allow "
                             "overwriting.") from None
        except OSError:  # filesystem without hard links
            if os.path.exists(path):
                raise WPlusError(f"{what} '{path}' already exists; choose another name or allow "
                                 "overwriting.") from None
            os.replace(tmp, path)
        return path
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def save_wplus(path: str | os.PathLike, w: torch.Tensor, metadata: Mapping[str, Any] | None = None,
               overwrite: bool = False) -> str:
    """Save W+ latents (B,18,512) as float32 .safetensors with metadata; returns the path."""
    path = os.fspath(path)
    if not path.lower().endswith(".safetensors"):
        raise WPlusError(f"W+ latents are saved as .safetensors; got '{path}'.")
    w = check_wplus(w, "W+ latent to save").detach().to(device="cpu", dtype=torch.float32)
    meta = _encode_metadata(metadata)
    meta["wplus.format"] = FORMAT_NAME
    meta["wplus.format_version"] = FORMAT_VERSION
    return save_safetensors_atomic(path, {TENSOR_KEY: w}, meta, overwrite, "W+ latent file")


def next_free_path(directory: str | os.PathLike, prefix: str = "wplus", ext: str = ".safetensors") -> str:
    """Next numbered file name in ComfyUI's style: <prefix>_00001_<ext>, one above the highest
    existing counter. `prefix` may contain sub-folders but must stay inside `directory`."""
    directory = os.path.abspath(os.fspath(directory))
    target = os.path.abspath(os.path.join(directory, prefix))
    if os.path.commonpath([directory, target]) != directory or target == directory:
        raise WPlusError(f"file prefix '{prefix}' points outside the output folder '{directory}'.")
    folder, base = os.path.dirname(target), os.path.basename(target)
    pattern = re.compile(re.escape(base) + r"_(\d+)_" + re.escape(ext))
    highest = 0
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            m = pattern.fullmatch(name)
            if m:
                highest = max(highest, int(m.group(1)))
    return os.path.join(folder, f"{base}_{highest + 1:05d}_{ext}")


# --------------------------------------------------------------------------------------- metadata

def sha256_of(data) -> str:
    """Hex sha256 of bytes, or of an array/tensor's shape, dtype and raw values (to tag a W+
    latent with the image it came from)."""
    if isinstance(data, (bytes, bytearray, memoryview)):
        return hashlib.sha256(data).hexdigest()
    if isinstance(data, torch.Tensor):
        data = data.detach().to("cpu")
        if data.dtype == torch.bfloat16:  # numpy has no bfloat16
            data = data.float()
        data = data.numpy()
    if isinstance(data, np.ndarray):
        arr = np.ascontiguousarray(data)
        h = hashlib.sha256(f"{arr.dtype.str}{arr.shape}".encode())
        h.update(arr.tobytes())
        return h.hexdigest()
    raise WPlusError(f"cannot hash a {type(data).__name__}; give bytes, an array or a tensor.")


def wplus_metadata(image_sha256: str | None = None, quad=None, model: str | None = None,
                   pack_version: str | None = None, **extra) -> dict:
    """Standard metadata for save_wplus: source image hash, FFHQ crop quad ((4,2) corners),
    inverting model name, pack version, plus any JSON-able extras."""
    meta: dict[str, Any] = {}
    if image_sha256 is not None:
        meta["source_image_sha256"] = str(image_sha256)
    if quad is not None:
        q = np.asarray(quad, dtype=np.float64)
        if q.shape != (4, 2) or not np.isfinite(q).all():
            raise WPlusError(f"alignment quad must be 4 finite (x, y) corners; got shape {q.shape}.")
        meta["alignment_quad"] = q.tolist()
    if model is not None:
        meta["model"] = str(model)
    if pack_version is not None:
        meta["pack_version"] = str(pack_version)
    meta.update(extra)
    return meta
