"""What the example workflows (cli/workflows.py) and the subgraph blueprints (cli/blueprints.py)
are described with, and how a description is read against the node definitions a running
ComfyUI reports on GET /object_info."""
from __future__ import annotations

from dataclasses import dataclass, field

from wplus_core import model_files

WIDGET_TYPES = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
MODEL_INPUTS = model_files.LOADERS  # loader node -> (widget, models folder)


def model_url(filename: str):
    """(folder, url) of a file the workflows name, or None (e.g. a user's LoRA)."""
    known = model_files.by_name(filename)
    return (known.folder, known.url) if known else None


@dataclass
class L:
    """A link: output ``slot`` of node ``node``."""
    node: int
    slot: int = 0


@dataclass
class N:
    id: int
    type: str
    inputs: dict = field(default_factory=dict)
    title: str | None = None
    group: str | None = None  # title of the group the node sits in (None: outside any group)
    mode: int = 0  # BYPASS: in the graph editor but bypassed (absent from the API twin)



def is_widget(spec) -> bool:
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if opts.get("forceInput"):
        return False
    return isinstance(kind, list) or kind in WIDGET_TYPES


def input_specs(info: dict) -> list[tuple[str, list]]:
    """(name, spec) in the host's order: required then optional, as /object_info's input_order says."""
    order = info.get("input_order") or {}
    out = []
    for section in ("required", "optional"):
        specs = info.get("input", {}).get(section, {}) or {}
        for name in order.get(section, list(specs)):
            if name in specs:
                out.append((name, specs[name]))
    return out


def default(spec):
    kind, opts = spec[0], (spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {})
    if "default" in opts:
        return opts["default"]
    if isinstance(kind, list):
        return kind[0] if kind else None
    if kind == "COMBO":
        options = opts.get("options") or []
        return options[0] if options else None
    return {"INT": 0, "FLOAT": 0.0, "STRING": "", "BOOLEAN": False}.get(kind)


def topo(spec) -> list[N]:
    """The nodes of a workflow or blueprint description (anything with .nodes), inputs first."""
    by_id = {n.id: n for n in spec.nodes}
    done, order = set(), []

    def visit(n):
        if n.id in done:
            return
        done.add(n.id)
        for v in n.inputs.values():
            if isinstance(v, L):
                visit(by_id[v.node])
        order.append(n)

    for n in sorted(spec.nodes, key=lambda n: n.id):
        visit(n)
    return order


def check_nodes(spec, object_info: dict) -> dict:
    """{id: node} of a workflow or blueprint description (anything with .name and .nodes); raises
    KeyError/ValueError when it does not fit the host's node definitions."""
    by_id = {n.id: n for n in spec.nodes}
    if len(by_id) != len(spec.nodes):
        raise ValueError(f"{spec.name}: two nodes share an id")
    missing = sorted({n.type for n in spec.nodes if n.type not in object_info})
    if missing:
        raise KeyError(f"{spec.name}: node types unknown to this ComfyUI: {', '.join(missing)}")
    for n in spec.nodes:
        names = {name for name, _ in input_specs(object_info[n.type])}
        unknown = set(n.inputs) - names
        if unknown:
            raise KeyError(f"{spec.name}: node {n.id} ({n.type}) has no input(s) {sorted(unknown)}; "
                           f"it has {sorted(names)}")
    return by_id


def widget_entries(spec, value) -> list:
    """What a UI file's ``widgets_values`` holds for one widget input: its value, then the extra
    widget the page adds after it ("fixed" after a seed's control_after_generate, "image" after an
    upload button)."""
    opts = spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}
    return ([value] + (["fixed"] if opts.get("control_after_generate") else [])
            + (["image"] if opts.get("image_upload") else []))
