"""The W+ adapter: W+ -> 4 tokens, and the decoupled residual cross-attention of each SD1.5 site.

Checkpoint (``wplus_adapter.bin`` / ``wplus_adapter_stage1.bin``, or the same tensors as
``.safetensors`` with ``w_proj.`` / ``wplus_adapter.`` key prefixes):
    w_proj.proj_{0..3}.weight   (768, 512*n) bias-free Linear of W+ layers [0:4] [4:8] [8:12] [12:18]
    w_proj.norm.{weight,bias}   shared LayerNorm(768)
    wplus_adapter.<i>.to_{q,k,v}_wplus.weight   for the 16 attn2 sites, i = diffusers processor index

Reference maths of one site (``wplus_attention``):
    text_out = attn(q, k_text, v_text)              # the layer's own cross-attention
    q_w = text_out @ Wq^T;  k_w = tokens @ Wk^T;  v_w = tokens @ Wv^T
    out  = text_out + scale * attn(q_w, k_w, v_w)   # then the layer's to_out

Fast form (``FoldedSite``): the scores q_w k_w^T per head equal ``text_out @ (Wq_h^T k_h^T)``, a
(hidden x 4) matrix fixed for a whole sampling run, so the branch is two thin matmuls and a 4-way
softmax per head: Wq never runs at sampling time.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from .checkpoints import describe, read_weights, require_kind
from .errors import WPlusError
from .latents import TOKEN_GROUPS, check_wplus
from .model_files import name_of

CROSS_DIM = 768  # SD1.5 text width; the adapter's keys/values read 768-wide tokens


@dataclass(frozen=True)
class Site:
    """One SD1.5 cross-attention layer: checkpoint index, diffusers name, ComfyUI block key."""
    index: int
    diffusers: str
    block: tuple  # ("input", 1) ... as ComfyUI's transformer_options["block"]
    hidden: int


SITES = tuple(Site(i, name, block, hidden) for i, name, block, hidden in (
    (1, "down_blocks.0.attentions.0", ("input", 1), 320),
    (3, "down_blocks.0.attentions.1", ("input", 2), 320),
    (5, "down_blocks.1.attentions.0", ("input", 4), 640),
    (7, "down_blocks.1.attentions.1", ("input", 5), 640),
    (9, "down_blocks.2.attentions.0", ("input", 7), 1280),
    (11, "down_blocks.2.attentions.1", ("input", 8), 1280),
    (13, "up_blocks.1.attentions.0", ("output", 3), 1280),
    (15, "up_blocks.1.attentions.1", ("output", 4), 1280),
    (17, "up_blocks.1.attentions.2", ("output", 5), 1280),
    (19, "up_blocks.2.attentions.0", ("output", 6), 640),
    (21, "up_blocks.2.attentions.1", ("output", 7), 640),
    (23, "up_blocks.2.attentions.2", ("output", 8), 640),
    (25, "up_blocks.3.attentions.0", ("output", 9), 320),
    (27, "up_blocks.3.attentions.1", ("output", 10), 320),
    (29, "up_blocks.3.attentions.2", ("output", 11), 320),
    (31, "mid_block.attentions.0", ("middle", 0), 1280),
))


class WProjection(nn.Module):
    """W+ (B,18,512) -> 4 tokens (B,4,768); module names are the checkpoint keys."""

    def __init__(self, width: int = CROSS_DIM, w_dim: int = 512):
        super().__init__()
        for g, (a, b) in enumerate(TOKEN_GROUPS):
            setattr(self, f"proj_{g}", nn.Linear(w_dim * (b - a), width, bias=False))
        self.norm = nn.LayerNorm(width)

    def forward(self, w: torch.Tensor) -> torch.Tensor:
        tokens = [getattr(self, f"proj_{g}")(w[:, a:b].reshape(w.shape[0], -1))
                  for g, (a, b) in enumerate(TOKEN_GROUPS)]
        return self.norm(torch.stack(tokens, dim=1))


@dataclass
class SiteWeights:
    to_q: torch.Tensor  # (hidden, hidden)
    to_k: torch.Tensor  # (hidden, 768)
    to_v: torch.Tensor  # (hidden, 768)


class WPlusAdapter:
    """Loaded adapter: ``project(w)`` and ``sites`` {ComfyUI block key: SiteWeights}."""

    def __init__(self, projection: WProjection, sites: dict, source: str = "<state dict>"):
        self.projection = projection.eval().requires_grad_(False)
        self.sites = sites
        self.source = source

    @torch.no_grad()
    def project(self, w: torch.Tensor) -> torch.Tensor:
        """(B,18,512) or (18,512) W+ -> (B,4,768) tokens, computed in float32 on the weights' device."""
        w = check_wplus(w)  # floating point, (B,18,512)
        return self.projection(w.to(self.projection.norm.weight.device, torch.float32)).to(w.dtype)

    def uncond_tokens(self) -> torch.Tensor:
        """The reference's negative-branch tokens: the projection of an all-zero W+ (1,4,768)."""
        return self.project(torch.zeros(1, 18, 512))


