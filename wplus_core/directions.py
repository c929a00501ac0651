"""Editing directions in W+ space, interpolation and strength sweeps.

Kinds of direction (all bundled under wplus_core/data/directions/, see NOTICE.md there):
    "interfacegan"  interfacegan_directions/{age,smile,pose}.pt, (1,512) unit vectors broadcast to
                    all 18 layers: w + s*d.
    "latent"        latent_directions/*.npy, (18,512) float64 (all 18 rows equal): w + s*d on all
                    layers (as in the reference's training augmentation; its notebook applied them
                    to layers [0,8) only: pass layers=(0, 8) for that).
    "ganspace"      gan_space/ffhq_pca.pt {mean (1,512), comp (80,1,512) unit rows, std (80)} and
                    the preset table gan_space/ganspace_configs.csv (tab separated, no header:
                    name, pca_index, layer_start, layer_end, strength; layers [start, end)).
                    mode="relative" (default): w[:, start:end] += s * std[i] * comp[i].
                    mode="absolute" (the reference's formula): with
                    coord = ((w[:, 0] - mean) . comp[i]) / std[i]  (layer 0, per sample),
                    w[:, start:end] += (s - coord) * std[i] * comp[i]; layer 0's coordinate on
                    component i then reads s (in std units), so s=0 is NOT a no-op.
                    Any component is reachable as "ganspace/pc<i>" (all layers, no preset).
    "user"          files in the user folders: .pt/.pth/.bin/.npy/.safetensors holding one tensor
                    of shape (512,), (1,512), (18,512) or (1,18,512); w + s*d.
    "computed"      direction_from_latents(a, b).
The reference's att_direction_scale.pth (its training-time augmentation set) is a list of 17
unlabelled (1,18,512) directions: InterFaceGAN age, pose, smile and 14 latent directions (angry
twice). Only pose is not in the other files, so the pack ships pose alone (pose.pt) instead of
the 1.1 MB set; load_direction_set() reads such a set and labels its entries.

Names: "interfacegan/age", "latent/emotion_happy", "ganspace/big_smile", "ganspace/pc12",
"user/<path relative to the user folder, without extension>" (sub-folders use "/").

API:
    Direction(name, kind, vector (18,512) f32, layers (start,end), default_strength, component, source)
        .apply(w, strength, layers=None, mode="relative") -> edited W+ (B,18,512)
    DirectionLibrary(user_dirs=(), data_dir=BUNDLED_DIR)
        .names() -> list[str]; .load(name_or_path) -> Direction; .presets -> dict[str, GanSpacePreset]
    list_directions() / load_direction(name_or_path)     (bundled library)
    load_direction_file(path, name=None) -> Direction     (user file)
    load_direction_set(path) -> list[Direction]           (att_direction_scale.pth-style lists)
    read_ganspace_presets(csv_path) -> dict[str, GanSpacePreset]
    edit(w, direction, strength, layers=None, mode="relative")
    edit_sweep(w, direction, strengths, layers=None, mode="relative") -> (B*S,18,512), sample-major
    sweep_strengths(low, high, count) -> list[float], both ends included
    interpolate(w_a, w_b, weight)        weight: float, 4 per-token-group weights, or 18 per-layer
    direction_from_latents(a, b, normalize="overall", name="computed") -> Direction (a -> b)
    save_direction(path, direction, overwrite=False)     (.safetensors, (18,512) float32)

Batch rules: a W+ input is (B,18,512) or (18,512). Where two batched things meet (w_a and w_b in
interpolate, w and a per-sample strength list in edit) sizes must be equal or one of them 1; the
size-1 side is repeated. Anything else is a WPlusError. Maths runs in float32 on w's device;
results are cast back to w's dtype (fp16/bf16 inputs stay fp16/bf16). Inputs are never modified.
"""
from __future__ import annotations

import csv
import difflib
import math
import os
from dataclasses import dataclass
from typing import Iterable, Sequence

import numpy as np
import torch

from .errors import WPlusError
from .model_files import DIRECTION_EXTS
from .latents import (LATENT_DIM, NUM_LAYERS, TOKEN_GROUPS, single_tensor, check_wplus,
                      read_tensor_file, save_safetensors_atomic)

BUNDLED_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data", "directions")
ACCEPTED_SHAPES = "(512,), (1,512), (18,512) or (1,18,512)"
MODES = ("relative", "absolute")


