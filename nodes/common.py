"""What the pack's nodes share: ComfyUI's V3 node API, the category, the socket types and tooltips.

``comfy_api.v0_0_2`` is the versioned API of every supported host (ComfyUI 0.3.64, 0.28, 0.33);
its ``io`` is each host's own, so the nodes use only what all three have.
"""
from __future__ import annotations

from comfy_api.v0_0_2 import ComfyExtension, io  # noqa: F401  (re-exported for the node modules)

CATEGORY = "W+ Adapter"

# the pack's own socket types (the names are the workflows' link types: never rename them)
WPlus = io.Custom("WPLUS")
WPlusAdapter = io.Custom("WPLUS_ADAPTER")
E4EModel = io.Custom("E4E_MODEL")
WPlusCrop = io.Custom("WPLUS_CROP")
WPlusDirection = io.Custom("WPLUS_DIRECTION")

WPLUS_TIP = "W+ latents (B,18,512) from W+ e4e Invert, W+ Load or another W+ node."
PRECISIONS = ["auto", "fp32", "fp16", "bf16"]
PRECISION_TIP = "auto: fp16 on a GPU, fp32 on the CPU."


def precision_input() -> io.Combo.Input:
    return io.Combo.Input("precision", options=PRECISIONS, tooltip=PRECISION_TIP)


def node_id(cls) -> str | None:
    """The UNIQUE_ID of the node being run (None when called outside a prompt, e.g. by a test)."""
    return getattr(cls.hidden, "unique_id", None)