# ----------------------------------------------------------------------------- loading

def _split_sections(sd: dict, source: str) -> tuple[dict, dict]:
    require_kind(sd, "wplus_adapter", source, f"the official {name_of('wplus_adapter')} or "
                 f"{name_of('wplus_adapter_stage1')} (sections w_proj and wplus_adapter, for SD1.5)")
    if "w_proj" in sd and "wplus_adapter" in sd:
        return dict(sd["w_proj"]), dict(sd["wplus_adapter"])
    if any(k.startswith("w_proj.") for k in sd):
        proj = {k[len("w_proj."):]: v for k, v in sd.items() if k.startswith("w_proj.")}
        ada = {k[len("wplus_adapter."):]: v for k, v in sd.items() if k.startswith("wplus_adapter.")}
        return proj, ada
    said = describe(sd, "wplus_adapter")
    raise WPlusError(f"'{source}' is not a W+ adapter file: expected the sections 'w_proj' and "
                     f"'wplus_adapter' ({name_of('wplus_adapter')} layout).{' ' + said if said else ''}")


def load_wplus_adapter(path_or_state_dict) -> WPlusAdapter:
    """Load ``wplus_adapter.bin`` / ``wplus_adapter_stage1.bin`` / their .safetensors twin.

    Sizes are checked against SD1.5 (16 sites, 768-wide tokens); any other file gets a WPlusError
    naming it and what was expected.
    """
    if isinstance(path_or_state_dict, (str, os.PathLike)):
        source = os.fspath(path_or_state_dict)
        sd = read_weights(source, "W+ adapter file")
    else:
        source, sd = "<state dict>", path_or_state_dict
    proj_sd, site_sd = _split_sections(sd, source)

    width = proj_sd.get("norm.weight")
    if isinstance(width, torch.Tensor) and width.shape[0] != CROSS_DIM:
        raise WPlusError(f"'{source}' projects W+ to {width.shape[0]}-wide tokens; this pack supports "
                         f"the SD1.5 W+ adapter ({CROSS_DIM}-wide). SDXL/SD2 adapters are not released.")
    projection = WProjection()
    try:
        projection.load_state_dict({k: v.float() for k, v in proj_sd.items()}, strict=True)
    except (RuntimeError, AttributeError) as e:
        raise WPlusError(f"'{source}': its 'w_proj' section does not match the W+ projection "
                         f"(4 bias-free Linear 512*n->768 + LayerNorm(768)): {str(e).splitlines()[0]}") from e

    sites = {}
    expected = {f"{s.index}.to_{p}_wplus.weight" for s in SITES for p in "qkv"}
    missing = sorted(expected - set(site_sd), key=lambda k: int(k.split(".")[0]))
    extra = sorted(set(site_sd) - expected)
    if missing or extra:
        detail = (f"missing {len(missing)} (e.g. {missing[:3]})" if missing else "") + \
                 (f"{'; ' if missing else ''}unexpected {len(extra)} (e.g. {extra[:3]})" if extra else "")
        hint = " It looks like an SDXL-sized adapter." if len(site_sd) > 48 else ""
        raise WPlusError(f"'{source}': the 'wplus_adapter' section does not have the 16 SD1.5 "
                         f"cross-attention sites (1,3,...,31 with to_q/k/v_wplus): {detail}.{hint}")
    for s in SITES:
        q, k, v = (site_sd[f"{s.index}.to_{p}_wplus.weight"] for p in "qkv")
        if tuple(q.shape) != (s.hidden, s.hidden) or tuple(k.shape) != (s.hidden, CROSS_DIM) \
                or tuple(v.shape) != (s.hidden, CROSS_DIM):
            raise WPlusError(f"'{source}': site {s.index} ({s.diffusers}) has shapes q{tuple(q.shape)} "
                             f"k{tuple(k.shape)} v{tuple(v.shape)}; SD1.5 expects q({s.hidden},{s.hidden}) "
                             f"k/v({s.hidden},{CROSS_DIM}). This is not an SD1.5 W+ adapter.")
        sites[s.block] = SiteWeights(q.float(), k.float(), v.float())
    return WPlusAdapter(projection, sites, source)


