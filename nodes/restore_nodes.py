"""W+ Restore Face (PSFRGAN): the reference's ``-s`` restoration of aligned faces before e4e.

Thin adapter over wplus_core.restoration: IMAGE <-> tensors, the models/psfrgan folder (the
official file is downloaded on first use), the 46 M-parameter generator held like ComfyUI's own
models (nodes/model_holder.py: a ModelPatcher moved to the GPU for the run, evicted under VRAM
pressure, freed by 'Unload Models'), progress and interrupts. The guide is the ParseNet of W+ Face
Align (models/facexlib/parsing_parsenet.pth).
"""
from __future__ import annotations

import os

import torch

import comfy.model_management as mm
import comfy.utils

from ..wplus_core.errors import WPlusError
from ..wplus_core.restoration import PSFRGAN_FILE, load_psfrgan
from . import model_holder, paths
from .common import CATEGORY, io, precision_input
from .face_nodes import parser_patcher


def restorer_patcher(psfrgan_name: str, precision: str = "auto"):
    """The ModelPatcher of the generator for this file and precision (built on the CPU)."""
    path = paths.resolve("psfrgan", psfrgan_name)
    dtype = model_holder.dtype_for(precision)
    return model_holder.managed("psfrgan", os.path.basename(path), os.path.dirname(path),
                                lambda: load_psfrgan(path, device="cpu", dtype=dtype), dtype=dtype,
                                stamp=model_holder.file_stamp(path))


def get_restorer(psfrgan_name: str, precision: str = "auto"):
    """The generator for this file and precision, loaded onto the torch device by ComfyUI."""
    return model_holder.use(restorer_patcher(psfrgan_name, precision))


class WPlusRestoreFace(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusRestoreFace",
            display_name="W+ Restore Face (PSFRGAN)",
            category=CATEGORY,
            description="Restores blurry, small or compressed faces with PSFRGAN, guided by the face parsing of "
                        "the same crop: the reference's -s step, between W+ Face Align and W+ e4e Invert. Each "
                        "face is restored at 512 px and returned at its own size.",
            inputs=[
                io.Image.Input("image", tooltip="FFHQ-aligned faces (the 'aligned' output of W+ Face Align), "
                                                "any square size."),
                io.Combo.Input("psfrgan_name", options=paths.choices("psfrgan"),
                               tooltip=f"PSFRGAN generator in models/psfrgan; {PSFRGAN_FILE} is downloaded on "
                                       "first use (NTU S-Lab License 1.0, non-commercial)."),
                io.Float.Input("strength", default=1.0, min=0.0, max=1.0, step=0.05,
                               tooltip="1 = the restored face (the reference), 0 = the input unchanged; "
                                       "in between blends the two."),
                precision_input(),
            ],
            outputs=[io.Image.Output(display_name="restored",
                                     tooltip="The restored faces, same size and order as the input.")],
        )

    @classmethod
    def execute(cls, image, psfrgan_name=PSFRGAN_FILE, strength=1.0, precision="auto"):
        if image.ndim != 4 or image.shape[1] != image.shape[2]:
            raise WPlusError(f"W+ Restore Face: the image is {image.shape[2]}x{image.shape[1]}; PSFRGAN needs "
                             "square FFHQ-aligned faces. Connect the 'aligned' output of W+ Face Align.")
        if strength <= 0:  # loads nothing: model_files.LOADS_NOTHING_AT says so to the CLI's file check
            return io.NodeOutput(image)
        # both loaded at once (loading one never evicts the other); PSFRGAN was trained on
        # ParseNet's labels
        model, parser = model_holder.use(restorer_patcher(psfrgan_name, precision), parser_patcher("parsenet"))
        total = image.shape[0]
        bar = comfy.utils.ProgressBar(total)
        out = []
        for i in range(total):  # one face at a time: bounded memory, progress and interrupts per face
            mm.throw_exception_if_processing_interrupted()
            face = image[i:i + 1].float()
            face = face[..., :3] if face.shape[-1] >= 3 else face[..., :1].expand(-1, -1, -1, 3)
            x = face.movedim(-1, 1) * 2 - 1
            y = model.restore_aligned(x.to(model.device), parser, strength=strength)
            out.append(((y + 1) * 0.5).clamp_(0, 1).movedim(1, -1).to(mm.intermediate_device()))
            bar.update(1)
        return io.NodeOutput(torch.cat(out))


NODES = [WPlusRestoreFace]
