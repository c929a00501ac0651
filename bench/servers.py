"""Headless throughput: photos per minute through 1 vs 2 local ComfyUI servers (`python -m cli run`'s
scheduler, cli/batch.py, in process), with the e2e random-weight model files.

    python bench/run.py --sections servers [--quick]          # or: python bench/servers.py

Each server is started and warmed up with one prompt (model loading is not counted), then the
same number of distinct photos (the reference photos, mirrored/brightened copies) is run through
each configuration; the number is photos per minute over the whole batch, wall clock, first
prompt queued to last image written. Needs a ComfyUI checkout (COMFYUI_PATH) and the e2e model
cache (built by the e2e tests or `python -m tests.e2e.modelfiles --comfyui ...`).
"""
from __future__ import annotations

import copy
import os
import sys
import tempfile
import time
import uuid
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))


def _photos(folder: Path, n: int, shift: int) -> list[Path]:
    from tests.e2e.test_remote import make_photos
    return make_photos(ROOT.parent / "shared" / "reference", folder, n, shift=shift)


def _template(size: int, steps: int, seed: int) -> dict:
    from cli import prompts
    from cli.run import OPTION_NAMES
    opts = {k: None for k in OPTION_NAMES}
    opts.update(width=size, height=size, steps=steps, seed=seed, no_freeu=False)
    return prompts.headless(prompts.apply_options(prompts.resolve(None)[1], opts))


class _Silent:
    """The Runner's progress interface, printing nothing (not even the written paths)."""

    def __getattr__(self, name):
        return lambda *args: None


def run_batch(urls, photos, template, out: Path) -> float:
    from cli import batch, prompts
    from cli.remote import Remote
    cid = uuid.uuid4().hex
    jobs = [batch.Job(i, p.name, {prompts.PHOTO: p}, copy.deepcopy(template)) for i, p in enumerate(photos)]
    t0 = time.perf_counter()
    batch.Runner([Remote(u, cid) for u in urls], jobs, out, ui=_Silent()).run()
    elapsed = time.perf_counter() - t0
    bad = [(j.name, j.state, j.error) for j in jobs if j.state != batch.DONE]
    if bad:
        raise RuntimeError(f"benchmark prompts failed: {bad}")
    return elapsed


def bench_servers(quick: bool, results: list, counts=(1, 2)) -> None:
    from cli.comfy_server import ComfyServer, find_comfyui
    from tests.e2e import modelfiles
    comfyui = find_comfyui()
    models = modelfiles.cache_dir() / "models"
    reference = ROOT.parent / "shared" / "reference" / "photos"
    if comfyui is None or modelfiles.missing(models) or not reference.is_dir():
        print("servers: skipped (needs COMFYUI_PATH, the e2e model cache and ../shared/reference)")
        return
    size, steps, n = (64, 2, 4) if quick else (256, 4, 6)
    with tempfile.TemporaryDirectory(prefix="wplus-bench-servers-") as tmp:
        tmp = Path(tmp)
        from tests.e2e.test_remote import write_vae_files
        cached, models = models, tmp / "models"  # links to the cache, plus the workflows' VAE file
        for folder, name in modelfiles.ALL_FILES:
            (models / folder).mkdir(parents=True, exist_ok=True)
            (models / folder / name).symlink_to(cached / folder / name)
        write_vae_files(models)
        servers = []
        try:
            for k in range(max(counts)):
                servers.append(ComfyServer(comfyui, tmp / f"comfy{k}", models_dir=models, cpu=True,
                                           env={"WPLUS_OFFLINE": "1"}).start())
            for k, s in enumerate(servers):  # warm-up: models loaded once per server, not timed
                run_batch([s.url], _photos(tmp / f"warm{k}", 1, shift=20 + k), _template(size, steps, 1),
                          tmp / "out_warm")
            for c, count in enumerate(counts):
                photos = _photos(tmp / f"photos{count}", n, shift=10 * (c + 1))
                elapsed = run_batch([s.url for s in servers[:count]], photos, _template(size, steps, 2 + c),
                                    tmp / f"out{count}")
                per_min = 60.0 * n / elapsed
                results.append({"section": "servers", "servers": count, "photos": n, "size": size, "steps": steps,
                                "seconds": elapsed, "photos_per_min": per_min})
                print(f"servers {count}: {n} photos at {size}px/{steps} steps in {elapsed:.1f} s "
                      f"= {per_min:.2f} photos/min")
        finally:
            for s in servers:
                s.stop()
    base = [r for r in results if r.get("section") == "servers" and r["servers"] == counts[0]]
    for r in results:
        if r.get("section") == "servers" and base and r["servers"] != counts[0]:
            print(f"servers {r['servers']} vs {counts[0]}: x{r['photos_per_min'] / base[-1]['photos_per_min']:.2f} "
                  f"throughput (cpu_count {os.cpu_count()})")


if __name__ == "__main__":
    out = []
    bench_servers("--quick" in sys.argv, out)