@dataclass(frozen=True)
class GanSpacePreset:
    name: str
    pca_index: int
    layer_start: int
    layer_end: int  # exclusive
    strength: float  # the preset's suggested strength (the GANSpace/e4e value)


@dataclass(frozen=True, eq=False)
class PCAComponent:
    """What the absolute GANSpace mode needs: the PCA mean and one component with its std."""
    index: int
    mean: torch.Tensor  # (512,)
    comp: torch.Tensor  # (512,), unit norm
    std: float


@dataclass(frozen=True, eq=False)
class Direction:
    name: str
    kind: str                 # interfacegan | latent | ganspace | user | computed
    vector: torch.Tensor      # (18,512) float32: the step for strength 1 on each layer
    layers: tuple[int, int] = (0, NUM_LAYERS)  # default layer range [start, end)
    default_strength: float | None = None
    component: PCAComponent | None = None      # GANSpace only (absolute mode)
    source: str = ""

    def apply(self, w, strength, layers=None, mode: str = "relative") -> torch.Tensor:
        """Edited copy of W+ `w` ((B,18,512) or (18,512)); `strength` is a number or one number
        per sample; `layers` a (start, end) range overriding the default one."""
        w = check_wplus(w, "W+ latent to edit")
        start, end = _layer_range(self.layers if layers is None else layers)
        if mode not in MODES:
            raise WPlusError(f"edit mode must be one of {MODES}; got {mode!r}.")
        if mode == "absolute" and self.component is None:
            raise WPlusError(f"absolute mode exists only for GANSpace components; '{self.name}' "
                             f"is a {self.kind} direction: use mode='relative'.")
        s = _strengths(strength, w.device)
        w, s = _broadcast_batch(w, s.unsqueeze(-1), "W+ latent", "strength list")
        s = s[:, 0]
        out = torch.empty(w.shape, dtype=torch.float32, device=w.device)
        out.copy_(w)  # always a fresh float32 copy: the input is never modified
        step = self.vector.to(out.device)[start:end]  # (L,512)
        if mode == "relative":
            out[:, start:end] += s.view(-1, 1, 1) * step
        else:
            c = self.component
            mean, comp = c.mean.to(out.device), c.comp.to(out.device)
            coord = ((out[:, 0] - mean) @ comp) / c.std  # (B,) layer 0's coordinate, std units
            out[:, start:end] += ((s - coord) * c.std).view(-1, 1, 1) * comp
        return out.to(w.dtype)

    def __repr__(self):
        return (f"Direction({self.name!r}, kind={self.kind!r}, layers={self.layers}, "
                f"default_strength={self.default_strength})")


# ------------------------------------------------------------------------------------- helpers

def _layer_range(layers) -> tuple[int, int]:
    if isinstance(layers, slice):
        if layers.step not in (None, 1):
            raise WPlusError(f"layer range {layers} must not have a step.")
        layers = (layers.start or 0, NUM_LAYERS if layers.stop is None else layers.stop)
    try:
        start, end = (int(v) for v in layers)
    except (TypeError, ValueError):
        raise WPlusError(f"layer range must be (start, end) with 0 <= start < end <= 18; got {layers!r}.") from None
    if not 0 <= start < end <= NUM_LAYERS:
        raise WPlusError(f"layer range must be (start, end) with 0 <= start < end <= 18; got {layers!r}.")
    return start, end


def _strengths(strength, device) -> torch.Tensor:
    """Strength(s) as a float32 tensor (N,) on `device`; N=1 for a single number."""
    if isinstance(strength, torch.Tensor):
        s = strength.detach().to(device=device, dtype=torch.float32).reshape(-1)
    else:
        try:
            s = torch.tensor([float(strength)] if np.ndim(strength) == 0 else [float(v) for v in strength],
                             dtype=torch.float32, device=device)
        except (TypeError, ValueError):
            raise WPlusError(f"strength must be a number or a list of numbers; got {strength!r}.") from None
    if s.numel() == 0 or not bool(torch.isfinite(s).all()):
        raise WPlusError(f"strength must be finite numbers; got {strength!r}.")
    return s


def _broadcast_batch(a: torch.Tensor, b: torch.Tensor, what_a: str, what_b: str):
    """Repeat the batch-1 side to the other's batch size (the documented B vs 1 rule)."""
    na, nb = a.shape[0], b.shape[0]
    if na == nb:
        return a, b
    if na == 1:
        return a.expand(nb, *a.shape[1:]), b
    if nb == 1:
        return a, b.expand(na, *b.shape[1:])
    raise WPlusError(f"{what_a} has batch {na} and {what_b} has {nb}; they must be equal or one "
                     "of them 1.")


