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
from .common import CATEGORY, WPLUS_TIP, WPlus, WPlusDirection, io
from .model_holder import LRU


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


class WPlusEdit(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusEdit",
            display_name="W+ Edit",
            category=CATEGORY,
            description="Moves W+ along an editing direction (age, smile, pose, expression, GANSpace presets, "
                        "your files in models/wplus/directions). Several strengths make a batch (an edit "
                        "sweep in one run).",
            inputs=[
                WPlus.Input("wplus", tooltip=WPLUS_TIP),
                io.Combo.Input("direction", options=library().names(), default="interfacegan/smile",
                               tooltip="interfacegan/* and latent/* move all 18 layers; "
                                       "ganspace/* presets move their own layer range."),
                io.String.Input("strengths", default="2.0",
                                tooltip="One number, a list '-4, -2, 0, 2, 4', or a range '-4..4/5' (both ends "
                                        "included). Each strength gives one W+ in the batch."),
                io.Int.Input("layer_start", default=-1, min=-1, max=17,
                             tooltip="First W+ layer to move; -1 = the direction's default."),
                io.Int.Input("layer_end", default=-1, min=-1, max=18,
                             tooltip="Layer after the last one to move; -1 = the direction's default."),
                io.Combo.Input("mode", options=["relative", "absolute"],
                               tooltip="relative: w + s*d. absolute (GANSpace only, the reference's formula): "
                                       "set the component to s."),
                WPlusDirection.Input("custom_direction", optional=True,
                                     tooltip="A direction from W+ Direction from Examples; when connected it "
                                             "is used instead of 'direction'."),
            ],
            outputs=[WPlus.Output(display_name="wplus",
                                  tooltip="Edited W+: one per input latent and strength (latent-major).")],
        )

    @classmethod
    def execute(cls, wplus, direction, strengths, layer_start, layer_end, mode, custom_direction=None):
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
        return io.NodeOutput(directions.edit_sweep(check_wplus(wplus, "wplus"), d, values, layers=layers, mode=mode))


def _group(name: str, tip: str) -> io.Float.Input:
    return io.Float.Input(name, default=-1.0, min=-1.0, max=2.0, step=0.05, tooltip=tip + " -1 = use 'weight'.")


class WPlusInterpolate(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusInterpolate",
            display_name="W+ Interpolate",
            category=CATEGORY,
            description="Mixes two identities: (1-t)*A + t*B. Optional per-group weights act on the W+ layers "
                        "behind each of the adapter's 4 tokens (coarse 0-3: pose/shape, 4-7, 8-11, fine "
                        "12-17: colour/texture).",
            inputs=[
                WPlus.Input("wplus_a", tooltip=WPLUS_TIP),
                WPlus.Input("wplus_b", tooltip=WPLUS_TIP),
                io.Float.Input("weight", default=0.5, min=-1.0, max=2.0, step=0.05,
                               tooltip="0 = A, 1 = B; outside [0,1] extrapolates."),
                _group("layers_0_3", "Weight for layers 0-3 (coarse: pose, face shape)."),
                _group("layers_4_7", "Weight for layers 4-7 (middle: features, expression)."),
                _group("layers_8_11", "Weight for layers 8-11 (fine features)."),
                _group("layers_12_17", "Weight for layers 12-17 (finest: colour, texture)."),
            ],
            outputs=[WPlus.Output(display_name="wplus")],
        )

    @classmethod
    def execute(cls, wplus_a, wplus_b, weight, layers_0_3, layers_4_7, layers_8_11, layers_12_17):
        groups = [weight if g < 0 else g for g in (layers_0_3, layers_4_7, layers_8_11, layers_12_17)]
        return io.NodeOutput(directions.interpolate(wplus_a, wplus_b, groups))


class WPlusSave(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusSave",
            display_name="W+ Save",
            category=CATEGORY,
            description="Saves W+ latents as .safetensors (with metadata) under output/; never overwrites a file.",
            inputs=[
                WPlus.Input("wplus", tooltip=WPLUS_TIP),
                io.String.Input("filename_prefix", default="wplus/face",
                                tooltip="Path under the output folder; a counter is appended."),
            ],
            outputs=[],
            is_output_node=True,
        )

    @classmethod
    def execute(cls, wplus, filename_prefix):
        out_dir = folder_paths.get_output_directory()
        try:
            path = next_free_path(out_dir, filename_prefix)
        except WPlusError as e:
            raise WPlusError(f"WPlusSave: filename_prefix '{filename_prefix}' points outside the output "
                             f"folder ({out_dir}); use a path inside it, such as 'wplus/face'.") from e
        os.makedirs(os.path.dirname(path), exist_ok=True)
        save_wplus(path, wplus, wplus_metadata(pack_version=__version__))
        return io.NodeOutput(ui={"text": [os.path.relpath(path, out_dir)]})


class WPlusLoad(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusLoad",
            display_name="W+ Load",
            category=CATEGORY,
            description="Loads W+ latents: .safetensors saved by Save W+, the reference's .pth latents, or "
                        ".npy (from models/wplus/latents or output/wplus).",
            inputs=[io.Combo.Input("latent_file", options=sorted(paths.own_files("wplus_latents")),
                                   tooltip="Files in models/wplus/latents and output/wplus.")],
            outputs=[WPlus.Output(display_name="wplus")],
        )

    @classmethod
    def fingerprint_inputs(cls, latent_file):
        path = folder_paths.get_full_path("wplus_latents", latent_file)
        return os.path.getmtime(path) if path else latent_file

    @classmethod
    def execute(cls, latent_file):
        return io.NodeOutput(load_wplus(paths.resolve("wplus_latents", latent_file))[0])


NODES = [WPlusEdit, WPlusInterpolate, WPlusSave, WPlusLoad]
