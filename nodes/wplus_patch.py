"""ComfyUI glue for the W+ branch: an APPLY_MODEL wrapper that patches the 16 attn2 sites per call.

Per model call the wrapper decides once whether the start/end window is active (one host read of
sigma, none when the window is the whole schedule); outside it the model runs untouched. Inside
it, each site's effective attn2 entry (another pack's replace patch, or none) is wrapped, so the
order relative to IP-Adapter-style packs does not matter and LoRA-patched to_q/k/v/out compose for
free. Two W+ wrappers in a row add both branches to the same text-attention output (two
identities, two masks).

Why it is shaped this way (measured on an H200, where a step is bound by dispatching operations):
- Everything that depends only on the run (the batch rows' token sets, masks per resolution,
  scratch buffers) is built once into a ``_Plan`` and reused by every step; a site then dispatches
  three operations (``wplus_core.adapter.add_branch``) and looks nothing up by device or dtype.
- The objects put into ``transformer_options`` are the same from call to call, and everything that
  changes between calls is a tensor. ComfyUI's ``TorchCompileModel`` tells dynamo to ignore every
  guard on ``transformer_options``, so a compiled graph is reused whatever that dict holds: the
  pack therefore names its patch structure in an extra keyword argument of the diffusion model,
  whose keys dynamo does guard (``_compile_marker``). A graph traced without the W+ branch (before
  the window opened, or before ApplyWPlusAdapter was added) is then never reused for a call that
  needs it, and a new identity with the same structure reuses the compiled graph (its tensors are
  read per call).
"""
from __future__ import annotations

import hashlib
import logging

import torch
import torch.nn.functional as F

import comfy.ldm.modules.attention as comfy_attention
import comfy.patcher_extension

from ..wplus_core.adapter import SITES, FoldedSite, Scratch, WPlusAdapter, add_branch
from ..wplus_core.errors import WPlusError
from ..wplus_core.latents import check_wplus

WRAPPER_KEY = "wplus_adapter"
COMPILE_WRAPPER_KEY = "torch.compile"  # comfy_api.torch_helpers.torch_compile.COMPILE_KEY
MARKER_PREFIX = "wplus_adapter_structure_"
PLANS_KEPT = 4  # batch layouts whose plans are kept per patch
ALWAYS = (999999999.0, 0.0)  # percent_to_sigma(0) and (1): the whole schedule
_is_compiling = getattr(getattr(torch, "compiler", None), "is_compiling", None) or (lambda: False)

log = logging.getLogger(__name__)


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


