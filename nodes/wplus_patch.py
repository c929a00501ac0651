"""ComfyUI glue for the W+ branch: an APPLY_MODEL wrapper that patches the 16 attn2 sites per call.

Per model call the wrapper decides once (one scalar read of sigma) whether the start/end window
is active; outside it the model runs untouched. Inside it, each site's effective attn2 entry
(another pack's replace patch, or none) is wrapped, so the order relative to IP-Adapter-style
packs does not matter and LoRA-patched to_q/k/v/out compose for free. Two W+ wrappers in a row
add both branches to the same text-attention output (two identities, two masks).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension

from ..wplus_core.adapter import SITES, FoldedSite, WPlusAdapter
from ..wplus_core.errors import WPlusError
from ..wplus_core.latents import check_wplus

WRAPPER_KEY = "wplus_adapter"


def check_sd15_model(model) -> None:
    """Refuse models whose cross-attention is not SD1.5's 768-wide layout, before sampling."""
    base = getattr(model, "model", None)
    unet_config = getattr(getattr(base, "model_config", None), "unet_config", {}) or {}
    name = type(getattr(base, "model_config", None)).__name__
    ctx = unet_config.get("context_dim")
    if ctx != 768 or unet_config.get("model_channels") != 320:
        raise WPlusError(
            f"ApplyWPlusAdapter: the model ({name}, cross-attention width {ctx}) is not an "
            "SD1.5-family UNet. The W+ adapter was trained for SD1.5 (768-wide cross-attention); "
            "use an SD1.5 checkpoint (SDXL, SD2, SD3 and Flux are not supported).")


class WPlusPatch:
    """The APPLY_MODEL wrapper of one ApplyWPlusAdapter node."""

    def __init__(self, adapter: WPlusAdapter, cond_tokens: torch.Tensor, uncond_tokens: torch.Tensor,
                 weight: float, start_at: float = 0.0, end_at: float = 1.0, mask: torch.Tensor | None = None):
        self.sites = adapter.sites              # shared with the adapter: no weight copies
        self.tokens = torch.cat([cond_tokens, uncond_tokens]).float()  # rows 0..N-1 cond, N uncond
        self.n_cond = cond_tokens.shape[0]
        self.weight = float(weight)
        self.start_at, self.end_at = float(start_at), float(end_at)
        self.mask = None if mask is None else mask.float().reshape(-1, *mask.shape[-2:])
        self._window = None      # (model_sampling, sigma_start, sigma_end)
        self._folded = {}        # (block, heads, device, dtype) -> FoldedSite over all token rows
        self._selected = {}      # (block, heads, device, dtype, rows) -> FoldedSite per batch row
        self._masks = {}

    # -- when
    def _active(self, model, t) -> bool:
        ms = model.model_sampling
        if self._window is None or self._window[0] is not ms:
            self._window = (ms, ms.percent_to_sigma(self.start_at), ms.percent_to_sigma(self.end_at))
        _, s_start, s_end = self._window
        sigma = float(t.reshape(-1)[0])  # one host read per model call, none per layer
        return s_end <= sigma <= s_start

    # -- which token row each batch row uses
    def _rows(self, chunks, batch: int):
        per = batch // len(chunks)
        n = self.n_cond
        if n not in (1, per):
            raise WPlusError(f"ApplyWPlusAdapter: the WPLUS batch has {n} latents but the sampler's "
                             f"batch has {per} images. Give one W+ (used for every image) or exactly "
                             f"{per}, one per image.")
        rows = []
        for c in chunks:
            rows += [n] * per if c == 1 else (list(range(per)) if n == per else [0] * per)
        return rows[0] if len(set(rows)) == 1 else tuple(rows)

    def _site(self, block, rows, heads, device, dtype) -> FoldedSite:
        key = (block, heads, device, dtype, rows)
        sel = self._selected.get(key)
        if sel is None:
            fkey = key[:4]
            folded = self._folded.get(fkey)
            if folded is None:
                folded = FoldedSite(self.sites[block], self.tokens, heads, self.weight).to(device, dtype)
                self._folded[fkey] = folded
            index = rows if isinstance(rows, int) else torch.tensor(rows, device=device)
            sel = self._selected[key] = folded.select(index)
        return sel

    def _mask_for(self, text_out, extra_options, chunks: int):
        if self.mask is None:
            return None
        b, tokens = text_out.shape[:2]
        H, W = extra_options["original_shape"][-2:]
        for f in (1, 2, 4, 8, 16, 32):
            h, w = -(-H // f), -(-W // f)
            if h * w == tokens:
                break
        else:
            return None
        key = (h, w, b, text_out.device, text_out.dtype)
        m = self._masks.get(key)
        if m is None:
            m = F.interpolate(self.mask[:, None], size=(h, w), mode="bilinear", align_corners=False)
            m = m.reshape(m.shape[0], h * w, 1)
            if m.shape[0] != 1:
                if m.shape[0] * chunks != b:
                    raise WPlusError(f"ApplyWPlusAdapter: the attention mask batch ({m.shape[0]}) must "
                                     f"be 1 or the latent batch size ({b // chunks}).")
                m = m.repeat(chunks, 1, 1)
            m = self._masks[key] = m.to(text_out.device, text_out.dtype)
        return m

    def branch(self, block, text_out, extra_options):
        rows, chunks = extra_options["_wplus_rows"][id(self)]
        site = self._site(block, rows, extra_options["n_heads"], text_out.device, text_out.dtype)
        out = site.branch(text_out)
        m = self._mask_for(text_out, extra_options, chunks)
        return out if m is None else out * m

    # -- the wrapper
    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                 transformer_options={}, **kwargs):
        if self.weight == 0.0 or not self._active(executor.class_obj, t):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        to = dict(transformer_options)
        rows = dict(to.get("_wplus_rows", {}))
        chunks = to.get("cond_or_uncond") or [0]
        rows[id(self)] = (self._rows(chunks, x.shape[0]), len(chunks))
        to["_wplus_rows"] = rows
        replace = dict(to.get("patches_replace", {}))
        attn2 = dict(replace.get("attn2", {}))
        for s in SITES:
            key = (*s.block, 0)
            inner = attn2.get(key, attn2.get(s.block))
            attn2[key] = SiteAttention.wrap(inner, self, s.block)
        replace["attn2"] = attn2
        to["patches_replace"] = replace
        return executor(x, t, c_concat, c_crossattn, control, to, **kwargs)


