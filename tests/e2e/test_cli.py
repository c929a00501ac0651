"""The headless entry point: `python -m cli run --photo ... --prompt ... --out ...` runs workflow 1 in
a real ComfyUI (a loopback server it starts) and writes the images; with weights missing it stops
within seconds, listing each file, its folder and URL."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from types import SimpleNamespace

import numpy as np
import pytest
from PIL import Image

from cli import run as cli_run
from cli import workflows
from tests.e2e.conftest import ROOT


def _cli(*args, timeout=900, env=None):
    return subprocess.run([sys.executable, "-m", "cli", *map(str, args)], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout, env=env)


def test_entry_points_answer_help():
    for cmd, cwd in (([sys.executable, "-m", "cli", "run", "--help"], ROOT),            # from the pack's folder
                     ([sys.executable, str(ROOT), "run", "--help"], ROOT.parent)):      # from anywhere
        proc = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, timeout=60)
        assert proc.returncode == 0 and "--photo" in proc.stdout, (cmd, proc.stderr)


def test_missing_weights_stop_within_seconds(comfyui, reference_dir, tmp_path):
    empty = tmp_path / "models"
    empty.mkdir()
    args = SimpleNamespace(**{k: None for k in ("seed", "steps", "cfg", "width", "height", "batch", "weight",
                                                "start_at", "checkpoint", "face_index")},
                           prompt="x", negative="y", no_freeu=False)
    prompt = cli_run.prepare_prompt(workflows.load_api(cli_run.WORKFLOW), args, "wild_1.jpg")
    missing = cli_run.missing_files(prompt, comfyui, empty)
    if not missing:
        pytest.skip(f"{comfyui}/models already holds every file workflow 1 needs")
    env = dict(os.environ, WPLUS_OFFLINE="1")
    t0 = time.monotonic()
    proc = _cli("run", "--photo", reference_dir / "photos" / "wild_1.jpg", "--prompt", "a photo",
                "--out", tmp_path / "out", "--models", empty, "--comfyui", comfyui, "--cpu", timeout=60, env=env)
    elapsed = time.monotonic() - t0
    assert proc.returncode == 3, proc.stderr
    assert elapsed < 15, f"took {elapsed:.1f} s"
    for folder, name in missing:
        assert name in proc.stderr and str(empty / folder) in proc.stderr, (name, proc.stderr)
        known = workflows.model_url(name)
        if known:
            assert known[1] in proc.stderr
    assert "ComfyUI" not in proc.stdout  # nothing was started
    assert not (tmp_path / "out").exists()


def test_run_writes_the_generated_images(comfyui, models_dir, reference_dir, tmp_path):
    out = tmp_path / "out"
    proc = _cli("run", "--photo", reference_dir / "photos" / "wild_1.jpg", "--prompt", "a photo of a person",
                "--out", out, "--models", models_dir, "--comfyui", comfyui, "--cpu",
                "--steps", 2, "--width", 64, "--height", 64, "--batch", 2, "--seed", 7, timeout=900)
    assert proc.returncode == 0, proc.stdout + proc.stderr
    files = sorted(out.glob("*.png"))
    assert len(files) == 2, (files, proc.stdout)
    for f in files:
        a = np.asarray(Image.open(f).convert("RGB"), dtype=np.float64)
        assert a.shape == (64, 64, 3) and a.std() > 2.0
        assert str(f) in proc.stdout
