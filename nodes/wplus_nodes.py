"""Nodes on W+ latents: edit, interpolate, save, load (the maths is in wplus_core.directions)."""
from __future__ import annotations

import math
import os
import re

import folder_paths

from ..wplus_core import directions
from ..wplus_core.errors import WPlusError
from ..wplus_core.latents import check_wplus, load_wplus, next_free_path, save_wplus, wplus_metadata
from ..wplus_core.version import __version__
from . import paths
from .model_holder import LRU

CATEGORY = "W+ Adapter"
WPLUS_TIP = "W+ latents (B,18,512) from E4EInvert, Load W+ or another W+ node."


_libraries = LRU(4)  # one library per set of user folders, so its cache of bundled directions hits


def library() -> directions.DirectionLibrary:
    dirs = tuple(folder_paths.get_folder_paths("wplus_directions"))
    return _libraries.get(dirs, lambda: directions.DirectionLibrary(user_dirs=dirs))


_MAX_STRENGTH = 1e6  # far beyond any useful edit, far below float32 overflow
_RANGE = re.compile(r"^\s*(-?[\d.]+)\s*\.\.\s*(-?[\d.]+)\s*(?:/\s*(\d+))?\s*$")


def parse_strengths(text: str) -> list[float]:
    """"2" -> [2]; "-4, -2, 0, 2, 4" -> a list; "-4..4/5" -> 5 values from -4 to 4 inclusive."""
    m = _RANGE.match(str(text))
    try:
        if m:
            return directions.sweep_strengths(float(m.group(1)), float(m.group(2)), int(m.group(3) or 5))
        values = [float(v) for v in re.split(r"[,\s;]+", str(text).strip()) if v]
    except ValueError:
        values = []
    if not values:
        raise WPlusError(f"WPlusEdit: strengths '{text}' is not understood. Write one number (1.5), "
                         "a list (-4, -2, 0, 2, 4) or a range with a count (-4..4/5).")
    if not all(math.isfinite(v) and abs(v) <= _MAX_STRENGTH for v in values):
        raise WPlusError(f"WPlusEdit: strengths '{text}' holds a value that is not a finite number of "
                         f"at most {_MAX_STRENGTH:g} in size; typical strengths lie between -5 and 5.")
    return values


class WPlusEdit:
    DESCRIPTION = ("Moves W+ along an editing direction (age, smile, pose, expression, GANSpace "
                   "presets, your files in models/wplus/directions). Several strengths make a batch "
                   "(an edit sweep in one run).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wplus": ("WPLUS", {"tooltip": WPLUS_TIP}),
            "direction": (library().names(), {"default": "interfacegan/smile",
                                              "tooltip": "interfacegan/* and latent/* move all 18 layers; "
                                                         "ganspace/* presets move their own layer range."}),
            "strengths": ("STRING", {"default": "2.0", "tooltip": "One number, a list '-4, -2, 0, 2, 4', or "
                                                                  "a range '-4..4/5' (both ends included). "
                                                                  "Each strength gives one W+ in the batch."}),
            "layer_start": ("INT", {"default": -1, "min": -1, "max": 17,
                                    "tooltip": "First W+ layer to move; -1 = the direction's default."}),
            "layer_end": ("INT", {"default": -1, "min": -1, "max": 18,
                                  "tooltip": "Layer after the last one to move; -1 = the direction's default."}),
            "mode": (["relative", "absolute"], {"tooltip": "relative: w + s*d. absolute (GANSpace only, the "
                                                           "reference's formula): set the component to s."}),
        }, "optional": {
            "custom_direction": ("WPLUS_DIRECTION", {"tooltip": "A direction from W+ Direction from Examples; "
                                                                "when connected it is used instead of 'direction'."}),
        }}

    RETURN_TYPES = ("WPLUS",)
    RETURN_NAMES = ("wplus",)
    OUTPUT_TOOLTIPS = ("Edited W+: one per input latent and strength (latent-major).",)
    FUNCTION = "edit"
    CATEGORY = CATEGORY

    def edit(self, wplus, direction, strengths, layer_start, layer_end, mode, custom_direction=None):
        d = library().load(direction) if custom_direction is None else custom_direction
        direction = d.name if custom_direction is not None else direction
        layers = None
        if layer_start >= 0 or layer_end >= 0:
            start = d.layers[0] if layer_start < 0 else layer_start
            end = d.layers[1] if layer_end < 0 else layer_end
            if not 0 <= start < end <= 18:
                raise WPlusError(f"WPlusEdit: layer_start {start} must be below layer_end {end}: layers "
                                 "layer_start..layer_end-1 are moved, and -1 takes the direction's own value "
                                 f"('{direction}' moves layers {d.layers[0]}..{d.layers[1] - 1}).")
            layers = (start, end)
        values = parse_strengths(strengths)
        return (directions.edit_sweep(check_wplus(wplus, "wplus"), d, values, layers=layers, mode=mode),)


