"""ComfyUI W+ Adapter: identity-preserving, editable faces from StyleGAN's W+ space in SD1.5.

ComfyUI imports this file; it only registers nodes (no model is loaded at import): the V3
extension ``comfy_entrypoint`` lists them.
"""
from .nodes import comfy_entrypoint

# served by ComfyUI at /extensions/<pack folder>/: docs/<NODE_KEY>.md are the pages of the
# frontend's node docs panel (images next to them, referenced relatively)
WEB_DIRECTORY = "./web"

__all__ = ["comfy_entrypoint", "WEB_DIRECTORY"]
