"""The pack, imported one way in the benchmarks.

ComfyUI imports the pack as a package (here ``comfyui_wplus_adapter``: tests/host/conftest.py's
PACK_NAME) and its node modules import the core relatively, while the tests' helpers that the
benchmarks reuse (test_adapter, e4e_reference, ...) say ``import wplus_core``. ``register()`` makes
the second name an alias of the first, so a process holds one copy of each module: one WPlusError,
one WPlusAdapter class. The package's ``__init__`` (node registration, which needs ComfyUI) runs only
in ``load_nodes()``, once ComfyUI is importable.
"""
from __future__ import annotations

import importlib
import importlib.abc
import importlib.util
import sys
from pathlib import Path

PACK_ROOT = Path(__file__).resolve().parents[1]
PACK_NAME = "comfyui_wplus_adapter"
ALIASED = ("wplus_core",)


class _Alias(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    """``wplus_core[.x]`` -> the module ``PACK_NAME.wplus_core[.x]`` itself."""

    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ALIASED:
            return importlib.util.spec_from_loader(name, self)
        return None

    def create_module(self, spec):
        module = importlib.import_module(f"{PACK_NAME}.{spec.name}")
        self._own_spec = module.__spec__
        return module

    def exec_module(self, module):
        module.__spec__ = self._own_spec  # the import system set the alias's spec on it: undo


def register():
    """Register the pack package (without running its __init__) and the aliases; idempotent."""
    if PACK_NAME not in sys.modules:
        spec = importlib.util.spec_from_file_location(PACK_NAME, PACK_ROOT / "__init__.py",
                                                      submodule_search_locations=[str(PACK_ROOT)])
        sys.modules[PACK_NAME] = importlib.util.module_from_spec(spec)
    for name in ALIASED:
        loaded = sys.modules.get(name)
        if loaded is not None and loaded is not sys.modules.get(f"{PACK_NAME}.{name}"):
            raise RuntimeError(f"{name} was imported under its own name before bench.pack.register()")
    if not any(isinstance(f, _Alias) for f in sys.meta_path):
        sys.meta_path.insert(0, _Alias())
    return sys.modules[PACK_NAME]


def load_nodes():
    """Run the pack's __init__ (registers its nodes with ComfyUI, which must be importable)."""
    pack = register()
    if not hasattr(pack, "comfy_entrypoint"):
        pack.__spec__.loader.exec_module(pack)
    return pack
