"""The V3 nodes are the V1 nodes to every workflow saved with them: same node ids, display names,
category, outputs, and inputs (name, order, type, default/min/max/step, combo choices), compared
with GET /object_info of the V1 pack as released (tests/data/v1, never regenerated)."""
import json
from pathlib import Path

import pytest

DATA = Path(__file__).resolve().parents[1] / "data" / "v1"
# choices that list files on disk (they depend on the models folder, not on the node)
FILE_INPUTS = {("WPlusAdapterLoader", "adapter_name"), ("WPlusE4ELoader", "e4e_name"),
               ("WPlusRestoreFace", "psfrgan_name"), ("WPlusLoad", "latent_file")}
NUMBER_OPTIONS = ("default", "min", "max", "step")
# the one tooltip reworded since V1 (it names the nodes by their display names now)
TOOLTIP_CHANGES = {"W+ latents (B,18,512) from E4EInvert, Load W+ or another W+ node.":
                   "W+ latents (B,18,512) from W+ e4e Invert, W+ Load or another W+ node."}
# what ComfyUI adds to every V3 output node (io.Schema.finalize); V1 output nodes asked for nothing
OUTPUT_NODE_HIDDEN = {"prompt": "PROMPT", "extra_pnginfo": "EXTRA_PNGINFO"}


@pytest.fixture(scope="module")
def v1(comfy) -> dict:
    import comfyui_version
    version = comfyui_version.__version__
    snapshot = "0.3.64" if version == "0.3.64" else "0.28.0"  # 0.28 and later report one format
    return json.loads((DATA / f"object_info_{snapshot}.json").read_text())


def normalise(spec) -> tuple:
    """(type, options) of one input: V1 combos are ([choices], {...}), V3 ones ("COMBO", {"options": [...]});
    hidden inputs are "UNIQUE_ID" in V1, ("UNIQUE_ID",) in V3."""
    if isinstance(spec, str):
        return spec, {}
    typ, opts = spec[0], dict(spec[1]) if len(spec) > 1 else {}
    if isinstance(typ, (list, tuple)):
        typ, opts["options"] = "COMBO", list(typ)
    return typ, opts


def test_same_node_ids(v1, object_info_of_pack):
    assert set(object_info_of_pack) == set(v1)


@pytest.mark.parametrize("key", sorted(json.loads((DATA / "object_info_0.28.0.json").read_text())))
def test_node_matches_v1(key, v1, object_info_of_pack):
    old, new = v1[key], object_info_of_pack[key]
    for field in ("display_name", "category", "description", "output", "output_name", "output_is_list",
                  "output_node"):
        assert new[field] == old[field], f"{key}.{field}: {new[field]!r} != V1 {old[field]!r}"
    n = len(old["output"])
    assert list(new["output_tooltips"]) == list(old.get("output_tooltips") or [None] * n), key
    hidden = dict(new["input"].get("hidden", {}))
    if old["output_node"]:
        for name, value in OUTPUT_NODE_HIDDEN.items():
            assert normalise(hidden.pop(name))[0] == value
    new_input = {**{g: v for g, v in new["input"].items() if g != "hidden"}, **({"hidden": hidden} if hidden else {})}
    assert set(new_input) == set(old["input"]), f"{key}: input groups {set(new_input)} != V1 {set(old['input'])}"
    for group, specs in old["input"].items():
        assert list(new_input[group]) == old["input_order"][group], f"{key}.{group}: order"
        for name, spec in specs.items():
            old_type, old_opts = normalise(spec)
            new_type, new_opts = normalise(new_input[group][name])
            where = f"{key}.{name}"
            assert new_type == old_type, f"{where}: type {new_type} != V1 {old_type}"
            for option in NUMBER_OPTIONS:
                assert new_opts.get(option) == old_opts.get(option), f"{where}: {option}"
            tip = old_opts.get("tooltip")
            assert new_opts.get("tooltip") == TOOLTIP_CHANGES.get(tip, tip), f"{where}: tooltip"
            if old_type != "COMBO":
                continue
            choices, old_choices = new_opts["options"], old_opts["options"]
            if (key, name) in FILE_INPUTS:  # the official files are offered with an empty folder
                assert set(old_choices) <= set(choices), where
            elif (key, name) == ("WPlusEdit", "direction"):  # user/* are the user's files
                assert [c for c in choices if not c.startswith("user/")] == old_choices, where
            else:
                assert choices == old_choices, where


def test_v3_entrypoint_only(pack):
    """ComfyUI loads comfy_entrypoint only when the module has no NODE_CLASS_MAPPINGS (nodes.py)."""
    assert callable(pack.comfy_entrypoint) and not hasattr(pack, "NODE_CLASS_MAPPINGS")