def _as_direction_tensor(t, path: str) -> torch.Tensor:
    """(18,512) float32 from a user tensor of an accepted shape, or a WPlusError naming the file."""
    if isinstance(t, np.ndarray):
        if not (np.issubdtype(t.dtype, np.floating) or np.issubdtype(t.dtype, np.integer)):
            raise WPlusError(f"direction file '{path}' holds a {t.dtype} array; expected numbers.")
        t = torch.from_numpy(np.ascontiguousarray(t))
    shape = tuple(t.shape)
    if shape in ((LATENT_DIM,), (1, LATENT_DIM)):
        t = t.reshape(1, LATENT_DIM).expand(NUM_LAYERS, LATENT_DIM)
    elif shape in ((NUM_LAYERS, LATENT_DIM), (1, NUM_LAYERS, LATENT_DIM)):
        t = t.reshape(NUM_LAYERS, LATENT_DIM)
    else:
        raise WPlusError(f"direction file '{path}' holds a tensor of shape {shape}; accepted "
                         f"shapes are {ACCEPTED_SHAPES}.")
    if t.is_complex() or t.dtype == torch.bool:
        raise WPlusError(f"direction file '{path}' holds {t.dtype} values; expected real numbers.")
    t = t.detach().to(device="cpu", dtype=torch.float32).contiguous().clone()
    if not bool(torch.isfinite(t).all()):
        raise WPlusError(f"direction file '{path}' contains NaN or Inf values; replace it with a "
                         "finite direction (re-export it, or recompute it from finite latents).")
    return t


def load_direction_file(path: str | os.PathLike, name: str | None = None, kind: str = "user") -> Direction:
    """A Direction from a file holding one tensor of shape (512,), (1,512), (18,512) or (1,18,512)."""
    path = os.fspath(path)
    content, _ = read_tensor_file(path, "direction file")
    if isinstance(content, (list, tuple)):
        raise WPlusError(f"direction file '{path}' holds a list of {len(content)} directions (a "
                         "direction set like att_direction_scale.pth); load it with load_direction_set, "
                         "or save each direction to its own file for W+ Edit.")
    if isinstance(content, dict) and {"mean", "comp", "std"} <= set(content):
        raise WPlusError(f"direction file '{path}' is a GANSpace PCA file; only the bundled PCA is "
                         "supported (use the 'ganspace/...' directions).")
    t = single_tensor(content, path, preferred="direction")
    name = name or os.path.splitext(os.path.basename(path))[0]
    return Direction(name, kind, _as_direction_tensor(t, path), source=path)


def read_ganspace_presets(path: str | os.PathLike, n_components: int = 80) -> dict[str, GanSpacePreset]:
    """Parse the GANSpace preset table (tab or comma separated; an optional header is skipped)."""
    path = os.fspath(path)
    presets: dict[str, GanSpacePreset] = {}
    try:
        with open(path, newline="", encoding="utf-8") as f:
            lines = f.read().splitlines()
    except OSError as e:
        raise WPlusError(f"GANSpace preset table '{path}' could not be read ({e}).") from e
    for lineno, line in enumerate(lines, 1):
        if not line.strip() or line.lstrip().startswith("#"):
            continue
        row = next(csv.reader([line], delimiter="\t" if "\t" in line else ","))
        row = [c.strip() for c in row]
        if lineno == 1 and row[0].lower() == "name":
            continue
        try:
            if len(row) != 5:
                raise ValueError(f"{len(row)} fields")
            p = GanSpacePreset(row[0], int(row[1]), int(row[2]), int(row[3]), float(row[4]))
        except ValueError as e:
            raise WPlusError(f"GANSpace preset table '{path}' line {lineno}: expected 'name, "
                             f"pca_index, layer_start, layer_end, strength' ({e}).") from None
        if not (0 <= p.pca_index < n_components and 0 <= p.layer_start < p.layer_end <= NUM_LAYERS):
            raise WPlusError(f"GANSpace preset table '{path}' line {lineno}: component {p.pca_index} "
                             f"or layers [{p.layer_start},{p.layer_end}) out of range.")
        presets[p.name] = p
    return presets


