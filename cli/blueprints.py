"""The subgraph blueprints in subgraphs/: one Python description each, written out as the
workflow JSON that ComfyUI's subgraph manager serves (0.28 and later).

    subgraphs/<name>.json   a workflow whose only node is one subgraph node; `definitions.subgraphs`
                            holds the inner graph (the pack's nodes), its inputs and outputs

ComfyUI (app/subgraph_manager.py) globs `<custom_nodes folder>/*/subgraphs/*.json` and serves them
on GET /global_subgraphs; the frontend lists each in its node library under *Subgraph Blueprints /
<category>* with the file's name, and places it as a subgraph node. Hosts without a subgraph
manager (0.3.64) never read the folder.

Like cli/workflows.py, the inner nodes' widgets, defaults and socket types come from the node
definitions that a running ComfyUI reports on GET /object_info:

    python -m cli blueprints --write [--comfyui PATH]   # or without --write: check only

`build(blueprint, object_info) -> dict` is pure; tests compare it with the committed files, and
tests/host/test_blueprints_schema.py checks every inner node and exposed input against the nodes'
schemas. An exposed widget (a `Port` that feeds widget inputs) shows on the placed node as a
widget of its own; the frontend sends its value to every inner input it feeds.
"""
from __future__ import annotations

import json
import uuid
from dataclasses import dataclass, field
from pathlib import Path

from wplus_core import model_files

from .graph import MODEL_INPUTS, L, N, check_nodes, default, input_specs, is_widget, model_url, topo, widget_entries

SUBGRAPHS_DIR = Path(__file__).resolve().parents[1] / "subgraphs"
CATEGORY = "W+ Adapter"  # the pack's node category: the library shows "Subgraph Blueprints/W+ Adapter"
NAMESPACE = uuid.UUID("5f0c2a52-8d9e-4c63-9a43-77b0d1c0b1e5")  # stable ids: uuid5(NAMESPACE, name...)
INPUT_NODE, OUTPUT_NODE = -10, -20  # LiteGraph's ids of a subgraph's input and output nodes
OUTER_ID = 1  # the one node of a blueprint file
ADAPTER, E4E, PSFRGAN = (model_files.name_of(k) for k in ("wplus_adapter", "e4e", "psfrgan"))
# Inner node ids: 101.. and 201.., unique across both blueprints and apart from the ids of a graph's
# own nodes: frontend 1.45 renumbers inner nodes whose ids are taken (1.27 does not), which would
# change the flattened ids ("<node>:<inner node>") a workflow using them queues.


@dataclass
class Port:
    """An input of the blueprint: feeds ``targets`` [(inner node id, input name)]; a widget input
    (INT, FLOAT, COMBO...) shows as a widget on the placed node."""
    name: str
    targets: list
    label: str | None = None


@dataclass
class Out:
    name: str
    source: L


@dataclass
class Blueprint:
    name: str  # the file's name: the frontend's display name of the node
    description: str
    nodes: list
    inputs: list
    outputs: list
    category: str = CATEGORY
    search_aliases: list = field(default_factory=list)

    @property
    def id(self) -> str:
        return str(uuid.uuid5(NAMESPACE, self.name))


def _identity_from_photo() -> Blueprint:
    nodes = [
        N(101, "WPlusFaceAlign", {"image": None, "size": "512"}),
        # strength 0 returns the faces unchanged without loading PSFRGAN (nodes/restore_nodes.py)
        N(102, "WPlusRestoreFace", {"image": L(101, 0), "psfrgan_name": PSFRGAN, "strength": 0.0}),
        N(103, "WPlusE4ELoader", {"e4e_name": E4E}),
        N(104, "WPlusE4EInvert", {"e4e_model": L(103), "image": L(102), "background_mask": L(101, 1)}),
    ]
    return Blueprint(
        "W+ Identity from Photo",
        "A photo to the W+ of one face: W+ Face Align (FFHQ crop, background whitened), optional PSFRGAN "
        "restoration (restore_strength 0 = off, 1 = the reference's -s) and W+ e4e Invert. Outputs the "
        "aligned face, the W+ (18x512) and e4e's StyleGAN reconstruction.",
        nodes,
        inputs=[Port("image", [(101, "image")]),
                Port("face_select", [(101, "face_select")]),
                Port("face_index", [(101, "face_index")]),
                Port("size", [(101, "size")]),
                Port("restore_strength", [(102, "strength")])],
        outputs=[Out("aligned", L(102, 0)), Out("wplus", L(104, 0)), Out("preview", L(104, 1))],
        search_aliases=["face to W+", "e4e inversion", "photo identity"],
    )


