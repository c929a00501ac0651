"""Every node inside a committed subgraph blueprint (subgraphs/*.json) exists in the pack, and
every input the blueprint exposes still matches that node's schema (as /object_info reports it,
before and after the V3 conversion: the `object_info_of_pack` fixture): the same input name and
type, a widget's value still among its options or within its range, every link's slot pointing
at an input of the type it carries. Reads the JSON files themselves, not cli/blueprints.py."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

SUBGRAPHS = Path(__file__).resolve().parents[2] / "subgraphs"
FILES = sorted(SUBGRAPHS.glob("*.json"))
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}


def _specs(info):
    """(name, spec) in the frontend's order: sockets first, then widget inputs (schema order)."""
    order = info.get("input_order") or {}
    out = []
    for section in ("required", "optional"):
        specs = info["input"].get(section) or {}
        out += [(n, specs[n]) for n in order.get(section, list(specs)) if n in specs]
    widget = [(n, s) for n, s in out if _kind(s) in WIDGETS and not _opts(s).get("forceInput")]
    return [x for x in out if x not in widget] + widget


def _kind(spec):
    return "COMBO" if isinstance(spec[0], list) else spec[0]


def _opts(spec):
    return spec[1] if len(spec) > 1 and isinstance(spec[1], dict) else {}


def _fits(spec, value):
    kind, opts = _kind(spec), _opts(spec)
    if kind == "COMBO":
        options = spec[0] if isinstance(spec[0], list) else opts.get("options", [])
        return value in options
    if kind in ("INT", "FLOAT"):
        ok = isinstance(value, (int, float)) and not isinstance(value, bool)
        return ok and opts.get("min", value) <= value <= opts.get("max", value)
    if kind == "BOOLEAN":
        return isinstance(value, bool)
    return isinstance(value, str)


def test_there_are_blueprints():
    assert {p.stem for p in FILES} >= {"W+ Identity from Photo", "W+ Personalize Model"}


@pytest.mark.parametrize("path", FILES, ids=lambda p: p.stem)
def test_blueprint_matches_the_nodes(path, object_info_of_pack):
    data = json.loads(path.read_text())
    (outer,) = data["nodes"]
    (sg,) = data["definitions"]["subgraphs"]
    assert outer["type"] == sg["id"]
    nodes = {n["id"]: n for n in sg["nodes"]}
    missing = sorted({n["type"] for n in nodes.values()} - set(object_info_of_pack))
    assert not missing, f"{path.name}: nodes the pack does not have: {missing}"
    links = {l["id"]: l for l in sg["links"]}

    for n in nodes.values():
        info = object_info_of_pack[n["type"]]
        specs = _specs(info)
        # the node's inputs, in the frontend's order, with the schema's names and types
        assert [(i["name"], i["type"]) for i in n["inputs"]] == [(k, _kind(s)) for k, s in specs], n["type"]
        # every widget value still valid, in the schema's widget order
        widget_specs = [s for k, s in specs if _kind(s) in WIDGETS]
        assert len(n["widgets_values"]) == len(widget_specs), n["type"]
        for spec, value in zip(widget_specs, n["widgets_values"]):
            assert _fits(spec, value), (n["type"], spec, value)
        # required sockets are all linked
        required = info["input"].get("required") or {}
        for i in n["inputs"]:
            if i["name"] in required and "widget" not in i:
                assert i["link"] is not None, f"{n['type']}.{i['name']} is not connected"
        assert [o["type"] for o in n["outputs"]] == list(info["output"]), n["type"]

    # every link lands on an input of the type it carries and comes from an output of that type
    for l in links.values():
        if l["target_id"] != -20:
            target = nodes[l["target_id"]]["inputs"][l["target_slot"]]
            assert target["link"] == l["id"] and target["type"] == l["type"], l
        if l["origin_id"] != -10:
            assert object_info_of_pack[nodes[l["origin_id"]]["type"]]["output"][l["origin_slot"]] == l["type"], l

    # every exposed input: the same type as each inner input it feeds, and the placed node's
    # input (a widget where the inner input is one)
    assert [i["name"] for i in outer["inputs"]] == [i["name"] for i in sg["inputs"]]
    for k, port in enumerate(sg["inputs"]):
        assert port["linkIds"], f"{path.name}: input {port['name']} feeds nothing"
        for link_id in port["linkIds"]:
            l = links[link_id]
            assert l["origin_id"] == -10 and l["origin_slot"] == k
            target = nodes[l["target_id"]]
            spec = dict(_specs(object_info_of_pack[target["type"]]))[target["inputs"][l["target_slot"]]["name"]]
            assert port["type"] == _kind(spec), (port["name"], spec)
            assert ("widget" in outer["inputs"][k]) == (_kind(spec) in WIDGETS), port["name"]
    # the proxied (promoted) widgets name real widgets of inner nodes
    for node_id, widget in outer["properties"].get("proxyWidgets", []):
        assert widget in [i["name"] for i in nodes[int(node_id)]["inputs"] if "widget" in i], (node_id, widget)
    for k, port in enumerate(sg["outputs"]):
        (link_id,) = port["linkIds"]
        assert links[link_id]["target_id"] == -20 and links[link_id]["type"] == port["type"]
        assert outer["outputs"][k]["type"] == port["type"]