def _read_pca(path: str) -> dict:
    content, _ = read_tensor_file(path, "GANSpace PCA file")
    try:
        mean = content["mean"].reshape(LATENT_DIM).float()
        comp = content["comp"].reshape(-1, LATENT_DIM).float()
        std = content["std"].reshape(-1).float()
    except (TypeError, KeyError, RuntimeError, AttributeError) as e:
        raise WPlusError(f"GANSpace PCA file '{path}' must hold mean (1,512), comp (N,1,512) and "
                         f"std (N,) ({e}).") from e
    if comp.shape[0] != std.shape[0]:
        raise WPlusError(f"GANSpace PCA file '{path}': {comp.shape[0]} components but {std.shape[0]} stds.")
    return {"mean": mean, "comp": comp, "std": std}


# ------------------------------------------------------------------------------------- library

class DirectionLibrary:
    """Bundled directions plus the files in `user_dirs` (searched recursively, first wins)."""

    def __init__(self, user_dirs: Iterable[str | os.PathLike] = (), data_dir: str | os.PathLike = BUNDLED_DIR):
        self.data_dir = os.fspath(data_dir)
        self.user_dirs = [os.fspath(d) for d in user_dirs]
        self._pca = None
        self._presets = None
        self._cache: dict[str, Direction] = {}

    # bundled files -------------------------------------------------------------------------
    def _files(self, sub: str, ext: str) -> list[str]:
        folder = os.path.join(self.data_dir, sub)
        if not os.path.isdir(folder):
            return []
        return sorted(os.path.splitext(n)[0] for n in os.listdir(folder) if n.endswith(ext))

    @property
    def presets(self) -> dict[str, GanSpacePreset]:
        if self._presets is None:
            csv_path = os.path.join(self.data_dir, "gan_space", "ganspace_configs.csv")
            self._presets = read_ganspace_presets(csv_path) if os.path.isfile(csv_path) else {}
        return self._presets

    @property
    def pca(self) -> dict:
        if self._pca is None:
            self._pca = _read_pca(os.path.join(self.data_dir, "gan_space", "ffhq_pca.pt"))
        return self._pca

    def user_files(self) -> dict[str, str]:
        """{"user/<relative name>": path} for direction files in the user folders."""
        found: dict[str, str] = {}
        for root in self.user_dirs:
            if not os.path.isdir(root):
                continue
            for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
                dirnames.sort()
                for fn in sorted(filenames):
                    if fn.lower().endswith(DIRECTION_EXTS) and not fn.startswith("."):
                        rel = os.path.relpath(os.path.join(dirpath, fn), root)
                        key = "user/" + os.path.splitext(rel)[0].replace(os.sep, "/")
                        found.setdefault(key, os.path.join(dirpath, fn))
        return found

    def names(self) -> list[str]:
        """All loadable names: bundled (interfacegan, latent, ganspace presets), then user files."""
        return ([f"interfacegan/{n}" for n in self._files("interfacegan_directions", ".pt")]
                + [f"latent/{n}" for n in self._files("latent_directions", ".npy")]
                + [f"ganspace/{n}" for n in self.presets]
                + sorted(self.user_files()))

    # loading -------------------------------------------------------------------------------
    def load(self, name_or_path: str | os.PathLike) -> Direction:
        """A Direction by library name, or from a file path."""
        key = os.fspath(name_or_path)
        if key in self._cache:
            return self._cache[key]
        d = self._load(key)
        if d.kind != "user":  # bundled data never changes; user files may be replaced
            self._cache[key] = d
        return d

    def _load(self, key: str) -> Direction:
        kind, _, rest = key.partition("/")
        if kind == "interfacegan" and rest in self._files("interfacegan_directions", ".pt"):
            path = os.path.join(self.data_dir, "interfacegan_directions", rest + ".pt")
            return load_direction_file(path, key, "interfacegan")
        if kind == "latent" and rest in self._files("latent_directions", ".npy"):
            path = os.path.join(self.data_dir, "latent_directions", rest + ".npy")
            return load_direction_file(path, key, "latent")
        if kind == "ganspace" and rest in self.presets:
            p = self.presets[rest]
            return self.ganspace_component(p.pca_index, (p.layer_start, p.layer_end), key, p.strength)
        if kind == "ganspace" and rest.startswith("pc") and rest[2:].isdigit():
            return self.ganspace_component(int(rest[2:]))
        user = self.user_files()
        if key in user:
            return load_direction_file(user[key], key, "user")
        if os.path.isfile(key):
            return load_direction_file(key)
        close = difflib.get_close_matches(key, self.names(), n=3, cutoff=0.5)
        hint = f" Did you mean {', '.join(close)}?" if close else ""
        raise WPlusError(f"unknown direction '{key}': neither a library name nor a file.{hint}")

    def ganspace_component(self, index: int, layers=(0, NUM_LAYERS), name: str | None = None,
                           default_strength: float | None = None) -> Direction:
        """GANSpace component `index` as a Direction (relative step std*comp on every layer)."""
        pca = self.pca
        n = pca["comp"].shape[0]
        if not 0 <= index < n:
            raise WPlusError(f"GANSpace component {index} does not exist (0..{n - 1}).")
        comp, std = pca["comp"][index], float(pca["std"][index])
        vector = (std * comp).expand(NUM_LAYERS, LATENT_DIM).contiguous()
        return Direction(name or f"ganspace/pc{index}", "ganspace", vector, _layer_range(layers),
                         default_strength, PCAComponent(index, pca["mean"], comp, std),
                         os.path.join(self.data_dir, "gan_space", "ffhq_pca.pt"))