def adapter_state_dict(adapter: WPlusAdapter) -> dict:
    """Flat state dict in the .safetensors convention (``w_proj.*``, ``wplus_adapter.*``)."""
    out = {f"w_proj.{k}": v.contiguous() for k, v in adapter.projection.state_dict().items()}
    for s in SITES:
        sw = adapter.sites[s.block]
        for p, t in zip("qkv", (sw.to_q, sw.to_k, sw.to_v)):
            out[f"wplus_adapter.{s.index}.to_{p}_wplus.weight"] = t.contiguous()
    return out


# ----------------------------------------------------------------------------- attention

def _heads_attention(q, k, v, heads):
    b, n, c = q.shape
    d = c // heads
    split = lambda t: t.reshape(t.shape[0], -1, heads, d).transpose(1, 2)
    out = F.scaled_dot_product_attention(split(q), split(k), split(v))
    return out.transpose(1, 2).reshape(b, n, c)


def wplus_attention(text_out, site: SiteWeights, tokens, heads: int, scale: float = 1.0):
    """The reference's decoupled residual attention, written plainly (used as the test oracle).

    text_out (B,N,hidden): the layer's text cross-attention output (before to_out);
    tokens (B or 1,4,768). Returns text_out + scale * attn(text_out Wq^T, tokens Wk^T, tokens Wv^T).
    """
    dt = text_out.dtype
    q = text_out @ site.to_q.to(text_out).T
    k = tokens.to(text_out) @ site.to_k.to(text_out).T
    v = tokens.to(text_out) @ site.to_v.to(text_out).T
    if k.shape[0] != q.shape[0]:
        k, v = k.expand(q.shape[0], -1, -1), v.expand(q.shape[0], -1, -1)
    return (text_out + scale * _heads_attention(q, k, v, heads)).to(dt)


