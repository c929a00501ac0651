"""wplus_core: the W+ adapter's models and maths, with no ComfyUI import.

Public API (names are stable):
    load_e4e(path_or_state_dict, device=..., dtype=...)   -> E4E (.encoder, .generator, .latent_avg,
                                                             .invert(images), .synthesize(w, size))
    load_wplus_adapter(path_or_state_dict)                -> WPlusAdapter (.project(w), per-site weights)
    ffhq_quad(points)                                     -> (4,2) FFHQ crop quad
    align_face(image, points, size)                       -> aligned crop (see alignment.py)
Submodules hold the rest (detection, parsing, directions, latents, download).
"""
from .errors import WPlusError

__all__ = ["WPlusError", "load_e4e", "load_wplus_adapter", "ffhq_quad", "align_face"]


def __getattr__(name):  # lazy: importing the package stays cheap
    if name == "load_e4e":
        from .e4e import load_e4e
        return load_e4e
    if name == "load_wplus_adapter":
        from .adapter import load_wplus_adapter
        return load_wplus_adapter
    if name in ("ffhq_quad", "align_face"):
        from . import alignment
        return getattr(alignment, name)
    raise AttributeError(name)
