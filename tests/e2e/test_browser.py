"""The graph editor: each example workflow loads in ComfyUI's real web page (frontend 1.27) in
headless Debian chromium driven by Playwright, with no missing node or model, our nodes rendered
with their widgets, and the prompt the page builds from the UI file equal to the committed API twin.
A screenshot per workflow goes to tests/e2e/artifacts/.

Needs the playwright Python package and /usr/bin/chromium (.ci/install_browser.sh); skips otherwise.
"""
from __future__ import annotations

import json
import os
from pathlib import Path
from urllib.parse import urlparse

import pytest

from cli import workflows

CHROMIUM = Path(os.environ.get("WPLUS_CHROMIUM", "/usr/bin/chromium"))
ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
        "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
        "--disable-sync", "--no-first-run", "--metrics-recording-only", "--mute-audio"]
NAMES = [s.name for s in workflows.SPECS]

LOAD_JS = """async ({wf, name}) => {
    await app.loadGraphData(wf, true, true, name);
    await new Promise(r => setTimeout(r, 300));
    app.canvas.setDirty(true, true);
    const nodes = app.graph._nodes.map(n => ({
        id: n.id, type: n.type, title: n.title, has_errors: !!n.has_errors, mode: n.mode,
        registered: !!LiteGraph.registered_node_types[n.type],
        inputs: (n.inputs || []).map(i => [i.name, i.type, i.link]),
        widgets: (n.widgets || []).map(w => [w.name, w.type, w.value])}));
    const dialogs = [...document.querySelectorAll('.p-dialog')].map(d => d.innerText);
    const prompt = await app.graphToPrompt();
    return {nodes, dialogs, output: prompt.output};
}"""


@pytest.fixture(scope="module")
def page(server, photos):
    sync_api = pytest.importorskip("playwright.sync_api", reason="playwright (pip) not installed: browser tests skipped")
    if not CHROMIUM.exists():
        pytest.skip(f"{CHROMIUM} not found (run .ci/install_browser.sh): browser tests skipped")
    # a returning user: no first-run template dialog over the canvas
    server._request("/settings", {"Comfy.TutorialCompleted": True})
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(CHROMIUM), args=ARGS, timeout=60_000)
        try:
            context = browser.new_context(viewport={"width": 1800, "height": 1100})
            # loopback only: the page's calls to outside services (release notes, registry...) are cut
            outside = []

            def only_loopback(route):
                if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            context.route("**/*", only_loopback)
            pg = context.new_page()
            errors = []
            pg.on("pageerror", lambda e: errors.append(str(e)))
            pg.goto(server.url, wait_until="networkidle", timeout=120_000)
            pg.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            pg.page_errors = errors
            yield pg
            if outside:
                print(f"blocked {len(outside)} request(s) to outside hosts, e.g. {outside[0]}")
        finally:
            browser.close()


@pytest.mark.parametrize("name", NAMES)
def test_workflow_loads_in_the_graph_editor(page, name, object_info, artifacts):
    ui = workflows.load_ui(name)
    page.page_errors.clear()  # the page's own start-up may log errors: only ours count
    result = page.evaluate(LOAD_JS, {"wf": ui, "name": name})
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
        names = [w[0] for w in n["widgets"]]
        assert names[:len(widget_inputs)] == widget_inputs or sorted(names) == sorted(widget_inputs), (n["type"], names)
        values = [w[2] for w in n["widgets"]]
        assert values == by_id[n["id"]]["widgets_values"], (n["type"], values)

    # what the page would queue is exactly the committed API twin
    api = workflows.load_api(name)
    got = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in result["output"].items()}
    want = {k: {"class_type": v["class_type"], "inputs": v["inputs"]} for k, v in api.items()}
    assert got == want, json.dumps({"page": got, "file": want}, indent=1)[:4000]
    assert not page.page_errors, page.page_errors


def test_pack_templates_are_listed(server):
    """ComfyUI serves the pack's workflows/ folder as templates (GET /workflow_templates)."""
    templates = server.get_json("/workflow_templates")
    ours = next((v for k, v in templates.items() if "wplus" in k.lower()), None)
    assert ours is not None, templates
    assert sorted(ours) == sorted(NAMES), "only the UI files are templates (api/ is one level down)"
    module = next(k for k, v in templates.items() if v is ours)
    data = json.loads(server._request(f"/api/workflow_templates/{module}/{NAMES[0]}.json"))
    assert data == workflows.load_ui(NAMES[0])
