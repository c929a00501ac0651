"""bench/gpu_check.py runs end to end on the CPU (--device cpu --small), so it is known to work
before a GPU is there: one subprocess, the JSON it writes checked step by step.

Heavy on a 2-core machine (three in-process ComfyUI runs, each building a random SD1.5 UNet through
ComfyUI's loader in fp16 and a random e4e; a few minutes). A host that is not installed is
reported as "missing" (and then only that is checked for it); WPLUS_SKIP_GPU_CHECK=1 skips.
"""
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

pytestmark = pytest.mark.skipif(os.environ.get("WPLUS_SKIP_GPU_CHECK") == "1", reason="WPLUS_SKIP_GPU_CHECK=1")


@pytest.fixture(scope="module")
def report(tmp_path_factory):
    out = tmp_path_factory.mktemp("gpu_check") / "results.json"
    r = subprocess.run([sys.executable, "-m", "bench.gpu_check", "--device", "cpu", "--small", "--out", str(out)],
                       cwd=ROOT, capture_output=True, text=True, timeout=3000)
    assert out.is_file(), r.stdout[-3000:] + r.stderr[-3000:]
    data = json.loads(out.read_text())
    data["_returncode"], data["_output"] = r.returncode, r.stdout[-3000:] + r.stderr[-3000:]
    return data


def steps(report, prefix):
    return [s for s in report["steps"] if s["name"].startswith(prefix)]


def test_run_is_green_and_says_where_it_ran(report):
    assert report["info"]["device_type"] == "cpu" and report["info"]["small"] is True
    assert report["ok"] is True and report["_returncode"] == 0, report["_output"]


def test_numerics_cover_branch_e4e_and_preview_in_both_half_types(report):
    (num,) = steps(report, "numerics")
    assert num["status"] == "passed"
    rows = num["results"]
    for dtype in ("float16", "bfloat16"):
        kinds = {r["what"].split(",")[0].split(" (")[0] for r in rows if r["dtype"] == dtype}
        assert {"folded W+ branch", "e4e invert 64 px", "StyleGAN preview 8 px"} <= kinds, kinds
    for r in rows:
        assert r["passed"] and 0 < r["error_u"] <= r["bound_u"], r


def test_host_runs_cover_both_hosts_and_both_vram_modes(report):
    hosts = steps(report, "host ")
    configs = {(s["host"], s["mode"]) for s in hosts}
    assert configs == {("0.3.64", "default"), ("0.28.0", "dynamic VRAM (default)"),
                       ("0.28.0", "--disable-dynamic-vram")}, configs
    for s in hosts:
        if s["status"] == "missing":  # no such host on this machine: the report must say so
            assert "not found" in s["detail"]
            continue
        assert s["status"] == "passed", s.get("output_tail")
        names = {t["name"].rsplit("::", 1)[-1]: t for t in s["tests"]}
        assert {"test_host_runs_where_asked", "test_patched_prediction_equals_reference[float16-1.0]",
                "test_invert_and_preview"} <= set(names), names
        state = s["host_state"]
        assert state["device"] == "cpu" and state["dtype"] == s["dtype"] == "float16"
        assert state["comfy_args"] == ("--disable-dynamic-vram" if "disable" in s["mode"] else "")
        assert state["dynamic_vram"] == "False"  # never on a CPU
        # the half-precision comparison ran, with its measured numbers
        props = names["test_patched_prediction_equals_reference[float16-1.0]"]["properties"]
        assert props["unet_dtype"] == "torch.float16"
        assert float(props["rel_error_vs_reference"]) <= 0.1 * float(props["wplus_effect"])


def test_bench_ran_and_targets_are_reported(report):
    (bench,) = steps(report, "bench")
    assert bench["status"] == "passed", bench.get("output_tail")
    sections = {r["section"] for r in bench["bench"]["results"]}
    assert {"branch", "align"} <= sections
    assert any(r["section"] == "branch" and r["dtype"] == "float16" for r in bench["bench"]["results"])
    # the GPU targets are named, and not claimed from a CPU run
    assert set(report["targets"]) == {"wplus_overhead_fp16_512px_batch2", "wplus_overhead_fp16_512px_batch8",
                                      "wplus_not_worse_than_port_512px_batch2",
                                      "wplus_not_worse_than_port_512px_batch8",
                                      "compiled_wplus_overhead_fp16_512px_batch2",
                                      "compiled_wplus_overhead_fp16_512px_batch8",
                                      "e4e_batch8_throughput_vs_batch1_fp16"}
    assert all(t["met"] is None for t in report["targets"].values())