class SiteAttention:
    """attn2 replacement: the inner attention (another pack's patch or the plain one) + W+ branches."""

    def __init__(self, inner, branches, block):
        self.inner, self.branches, self.block = inner, branches, block

    @classmethod
    def wrap(cls, inner, patch: WPlusPatch, block):
        if isinstance(inner, SiteAttention):  # stack identities on one text attention
            return cls(inner.inner, inner.branches + [patch], block)
        return cls(inner, [patch], block)

    def __call__(self, q, k, v, extra_options):
        if self.inner is not None:
            text_out = self.inner(q, k, v, extra_options)
        else:
            text_out = comfy_attention.optimized_attention(
                q, k, v, extra_options["n_heads"], attn_precision=extra_options.get("attn_precision"),
                transformer_options=extra_options)
        out = text_out
        for p in self.branches:
            out = out + p.branch(self.block, text_out, extra_options)
        return out


def apply_wplus(model, adapter: WPlusAdapter, wplus: torch.Tensor, weight: float = 1.0,
                start_at: float = 0.2, end_at: float = 1.0, mask: torch.Tensor | None = None):
    """Return a patched clone of ``model`` (the input model is never modified)."""
    check_sd15_model(model)
    w = check_wplus(wplus, "wplus")
    if not 0.0 <= start_at <= end_at <= 1.0:
        raise WPlusError(f"ApplyWPlusAdapter: start_at ({start_at}) must be <= end_at ({end_at}), "
                         "both between 0 and 1.")
    if mask is not None and mask.dim() not in (2, 3):
        raise WPlusError(f"ApplyWPlusAdapter: the attention mask has shape {tuple(mask.shape)}; "
                         "expected a MASK (H,W) or (B,H,W).")
    m = model.clone()
    if weight == 0.0:
        return m
    tokens = adapter.project(w)
    finite = torch.isfinite(tokens.float()).flatten(1).all(dim=1)
    if not bool(finite.all()):
        bad = [i for i, ok in enumerate(finite.tolist()) if not ok]
        raise WPlusError(
            f"ApplyWPlusAdapter: the wplus input projects to non-finite identity tokens (W+ {bad} of "
            f"{w.shape[0]}, largest |value| {float(w.abs().max()):.3g}; e4e latents stay within about 10). "
            "Lower the edit strength or interpolation weight that made it, or invert the photo again.")
    patch = WPlusPatch(adapter, tokens, adapter.uncond_tokens(), weight, start_at, end_at, mask)
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, patch)
    return m
