"""Nodes: W+ adapter loader and ApplyWPlusAdapter (thin: the maths is in wplus_core.adapter)."""
from __future__ import annotations

from ..wplus_core.adapter import load_wplus_adapter
from . import paths
from .wplus_patch import apply_wplus

CATEGORY = "W+ Adapter"


class WPlusAdapterLoader:
    DESCRIPTION = ("Loads a W+ adapter (wplus_adapter.bin for in-the-wild prompts, "
                   "wplus_adapter_stage1.bin for aligned face close-ups) from models/wplus. "
                   "Official files missing locally are downloaded (the release publishes no checksum: the file is "
                   "checked by its zip structure and strict key/shape loading).")

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"adapter_name": (paths.choices("wplus"), {
            "tooltip": "File in models/wplus. Stage-2 (wplus_adapter.bin) suits any prompt; "
                       "stage-1 suits aligned face close-ups (use weight 0.8)."})}}

    RETURN_TYPES = ("WPLUS_ADAPTER",)
    RETURN_NAMES = ("wplus_adapter",)
    OUTPUT_TOOLTIPS = ("The W+ projection and the 16 cross-attention adapters.",)
    FUNCTION = "load"
    CATEGORY = CATEGORY

    def load(self, adapter_name):
        return (load_wplus_adapter(paths.resolve("wplus", adapter_name)),)


class ApplyWPlusAdapter:
    DESCRIPTION = ("Injects a W+ identity into every cross-attention layer of an SD1.5-family model "
                   "(decoupled residual attention of the W+ adapter paper). Composes with LoRAs, "
                   "ControlNets and other attention patches; the input model is not modified.")

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "An SD1.5-family model (768-wide cross-attention)."}),
                "wplus_adapter": ("WPLUS_ADAPTER", {"tooltip": "From W+ Adapter Loader."}),
                "wplus": ("WPLUS", {"tooltip": "W+ latent(s) (B,18,512): one for all images, or one per latent."}),
                "weight": ("FLOAT", {"default": 1.0, "min": -1.0, "max": 3.0, "step": 0.05,
                                     "tooltip": "Strength of the identity. Reference: 1.0 (stage 2), 0.8 (stage 1)."}),
                "start_at": ("FLOAT", {"default": 0.2, "min": 0.0, "max": 1.0, "step": 0.01,
                                       "tooltip": "Delayed subject conditioning: the identity joins after this "
                                                  "fraction of the schedule (reference 0.2), so the prompt sets the layout first."}),
                "end_at": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1.0, "step": 0.01,
                                     "tooltip": "The identity stops after this fraction of the schedule."}),
            },
            "optional": {
                "attn_mask": ("MASK", {"tooltip": "Restrict the identity to a region (white = identity). "
                                                  "Use two nodes with two masks for two people."}),
            },
        }

    RETURN_TYPES = ("MODEL",)
    OUTPUT_TOOLTIPS = ("A patched copy of the model.",)
    FUNCTION = "apply"
    CATEGORY = CATEGORY

    def apply(self, model, wplus_adapter, wplus, weight, start_at, end_at, attn_mask=None):
        return (apply_wplus(model, wplus_adapter, wplus, weight, start_at, end_at, attn_mask),)


NODE_CLASS_MAPPINGS = {
    "WPlusAdapterLoader": WPlusAdapterLoader,
    "ApplyWPlusAdapter": ApplyWPlusAdapter,
}
NODE_DISPLAY_NAME_MAPPINGS = {
    "WPlusAdapterLoader": "W+ Adapter Loader",
    "ApplyWPlusAdapter": "W+ Apply Adapter",
}
