"""The graph editor: each example workflow loads in ComfyUI's real web page (frontend 1.27) in
headless Debian chromium driven by Playwright, with no missing node or model, our nodes rendered
with their widgets, and the prompt the page builds from the UI file equal to the committed API twin.
A screenshot per workflow goes to tests/e2e/artifacts/. The page reaches loopback only.

Needs the playwright Python package and /usr/bin/chromium (.ci/install_browser.sh); skips otherwise.
"""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from cli import browser, workflows

NAMES = [s.name for s in workflows.SPECS]


@pytest.fixture(scope="module")
def page(server, photos):
    pytest.importorskip("playwright.sync_api", reason="playwright (pip) not installed: browser tests skipped")
    if not browser.CHROMIUM.exists():
        pytest.skip(f"{browser.CHROMIUM} not found (run .ci/install_browser.sh): browser tests skipped")
    with browser.comfy_page(server) as pg:
        yield pg
        if pg.outside_requests:
            print(f"blocked {len(pg.outside_requests)} request(s) to other hosts, e.g. {pg.outside_requests[0]}")


@pytest.mark.parametrize("name", NAMES)
def test_workflow_loads_in_the_graph_editor(page, name, object_info, artifacts):
    ui = workflows.load_ui(name)
    result = browser.load_workflow(page, ui, name)
    page.screenshot(path=str(artifacts / f"{name}.png"))
    page.keyboard.press("Escape")

    missing = [n["type"] for n in result["nodes"] if not n["registered"] or n["has_errors"]]
    assert not missing, f"missing/broken nodes in the page: {missing}"
    assert not [d for d in result["dialogs"] if "missing" in d.lower()], result["dialogs"]
    assert len(result["nodes"]) == len(ui["nodes"])

    # our nodes render with the widgets the server defines, holding the workflow's values
    by_id = {n["id"]: n for n in ui["nodes"]}
    ours = [n for n in result["nodes"] if n["type"].startswith(("WPlus", "ApplyWPlus"))]
    assert ours, "no W+ node in the workflow"
    for n in ours:
        spec = object_info[n["type"]]
        widget_inputs = [k for k, v in {**spec["input"].get("required", {}),
                                        **(spec["input"].get("optional") or {})}.items()
                         if isinstance(v[0], list) or v[0] in workflows.WIDGET_TYPES]
        assert [w[0] for w in n["widgets"]] == widget_inputs, n["type"]
        assert [w[2] for w in n["widgets"]] == by_id[n["id"]]["widgets_values"], n["type"]

    # what the page would queue is exactly the committed API twin
    api = workflows.load_api(name)
    got = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in result["output"].items()}
    want = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    assert got == want, json.dumps({"page": got, "file": want}, indent=1)[:4000]
    assert not page.page_errors, page.page_errors


def test_pack_templates_are_listed_with_thumbnails(server):
    """ComfyUI serves the pack's example_workflows/ folder as templates (GET /workflow_templates), each with
    its same-named .jpg thumbnail."""
    templates = server.get_json("/workflow_templates")
    module = next((k for k in templates if "wplus" in k.lower()), None)
    assert module is not None, templates
    assert sorted(templates[module]) == sorted(NAMES), "only the UI files are templates (api/ is one level down)"
    for name in NAMES:
        data = json.loads(server._request(f"/api/workflow_templates/{module}/{name}.json"))
        assert data == workflows.load_ui(name)
        thumb = Image.open(io.BytesIO(server._request(f"/api/workflow_templates/{module}/{name}.jpg")))
        assert thumb.format == "JPEG" and thumb.width >= 320
