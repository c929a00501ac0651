"""Calling the pack's V3 nodes from tests the way ComfyUI does: ``execute`` as a classmethod."""
from __future__ import annotations


def run(node_cls, *args, **kwargs) -> tuple:
    """The outputs of one execution (a tuple, as the V1 methods returned)."""
    return tuple(node_cls.execute(*args, **kwargs).result or ())


def ui(node_cls, *args, **kwargs) -> dict:
    """What an output node shows in the UI ({"text": [...]}, ...)."""
    return node_cls.execute(*args, **kwargs).ui


def inputs(node_cls) -> dict:
    """{group: {name: (type, options)}} as ComfyUI reports it (V3 combos: ("COMBO", {"options": [...]}))."""
    return node_cls.GET_NODE_INFO_V1()["input"]


def options(node_cls, name: str) -> list:
    """The choices of a combo input."""
    for group in inputs(node_cls).values():
        if name in group:
            typ, opts = group[name][0], group[name][1]
            return list(typ) if isinstance(typ, (list, tuple)) else list(opts["options"])
    raise KeyError(name)
