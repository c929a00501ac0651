"""Host tests run against a real ComfyUI checkout: $COMFYUI_PATH, the folder two levels
up (pack inside ComfyUI/custom_nodes/<pack>), or ~/comfy/ComfyUI. Without one they skip."""
import importlib.util
import os
import sys
from pathlib import Path

import pytest

from tests.host import device

PACK_ROOT = Path(__file__).resolve().parents[2]
PACK_NAME = "comfyui_wplus_adapter"


def find_comfyui():
    for cand in (os.environ.get("COMFYUI_PATH"), PACK_ROOT.parent.parent, Path.home() / "comfy" / "ComfyUI"):
        if cand and (Path(cand) / "comfy" / "model_patcher.py").is_file():
            return Path(cand).resolve()
    return None


COMFYUI = find_comfyui()
SKIP_REASON = "no ComfyUI checkout found (COMFYUI_PATH, ../.., ~/comfy/ComfyUI): host tests skipped"


def pytest_collection_modifyitems(config, items):
    if COMFYUI is None:
        marker = pytest.mark.skip(reason=SKIP_REASON)
        for item in items:
            if "tests/host" in str(item.fspath).replace(os.sep, "/"):
                item.add_marker(marker)


def pytest_report_header(config):
    return f"ComfyUI host: {COMFYUI}" if COMFYUI else SKIP_REASON


@pytest.fixture(scope="session")
def comfy():
    """Import the real ComfyUI in-process (CPU unless WPLUS_TEST_DEVICE says) and return its root."""
    if COMFYUI is None:
        pytest.skip(SKIP_REASON)
    if str(COMFYUI) not in sys.path:
        sys.path.insert(0, str(COMFYUI))
    import comfy.options
    comfy.options.enable_args_parsing(False)
    device.configure_comfy_args()  # WPLUS_TEST_DEVICE / _DTYPE / _COMFY_ARGS (default: CPU, fp32)
    import comfy.model_management  # noqa: F401
    device.enable_dynamic_vram_like_main()
    return COMFYUI


@pytest.fixture(scope="session")
def pack(comfy):
    """The pack imported the way ComfyUI imports a custom node package."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, PACK_ROOT / "__init__.py",
                                                  submodule_search_locations=[str(PACK_ROOT)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pack_nodes(pack) -> dict:
    """{node id: node class}, the way ComfyUI collects them: V1 mappings, or a V3 extension's
    ``comfy_entrypoint()`` -> ``get_node_list()``."""
    return node_classes(pack)


def node_classes(pack) -> dict:
    if hasattr(pack, "NODE_CLASS_MAPPINGS"):
        return dict(pack.NODE_CLASS_MAPPINGS)
    import asyncio

    async def collect():
        extension = await pack.comfy_entrypoint()
        return await extension.get_node_list()

    return {cls.GET_SCHEMA().node_id: cls for cls in asyncio.run(collect())}


@pytest.fixture(scope="session")
def object_info_of_pack(pack_nodes) -> dict:
    """What GET /object_info reports for each of the pack's nodes (server.py's node_info)."""
    out = {}
    for key, cls in pack_nodes.items():
        if hasattr(cls, "GET_NODE_INFO_V1"):
            out[key] = cls.GET_NODE_INFO_V1()
            continue
        spec = cls.INPUT_TYPES()
        out[key] = {"input": spec, "input_order": {k: list(v) for k, v in spec.items()},
                    "output": list(cls.RETURN_TYPES), "output_name": list(getattr(cls, "RETURN_NAMES", cls.RETURN_TYPES)),
                    "output_is_list": list(getattr(cls, "OUTPUT_IS_LIST", [False] * len(cls.RETURN_TYPES)))}
    return out


def pytest_runtest_teardown(item, nextitem):
    """Free the session's shared random UNet (tests/host/sd15.py) once the host tests are done, so
    the tests after them (a GPU-check subprocess with its own UNets) do not pay for it."""
    here = str(Path(__file__).parent)
    if nextitem is None or not str(nextitem.fspath).startswith(here):
        from tests.host import sd15
        if sd15._shared:
            sd15._shared.clear()
            try:
                import comfy.model_management
                comfy.model_management.unload_all_models()
            except Exception:  # nothing loaded, or a host without it: nothing to free
                pass
