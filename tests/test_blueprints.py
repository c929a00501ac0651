"""The subgraph blueprints (subgraphs/*.json) without a ComfyUI: they are what cli/blueprints.py
builds from the released node definitions (tests/data/v1/object_info_0.28.0.json; the e2e test
compares with a live server's), one file per description, with the structure ComfyUI 0.28's
frontend reads: one subgraph node whose type is the one definition, links recorded on both ends,
the pack's category, and the widgets named in the brief exposed."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

from cli import blueprints

ROOT = Path(__file__).resolve().parents[1]
INFO = json.loads((ROOT / "tests" / "data" / "v1" / "object_info_0.28.0.json").read_text())


def test_one_file_per_description():
    assert sorted(p.name for p in blueprints.SUBGRAPHS_DIR.glob("*.json")) == \
        sorted(f"{b.name}.json" for b in blueprints.BLUEPRINTS)
    assert blueprints.write_all(INFO, check_only=True) == []


@pytest.mark.parametrize("bp", blueprints.BLUEPRINTS, ids=lambda b: b.name)
def test_structure(bp):
    data = blueprints.load(bp.name)
    assert data == blueprints.build(bp, INFO)
    (outer,) = data["nodes"]
    (sg,) = data["definitions"]["subgraphs"]
    assert outer["type"] == sg["id"] == bp.id and outer["title"] == sg["name"] == bp.name
    assert sg["category"] == "W+ Adapter"
    nodes = {n["id"]: n for n in sg["nodes"]}
    for l in sg["links"]:
        if l["origin_id"] == blueprints.INPUT_NODE:
            assert l["id"] in sg["inputs"][l["origin_slot"]]["linkIds"]
        else:
            assert l["id"] in nodes[l["origin_id"]]["outputs"][l["origin_slot"]]["links"]
        if l["target_id"] == blueprints.OUTPUT_NODE:
            assert sg["outputs"][l["target_slot"]]["linkIds"] == [l["id"]]
        else:
            assert nodes[l["target_id"]]["inputs"][l["target_slot"]]["link"] == l["id"]
    assert len({l["id"] for l in sg["links"]}) == len(sg["links"])


def test_the_exposed_inputs_and_outputs():
    ident = blueprints.BY_NAME["W+ Identity from Photo"]
    info = blueprints.node_info(ident, INFO)
    assert info["input_order"]["required"] == ["image", "face_select", "face_index", "size", "restore_strength"]
    assert info["output"] == ["IMAGE", "WPLUS", "IMAGE"]
    assert info["output_name"] == ["aligned", "wplus", "preview"]
    # restoration: the exposed strength of W+ Restore Face, 0 (= the faces unchanged, PSFRGAN not loaded)
    restore = next(p for p in ident.inputs if p.name == "restore_strength")
    assert [next(n for n in ident.nodes if n.id == i).type for i, _ in restore.targets] == ["WPlusRestoreFace"]
    assert blueprints.port_default(ident, restore, INFO) == 0.0
    pers = blueprints.BY_NAME["W+ Personalize Model"]
    info = blueprints.node_info(pers, INFO)
    assert info["input_order"]["required"] == ["model", "image", "weight", "start_at"]
    assert info["output"] == ["MODEL"]
    assert [blueprints.port_default(pers, p, INFO) for p in blueprints.widget_ports(pers, INFO)] == [1.0, 0.2]


def test_a_description_that_does_not_fit_the_nodes_is_refused():
    ident = blueprints.BY_NAME["W+ Identity from Photo"]
    bad = blueprints.Blueprint(ident.name, "", ident.nodes, [blueprints.Port("x", [(101, "no_such_input")])], [])
    with pytest.raises(KeyError, match="no input no_such_input"):
        blueprints.build(bad, INFO)
    mixed = blueprints.Blueprint(ident.name, "", ident.nodes,
                                 [blueprints.Port("x", [(101, "face_index"), (101, "size")])], [])
    with pytest.raises(ValueError, match="different types"):
        blueprints.build(mixed, INFO)


def test_inner_node_ids_are_unique_across_blueprints_and_apart_from_a_graphs_own():
    """Frontend 1.45 renumbers inner nodes whose ids are already taken in the graph (1.27 does not):
    distinct ids keep the flattened prompt ids ("<node>:<inner node>") the same on both."""
    ids = [n.id for bp in blueprints.BLUEPRINTS for n in bp.nodes]
    assert len(ids) == len(set(ids)) and min(ids) > 100