_DEFAULT: DirectionLibrary | None = None


def default_library() -> DirectionLibrary:
    global _DEFAULT
    if _DEFAULT is None:
        _DEFAULT = DirectionLibrary()
    return _DEFAULT


def list_directions() -> list[str]:
    return default_library().names()


def load_direction(name_or_path: str | os.PathLike) -> Direction:
    return default_library().load(name_or_path)


def load_direction_set(path: str | os.PathLike, library: DirectionLibrary | None = None) -> list[Direction]:
    """Directions from a file holding a list (or dict) of direction tensors, such as the reference's
    att_direction_scale.pth; entries equal to a bundled direction are named after it."""
    path = os.fspath(path)
    content, _ = read_tensor_file(path, "direction set")
    if isinstance(content, dict):
        items = [(str(k), v) for k, v in content.items()]
    elif isinstance(content, (list, tuple)):
        items = [(str(i), v) for i, v in enumerate(content)]
    else:
        items = [("0", content)]
    lib = library or default_library()
    known = [(n, lib.load(n).vector) for n in lib.names()
             if n.startswith(("interfacegan/", "latent/"))]
    stem = os.path.splitext(os.path.basename(path))[0]
    out = []
    for key, t in items:
        if not isinstance(t, (torch.Tensor, np.ndarray)):
            raise WPlusError(f"direction set '{path}' entry {key} is a {type(t).__name__}, not a tensor.")
        v = _as_direction_tensor(t, f"{path}[{key}]")
        label = next((n for n, kv in known if torch.allclose(v, kv, atol=1e-6)), None)
        name = f"{stem}/{key}" + (f" ({label})" if label else "")
        out.append(Direction(name, "user", v, source=path))
    return out


# ------------------------------------------------------------------------------ edit functions

def _direction(direction) -> Direction:
    return direction if isinstance(direction, Direction) else load_direction(direction)


def edit(w, direction, strength, layers=None, mode: str = "relative") -> torch.Tensor:
    """`direction` (a Direction, a library name or a file path) applied to `w` at `strength`."""
    return _direction(direction).apply(w, strength, layers=layers, mode=mode)


def edit_sweep(w, direction, strengths: Sequence[float], layers=None, mode: str = "relative") -> torch.Tensor:
    """One edit per strength for every sample: (B*S,18,512), sample-major (row b*S + k is
    sample b at strengths[k])."""
    w = check_wplus(w, "W+ latent to edit")
    s = _strengths(strengths, w.device)
    n = s.numel()
    return _direction(direction).apply(w.repeat_interleave(n, dim=0), s.repeat(w.shape[0]),
                                       layers=layers, mode=mode)


def sweep_strengths(low: float, high: float, count: int) -> list[float]:
    """`count` evenly spaced strengths from `low` to `high`, BOTH included (the reference's
    range(-L, L, 2) misses +L)."""
    if int(count) != count or count < 1:
        raise WPlusError(f"sweep count must be a whole number >= 1; got {count!r}.")
    if not (math.isfinite(low) and math.isfinite(high)):
        raise WPlusError(f"sweep ends must be finite; got {low!r}, {high!r}.")
    count = int(count)
    if count == 1:
        return [float(low)]
    return [float(low + (high - low) * k / (count - 1)) for k in range(count)]


