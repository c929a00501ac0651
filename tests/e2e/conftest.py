"""End-to-end fixtures: a real ComfyUI server on loopback with the pack and random-weight models.

- ``comfyui``: the ComfyUI root ($COMFYUI_PATH, ../.. of the pack, ~/comfy/ComfyUI); without one
  every e2e test is skipped with one line saying so. WPLUS_SKIP_E2E=1 skips them on purpose.
- ``model_cache``: the random model files of tests/e2e/modelfiles.py, built once per format version
  in a cache folder (a subprocess; ~1 min and ~4 GB the first time).
- ``models_dir``: a per-session models folder: symlinks to the cached files plus broken files for
  the error tests.
- ``server``: ComfyUI started with --cpu on 127.0.0.1:<free port>, temporary input/output/user
  folders, the pack loaded through the extra_model_paths YAML `custom_nodes` key; stopped at the end.
- ``photos``: the reference photos copied into the server's input folder (skips when absent).
- ``artifacts``: tests/e2e/artifacts/ (git-ignored) for screenshots and images worth a look.
"""
from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch

HERE = Path(__file__).resolve().parent
ROOT = HERE.parents[1]
if str(ROOT) not in sys.path:
    sys.path.insert(0, str(ROOT))

from cli.comfy_server import ComfyServer, find_comfyui  # noqa: E402
from tests.e2e import modelfiles  # noqa: E402

COMFYUI = find_comfyui()
SKIP = None
if os.environ.get("WPLUS_SKIP_E2E") == "1":
    SKIP = "WPLUS_SKIP_E2E=1: end-to-end tests skipped"
elif COMFYUI is None:
    SKIP = "no ComfyUI checkout found (COMFYUI_PATH, ../.., ~/comfy/ComfyUI): end-to-end tests skipped"

PHOTOS = ("wild_1.jpg", "aligned_1.png", "pose_1.png")
BROKEN_ADAPTER = "ip-adapter_sd15.bin"


def pytest_collection_modifyitems(config, items):
    if SKIP:
        marker = pytest.mark.skip(reason=SKIP)
        for item in items:
            if "tests/e2e" in str(item.fspath).replace(os.sep, "/"):
                item.add_marker(marker)


@pytest.fixture(scope="session")
def comfyui() -> Path:
    if SKIP:
        pytest.skip(SKIP)
    return COMFYUI


@pytest.fixture(scope="session")
def model_cache(comfyui) -> Path:
    cache = modelfiles.cache_dir()
    models = cache / "models"
    if modelfiles.missing(models):
        proc = subprocess.run([sys.executable, "-m", "tests.e2e.modelfiles", "--comfyui", str(comfyui),
                               "--cache", str(cache)], cwd=ROOT, capture_output=True, text=True, timeout=1800)
        assert proc.returncode == 0, f"building the e2e model files failed:\n{proc.stdout}\n{proc.stderr}"
    assert not modelfiles.missing(models), modelfiles.missing(models)
    return models


@pytest.fixture(scope="session")
def models_dir(model_cache, tmp_path_factory) -> Path:
    root = tmp_path_factory.mktemp("models")
    for folder, name in modelfiles.ALL_FILES:
        (root / folder).mkdir(parents=True, exist_ok=True)
        (root / folder / name).symlink_to(model_cache / folder / name)
    # an IP-Adapter-shaped file where a W+ adapter is expected
    torch.save({"image_proj": {"proj.weight": torch.zeros(3072, 1024)},
                "ip_adapter": {"1.to_k_ip.weight": torch.zeros(320, 768)}}, root / "wplus" / BROKEN_ADAPTER)
    return root


@pytest.fixture(scope="session")
def server(comfyui, models_dir, tmp_path_factory):
    # WPLUS_OFFLINE: a file a test forgot to provide fails at once instead of being downloaded
    srv = ComfyServer(comfyui, tmp_path_factory.mktemp("comfyui"), models_dir=models_dir, cpu=True,
                      env={"WPLUS_OFFLINE": "1"})
    srv.start()
    try:
        failures = srv.import_failures()
        assert not failures, "the pack failed to import:\n" + "\n".join(failures) + "\n" + srv.log_tail(60)
        yield srv
    finally:
        srv.stop()


@pytest.fixture(scope="session")
def object_info(server) -> dict:
    return server.get_json("/object_info")


@pytest.fixture(scope="session")
def photos(server, reference_dir) -> dict:
    src = reference_dir / "photos"
    for name in PHOTOS:
        if not (src / name).is_file():
            pytest.skip(f"reference photo {src / name} not found")
        shutil.copy2(src / name, server.input_dir / name)
    return {name: server.input_dir / name for name in PHOTOS}


@pytest.fixture(scope="session")
def artifacts() -> Path:
    path = Path(os.environ.get("WPLUS_E2E_ARTIFACTS", HERE / "artifacts"))
    path.mkdir(parents=True, exist_ok=True)
    return path
