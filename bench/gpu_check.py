"""The GPU path in one command: half-precision numerics, host tests on CUDA, and the benchmark.

    python -m bench.gpu_check --device cuda --out results.json          # on a CUDA machine
    python -m bench.gpu_check --device cpu --small --out results.json   # the same plumbing, on a CPU

Steps (each one recorded in the JSON with its status, seconds and details; the file is rewritten
after every step, so a run cut short still leaves what it did):

1. numerics   fp16 and bf16 against fp32 (TF32 off) on --device, same random weights: the folded
              W+ branch at all 16 sites, e4e inversion and the StyleGAN preview; errors in unit
              roundoffs u, with the bounds of tests/test_half_precision.py.
2. host tests the host tests that exercise the W+ patch, e4e and previews
              (tests/host/test_device.py, test_patch_sampling.py, test_face_nodes.py's invert,
              preview and interrupt tests) run in a real ComfyUI, in-process, on --device, for
              each dtype, on each host: 0.3.64, and 0.28.0 with its default dynamic VRAM and with
              --disable-dynamic-vram (WPLUS_TEST_DEVICE / WPLUS_TEST_DTYPE / WPLUS_TEST_COMFY_ARGS,
              tests/host/device.py). Per test: outcome, seconds, measured errors, failure text.
3. bench      bench/run.py --device ... (all sections on CUDA; a quick branch+align run with
              --small), then the targets of docs/PERFORMANCE.md read off its numbers. It runs
              second, after numerics, so a run cut short by a lease still brings the targets.

Hosts are found as ComfyUI-<version>/ in --hosts-dir, $WPLUS_HOSTS, ~/.cache/wplus-hosts or the
repository's .gpu/hosts/, with the venv-<version>/ beside one when there is one (else this
Python); a ComfyUI-<version>.tar.gz there or in shared/hosts (../shared/hosts) is extracted
into .gpu/extracted/. Wheels in .gpu/wheels/ (bench/gpu_prepare.sh collects them on a machine
with a package index) are installed into .gpu/site/ first. Nothing is downloaded: every model is
a random-weight file built in the run. A missing host is "missing", which fails a CUDA run
(where it is the point) but not a CPU one.

Exit status 0 when no step failed.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tarfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
VERSIONS = ("0.3.64", "0.28.0")  # the default run; --hosts may name 0.33.0 (its own venv needed)
KNOWN_VERSIONS = VERSIONS + ("0.33.0",)
GPU_DIR = ROOT / ".gpu"

HOST_TESTS = ["tests/host/test_device.py", "tests/host/test_patch_sampling.py",
              "tests/host/test_dispatch_budget.py",
              "tests/host/test_face_nodes.py::test_invert_and_preview",
              "tests/host/test_face_nodes.py::test_interrupt_stops_inversion"]
HOST_TESTS_SMALL = ["tests/host/test_device.py",
                    "tests/host/test_patch_sampling.py::test_patched_prediction_equals_reference",
                    "tests/host/test_face_nodes.py::test_invert_and_preview"]


# ----------------------------------------------------------------------------- environment

def install_carried_wheels(log) -> str | None:
    """pip-install .gpu/wheels/*.whl into .gpu/site (no index, no deps); return that folder."""
    wheels = sorted((GPU_DIR / "wheels").glob("*.whl"))
    if not wheels:
        return None
    site = GPU_DIR / "site"
    if not (site / ".installed").is_file():
        cmd = [sys.executable, "-m", "pip", "install", "-q", "--no-index", "--no-deps", "--no-compile",
               "--disable-pip-version-check", "--upgrade", "--target", str(site), *map(str, wheels)]
        r = subprocess.run(cmd, capture_output=True, text=True)
        if r.returncode != 0:
            log(f"installing {len(wheels)} carried wheels failed: {r.stderr[-2000:]}")
            return None
        (site / ".installed").write_text("\n".join(w.name for w in wheels))
    return str(site)


def find_hosts(hosts_dir: str | None, log, versions=VERSIONS) -> dict:
    """{version: {"root": path, "python": path}} for the hosts found (extracting snapshots)."""
    dirs = [Path(d).expanduser() for d in (hosts_dir, os.environ.get("WPLUS_HOSTS"), "~/.cache/wplus-hosts") if d]
    dirs.append(GPU_DIR / "hosts")
    snapshots = dirs + [ROOT / "shared" / "hosts", ROOT.parent / "shared" / "hosts"]
    found = {}
    for v in versions:
        for d in dirs + [GPU_DIR / "extracted"]:
            root = d / f"ComfyUI-{v}"
            if (root / "comfy" / "model_patcher.py").is_file():
                venv = d / f"venv-{v}" / "bin" / "python"
                found[v] = {"root": str(root), "python": str(venv) if venv.is_file() else sys.executable}
                break
        else:
            for d in snapshots:
                tar = d / f"ComfyUI-{v}.tar.gz"
                if tar.is_file():
                    out = GPU_DIR / "extracted"
                    out.mkdir(parents=True, exist_ok=True)
                    log(f"extracting {tar} into {out}")
                    with tarfile.open(tar) as t:
                        t.extractall(out, filter="data")
                    if (out / f"ComfyUI-{v}" / "comfy" / "model_patcher.py").is_file():
                        found[v] = {"root": str(out / f"ComfyUI-{v}"), "python": sys.executable}
                    break
    return found


def host_configs(hosts: dict, device: str, small: bool, versions=VERSIONS, dtypes=None) -> list[dict]:
    dtypes = dtypes or (["float16", "bfloat16"] if device == "cuda" else ["float16"])
    configs = []
    for v in versions:
        modes = [("dynamic VRAM (default)", ""), ("--disable-dynamic-vram", "--disable-dynamic-vram")] \
            if v != "0.3.64" else [("default", "")]
        for label, args in modes:
            for dt in dtypes:
                configs.append({"host": v, "mode": label, "comfy_args": args, "dtype": dt, **hosts.get(v, {})})
    return configs


# ----------------------------------------------------------------------------- steps

def step_numerics(device: str, small: bool) -> dict:
    """fp16/bf16 vs fp32 on the device: folded branch, e4e invert, preview (errors in u)."""
    sys.path[:0] = [str(ROOT), str(ROOT / "tests")]
    import torch
    from tests.e4e_reference import official_checkpoint, random_e4e_weights
    from tests.test_adapter import official_state_dict
    from tests.test_half_precision import U, rel_max, rel_rms
    from wplus_core import load_e4e, load_wplus_adapter
    from wplus_core.adapter import SITES, FoldedSite, SiteWeights, wplus_attention
    from wplus_core.e4e import model as e4e_model

    torch.backends.cuda.matmul.allow_tf32 = False  # the fp32 reference must really be fp32
    torch.backends.cudnn.allow_tf32 = False
    dev = torch.device(device)
    rows, ok = [], True

    def add(what, dtype, err_u, bound_u, extra=None):
        nonlocal ok
        good = err_u is not None and err_u <= bound_u
        ok &= good
        rows.append({"what": what, "dtype": str(dtype).replace("torch.", ""), "error_u": err_u,
                     "bound_u": bound_u, "passed": good, **(extra or {})})

    adapter = load_wplus_adapter(official_state_dict(seed=2, std=0.05))
    g = torch.Generator().manual_seed(0)
    tokens = torch.cat([adapter.project(torch.randn(2, 18, 512, generator=g)), adapter.uncond_tokens()])
    n = 64 if small else 1024
    cases = []
    for s in SITES:
        x = torch.randn(3, n, s.hidden, generator=g)
        sw = adapter.sites[s.block]
        exact = wplus_attention(x.double(), SiteWeights(*(t.double() for t in (sw.to_q, sw.to_k, sw.to_v))),
                                tokens.double(), 8) - x.double()
        cases.append((sw, x, exact))
    for dt in (torch.float16, torch.bfloat16):
        worst, finite = 0.0, True
        for sw, x, exact in cases:
            got = FoldedSite(sw, tokens, 8).to(dev, dt).select(torch.tensor([0, 1, 2], device=dev)).branch(x.to(dev, dt))
            finite &= bool(torch.isfinite(got).all())
            worst = max(worst, rel_max(got.cpu(), exact) / U[dt])
        add(f"folded W+ branch, 16 sites, {n} queries", dt, worst if finite else None, 8)

    size_in, preview = (64, 8) if small else (256, 256)
    enc, dec, latent_avg = random_e4e_weights(seed=21)
    ckpt = official_checkpoint(enc, dec, latent_avg)
    g = torch.Generator().manual_seed(3)
    face = torch.rand(1 if small else 8, 3, size_in, size_in, generator=g) * 2 - 1
    w = latent_avg + 0.5 * torch.randn(2, 18, 512, generator=g)
    out = {}
    saved = e4e_model.E4E_INPUT_SIZE
    e4e_model.E4E_INPUT_SIZE = size_in  # 256 (the real size) unless --small
    try:
        for dt in (torch.float32, torch.float16, torch.bfloat16):
            model = load_e4e(ckpt, device=dev, dtype=dt)
            with torch.no_grad():
                out[dt] = (model.invert(face.to(dev)).cpu(), model.generator(w.to(dev), size=preview).float().cpu())
            del model
            if dev.type == "cuda":
                torch.cuda.empty_cache()
    finally:
        e4e_model.E4E_INPUT_SIZE = saved
    codes32 = out[torch.float32][0] - latent_avg
    for dt in (torch.float16, torch.bfloat16):
        wq, img = out[dt]
        fin = bool(torch.isfinite(wq).all() and torch.isfinite(img).all())
        add(f"e4e invert {size_in} px, batch {face.shape[0]}", dt,
            rel_max(wq - latent_avg, codes32) / U[dt] if fin else None, 8)
        add(f"StyleGAN preview {preview} px (max)", dt, rel_max(img, out[torch.float32][1]) / U[dt] if fin else None, 10)
        add(f"StyleGAN preview {preview} px (rms)", dt, rel_rms(img, out[torch.float32][1]) / U[dt] if fin else None, 5)
    return {"status": "passed" if ok else "failed", "results": rows}


def parse_junit(path: Path) -> list[dict]:
    tests = []
    for case in ET.parse(path).getroot().iter("testcase"):
        outcome, message = "passed", None
        for tag in ("failure", "error", "skipped"):
            el = case.find(tag)
            if el is not None:
                outcome = {"failure": "failed", "error": "error", "skipped": "skipped"}[tag]
                message = ((el.get("message") or "") + "\n" + (el.text or ""))[-3000:]
                break
        props = {p.get("name"): p.get("value") for p in case.iter("property")}
        tests.append({"name": f"{case.get('classname')}::{case.get('name')}", "outcome": outcome,
                      "seconds": float(case.get("time") or 0), "properties": props, "message": message})
    return tests


def step_host(config: dict, device: str, small: bool, site: str | None, timeout: int) -> dict:
    if "root" not in config:
        return {"status": "missing", "detail": f"ComfyUI {config['host']} not found (see --hosts-dir)"}
    junit = GPU_DIR / "junit" / f"{config['host']}-{config['dtype']}-{'nodyn' if config['comfy_args'] else 'default'}.xml"
    junit.parent.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, COMFYUI_PATH=config["root"], WPLUS_TEST_DEVICE=device,
               WPLUS_TEST_DTYPE=config["dtype"], WPLUS_TEST_COMFY_ARGS=config["comfy_args"],
               PYTHONUNBUFFERED="1")
    if site:
        env["PYTHONPATH"] = site + os.pathsep + env.get("PYTHONPATH", "")
    junit.unlink(missing_ok=True)
    cmd = [config["python"], "-m", "pytest", "-q", "-p", "no:randomly", "-o", "junit_family=xunit1",
           f"--junitxml={junit}", *(HOST_TESTS_SMALL if small else HOST_TESTS)]
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, tail = r.returncode, (r.stdout + r.stderr)[-4000:]
    except subprocess.TimeoutExpired as e:
        rc, tail = "timeout", (str(e.stdout or "") + str(e.stderr or ""))[-4000:]
    tests = parse_junit(junit) if junit.is_file() else []
    counts = {k: sum(t["outcome"] == k for t in tests) for k in ("passed", "failed", "error", "skipped")}
    state = next((t["properties"] for t in tests if t["name"].endswith("test_host_runs_where_asked")), {})
    good = rc == 0 and counts["passed"] > 0 and not counts["failed"] and not counts["error"] and not counts["skipped"]
    return {"status": "passed" if good else "failed", "returncode": rc, "counts": counts,
            "host_state": state, "tests": tests, "output_tail": None if good else tail}


def step_bench(device: str, small: bool, hosts: dict, site: str | None, timeout: int,
               extra_args: list | None = None, name: str = "bench") -> dict:
    out = GPU_DIR / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.unlink(missing_ok=True)
    host = hosts.get("0.28.0") or hosts.get("0.3.64") or {}
    env = dict(os.environ, PYTHONUNBUFFERED="1")
    if host:
        env["COMFYUI_PATH"] = host["root"]
    if site:
        env["PYTHONPATH"] = site + os.pathsep + env.get("PYTHONPATH", "")
    args = ["--quick", "--rounds", "1", "--sections", "branch,align", "--dtypes", "float16", "--batches", "1"] \
        if small else ["--batches", "1,2,8"]
    args = args + list(extra_args or [])
    cmd = [host.get("python", sys.executable), str(ROOT / "bench" / "run.py"), "--device", device,
           "--json", str(out), *args]
    try:
        r = subprocess.run(cmd, cwd=ROOT, env=env, capture_output=True, text=True, timeout=timeout)
        rc, text = r.returncode, r.stdout + r.stderr
    except subprocess.TimeoutExpired as e:
        rc, text = "timeout", str(e.stdout or "") + str(e.stderr or "")
    data = json.loads(out.read_text()) if rc == 0 and out.is_file() else None
    return {"status": "passed" if data else "failed", "returncode": rc, "command": " ".join(cmd[1:]),
            "comfyui": host.get("root"), "bench": data, "output_tail": text[-4000:]}


def targets(*benches) -> dict:
    """docs/PERFORMANCE.md's GPU targets from the bench numbers (None where not measured)."""
    rows = [x for bench in benches for x in (bench or {}).get("results", [])]
    out = {}

    def unet(size, b):
        return next((x for x in rows if x.get("section") == "unet" and x.get("size") == size
                     and x.get("unet_batch") == b and x.get("dtype") == "float16"), None)

    for b in (2, 8):
        r = unet(512, b)
        value = r and r.get("wplus_overhead")
        out[f"wplus_overhead_fp16_512px_batch{b}"] = {
            "value": value, "noise_floor": r and r.get("noise_floor"), "target": "<= 3%",
            "met": None if value is None else value <= 0.03}
        naive = r and r.get("naive_port_overhead")
        out[f"wplus_not_worse_than_port_512px_batch{b}"] = {
            "value": None if naive is None else value - naive, "target": "wplus <= naive port",
            "met": None if naive is None else value <= naive}
        comp = next((x.get("compiled_wplus_overhead") for x in rows if x.get("section") == "unet"
                     and x.get("size") == 512 and x.get("unet_batch") == b and "compiled_wplus_overhead" in x), None)
        out[f"compiled_wplus_overhead_fp16_512px_batch{b}"] = {
            "value": comp, "target": "<= 1%", "met": None if comp is None else comp <= 0.01}
    inv = {x["batch"]: x["per_image_s"] for x in rows if x.get("section") == "e4e_invert" and x.get("dtype") == "float16"}
    ratio = inv[1] / inv[8] if 1 in inv and 8 in inv else None
    out["e4e_batch8_throughput_vs_batch1_fp16"] = {"value": ratio, "target": ">= 4x",
                                                   "met": None if ratio is None else ratio >= 4}
    return out


# ----------------------------------------------------------------------------- main

def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--device", choices=["cuda", "cpu"], required=True)
    ap.add_argument("--small", action="store_true", help="small sizes and the minimal test selection")
    ap.add_argument("--out", required=True, help="JSON file of results")
    ap.add_argument("--hosts-dir", default=None, help="folder holding ComfyUI-<version>/ (and venv-<version>/)")
    ap.add_argument("--steps", default="numerics,host,bench", help="subset, e.g. host,bench")
    ap.add_argument("--host-timeout", type=int, default=900, help="seconds per host-test run")
    ap.add_argument("--bench-timeout", type=int, default=1200)
    ap.add_argument("--hosts", default=",".join(VERSIONS), help="host versions to test, e.g. 0.28.0")
    ap.add_argument("--dtypes", default=None, help="host-test dtypes (default float16,bfloat16 on CUDA)")
    ap.add_argument("--bench-args", default="", help="more bench/run.py arguments, e.g. '--sections unet'")
    ap.add_argument("--compile", default=None, help="after the host tests, bench the UNet under "
                    "TorchCompileModel with this backend (inductor)")
    ap.add_argument("--compile-args", default="--sections unet --dtypes float16 --unet-sizes 512x2",
                    help="bench/run.py arguments of the compiled run")
    args = ap.parse_args(argv)
    steps = set(args.steps.split(","))
    out_path = Path(args.out)
    log = lambda msg: print(f"[gpu_check] {msg}", flush=True)  # noqa: E731
    import torch
    if args.device == "cuda" and not torch.cuda.is_available():
        log("--device cuda but torch sees no CUDA device")
        return 2
    report = {"info": {"device": torch.cuda.get_device_name(0) if args.device == "cuda" else (platform.processor() or "cpu"),
                       "device_type": args.device, "small": args.small, "torch": torch.__version__,
                       "python": platform.python_version(), "cpu_count": os.cpu_count(),
                       "date": time.strftime("%Y-%m-%d %H:%M:%S"), "argv": sys.argv[1:]},
              "steps": [], "targets": None, "ok": None}

    def record(name, fn, **meta):
        log(f"{name} ...")
        t = time.perf_counter()
        try:
            res = fn()
        except Exception as e:  # a broken step is a result, not the end of the run
            import traceback
            res = {"status": "error", "error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()[-4000:]}
        res = {"name": name, **meta, **res, "seconds": round(time.perf_counter() - t, 1)}
        report["steps"].append(res)
        out_path.write_text(json.dumps(report, indent=1, default=str))
        log(f"{name}: {res['status']} ({res['seconds']} s)")
        return res

    site = install_carried_wheels(log) if args.device == "cuda" else None  # the GPU machine has no index
    report["info"]["carried_site"] = site
    if "numerics" in steps:
        record("numerics", lambda: step_numerics(args.device, args.small))
    wanted = [v for v in args.hosts.split(",") if v]
    unknown = [v for v in wanted if v not in KNOWN_VERSIONS]
    if unknown:
        log(f"--hosts {','.join(unknown)}: unknown version (known: {', '.join(KNOWN_VERSIONS)})")
        return 2
    hosts = find_hosts(args.hosts_dir, log, wanted) if steps & {"host", "bench"} or args.compile else {}
    report["info"]["hosts"] = hosts
    benches = []
    if "bench" in steps:  # before the host runs: the targets are the numbers a short lease must bring
        bench = record("bench", lambda: step_bench(args.device, args.small, hosts, site, args.bench_timeout,
                                                   args.bench_args.split()))
        benches.append(bench.get("bench"))
        report["targets"] = targets(*benches)
    if "host" in steps:
        versions = [v for v in args.hosts.split(",") if v]
        dtypes = args.dtypes.split(",") if args.dtypes else None
        for c in host_configs(hosts, args.device, args.small, versions, dtypes):
            record(f"host {c['host']} {c['mode']} {c['dtype']}",
                   lambda c=c: step_host(c, args.device, args.small, site, args.host_timeout),
                   host=c["host"], mode=c["mode"], dtype=c["dtype"])
    if args.compile:  # last: compiling takes minutes, and a compiler failure must not cost the rest
        extra = [*args.compile_args.split(), "--compile", args.compile]
        bench = record("bench compiled", lambda: step_bench(args.device, False, hosts, site, args.bench_timeout,
                                                            extra, name="bench_compiled"))
        benches.append(bench.get("bench"))
        report["targets"] = targets(*benches)
    fatal = {"failed", "error"} | ({"missing"} if args.device == "cuda" else set())
    report["ok"] = not any(s["status"] in fatal for s in report["steps"])
    out_path.write_text(json.dumps(report, indent=1, default=str))
    log(f"{'OK' if report['ok'] else 'FAILED'}: {out_path}")
    return 0 if report["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