def _layer_weights(weight, device) -> torch.Tensor:
    """Interpolation weight(s) -> (1,18,1) float32: one number, 4 token-group weights, or 18."""
    if isinstance(weight, torch.Tensor):
        vals = weight.detach().float().reshape(-1).tolist()
    elif np.ndim(weight) == 0:
        vals = [weight]
    else:
        vals = list(np.asarray(weight, dtype=np.float64).reshape(-1))
    try:
        vals = [float(v) for v in vals]
    except (TypeError, ValueError):
        raise WPlusError(f"interpolation weight must be numbers; got {weight!r}.") from None
    if not all(math.isfinite(v) for v in vals):
        raise WPlusError(f"interpolation weight must be finite; got {weight!r}.")
    if len(vals) == 1:
        per_layer = vals * NUM_LAYERS
    elif len(vals) == len(TOKEN_GROUPS):
        per_layer = [vals[g] for g, (a, b) in enumerate(TOKEN_GROUPS) for _ in range(a, b)]
    elif len(vals) == NUM_LAYERS:
        per_layer = vals
    else:
        raise WPlusError(f"interpolation weight must be 1 number, 4 (one per token group: layers "
                         f"0-3, 4-7, 8-11, 12-17) or 18 (one per layer); got {len(vals)}.")
    return torch.tensor(per_layer, dtype=torch.float32, device=device).view(1, NUM_LAYERS, 1)


def interpolate(w_a, w_b, weight) -> torch.Tensor:
    """(1-t)*w_a + t*w_b per layer: t=0 gives w_a, t=1 gives w_b exactly; t outside [0,1]
    extrapolates. Batches broadcast B vs 1. Result on w_a's device, in w_a's dtype."""
    w_a = check_wplus(w_a, "W+ latent A")
    w_b = check_wplus(w_b, "W+ latent B")
    t = _layer_weights(weight, w_a.device)
    a, b = _broadcast_batch(w_a.float(), w_b.to(w_a.device).float(), "W+ latent A", "W+ latent B")
    return torch.lerp(a, b, t.expand_as(a)).to(w_a.dtype)


NORMALIZE = ("overall", "per_layer", "none")


def direction_from_latents(a, b, normalize: str = "overall", name: str = "computed") -> Direction:
    """Direction from the W+ latents `a` towards `b`: mean(b) - mean(a), each set (N,18,512) or a
    list of latents.
    normalize="overall" (default): scaled so the mean squared per-layer norm is 1 (total norm
      sqrt(18)); keeps how the change spreads over layers, and a change equal on all layers gets
      unit norm per layer like the InterFaceGAN vectors, so strengths are comparable.
    "per_layer": every layer scaled to unit norm (layers that do not change stay zero; beware
      that this amplifies layers that barely differ). "none": the raw mean difference."""
    if normalize not in NORMALIZE:
        raise WPlusError(f"normalize must be one of {NORMALIZE}; got {normalize!r}.")

    def stack(x, what):
        if isinstance(x, (list, tuple)):
            if not x:
                raise WPlusError(f"{what} is empty.")
            x = torch.cat([check_wplus(v, f"{what}[{i}]").detach().cpu().float() for i, v in enumerate(x)])
        return check_wplus(x, what).detach().cpu().float()

    wa, wb = stack(a, "W+ latents A"), stack(b, "W+ latents B")
    diff = (wb.double().mean(0) - wa.double().mean(0))  # float64 keeps tiny differences exact
    total = float(diff.norm())
    if total < 1e-8:
        raise WPlusError("the two sets of W+ latents have the same mean; no direction between them.")
    if normalize == "overall":
        diff = diff * (math.sqrt(NUM_LAYERS) / total)
    elif normalize == "per_layer":
        norms = diff.norm(dim=1, keepdim=True)
        diff = torch.where(norms > 1e-8 * total, diff / norms.clamp_min(1e-30), torch.zeros_like(diff))
    return Direction(name, "computed", diff.float().contiguous())


def save_direction(path: str | os.PathLike, direction: Direction, overwrite: bool = False) -> str:
    """Write a direction's (18,512) float32 vector as .safetensors (key "direction"), so it can be
    put in a user folder. GANSpace absolute-mode data is not kept (the vector is its relative step)."""
    path = os.fspath(path)
    if not path.lower().endswith(".safetensors"):
        raise WPlusError(f"directions are saved as .safetensors; got '{path}'.")
    meta = {"name": direction.name, "kind": direction.kind,
            "layers": f"{direction.layers[0]},{direction.layers[1]}"}
    return save_safetensors_atomic(path, {"direction": direction.vector.float()}, meta, overwrite,
                                   "direction file")