def _personalize_model() -> Blueprint:
    nodes = [
        N(201, "WPlusFaceAlign", {"image": None, "size": "512"}),
        N(202, "WPlusE4ELoader", {"e4e_name": E4E}),
        N(203, "WPlusE4EInvert", {"e4e_model": L(202), "image": L(201, 0), "background_mask": L(201, 1)}),
        N(204, "WPlusAdapterLoader", {"adapter_name": ADAPTER}),
        N(205, "ApplyWPlusAdapter", {"model": None, "wplus_adapter": L(204), "wplus": L(203), "weight": 1.0,
                                   "start_at": 0.2, "end_at": 1.0}),
    ]
    return Blueprint(
        "W+ Personalize Model",
        "An SD1.5 MODEL and a photo to the MODEL that draws that person: the photo's largest face is "
        "aligned, inverted by e4e into W+ and injected by the stage-2 W+ adapter. weight 1.0 and "
        "start_at 0.2 are the paper's settings.",
        nodes,
        inputs=[Port("model", [(205, "model")]),
                Port("image", [(201, "image")]),
                Port("weight", [(205, "weight")]),
                Port("start_at", [(205, "start_at")])],
        outputs=[Out("MODEL", L(205, 0))],
        search_aliases=["W+ adapter", "personalize", "identity"],
    )


BLUEPRINTS = [_identity_from_photo(), _personalize_model()]
BY_NAME = {b.name: b for b in BLUEPRINTS}
BY_ID = {b.id: b for b in BLUEPRINTS}  # a placed blueprint's node type is its id


# ---------------------------------------------------------------------------------------- builder
def _spec_of(object_info: dict, node_type: str, name: str):
    return dict(input_specs(object_info[node_type]))[name]


def _kind(ispec) -> str:
    return "COMBO" if isinstance(ispec[0], list) else ispec[0]


def check(bp: Blueprint, object_info: dict) -> None:
    """Raise KeyError/ValueError when the description does not fit the host's node definitions."""
    by_id = check_nodes(bp, object_info)
    for port in bp.inputs:
        kinds = set()
        for node_id, name in port.targets:
            node = by_id[node_id]
            if name not in {k for k, _ in input_specs(object_info[node.type])}:
                raise KeyError(f"{bp.name}: input {port.name}: node {node_id} ({node.type}) has no input {name}")
            kinds.add(_kind(_spec_of(object_info, node.type, name)))
        if len(kinds) != 1:
            raise ValueError(f"{bp.name}: input {port.name} feeds inputs of different types {sorted(kinds)}")
    for out in bp.outputs:
        node = by_id[out.source.node]
        if out.source.slot >= len(object_info[node.type]["output"]):
            raise KeyError(f"{bp.name}: output {out.name}: node {node.id} ({node.type}) has no output "
                           f"{out.source.slot}")


def port_spec(bp: Blueprint, port: Port, object_info: dict):
    """The input spec (as /object_info writes it) of the inner input a port feeds first."""
    node_id, name = port.targets[0]
    node = next(n for n in bp.nodes if n.id == node_id)
    return _spec_of(object_info, node.type, name)


