"""ComfyUI W+ Adapter: identity-preserving, editable faces from StyleGAN's W+ space in SD1.5.

ComfyUI imports this file; it only registers nodes (no model is loaded at import).
"""
from .nodes import NODE_CLASS_MAPPINGS, NODE_DISPLAY_NAME_MAPPINGS

__all__ = ["NODE_CLASS_MAPPINGS", "NODE_DISPLAY_NAME_MAPPINGS"]
