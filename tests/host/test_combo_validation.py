"""A combo value that is not one of the input's options is refused when the prompt is validated,
before anything runs, on every host (ComfyUI 0.3.64 itself checks combos of V1 nodes only)."""
import asyncio
import inspect

import pytest


@pytest.fixture()
def validate(comfy, pack_nodes, monkeypatch):
    import execution
    import nodes

    for key, cls in pack_nodes.items():
        monkeypatch.setitem(nodes.NODE_CLASS_MAPPINGS, key, cls)

    def check(prompt: dict, node: str):
        ok, errors, _ = asyncio.run(execution.validate_inputs("test", prompt, node, {}))
        return ok, errors

    return check


def test_every_combo_input_is_checked_by_the_host_or_the_node(pack_nodes):
    from comfy_api.internal import first_real_override

    from comfyui_wplus_adapter.nodes.common import host_checks_v3_combos, io

    if host_checks_v3_combos():
        for cls in pack_nodes.values():  # the host's own per-input check stays on
            assert first_real_override(cls, "validate_inputs") is None
        return
    for key, cls in pack_nodes.items():
        combos = {i.id for i in cls.define_schema().inputs if isinstance(i, io.Combo.Input)}
        if not combos:
            continue
        validator = first_real_override(cls, "validate_inputs")
        assert validator is not None, key
        spec = inspect.getfullargspec(validator)  # what ComfyUI reads to pick the inputs it passes
        assert spec.varkw is None, key  # a **kwargs would switch off ComfyUI's other checks
        assert combos <= set(spec.args), (key, combos - set(spec.args))


def test_unknown_file_name_is_refused_with_the_input_named(validate):
    prompt = {"1": {"class_type": "WPlusE4ELoader", "inputs": {"e4e_name": "no_such_e4e.pt", "precision": "auto"}}}
    ok, errors = validate(prompt, "1")
    assert ok is False
    (error,) = [e for e in errors if e["extra_info"]["input_name"] == "e4e_name"]
    assert "no_such_e4e.pt" in error["details"] and "e4e_ffhq_encode.pt" in error["details"]


def test_official_file_offered_for_download_is_accepted(validate):
    prompt = {"1": {"class_type": "WPlusE4ELoader", "inputs": {"e4e_name": "e4e_ffhq_encode.pt", "precision": "fp32"}}}
    assert validate(prompt, "1") == (True, [])


def test_bad_option_of_a_fixed_list_is_refused(validate):
    prompt = {"1": {"class_type": "WPlusE4ELoader", "inputs": {"e4e_name": "e4e_ffhq_encode.pt", "precision": "fp8"}}}
    ok, errors = validate(prompt, "1")
    assert ok is False
    (error,) = [e for e in errors if e["extra_info"]["input_name"] == "precision"]
    assert "fp8" in error["details"] and "bf16" in error["details"]


def test_linked_combo_is_left_to_run_time(pack_nodes):
    """A linked input reaches validation as None (its value is known only when running)."""
    from comfyui_wplus_adapter.nodes.common import choice_problem

    loader = pack_nodes["WPlusE4ELoader"]
    assert choice_problem(loader, {"e4e_name": None, "precision": "auto"}) is True
    assert "e4e_name" in choice_problem(loader, {"e4e_name": "x.pt", "precision": "auto"})