def site_heads(model) -> tuple:
    """Attention heads of each of the 16 sites, from the UNet's own config (SD1.5: 8 everywhere)."""
    cfg = model.model.model_config.unet_config
    heads, head_channels = cfg.get("num_heads", -1), cfg.get("num_head_channels", -1)
    return tuple(heads if heads and heads > 0 else s.hidden // head_channels for s in SITES)


class _Plan:
    """What one W+ patch needs for the calls of one run: per site the (A, Vb) of the batch rows in
    the UNet's device and dtype, the mask per resolution, and scratch buffers per resolution."""

    def __init__(self, patch: "WPlusPatch", rows: tuple, chunks: int, hw: tuple, device, dtype):
        folded = patch.folded(device)
        self.A, self.Vb = [], []
        for f in folded:
            a, vb = f.rows(rows, device, dtype)
            self.A.append(a)
            self.Vb.append(vb)
        self.heads = patch.heads
        self.patch, self.batch, self.chunks, self.hw, self.device, self.dtype = patch, len(rows), chunks, hw, device, dtype
        levels = [(-(-hw[0] // f), -(-hw[1] // f)) for f in (1, 2, 4, 8)]  # the UNet's resolutions
        self.scratch, self.masks = {}, {}
        for h, w in levels:
            for k in set(self.heads):
                self.scratch[(h * w, k)] = Scratch(self.batch, h * w, k, device, dtype)
            if patch.mask is not None:
                self.masks[h * w] = patch.mask_at(h, w, self.batch, chunks, device, dtype)

    def mask_for(self, tokens: int, where: str) -> torch.Tensor:
        """The mask at a resolution the plan did not foresee (a patch that rescales the latent
        inside the UNet, such as Kohya's deep shrink): the grid of ``tokens`` with the latent's
        aspect ratio, made once."""
        H, W = self.hw
        h = max(1, round((tokens * H / W) ** 0.5))
        for hh in (h, h - 1, h + 1):
            if hh > 0 and tokens % hh == 0:
                m = self.masks[tokens] = self.patch.mask_at(hh, tokens // hh, self.batch, self.chunks,
                                                            self.device, self.dtype)
                return m
        raise WPlusError(f"ApplyWPlusAdapter: no attention mask for {tokens} image tokens at {where}: "
                         f"they do not form a grid of the latent's shape {H}x{W}.")


class WPlusPatch:
    """The APPLY_MODEL wrapper of one ApplyWPlusAdapter node."""

    def __init__(self, adapter: WPlusAdapter, cond_tokens: torch.Tensor, uncond_tokens: torch.Tensor,
                 weight: float, start_at: float = 0.0, end_at: float = 1.0, mask: torch.Tensor | None = None,
                 heads: tuple = (8,) * len(SITES)):
        self.sites = adapter.sites              # shared with the adapter: no weight copies
        self.tokens = torch.cat([cond_tokens, uncond_tokens]).float()  # rows 0..N-1 cond, N uncond
        self.n_cond = cond_tokens.shape[0]
        self.weight = float(weight)
        self.start_at, self.end_at = float(start_at), float(end_at)
        self.mask = None if mask is None else mask.float().reshape(-1, *mask.shape[-2:])
        self.heads = tuple(heads)
        self.plan: _Plan | None = None
        self._plan_key = None
        self._plans = {}          # the last few plans: ComfyUI may alternate batch layouts per call
        self._folded = None       # (device, [FoldedSite per site]) over all token rows, float32
        self._window = None       # (model_sampling, sigma_start, sigma_end)
        self._attention = [None] * len(SITES)  # per site: the SiteAttention last put in place

    # -- when
    def _active(self, model, t) -> bool:
        ms = model.model_sampling
        if self._window is None or self._window[0] is not ms:
            self._window = (ms, ms.percent_to_sigma(self.start_at), ms.percent_to_sigma(self.end_at))
        _, s_start, s_end = self._window
        if s_start >= ALWAYS[0] and s_end <= ALWAYS[1]:
            return True           # the whole schedule: no need to read sigma
        sigma = t.tolist()[0]     # one host read per model call, none per layer
        return s_end <= sigma <= s_start

    def release(self, patcher=None, unpatch_all: bool = True) -> None:
        """Drop what lives on the UNet's device (folded branches, plans, masks, scratch) when
        ComfyUI unloads the patched model ("Unload Models", or evicting it for memory: detach with
        unpatch_all), so the identity's tensors leave VRAM with the UNet's weights; the next call
        rebuilds them. ComfyUI also detaches a clone, without unpatching, when another clone of the
        same model loads (e.g. the next run's FreeU clone): the patch object is shared with that
        clone, so its plans are kept then (rebuilding them per call cost 720 extra operations)."""
        if not unpatch_all:
            return
        self.plan, self._plan_key, self._plans, self._folded = None, None, {}, None
        self._attention = [None] * len(SITES)

    def device_tensors(self) -> list:
        """Every tensor the patch keeps on a device between calls (tests: nothing after unload)."""
        out = [] if self._folded is None else [t for f in self._folded[1] for t in (f.A, f.Vb)]
        for plan in self._plans.values():
            out += plan.A + plan.Vb + list(plan.masks.values())
            out += [t for s in plan.scratch.values() for t in (s.s4, s.p4)]
        return out

    # -- which token row each batch row uses
    def _rows(self, chunks, batch: int) -> tuple:
        per = batch // len(chunks)
        n = self.n_cond
        if n not in (1, per):
            raise WPlusError(f"ApplyWPlusAdapter: the WPLUS batch has {n} latents but the sampler's "
                             f"batch has {per} images. Give one W+ (used for every image) or exactly "
                             f"{per}, one per image.")
        rows = []
        for c in chunks:
            rows += [n] * per if c == 1 else (list(range(per)) if n == per else [0] * per)
        return tuple(rows)

    def folded(self, device) -> list:
        """The folded branch of every site over all token rows, float32, on ``device`` (kept)."""
        if self._folded is None or self._folded[0] != device:
            self._folded = (device, [FoldedSite(self.sites[s.block], self.tokens, h, self.weight).to(device)
                                     for s, h in zip(SITES, self.heads)])
        return self._folded[1]

    def mask_at(self, h: int, w: int, batch: int, chunks: int, device, dtype) -> torch.Tensor:
        m = F.interpolate(self.mask[:, None], size=(h, w), mode="bilinear", align_corners=False)
        m = m.reshape(m.shape[0], h * w, 1)
        if m.shape[0] != 1:
            if m.shape[0] * chunks != batch:
                raise WPlusError(f"ApplyWPlusAdapter: the attention mask batch ({m.shape[0]}) must "
                                 f"be 1 or the latent batch size ({batch // chunks}).")
            m = m.repeat(chunks, 1, 1)
        return m.expand(batch, h * w, 1).to(device, dtype).contiguous()

    def _prepare(self, model, x, chunks) -> None:
        """Build the plan when the batch layout, latent size, device or dtype changed (once per run)."""
        dtype = model.get_dtype()
        if getattr(model, "manual_cast_dtype", None) is not None:
            dtype = model.manual_cast_dtype
        key = (tuple(chunks), x.shape[0], tuple(x.shape[-2:]), x.device, dtype)
        if key != self._plan_key:
            plan = self._plans.get(key)
            if plan is None:  # cond and uncond in separate calls (low memory, areas) alternate two
                rows = self._rows(chunks, x.shape[0])
                plan = _Plan(self, rows, len(chunks), tuple(x.shape[-2:]), x.device, dtype)
                if len(self._plans) >= PLANS_KEPT:
                    self._plans.pop(next(iter(self._plans)))
                self._plans[key] = plan
            self.plan, self._plan_key = plan, key

    def _site_attention(self, i: int, inner) -> "SiteAttention":
        """The attn2 entry of site ``i`` around ``inner``: the same object while ``inner`` is."""
        cached = self._attention[i]
        if cached is None or cached.source is not inner:
            if isinstance(inner, SiteAttention):  # stack identities on one text attention
                cached = SiteAttention(inner.inner, inner.branches + (self,), i, inner)
            else:
                cached = SiteAttention(inner, (self,), i, inner)
            self._attention[i] = cached
        return cached

    # -- the wrapper
    def __call__(self, executor, x, t, c_concat=None, c_crossattn=None, control=None,
                 transformer_options={}, **kwargs):
        if self.weight == 0.0 or not self._active(executor.class_obj, t):
            return executor(x, t, c_concat, c_crossattn, control, transformer_options, **kwargs)
        self._prepare(executor.class_obj, x, transformer_options.get("cond_or_uncond") or [0])
        to = dict(transformer_options)
        replace = dict(to.get("patches_replace", {}))
        attn2 = dict(replace.get("attn2", {}))
        entries = []
        for i, s in enumerate(SITES):
            key = (*s.block, 0)
            inner = attn2.get(key)
            if inner is None:
                inner = attn2.get(s.block)
            entry = attn2[key] = self._site_attention(i, inner)
            entries.append(entry)
        replace["attn2"] = attn2
        to["patches_replace"] = replace
        if compiled(executor.class_obj, transformer_options):
            kwargs = _compile_marker(kwargs, entries)
        return executor(x, t, c_concat, c_crossattn, control, to, **kwargs)


def compiled(model, transformer_options) -> bool:
    """Whether the diffusion model runs under torch.compile (ComfyUI's TorchCompileModel, placed
    before or after ApplyWPlusAdapter, or any node that swaps in a compiled module)."""
    wrappers = transformer_options.get("wrappers", {}).get(comfy.patcher_extension.WrappersMP.APPLY_MODEL, {})
    if COMPILE_WRAPPER_KEY in wrappers:
        return True
    compiled_type = getattr(getattr(torch, "_dynamo", None), "eval_frame", None)
    compiled_type = getattr(compiled_type, "OptimizedModule", None)
    return compiled_type is not None and isinstance(getattr(model, "diffusion_model", None), compiled_type)


_announced = set()


def _compile_marker(kwargs: dict, entries: list) -> dict:
    """kwargs plus one key naming the W+ structure traced into the graph (see the module doc)."""
    shape = tuple((e.inner is None, tuple(p.mask is None for p in e.branches)) for e in entries)
    name = MARKER_PREFIX + hashlib.sha1(repr(shape).encode()).hexdigest()[:12]
    out = {k: v for k, v in kwargs.items() if not k.startswith(MARKER_PREFIX)}
    out[name] = True
    if name not in _announced:
        _announced.add(name)
        log.info("W+ Apply Adapter under torch.compile: W+ structure %s gets its own compiled graph "
                 "(compiled once; later identities with the same structure reuse it)", name[len(MARKER_PREFIX):])
    return out


class SiteAttention:
    """attn2 replacement: the inner attention (another pack's patch or the plain one) + W+ branches."""

    __slots__ = ("inner", "branches", "index", "source")

    def __init__(self, inner, branches: tuple, index: int, source):
        self.inner, self.branches, self.index, self.source = inner, branches, index, source

    def __call__(self, q, k, v, extra_options):
        heads = extra_options["n_heads"]
        if self.inner is not None:
            text_out = self.inner(q, k, v, extra_options)
        else:
            text_out = comfy_attention.optimized_attention(
                q, k, v, heads, attn_precision=extra_options.get("attn_precision"),
                transformer_options=extra_options)
        tokens = text_out.shape[1]
        eager = not _is_compiling()  # traced: functional form, fused by the compiler
        out = text_out
        i = self.index
        # the first branch may add into the text output itself when it is ours (fresh from the
        # attention, not another pack's) and no later branch reads it as its query
        own_text = self.inner is None and len(self.branches) == 1
        for n, p in enumerate(self.branches):
            plan = p.plan
            if plan.heads[i] != heads:
                raise WPlusError(f"ApplyWPlusAdapter: attention site {SITES[i].diffusers} has {heads} heads; "
                                 f"the UNet's config says {plan.heads[i]}. This is not an SD1.5 UNet.")
            mask = None
            if p.mask is not None:
                mask = plan.masks.get(tokens)
                if mask is None:
                    mask = plan.mask_for(tokens, SITES[i].diffusers)
            # no scratch at a resolution the plan did not foresee: the functional form allocates
            scratch = plan.scratch.get((tokens, heads)) if eager else None
            out = add_branch(out, text_out, plan.A[i], plan.Vb[i], heads, scratch, mask,
                             inplace=n > 0 or own_text)
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
    patch = WPlusPatch(adapter, tokens, adapter.uncond_tokens(), weight, start_at, end_at, mask,
                       heads=site_heads(m))
    m.add_wrapper_with_key(comfy.patcher_extension.WrappersMP.APPLY_MODEL, WRAPPER_KEY, patch)
    # the identity's device tensors follow the UNet out of VRAM (ModelPatcher.detach runs this)
    m.add_callback_with_key(comfy.patcher_extension.CallbacksMP.ON_DETACH, WRAPPER_KEY, patch.release)
    return m