class FoldedSite:
    """Precomputed W+ branch of one site for fixed tokens: ``branch(text_out) = attn(...)`` * scale.

    scores = text_out @ A with A (T, hidden, heads*4) = per head Wq_h^T k_h^T / sqrt(d);
    branch = softmax_per_head(scores) @ Vb with Vb (T, heads*4, hidden) block-diagonal (v_h), so
    the cost per query is 2*hidden*heads*4 multiply-adds instead of hidden^2 + attention.
    T indexes token sets (e.g. several identities, or cond/uncond).
    """

    def __init__(self, site: SiteWeights, tokens: torch.Tensor, heads: int, scale: float = 1.0):
        hidden = site.to_q.shape[0]
        d = hidden // heads
        t = tokens.float().to(site.to_k.device)
        k = (t @ site.to_k.T).reshape(t.shape[0], 4, heads, d)          # (T,4,h,d)
        v = (t @ site.to_v.T).reshape(t.shape[0], 4, heads, d)
        wq = site.to_q.reshape(heads, d, hidden)                          # rows of head h
        a = torch.einsum("hdc,tkhd->tchk", wq, k) / math.sqrt(d)          # (T,hidden,h,4)
        self.A = a.reshape(t.shape[0], hidden, heads * 4).contiguous()
        eye = torch.eye(heads, dtype=v.dtype, device=v.device)
        vb = torch.einsum("tkhe,hg->thkge", v, eye) * scale               # block-diagonal
        self.Vb = vb.reshape(t.shape[0], heads * 4, heads * d).contiguous()
        self.heads = heads

    def to(self, device=None, dtype=None) -> "FoldedSite":
        new = object.__new__(FoldedSite)
        new.A, new.Vb, new.heads = self.A.to(device, dtype), self.Vb.to(device, dtype), self.heads
        return new

    def select(self, index: torch.Tensor) -> "FoldedSite":
        """Token set per batch item (index (B,) into T), or one shared set when all are equal."""
        new = object.__new__(FoldedSite)
        new.heads = self.heads
        new.A, new.Vb = self.A[index], self.Vb[index]
        return new

    def branch(self, text_out: torch.Tensor) -> torch.Tensor:
        b, n, _ = text_out.shape
        scores = torch.matmul(text_out, self.A)                           # (B,N,h*4)
        probs = scores.view(b, n, self.heads, 4).softmax(dim=-1, dtype=torch.float32)
        return torch.matmul(probs.view(b, n, self.heads * 4).to(text_out.dtype), self.Vb)

    def rows(self, rows, device=None, dtype=None) -> tuple[torch.Tensor, torch.Tensor]:
        """(A, Vb) for a batch whose item i uses token set ``rows[i]``: contiguous (B,hidden,K) and
        (B,K,hidden) on ``device`` in ``dtype``, ready for ``add_branch`` (built once per run)."""
        index = torch.as_tensor(list(rows), dtype=torch.long, device=self.A.device)
        return (self.A[index].to(device, dtype).contiguous(), self.Vb[index].to(device, dtype).contiguous())


class Scratch:
    """Score and probability buffers (B,N,K) of one resolution, shared by every site of that
    resolution within a model call (the sites run one after another), so the sampling hot path
    allocates nothing for them; ``s4``/``p4`` view them per head (B,N,heads,4) for the softmax."""

    def __init__(self, batch: int, tokens: int, heads: int, device=None, dtype=None):
        self.s4 = torch.empty(batch, tokens, heads, 4, device=device, dtype=dtype)
        self.p4 = torch.empty_like(self.s4)
        self.s3 = self.s4.view(batch, tokens, heads * 4)
        self.p3 = self.p4.view(batch, tokens, heads * 4)


def add_branch(out, text_out, A, Vb, heads: int, scratch: Scratch | None = None, mask=None,
               inplace: bool = False):
    """``out + softmax_per_head(text_out @ A) @ Vb`` (times ``mask`` (B,N,1) when given).

    With ``scratch`` (eager sampling) this dispatches three operations: the scores into the
    scratch buffer, the 4-way softmax per head in place of a view, and one fused multiply-add
    (``baddbmm``) into ``out``; a mask adds one. Without it (traced by torch.compile, which fuses
    it anyway) the same maths is written functionally. ``inplace`` adds into ``out`` itself.
    """
    if scratch is None:
        b, n, _ = text_out.shape
        probs = torch.bmm(text_out, A).view(b, n, heads, -1).softmax(dim=-1).view(b, n, -1)
        if mask is not None:
            probs = probs * mask
        return out.baddbmm_(probs, Vb) if inplace else torch.baddbmm(out, probs, Vb)
    torch.bmm(text_out, A, out=scratch.s3)
    torch.softmax(scratch.s4, -1, out=scratch.p4)
    if mask is not None:
        scratch.p3.mul_(mask)
    return out.baddbmm_(scratch.p3, Vb) if inplace else torch.baddbmm(out, scratch.p3, Vb)
