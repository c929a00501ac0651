"""How the pack holds every model it loads: the way ComfyUI holds its own.

GPU models (RetinaFace detectors, face parsers, e4e, PSFRGAN) are each a ``ModelHolder`` inside a
``comfy.model_patcher.ModelPatcher``, built on the CPU. ``use(*patchers)`` asks ComfyUI to load
them (``comfy.model_management.load_models_gpu``): it makes room by evicting other models, honours
low-VRAM mode, and lists them in ``current_loaded_models``, so 'Unload Models' (POST /free
{unload_models: true} -> ``unload_all_models``) moves them back to the offload device like any
checkpoint. The patchers are kept for the next run in one small LRU (``PATCHERS_KEPT``), keyed by
(kind, name, folder, device, dtype); one dropped from it is unloaded at once.

CPU models (dlib's detectors, 68-point predictor and face recogniser; the ONNX tiny RetinaFace)
never reach VRAM: they are kept in a second small LRU (``CPU_MODELS_KEPT``).

``dtype_for`` is the one precision policy of the nodes with a ``precision`` input.
"""
from __future__ import annotations

import os
import threading
from collections import OrderedDict

import torch

import comfy.model_management as mm
import comfy.model_patcher
import comfy.patcher_extension

PATCHERS_KEPT = 6      # GPU models kept between runs (ComfyUI decides which are on the GPU)
CPU_MODELS_KEPT = 4    # dlib models and the like, kept between runs
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}


def dtype_for(precision: str = "auto", device=None) -> torch.dtype:
    """fp32 / fp16 / bf16 as asked. "auto": fp16 where ComfyUI itself would run a model in fp16 on
    ``device`` (``should_use_fp16``: a GPU with fast fp16; --force-fp16 / --force-fp32 honoured),
    fp32 elsewhere (on CPUs half-precision convolutions are 10-30x slower)."""
    if precision in DTYPES:
        return DTYPES[precision]
    if precision != "auto":
        raise ValueError(f"precision must be auto, {', '.join(DTYPES)}; got {precision!r}")
    return torch.float16 if mm.should_use_fp16(device or mm.get_torch_device()) else torch.float32


class ModelHolder(torch.nn.Module):
    """What a ModelPatcher manages (it sets attributes such as ``.device`` on it): ``module``, the
    torch weights ComfyUI moves, and ``held``, the object the nodes call (a detector, a parser,
    E4E, PSFRGAN; often the module itself). ``on_move(held, device)`` updates an object that
    keeps its own device besides its weights (facexlib's RetinaFace)."""

    def __init__(self, held, module: torch.nn.Module | None = None, on_move=None):
        super().__init__()
        self.module = held if module is None else module
        self.__dict__["held"] = held          # not registered: its weights are ``module``'s
        self.__dict__["on_move"] = on_move


def make_patcher(held, module=None, on_move=None, device=None) -> comfy.model_patcher.ModelPatcher:
    """A ModelPatcher over ``held`` (built on the CPU): loaded onto ``device`` (ComfyUI's torch
    device) by ``use``, offloaded where ComfyUI offloads its UNets."""
    patcher = comfy.model_patcher.ModelPatcher(ModelHolder(held, module, on_move),
                                               load_device=device or mm.get_torch_device(),
                                               offload_device=mm.unet_offload_device())
    if on_move is not None:  # unloaded (detached): the object follows its weights off the GPU
        patcher.add_callback(comfy.patcher_extension.CallbacksMP.ON_DETACH,
                             lambda p, unpatch_all: on_move(p.model.held, p.offload_device))
    return patcher


def unload(patcher) -> bool:
    """Take one patcher off ComfyUI's loaded models (its weights to the offload device)."""
    for i in range(len(mm.current_loaded_models) - 1, -1, -1):
        loaded = mm.current_loaded_models[i]
        if loaded.model is patcher:
            loaded.model_unload()
            mm.current_loaded_models.pop(i)
            return True
    return False


class LRU:
    """A small least-recently-used map; ``evict(value)`` is called on what it drops."""

    def __init__(self, size: int, evict=None):
        self.size, self.evict = size, evict
        self.items: OrderedDict = OrderedDict()
        self.lock = threading.RLock()

    def get(self, key, build, stamp=None):
        """The value under ``key``, built by ``build()`` when missing or when ``stamp()`` (e.g. a
        file's mtime and size; read again after the build, which may download the file) differs
        from what it was when the value was built."""
        with self.lock:
            entry = self.items.get(key)
            now = None if stamp is None else stamp()
            if entry is not None and entry[0] == now:
                self.items.move_to_end(key)
                return entry[1]
            if entry is not None:
                self._drop(key)
            value = build()
            self.items[key] = (None if stamp is None else stamp(), value)
            while len(self.items) > self.size:
                self._drop(next(iter(self.items)))
            return value

    def _drop(self, key):
        _, value = self.items.pop(key)
        if self.evict is not None:
            self.evict(value)

    def values(self) -> list:
        with self.lock:
            return [v for _, v in self.items.values()]

    def clear(self):
        with self.lock:
            for key in list(self.items):
                self._drop(key)

    def __len__(self):
        return len(self.items)


patchers = LRU(PATCHERS_KEPT, evict=unload)
cpu_models = LRU(CPU_MODELS_KEPT)


def file_stamp(path):
    """A stamp for ``LRU.get``: the file's (mtime, size), None while it does not exist."""
    def stamp():
        try:
            st = os.stat(path)
        except OSError:
            return None
        return st.st_mtime_ns, st.st_size
    return stamp


def managed(kind: str, name: str, folder, build, dtype=torch.float32, module=None, on_move=None,
            stamp=None) -> comfy.model_patcher.ModelPatcher:
    """The ModelPatcher of one GPU model, kept under (kind, name, folder, device, dtype). ``build()``
    makes the object on the CPU in ``dtype``; ``module(held)`` picks its torch module when it is
    not one itself."""
    device = mm.get_torch_device()
    key = (kind, name, None if folder is None else os.fspath(folder), str(device), dtype)

    def make():
        held = build()
        return make_patcher(held, None if module is None else module(held), on_move, device)

    return patchers.get(key, make, stamp)


def cpu_model(kind: str, name: str, folder, build, stamp=None):
    """A CPU-only model (dlib's), kept under (kind, name, folder, "cpu")."""
    return cpu_models.get((kind, name, None if folder is None else os.fspath(folder), "cpu"), build, stamp)


def use(*patchers_used):
    """Load the patchers' models onto their load device for this run (all at once, so loading one
    never evicts another needed now) and return what each holds, ready there."""
    mm.load_models_gpu(list(patchers_used))
    out = []
    for p in patchers_used:
        holder = p.model
        if holder.on_move is not None:
            weight = next(holder.module.parameters(), None)
            holder.on_move(holder.held, p.load_device if weight is None else weight.device)
        out.append(holder.held)
    return out[0] if len(out) == 1 else out
