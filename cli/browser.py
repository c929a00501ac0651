"""ComfyUI's web page in headless Debian chromium, driven by Playwright (Python package only; the
browser is the system's /usr/bin/chromium, never a downloaded one).

    with comfy_page(server) as page:                   # the graph editor of a running ComfyServer
        result = load_workflow(page, ui_json, "name")  # nodes as the page built them, open dialogs,
                                                       # and the API prompt the page would queue
    make_thumbnails(server, names)                     # example_workflows/<name>.jpg (template thumbnails)

The page only reaches loopback: requests to other hosts (release notes, registry) are aborted and
listed in ``page.outside_requests``; uncaught page errors collect in ``page.page_errors``.
"""
from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path
from urllib.parse import urlparse

CHROMIUM = Path(os.environ.get("WPLUS_CHROMIUM", "/usr/bin/chromium"))
CHROMIUM_ARGS = ["--headless=new", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                 "--disable-background-networking", "--disable-component-update", "--disable-default-apps",
                 "--disable-sync", "--no-first-run", "--metrics-recording-only", "--mute-audio"]
VIEWPORT = {"width": 1800, "height": 1100}

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


@contextmanager
def comfy_page(server, chromium: Path = CHROMIUM):
    from playwright.sync_api import sync_playwright
    # a returning user: no first-run template dialog over the canvas
    server._request("/settings", {"Comfy.TutorialCompleted": True})
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=str(chromium), args=CHROMIUM_ARGS, timeout=60_000)
        try:
            context = browser.new_context(viewport=VIEWPORT)
            outside = []

            def only_loopback(route):
                if urlparse(route.request.url).hostname in ("127.0.0.1", "localhost"):
                    route.continue_()
                else:
                    outside.append(route.request.url)
                    route.abort()

            context.route("**/*", only_loopback)
            page = context.new_page()
            errors = []
            page.on("pageerror", lambda e: errors.append(str(e)))
            page.goto(server.url, wait_until="networkidle", timeout=120_000)
            page.wait_for_function("() => window.app && window.app.graph && window.LiteGraph", timeout=120_000)
            page.page_errors, page.outside_requests = errors, outside
            yield page
        finally:
            browser.close()


def load_workflow(page, ui: dict, name: str) -> dict:
    page.page_errors.clear()  # the page's own start-up may log errors: only the load's count
    result = page.evaluate(LOAD_JS, {"wf": ui, "name": name})
    return result


def canvas_clip(page) -> dict:
    """The graph area of the window (no side bar, tabs or menu), for thumbnails."""
    left, top = 64, 80
    return {"x": left, "y": top, "width": VIEWPORT["width"] - left, "height": VIEWPORT["height"] - top}


def make_thumbnails(server, names, out_dir: Path, width: int = 640) -> list[Path]:
    """A JPEG of each workflow's graph, as ComfyUI's template browser shows next to its name."""
    from PIL import Image
    from . import workflows
    written = []
    # the thumbnail server has no models: no missing-model dialog, no minimap over the graph
    server._request("/settings", {"Comfy.Workflow.ShowMissingModelsWarning": False,
                                  "Comfy.Minimap.Visible": False})
    with comfy_page(server) as page:
        for name in names:
            load_workflow(page, workflows.load_ui(name), name)
            page.keyboard.press("Escape")
            png = out_dir / f".{name}.png"
            page.screenshot(path=str(png), clip=canvas_clip(page))
            img = Image.open(png).convert("RGB")
            img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
            target = out_dir / f"{name}.jpg"
            img.save(target, quality=85, optimize=True)
            png.unlink()
            written.append(target)
    return written
