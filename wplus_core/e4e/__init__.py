"""e4e (Encoder4Editing) inversion and the StyleGAN2 decoder of ``e4e_ffhq_encode.pt``.

    from wplus_core.e4e import load_e4e
    e4e = load_e4e(path_or_state_dict, device=None, dtype=None)   # -> E4E (an nn.Module)
    e4e.encoder, e4e.generator, e4e.latent_avg                      # (18,512) float32
    w = e4e.invert(images)            # (B,3,256,256) in [-1,1] -> (B,18,512) float32
    img = e4e.synthesize(w, size=1024)  # -> (B,3,size,size) float32 in [-1,1]

encoder.py / stylegan2.py hold the architectures (module names = checkpoint keys), model.py the
checkpoint recognition and the E4E wrapper. Pure PyTorch: no compiled extension.
"""
from .encoder import Encoder4Editing
from .model import E4E, E4E_INPUT_SIZE, N_STYLES, STYLEGAN_SIZE, load_e4e, split_e4e_checkpoint
from .stylegan2 import Generator

__all__ = ["E4E", "Encoder4Editing", "Generator", "load_e4e", "split_e4e_checkpoint",
           "E4E_INPUT_SIZE", "N_STYLES", "STYLEGAN_SIZE"]
