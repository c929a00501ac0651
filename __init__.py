"""ComfyUI W+ Adapter: identity-preserving, editable faces from StyleGAN's W+ space in SD1.5.

ComfyUI imports this file; it only registers nodes (no model is loaded at import).
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

# served by ComfyUI at /extensions/<pack folder>/: docs/<NODE_KEY>.md are the pages of the
# frontend's node docs panel (images next to them, referenced relatively)
WEB_DIRECTORY = "./web"

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS", "WEB_DIRECTORY"]
