"""The graph editor: each example workflow loads in ComfyUI's real web page (the host's frontend:
1.27 with ComfyUI 0.3.64, 1.45 with 0.28) in headless Debian chromium driven by Playwright, with no
missing node or model, our nodes rendered with their widgets, the prompt the page builds from the
UI file equal to the committed API twin, and no node covering another once the photos show.
Screenshots per workflow go to tests/e2e/artifacts/. The page reaches loopback only.

Needs the playwright Python package and /usr/bin/chromium (.ci/install_browser.sh); skips otherwise.
"""
from __future__ import annotations

import io
import json

import pytest
from PIL import Image

from cli import blueprints, browser, workflows

NAMES = [s.name for s in workflows.SPECS]
FRONTEND_NOTES = {"MarkdownNote", "Note"}


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

    # a placed blueprint is a subgraph node: its definition travels in the file
    subgraphs = {d["id"]: d for d in (ui.get("definitions") or {}).get("subgraphs", [])}
    placed = [n for n in result["nodes"] if n["type"] in subgraphs]
    assert all(n["subgraph"] for n in placed), placed
    assert len(placed) == len([n for n in ui["nodes"] if n["type"] in subgraphs])
    for n in placed:  # its exposed widgets show the blueprint's values
        bp = blueprints.BY_ID[n["type"]]
        assert [[w[0], w[2]] for w in n["widgets"]] == [[p.name, blueprints.port_default(bp, p, object_info)]
                                                       for p in blueprints.widget_ports(bp, object_info)], n
    inner = [m for n in placed for m in n["inner"]]
    missing = [n["type"] for n in result["nodes"] + inner
               if not (n["registered"] or n["type"] in subgraphs) or n["has_errors"]]
    assert not missing, f"missing/broken nodes in the page: {missing}"
    assert not [d for d in result["dialogs"] if "missing" in d.lower()], result["dialogs"]
    assert len(result["nodes"]) == len(ui["nodes"])

    # our nodes (those inside placed blueprints too) render with the widgets the server defines,
    # holding the workflow's values
    by_id = {str(n["id"]): n for n in ui["nodes"]}  # frontend 1.49 reports ids as strings
    for d in subgraphs.values():
        for m in d["nodes"]:
            by_id[str(m["id"])] = m  # inner ids differ from the graph's (tests/test_packaging.py)
    ours = [n for n in result["nodes"] + inner if n["type"].startswith(("WPlus", "ApplyWPlus"))]
    assert ours, "no W+ node in the workflow"
    for n in ours:
        spec = object_info[n["type"]]
        widget_inputs = [k for k, v in {**spec["input"].get("required", {}),
                                        **(spec["input"].get("optional") or {})}.items()
                         if isinstance(v[0], list) or v[0] in workflows.WIDGET_TYPES]
        assert [w[0] for w in n["widgets"]] == widget_inputs, n["type"]
        assert [w[2] for w in n["widgets"]] == by_id[str(n["id"])]["widgets_values"], n["type"]

    # what the page would queue is exactly the committed API twin
    api = workflows.load_api(name)
    # (frontend 1.27 also sends PreviewAny's display widget "preview", which no node declares and
    # the server never reads: only declared inputs are compared)
    def declared(node):
        spec = object_info[node["class_type"]]["input"]
        names = {n for group in ("required", "optional") for n in (spec.get(group) or {})}
        return {k: v for k, v in node["inputs"].items() if k in names}

    got = {k: {"class_type": v["class_type"], "inputs": declared(v)} for k, v in result["output"].items()}
    want = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    assert got == want, json.dumps({"page": got, "file": want}, indent=1)[:4000]
    assert not page.page_errors, page.page_errors


@pytest.mark.parametrize("name", NAMES)
def test_no_node_covers_another(page, name, artifacts):
    """Once the page has loaded the workflow and its Load Image nodes show their photos (they grow
    to fit them), no node box (title bar included) overlaps another and no group overlaps another.
    The graph fits the first view, or it is in titled groups: every node but the note inside one."""
    ui = workflows.load_ui(name)
    result = browser.load_workflow(page, ui, name)
    assert result["images_loaded"], "the Load Image nodes did not show their photos within 30 s"
    layout = browser.node_boxes(page)
    page.screenshot(path=str(artifacts / f"{name}.layout.png"))
    photos = [n for n in layout["nodes"] if n["type"] == "LoadImage"]
    assert photos and all(n["images"] for n in photos), photos

    # the page drew the sizes the file asked for (a node that grew would be reported as an overlap
    # only where it meets another: this names it directly)
    want = {str(n["id"]): n for n in ui["nodes"]}  # frontend 1.49 reports ids as strings
    grown = [(n["id"], n["title"], n["box"][2:], want[str(n["id"])]["size"]) for n in layout["nodes"]
             if n["box"][2] > want[str(n["id"])]["size"][0] + 0.5
             or n["box"][3] - layout["title_height"] > want[str(n["id"])]["size"][1] + 0.5]
    covered = browser.overlaps(layout)
    assert not covered, f"{len(covered)} overlap(s) (nodes the page resized: {grown}):\n" + "\n".join(covered)

    everything_in_view = all(browser.on_screen(layout, n["box"]) for n in layout["nodes"])
    if not everything_in_view:
        assert layout["groups"], "the graph neither fits the first view nor has groups"
        assert all(g["title"].strip() for g in layout["groups"]), layout["groups"]
        for n in layout["nodes"]:
            if n["type"] in FRONTEND_NOTES:
                continue
            inside = [g["title"] for g in layout["groups"] if browser.contains(g["box"], n["box"])]
            assert len(inside) == 1, f"node {n['id']} '{n['title']}' {n['box']} is in groups {inside} " \
                                     f"(nodes the page resized: {grown})"
        # the first view shows the note and where the graph starts
        note = [n for n in layout["nodes"] if n["type"] in FRONTEND_NOTES]
        assert note and browser.on_screen(layout, note[0]["box"]), "the note is not in the first view"
        assert layout["scale"] >= workflows.READABLE - 1e-6, f"first view at scale {layout['scale']}"


def test_node_docs_panel_shows_the_pack_page(page, object_info, artifacts):
    """The frontend's node docs panel (node selected, info button) shows web/docs/ApplyWPlusAdapter.md
    rendered, not the generic description: its heading, the paper-settings table and its picture,
    served from the pack's WEB_DIRECTORY."""
    name = "wplus_1_photo_to_image"
    browser.load_workflow(page, workflows.load_ui(name), name)
    page.keyboard.press("Escape")
    panel = browser.open_node_docs(page, "ApplyWPlusAdapter", "Settings from the paper")
    page.screenshot(path=str(artifacts / "docs_panel_ApplyWPlusAdapter.png"))
    page.keyboard.press("Escape")
    assert panel["text"].lstrip().startswith("W+ Apply Adapter"), panel["text"][:200]
    for words in ("decoupled residual cross-attention", "start_at", "euler", "ddim_uniform", "sd-vae-ft-mse"):
        assert words in panel["text"], words
    module = object_info["ApplyWPlusAdapter"]["python_module"].split(".", 1)[1]
    assert panel["images"] and all(i["width"] > 0 for i in panel["images"]), panel["images"]
    assert panel["images"][0]["src"] == f"/extensions/{module}/docs/images/workflow_1.jpg", panel["images"]
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