def node_info(bp: Blueprint, object_info: dict) -> dict:
    """An /object_info-like entry for the placed subgraph node (its inputs are the ports, its
    outputs the blueprint's outputs): what cli/workflows.py needs to put it in a workflow."""
    by_id = {n.id: n for n in bp.nodes}
    required = {p.name: port_spec(bp, p, object_info) for p in bp.inputs}
    return {"input": {"required": required}, "input_order": {"required": [p.name for p in bp.inputs]},
            "output": [object_info[by_id[o.source.node].type]["output"][o.source.slot] for o in bp.outputs],
            "output_name": [o.name for o in bp.outputs], "display_name": bp.name, "name": bp.name}


def widget_ports(bp: Blueprint, object_info: dict) -> list[Port]:
    return [p for p in bp.inputs if is_widget(port_spec(bp, p, object_info))]


def port_default(bp: Blueprint, port: Port, object_info: dict):
    """The blueprint's value of an exposed widget: the inner node's value (or the input's default)."""
    node_id, name = port.targets[0]
    node = next(n for n in bp.nodes if n.id == node_id)
    value = node.inputs.get(name)
    return default(port_spec(bp, port, object_info)) if value is None else value


def definition(bp: Blueprint, object_info: dict) -> dict:
    """The subgraph definition (`definitions.subgraphs[i]`): inner nodes, links, inputs, outputs."""
    check(bp, object_info)
    by_id = {n.id: n for n in bp.nodes}
    feeds = {}  # (inner node, input name) -> port index
    for k, port in enumerate(bp.inputs):
        for target in port.targets:
            feeds[target] = k
    links, port_links, out_links = [], {k: [] for k in range(len(bp.inputs))}, {}
    order = topo(bp)
    depth = {}
    for n in order:
        depth[n.id] = 1 + max([depth[v.node] for v in n.inputs.values() if isinstance(v, L)], default=-1)
    inner = []
    for rank, n in enumerate(order):
        info = object_info[n.type]
        inputs_ui, widgets = [], []
        # the frontend's own order (1.45): every socket input first, then one input per widget
        # (a widget's socket exists whether or not it is linked); links name these slot indices
        specs = input_specs(info)
        specs = [s for s in specs if not is_widget(s[1])] + [s for s in specs if is_widget(s[1])]
        optional = set((info.get("input", {}).get("optional")) or {})
        for name, ispec in specs:
            value = n.inputs.get(name)
            port = feeds.get((n.id, name))
            if is_widget(ispec):
                if isinstance(value, L):
                    raise ValueError(f"{bp.name}: widget {name} of node {n.id} is linked: use a Port")
                widgets += widget_entries(ispec, default(ispec) if value is None else value)
            link_id = None
            if port is not None:
                link_id = len(links) + 1
                links.append({"id": link_id, "origin_id": INPUT_NODE, "origin_slot": port, "target_id": n.id,
                              "target_slot": len(inputs_ui), "type": _kind(ispec)})
                port_links[port].append(link_id)
            elif isinstance(value, L):
                link_id = len(links) + 1
                out_type = object_info[by_id[value.node].type]["output"][value.slot]
                links.append({"id": link_id, "origin_id": value.node, "origin_slot": value.slot, "target_id": n.id,
                              "target_slot": len(inputs_ui), "type": out_type})
                out_links.setdefault((value.node, value.slot), []).append(link_id)
            elif not is_widget(ispec) and name not in optional:
                raise ValueError(f"{bp.name}: required input {name} of node {n.id} ({n.type}) is not connected")
            entry = {"localized_name": name, "name": name, "type": _kind(ispec), "link": link_id}
            if name in optional and not is_widget(ispec):
                entry["shape"] = 7
            if is_widget(ispec):
                entry["widget"] = {"name": name}
            inputs_ui.append(entry)
        node = {"id": n.id, "type": n.type, "pos": [0, 0], "size": [320, 0], "flags": {}, "order": rank, "mode": n.mode,
                "inputs": inputs_ui, "outputs": [], "properties": {"Node name for S&R": n.type},
                "widgets_values": widgets}
        if n.type in MODEL_INPUTS:
            widget = MODEL_INPUTS[n.type][0]
            known = model_url(str(n.inputs.get(widget)))
            if known:
                node["properties"]["models"] = [{"name": n.inputs[widget], "url": known[1], "directory": known[0]}]
        inner.append(node)
    for k, out in enumerate(bp.outputs):
        link_id = len(links) + 1
        src = by_id[out.source.node]
        links.append({"id": link_id, "origin_id": src.id, "origin_slot": out.source.slot, "target_id": OUTPUT_NODE,
                      "target_slot": k, "type": object_info[src.type]["output"][out.source.slot]})
        out_links.setdefault((src.id, out.source.slot), []).append(link_id)
    # layout: columns by depth, 360 apart; the input node on the left, the output node on the right
    col_y = {}
    for node in inner:
        info = object_info[node["type"]]
        names = info.get("output_name") or info["output"]
        node["outputs"] = [{"localized_name": names[i], "name": names[i], "type": t,
                            "links": out_links.get((node["id"], i), [])} for i, t in enumerate(info["output"])]
        slots = max(len([i for i in node["inputs"] if "widget" not in i]), len(node["outputs"]))
        height = 16 + 22 * slots + 28 * len(node["widgets_values"])
        node["size"] = [320, int(-(-height // 10) * 10)]
        d = depth[node["id"]]
        y = col_y.get(d, 0)
        node["pos"] = [200 + 360 * d, y]
        col_y[d] = y + node["size"][1] + 70
    right = 200 + 360 * (max(depth.values()) + 1)
    inputs = [{"id": str(uuid.uuid5(NAMESPACE, f"{bp.name}/in/{p.name}")), "name": p.name,
               "type": _kind(port_spec(bp, p, object_info)), "linkIds": port_links[k], "localized_name": p.name,
               **({"label": p.label} if p.label else {}), "pos": [140, 20 + 20 * k]}
              for k, p in enumerate(bp.inputs)]
    outputs = [{"id": str(uuid.uuid5(NAMESPACE, f"{bp.name}/out/{o.name}")), "name": o.name,
                "type": object_info[by_id[o.source.node].type]["output"][o.source.slot],
                "linkIds": [l["id"] for l in links if l["target_id"] == OUTPUT_NODE and l["target_slot"] == k],
                "localized_name": o.name, "pos": [right + 20, 20 + 20 * k]}
               for k, o in enumerate(bp.outputs)]
    return {
        "id": bp.id, "version": 1,
        "state": {"lastGroupId": 0, "lastNodeId": max(by_id), "lastLinkId": len(links), "lastRerouteId": 0},
        "revision": 0, "config": {}, "name": bp.name,
        "inputNode": {"id": INPUT_NODE, "bounding": [0, 0, 160, 40 + 20 * len(bp.inputs)]},
        "outputNode": {"id": OUTPUT_NODE, "bounding": [right, 0, 140, 40 + 20 * len(bp.outputs)]},
        "inputs": inputs, "outputs": outputs, "widgets": [], "nodes": inner, "groups": [], "links": links,
        "extra": {}, "category": bp.category, "description": bp.description,
    }


def outer_node(bp: Blueprint, object_info: dict, node_id: int = OUTER_ID) -> dict:
    """The subgraph node that stands for the blueprint in a graph (no links: the caller sets them).
    Its exposed widgets show the inner nodes' values: frontend 1.45 serializes the node with empty
    widgets_values and properties.proxyWidgets = [[inner node id, widget name], ...]."""
    info = node_info(bp, object_info)
    inputs, proxies = [], []
    for p in bp.inputs:
        ispec = info["input"]["required"][p.name]
        entry = {"localized_name": p.name, "name": p.name, "type": _kind(ispec), "link": None}
        if p.label:
            entry["label"] = p.label
        if is_widget(ispec):
            entry["widget"] = {"name": p.name}
            proxies.append([str(p.targets[0][0]), p.targets[0][1]])
        inputs.append(entry)
    outputs = [{"localized_name": name, "name": name, "type": t, "links": []}
               for name, t in zip(info["output_name"], info["output"])]
    widgets = widget_ports(bp, object_info)
    slots = max(len([p for p in bp.inputs if not is_widget(port_spec(bp, p, object_info))]), len(outputs))
    return {"id": node_id, "type": bp.id, "pos": [0, 0], "size": [320, 16 + 22 * slots + 28 * len(widgets)],
            "flags": {}, "order": 0, "mode": 0, "inputs": inputs, "outputs": outputs,
            "properties": {"proxyWidgets": proxies}, "widgets_values": [], "title": bp.name}


def flatten(bp: Blueprint, outer_id: int, port_values: dict, object_info: dict) -> dict:
    """The API nodes the page queues for the blueprint placed as node ``outer_id``: every inner
    node as "<outer_id>:<inner id>"; an exposed socket takes ``port_values[port name]`` (the API
    value of what is linked to the placed node; absent: left out), every widget the inner node's
    value (the placed node's exposed widgets show those)."""
    feeds = {target: port.name for port in bp.inputs for target in port.targets}
    api = {}
    for n in topo(bp):
        info = object_info[n.type]
        inputs = {}
        for name, ispec in input_specs(info):
            value = n.inputs.get(name)
            port = feeds.get((n.id, name))
            if port is not None and not is_widget(ispec):
                if port in port_values:
                    inputs[name] = port_values[port]
            elif isinstance(value, L):
                inputs[name] = [f"{outer_id}:{value.node}", value.slot]
            elif is_widget(ispec):
                inputs[name] = default(ispec) if value is None else value
        api[f"{outer_id}:{n.id}"] = {"class_type": n.type, "inputs": inputs,
                                      "_meta": {"title": info.get("display_name") or n.type}}
    return api


def output_source(bp: Blueprint, outer_id: int, slot: int) -> list:
    """The API value [inner node key, slot] behind output ``slot`` of the blueprint placed as ``outer_id``."""
    source = bp.outputs[slot].source
    return [f"{outer_id}:{source.node}", source.slot]


def build(bp: Blueprint, object_info: dict) -> dict:
    """The blueprint file: a workflow with the one subgraph node and its definition."""
    inner = definition(bp, object_info)  # checks the description first
    return {"revision": 0, "last_node_id": OUTER_ID, "last_link_id": 0, "nodes": [outer_node(bp, object_info)],
            "links": [], "version": 0.4, "definitions": {"subgraphs": [inner]},
            "extra": {"BlueprintDescription": bp.description, "BlueprintSearchAliases": bp.search_aliases}}


def path_of(bp: Blueprint) -> Path:
    return SUBGRAPHS_DIR / f"{bp.name}.json"


def dump(data) -> str:
    return json.dumps(data, indent=2, ensure_ascii=False) + "\n"


def write_all(object_info: dict, check_only: bool = False) -> list[str]:
    """Write (or only compare) every blueprint; returns the files that differ. A .json in
    subgraphs/ that no description makes is reported too (and never deleted)."""
    SUBGRAPHS_DIR.mkdir(exist_ok=True)
    stale = []
    for bp in BLUEPRINTS:
        path = path_of(bp)
        text = dump(build(bp, object_info))
        if not path.is_file() or path.read_text() != text:
            stale.append(str(path.relative_to(SUBGRAPHS_DIR.parent)))
            if not check_only:
                path.write_text(text)
    known = {path_of(bp).name for bp in BLUEPRINTS}
    stale += [f"subgraphs/{p.name} (no description in cli/blueprints.py)"
              for p in sorted(SUBGRAPHS_DIR.glob("*.json")) if p.name not in known]
    return stale


def load(name: str) -> dict:
    return json.loads(path_of(BY_NAME[name]).read_text())
