"""The headless --restore option (no ComfyUI): W+ Restore Face is put between W+ Face Align and
W+ e4e Invert of every example workflow, its files are required, and the strength is passed on."""
import argparse
import copy

import pytest

from cli import prompts, run, workflows


def opts(**kw):
    return dict({k: None for k in run.OPTION_NAMES}, no_freeu=False, **kw)


def _restorers(prompt):
    return {k: v for k, v in prompt.items() if v["class_type"] == prompts.RESTORE_CLASS}


@pytest.mark.parametrize("name", prompts.workflow_names())
def test_restore_goes_between_align_and_invert_in_every_workflow(name):
    template = workflows.load_api(name)
    assert not _restorers(template)  # bypassed in the UI files, so absent from the API twins
    p = prompts.headless(prompts.apply_options(copy.deepcopy(template), opts(restore=1.0)))
    aligns = prompts.of_class(p, "WPlusFaceAlign")
    inverts = prompts.of_class(p, "WPlusE4EInvert")
    restorers = _restorers(p)
    assert len(restorers) == len(aligns) == len(inverts) >= 1
    for inv in inverts:
        src = p[inv]["inputs"]["image"]
        assert src[0] in restorers and src[1] == 0
        node = restorers[src[0]]
        assert node["inputs"]["image"][0] in aligns and node["inputs"]["image"][1] == 0
        assert {k: v for k, v in node["inputs"].items() if k != "image"} == prompts.RESTORE_INPUTS
        # the background mask still comes from the original crop, as in the reference
        mask = p[inv]["inputs"].get("background_mask")
        assert mask is None or p[mask[0]]["class_type"] == "WPlusFaceAlign"
    for node in p.values():
        for v in node["inputs"].values():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                assert v[0] in p
    need = run.required_files(p)
    assert ("psfrgan", "psfrgan_epoch15_net_G.pth") in need and ("facexlib", "parsing_parsenet.pth") in need
    assert len(need) == len(set(need))
    assert ("psfrgan", "psfrgan_epoch15_net_G.pth") not in run.required_files(prompts.headless(copy.deepcopy(template)))


def test_strength_and_a_restorer_already_in_the_workflow():
    p = prompts.apply_options(workflows.load_api(run.WORKFLOW), opts(restore=0.4))
    (node,) = _restorers(p).values()
    assert node["inputs"]["strength"] == 0.4
    again = prompts.apply_options(copy.deepcopy(p), opts(restore=0.8))  # e.g. a user's export with it on
    assert len(_restorers(again)) == 1 and list(_restorers(again).values())[0]["inputs"]["strength"] == 0.8


def test_restore_needs_a_face_going_to_e4e():
    p = workflows.load_api(run.WORKFLOW)
    for k in prompts.of_class(p, "WPlusFaceAlign"):
        for node in p.values():
            for name, v in list(node["inputs"].items()):
                if isinstance(v, list) and v[:1] == [k]:
                    del node["inputs"][name]
        del p[k]
    with pytest.raises(prompts.WorkflowError, match="--restore"):
        prompts.apply_options(p, opts(restore=1.0))


def test_command_line_option():
    ap = argparse.ArgumentParser()
    run.add_arguments(ap)
    base = ["--out", "o", "--photo", "me.jpg"]
    assert ap.parse_args(base).restore is None
    assert ap.parse_args(base + ["--restore"]).restore == 1.0
    assert ap.parse_args(base + ["--restore", "0.5"]).restore == 0.5


def test_restore_reaches_the_restorer_inside_a_placed_blueprint():
    """A user's API export with the W+ Identity from Photo blueprint: the page flattens it to
    "<node>:<inner node>" keys, its W+ Restore Face at strength 0 (off). --restore turns that one on
    instead of adding a second restorer."""
    import json
    from pathlib import Path

    from cli import blueprints
    info = json.loads((Path(__file__).parent / "data" / "v1" / "object_info_0.28.0.json").read_text())
    bp = blueprints.BY_NAME["W+ Identity from Photo"]
    prompt = {"1": {"class_type": "LoadImage", "inputs": {"image": "me.jpg"}},
              **blueprints.flatten(bp, 7, {"image": ["1", 0]}, info),
              "9": {"class_type": "WPlusSave", "inputs": {"wplus": blueprints.output_source(bp, 7, 1),
                                                         "filename_prefix": "wplus/me"}}}
    (inner,) = _restorers(prompt)
    assert inner == "7:102" and prompt[inner]["inputs"]["strength"] == 0.0
    # off: neither PSFRGAN nor the parser it would use are needed (the node loads nothing)
    assert ("psfrgan", "psfrgan_epoch15_net_G.pth") not in run.required_files(prompt)
    assert ("facexlib", "parsing_parsenet.pth") in run.required_files(prompt)  # still Face Align's
    p = prompts.apply_options(copy.deepcopy(prompt), opts(restore=0.7))
    assert list(_restorers(p)) == ["7:102"] and p["7:102"]["inputs"]["strength"] == 0.7
    assert p["7:104"]["inputs"]["image"] == ["7:102", 0]  # e4e reads the restored faces
    assert ("psfrgan", "psfrgan_epoch15_net_G.pth") in run.required_files(p)