class WPlusInterpolate:
    DESCRIPTION = ("Mixes two identities: (1-t)*A + t*B. Optional per-group weights act on the W+ "
                   "layers behind each of the adapter's 4 tokens (coarse 0-3: pose/shape, 4-7, 8-11, "
                   "fine 12-17: colour/texture).")

    @classmethod
    def INPUT_TYPES(cls):
        group = lambda tip: ("FLOAT", {"default": -1.0, "min": -1.0, "max": 2.0, "step": 0.05,
                                       "tooltip": tip + " -1 = use 'weight'."})
        return {"required": {
            "wplus_a": ("WPLUS", {"tooltip": WPLUS_TIP}),
            "wplus_b": ("WPLUS", {"tooltip": WPLUS_TIP}),
            "weight": ("FLOAT", {"default": 0.5, "min": -1.0, "max": 2.0, "step": 0.05,
                                 "tooltip": "0 = A, 1 = B; outside [0,1] extrapolates."}),
            "layers_0_3": group("Weight for layers 0-3 (coarse: pose, face shape)."),
            "layers_4_7": group("Weight for layers 4-7 (middle: features, expression)."),
            "layers_8_11": group("Weight for layers 8-11 (fine features)."),
            "layers_12_17": group("Weight for layers 12-17 (finest: colour, texture)."),
        }}

    RETURN_TYPES = ("WPLUS",)
    RETURN_NAMES = ("wplus",)
    FUNCTION = "mix"
    CATEGORY = CATEGORY

    def mix(self, wplus_a, wplus_b, weight, layers_0_3, layers_4_7, layers_8_11, layers_12_17):
        groups = [weight if g < 0 else g for g in (layers_0_3, layers_4_7, layers_8_11, layers_12_17)]
        return (directions.interpolate(wplus_a, wplus_b, groups),)


class WPlusSave:
    DESCRIPTION = "Saves W+ latents as .safetensors (with metadata) under output/; never overwrites a file."

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "wplus": ("WPLUS", {"tooltip": WPLUS_TIP}),
            "filename_prefix": ("STRING", {"default": "wplus/face",
                                           "tooltip": "Path under the output folder; a counter is appended."}),
        }}

    RETURN_TYPES = ()
    OUTPUT_NODE = True
    FUNCTION = "save"
    CATEGORY = CATEGORY

    def save(self, wplus, filename_prefix):
        out_dir = folder_paths.get_output_directory()
        try:
            path = next_free_path(out_dir, filename_prefix)
        except WPlusError as e:
            raise WPlusError(f"WPlusSave: filename_prefix '{filename_prefix}' points outside the output "
                             f"folder ({out_dir}); use a path inside it, such as 'wplus/face'.") from e
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_wplus(path, wplus, wplus_metadata(pack_version=__version__))
        rel = os.path.relpath(path, out_dir)
        return {"ui": {"text": [rel]}}


class WPlusLoad:
    DESCRIPTION = ("Loads W+ latents: .safetensors saved by Save W+, the reference's .pth latents, "
                   "or .npy (from models/wplus/latents or output/wplus).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"latent_file": (sorted(paths.own_files("wplus_latents")),
                                             {"tooltip": "Files in models/wplus/latents and output/wplus."})}}

    RETURN_TYPES = ("WPLUS",)
    RETURN_NAMES = ("wplus",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    @classmethod
    def IS_CHANGED(cls, latent_file):
        path = folder_paths.get_full_path("wplus_latents", latent_file)
        return os.path.getmtime(path) if path else latent_file

    def load(self, latent_file):
        return (load_wplus(paths.resolve("wplus_latents", latent_file))[0],)


NODE_CLASS_MAPPINGS = {
    "WPlusEdit": WPlusEdit,
    "WPlusInterpolate": WPlusInterpolate,
    "WPlusSave": WPlusSave,
    "WPlusLoad": WPlusLoad,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "WPlusEdit": "W+ Edit",
    "WPlusInterpolate": "W+ Interpolate",
    "WPlusSave": "W+ Save",
    "WPlusLoad": "W+ Load",
}
