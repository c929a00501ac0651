"""ComfyUI node layer: thin adapters from sockets/folders/devices/progress to wplus_core."""
from . import paths

paths.register_folders()

NODE_CLASS_MAPPINGS = {}
NODE_DISPLAY_NAME_MAPPINGS = {}


def _collect(module):
    NODE_CLASS_MAPPINGS.update(module.NODE_CLASS_MAPPINGS)
    NODE_DISPLAY_NAME_MAPPINGS.update(module.NODE_DISPLAY_NAME_MAPPINGS)


from . import adapter_nodes  # noqa: E402

_collect(adapter_nodes)

from . import wplus_nodes  # noqa: E402

_collect(wplus_nodes)

from . import face_nodes  # noqa: E402

_collect(face_nodes)

from . import restore_nodes  # noqa: E402

_collect(restore_nodes)

from . import identity_nodes  # noqa: E402

_collect(identity_nodes)
