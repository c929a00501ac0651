"""ComfyUI's web page in headless Debian chromium, driven by Playwright (Python package only; the
browser is the system's /usr/bin/chromium, never a downloaded one).

    with comfy_page(server) as page:                   # the graph editor of a running ComfyServer
        result = load_workflow(page, ui_json, "name")  # nodes as the page built them, open dialogs,
                                                       # and the API prompt the page would queue
    make_thumbnails(server, names, out_dir, docs_dir)  # example_workflows/<name>.jpg (template thumbnails)
                                                       # and the node docs pictures (web/docs/images/)

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
    const describe = n => ({
        id: n.id, type: n.type, title: n.title, has_errors: !!n.has_errors, mode: n.mode,
        registered: !!LiteGraph.registered_node_types[n.type],
        inputs: (n.inputs || []).map(i => [i.name, i.type, i.link]),
        widgets: (n.widgets || []).map(w => [w.name, w.type, w.value])});
    // a subgraph node (a placed blueprint) also lists the nodes inside it
    const nodes = app.graph._nodes.map(n => Object.assign(describe(n), {
        subgraph: !!n.subgraph, inner: n.subgraph ? n.subgraph.nodes.map(describe) : []}));
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


def load_workflow(page, ui: dict, name: str, images_timeout: float = 30.0) -> dict:
    """Load a UI workflow into the page and wait until its Load Image nodes show their pictures
    (the nodes reach their final size only then)."""
    page.page_errors.clear()  # the page's own start-up may log errors: only the load's count
    result = page.evaluate(LOAD_JS, {"wf": ui, "name": name})
    result["images_loaded"] = wait_for_images(page, images_timeout)
    return result


IMAGES_JS = """() => app.graph._nodes.filter(n => n.type === 'LoadImage').every(
    n => (n.imgs || []).length > 0 && n.imgs.every(i => i.complete && i.naturalWidth > 0))"""

# What the canvas draws, in canvas units: a node's box with its title bar (above pos, LiteGraph's
# NODE_TITLE_HEIGHT; a collapsed node is its title bar only), the groups, the view (scale, offset)
# and where the canvas element sits in the window.
BOXES_JS = """() => {
    const T = LiteGraph.NODE_TITLE_HEIGHT;
    const rect = app.canvas.canvas.getBoundingClientRect();
    const nodes = app.graph._nodes.map(n => {
        const collapsed = !!(n.flags && n.flags.collapsed);
        const w = collapsed ? (n._collapsed_width || n.size[0]) : n.size[0];
        const h = collapsed ? 0 : n.size[1];
        return {id: n.id, type: n.type, title: n.title, box: [n.pos[0], n.pos[1] - T, w, h + T],
                images: (n.imgs || []).filter(i => i.complete && i.naturalWidth > 0).length};
    });
    const groups = (app.graph._groups || app.graph.groups || []).map(g => ({
        title: g.title, box: [...(g._bounding || g.bounding)]}));
    const ds = app.canvas.ds;
    return {title_height: T, nodes, groups, scale: ds.scale, offset: [...ds.offset],
            canvas: [rect.left, rect.top, rect.width, rect.height],
            window: [window.innerWidth, window.innerHeight]};
}"""


def wait_for_images(page, timeout: float = 30.0) -> bool:
    """True once every Load Image node has its picture decoded (then two frames for the resize)."""
    try:
        page.wait_for_function(IMAGES_JS, timeout=timeout * 1000)
    except Exception:  # playwright's TimeoutError: report, let the caller assert
        return False
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    page.evaluate("() => app.canvas.setDirty(true, true)")
    return True


def node_boxes(page) -> dict:
    """The boxes the page draws now (see BOXES_JS)."""
    return page.evaluate(BOXES_JS)


def intersect(a, b) -> bool:
    """Whether two (x, y, w, h) boxes share any area (touching edges do not count)."""
    return a[0] < b[0] + b[2] and b[0] < a[0] + a[2] and a[1] < b[1] + b[3] and b[1] < a[1] + a[3]


def contains(outer, inner) -> bool:
    return (outer[0] <= inner[0] and outer[1] <= inner[1] and inner[0] + inner[2] <= outer[0] + outer[2]
            and inner[1] + inner[3] <= outer[1] + outer[3])


def overlaps(layout: dict) -> list[str]:
    """Every pair of nodes whose boxes (title bars included) overlap, and of groups that do."""
    found = []
    nodes = layout["nodes"]
    for i, a in enumerate(nodes):
        for b in nodes[i + 1:]:
            if intersect(a["box"], b["box"]):
                found.append(f"node {a['id']} '{a['title']}' {a['box']} and node {b['id']} '{b['title']}' {b['box']}")
    groups = layout["groups"]
    for i, a in enumerate(groups):
        for b in groups[i + 1:]:
            if intersect(a["box"], b["box"]):
                found.append(f"group '{a['title']}' {a['box']} and group '{b['title']}' {b['box']}")
    return found


def on_screen(layout: dict, box, clear=None) -> bool:
    """Whether a canvas box lies in the window's part of the canvas, clear of the side bar (left)
    and the tab/menu bar (top)."""
    clear = clear or CLEAR
    s, (ox, oy) = layout["scale"], layout["offset"]
    cx, cy, cw, ch = layout["canvas"]
    ww, wh = layout["window"]
    x0, y0 = cx + (box[0] + ox) * s, cy + (box[1] + oy) * s
    x1, y1 = x0 + box[2] * s, y0 + box[3] * s
    return x0 >= max(cx, clear[0]) and y0 >= max(cy, clear[1]) and x1 <= min(cx + cw, ww) and y1 <= min(cy + ch, wh)


CLEAR = (70, 90)  # window pixels at the left (side bar) and top (tab/menu bars) that panels may cover

FIT_JS = """({box, left, top, margin}) => {
    const c = app.canvas, r = c.canvas.getBoundingClientRect(), T = LiteGraph.NODE_TITLE_HEIGHT;
    if (!box) {
        const rects = app.graph._nodes.map(n => [n.pos[0], n.pos[1] - T, n.size[0], n.size[1] + T])
            .concat((app.graph._groups || app.graph.groups || []).map(g => [...(g._bounding || g.bounding)]));
        const x0 = Math.min(...rects.map(b => b[0])), y0 = Math.min(...rects.map(b => b[1]));
        const x1 = Math.max(...rects.map(b => b[0] + b[2])), y1 = Math.max(...rects.map(b => b[1] + b[3]));
        box = [x0, y0, x1 - x0, y1 - y0];
    }
    const x = Math.max(left - r.left, 0) + margin, y = Math.max(top - r.top, 0) + margin;
    const s = Math.min(1, (r.width - x - margin) / box[2], (r.height - y - margin) / box[3]);
    c.ds.scale = s;
    c.ds.offset = [x / s - box[0], y / s - box[1]];
    c.setDirty(true, true);
    return {x: r.left + x, y: r.top + y, width: box[2] * s, height: box[3] * s, scale: s};
}"""


def fit_view(page, box=None, margin: int = 16) -> dict:
    """Set the canvas view so that ``box`` (canvas units; None = the whole graph) fills the part
    of the window no panel covers; returns that area as a screenshot clip (with the scale)."""
    clip = page.evaluate(FIT_JS, {"box": box, "left": CLEAR[0], "top": CLEAR[1], "margin": margin})
    page.evaluate("() => new Promise(r => requestAnimationFrame(() => requestAnimationFrame(r)))")
    return clip


# pictures of the node docs pages (web/docs/images/): the workflow, or one of its groups
DOC_IMAGES = {
    "workflow_1.jpg": ("wplus_1_photo_to_image", None),
    "workflow_2_edit.jpg": ("wplus_2_smile_edit_sweep", "Face → W+"),
    "workflow_3_mix.jpg": ("wplus_3_identity_interpolation", "Face → W+"),
}


def _save_jpeg(page, clip, target: Path, width: int) -> Path:
    from PIL import Image
    png = target.with_name(f".{target.stem}.png")
    page.screenshot(path=str(png), clip={k: clip[k] for k in ("x", "y", "width", "height")})
    img = Image.open(png).convert("RGB")
    if img.width > width:
        img = img.resize((width, round(img.height * width / img.width)), Image.LANCZOS)
    img.save(target, quality=85, optimize=True)
    png.unlink()
    return target


def make_thumbnails(server, names, out_dir: Path, width: int = 640, docs_dir: Path | None = None,
                    with_photos: bool = True) -> list[Path]:
    """A JPEG of each workflow's whole graph, as ComfyUI's template browser shows next to its
    name; with ``docs_dir``, also the node docs pictures of DOC_IMAGES (1400 px wide) of those
    workflows. Put the
    workflows' photos in the server's input folder first (``with_photos``) so Load Image shows them."""
    from . import workflows
    written = []
    # the thumbnail server has no models: no missing-model dialog, no minimap over the graph
    server._request("/settings", {"Comfy.Workflow.ShowMissingModelsWarning": False,
                                  "Comfy.Minimap.Visible": False})
    with comfy_page(server) as page:
        for name in names:
            load_workflow(page, workflows.load_ui(name), name, images_timeout=30 if with_photos else 1)
            page.keyboard.press("Escape")
            written.append(_save_jpeg(page, fit_view(page), out_dir / f"{name}.jpg", width))
        for file, (name, group) in (DOC_IMAGES.items() if docs_dir else ()):
            if name not in names:
                continue
            ui = workflows.load_ui(name)
            load_workflow(page, ui, name, images_timeout=30 if with_photos else 1)
            page.keyboard.press("Escape")
            box = None
            if group:
                (box,) = [g["bounding"] for g in ui["groups"] if g["title"] == group]
            written.append(_save_jpeg(page, fit_view(page, box), docs_dir / file, 1400))
    return written


NODE_DOCS_JS = """() => {
    const el = document.querySelector('.node-help-content');
    if (!el) return null;
    return {text: el.innerText, html_length: el.innerHTML.length,
            images: [...el.querySelectorAll('img')].map(i => ({src: i.getAttribute('src'), alt: i.alt,
                complete: i.complete, width: i.naturalWidth}))};
}"""


def open_node_docs(page, node_type: str, expect: str, timeout: float = 30.0) -> dict:
    """Open the frontend's docs panel for the first node of ``node_type`` as a user does: click
    its title bar, then the info button of the selection toolbox. Waits until the panel's text
    holds ``expect`` and its pictures are decoded; returns the panel's text and pictures."""
    box = page.evaluate("""(type) => {
        const n = app.graph._nodes.find(n => n.type === type);
        if (!n) return null;
        const ds = app.canvas.ds, r = app.canvas.canvas.getBoundingClientRect();
        const T = LiteGraph.NODE_TITLE_HEIGHT;
        return {x: r.left + (n.pos[0] + 60 + ds.offset[0]) * ds.scale,
                y: r.top + (n.pos[1] - T / 2 + ds.offset[1]) * ds.scale};
    }""", node_type)
    if box is None:
        raise LookupError(f"no {node_type} node in the graph")
    page.mouse.click(box["x"], box["y"])
    button = page.locator('[data-testid="info-button"]').first
    button.wait_for(state="visible", timeout=timeout * 1000)
    button.click()
    page.wait_for_function("""(expect) => {
        const el = document.querySelector('.node-help-content');
        return !!el && el.innerText.includes(expect)
            && [...el.querySelectorAll('img')].every(i => i.complete && i.naturalWidth > 0);
    }""", arg=expect, timeout=timeout * 1000)
    return page.evaluate(NODE_DOCS_JS)
