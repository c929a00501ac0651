"""ComfyUI node layer: thin adapters from sockets/folders/devices/progress to wplus_core.

The nodes are V3 nodes (``io.ComfyNode``); ComfyUI finds them through ``comfy_entrypoint``."""
from . import paths

paths.register_folders()

from . import adapter_nodes, face_nodes, identity_nodes, restore_nodes, wplus_nodes  # noqa: E402
from .common import ComfyExtension, check_choices_before_running, host_checks_v3_combos, io  # noqa: E402

NODES: list[type[io.ComfyNode]] = [*adapter_nodes.NODES, *wplus_nodes.NODES, *face_nodes.NODES,
                                   *restore_nodes.NODES, *identity_nodes.NODES]
if not host_checks_v3_combos():
    for _node in NODES:
        check_choices_before_running(_node)


class WPlusExtension(ComfyExtension):
    async def get_node_list(self) -> list[type[io.ComfyNode]]:
        return list(NODES)


async def comfy_entrypoint() -> WPlusExtension:
    return WPlusExtension()
