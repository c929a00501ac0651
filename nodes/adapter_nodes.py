"""Nodes: W+ adapter loader and ApplyWPlusAdapter (thin: the maths is in wplus_core.adapter)."""
from __future__ import annotations

from ..wplus_core.adapter import load_wplus_adapter
from ..wplus_core.model_files import name_of
from . import paths
from .common import CATEGORY, WPlus, WPlusAdapter, io
from .wplus_patch import apply_wplus

STAGE2, STAGE1 = name_of("wplus_adapter"), name_of("wplus_adapter_stage1")


class WPlusAdapterLoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusAdapterLoader",
            display_name="W+ Adapter Loader",
            category=CATEGORY,
            description=f"Loads a W+ adapter ({STAGE2} for in-the-wild prompts, {STAGE1} for aligned face "
                        "close-ups) from models/wplus. Official files missing locally are downloaded (the "
                        "release publishes no checksum: the file is checked by its zip structure and strict "
                        "key/shape loading).",
            inputs=[io.Combo.Input("adapter_name", options=paths.choices("wplus"),
                                   tooltip=f"File in models/wplus. Stage-2 ({STAGE2}) suits any prompt; "
                                           "stage-1 suits aligned face close-ups (use weight 0.8).")],
            outputs=[WPlusAdapter.Output(display_name="wplus_adapter",
                                         tooltip="The W+ projection and the 16 cross-attention adapters.")],
        )

    @classmethod
    def execute(cls, adapter_name):
        return io.NodeOutput(load_wplus_adapter(paths.resolve("wplus", adapter_name)))


class ApplyWPlusAdapter(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="ApplyWPlusAdapter",
            display_name="W+ Apply Adapter",
            category=CATEGORY,
            description="Injects a W+ identity into every cross-attention layer of an SD1.5-family model "
                        "(decoupled residual attention of the W+ adapter paper). Composes with LoRAs, "
                        "ControlNets and other attention patches; the input model is not modified.",
            inputs=[
                io.Model.Input("model", tooltip="An SD1.5-family model (768-wide cross-attention)."),
                WPlusAdapter.Input("wplus_adapter", tooltip="From W+ Adapter Loader."),
                WPlus.Input("wplus", tooltip="W+ latent(s) (B,18,512): one for all images, or one per latent."),
                io.Float.Input("weight", default=1.0, min=-1.0, max=3.0, step=0.05,
                               tooltip="Strength of the identity. Reference: 1.0 (stage 2), 0.8 (stage 1)."),
                io.Float.Input("start_at", default=0.2, min=0.0, max=1.0, step=0.01,
                               tooltip="Delayed subject conditioning: the identity joins after this fraction "
                                       "of the schedule (reference 0.2), so the prompt sets the layout first."),
                io.Float.Input("end_at", default=1.0, min=0.0, max=1.0, step=0.01,
                               tooltip="The identity stops after this fraction of the schedule."),
                io.Mask.Input("attn_mask", optional=True,
                              tooltip="Restrict the identity to a region (white = identity). "
                                      "Use two nodes with two masks for two people."),
            ],
            outputs=[io.Model.Output(tooltip="A patched copy of the model.")],
        )

    @classmethod
    def execute(cls, model, wplus_adapter, wplus, weight, start_at, end_at, attn_mask=None):
        return io.NodeOutput(apply_wplus(model, wplus_adapter, wplus, weight, start_at, end_at, attn_mask))


NODES = [WPlusAdapterLoader, ApplyWPlusAdapter]
