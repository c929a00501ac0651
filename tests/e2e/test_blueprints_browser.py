"""The subgraph blueprints of subgraphs/ in the real server and the real page.

ComfyUI 0.28 (app/subgraph_manager.py, frontend 1.45) serves them on GET /global_subgraphs and the
page lists them in its node library under *Subgraph Blueprints > Comfy Blueprints > W+ Adapter*.
The test opens that library like a user (sidebar button, folders), picks each blueprint and clicks
it onto the canvas, wires the placed nodes into a small graph, sets their exposed widgets, queues
it with the page's own Run path and checks what the page sent (the inner nodes, flattened) and
what the server made. Screenshot: tests/e2e/artifacts/blueprints_placed_and_run.png.

ComfyUI 0.3.64 has no subgraph manager: there the folder must be ignored without errors (the
route does not exist, the pack imports, the page lists no blueprint of ours and logs no error).
"""
from __future__ import annotations

import io
import json

import numpy as np
import pytest
from PIL import Image

from cli import blueprints, browser
from cli.comfy_server import PACK_LINK_NAME, output_images
from tests.e2e.conftest import COMFYUI

HAS_SUBGRAPH_MANAGER = bool(COMFYUI) and (COMFYUI / "app" / "subgraph_manager.py").is_file()
NAMES = [b.name for b in blueprints.BLUEPRINTS]
LIBRARY_PATH = ("Comfy Blueprints", blueprints.CATEGORY)  # folders of the node library, in order
CROP_PX, LATENT_PX, STEPS = 256, 64, 2

pytestmark = pytest.mark.filterwarnings("ignore::DeprecationWarning")


@pytest.fixture(scope="module")
def page(server, photos):
    pytest.importorskip("playwright.sync_api", reason="playwright (pip) not installed: browser tests skipped")
    if not browser.CHROMIUM.exists():
        pytest.skip(f"{browser.CHROMIUM} not found (run .ci/install_browser.sh): browser tests skipped")
    with browser.comfy_page(server) as pg:
        yield pg


BLUEPRINT_DEFS_JS = """() => {
    const pinia = document.querySelector('#vue-app').__vue_app__.config.globalProperties.$pinia;
    const store = pinia._s.get('subgraph');
    if (!store) return null;
    return store.subgraphBlueprints.map(d => ({name: d.name, display_name: d.display_name,
        category: d.category, inputs: Object.keys(d.inputs || {}), outputs: (d.outputs || []).map(o => o.type)}));
}"""


def test_served_on_0_28_ignored_without_a_subgraph_manager(server):
    """0.28: GET /global_subgraphs lists exactly our two files (with the pack as their node pack),
    and /global_subgraphs/<id> returns each file unchanged. 0.3.64: no such route, and the
    server's log names no problem with subgraphs/."""
    log = server.log_path.read_text(errors="replace")
    if not HAS_SUBGRAPH_MANAGER:
        with pytest.raises(Exception) as err:
            server.get_json("/global_subgraphs")
        assert "404" in str(err.value), err.value
        assert "subgraphs" not in log.lower(), server.log_tail(40)
        assert not server.import_failures()
        return
    listed = server.get_json("/global_subgraphs")
    ours = {k: v for k, v in listed.items() if v["source"] == "custom_node"
            and v["info"]["node_pack"] == f"custom_nodes.{PACK_LINK_NAME}"}
    assert sorted(v["name"] for v in ours.values()) == sorted(NAMES), listed
    for key, entry in ours.items():
        data = server.get_json(f"/global_subgraphs/{key}")["data"]
        assert json.loads(data) == blueprints.load(entry["name"])


def test_node_library_lists_places_and_runs_the_blueprints(page, server, photos, object_info, artifacts):
    if not HAS_SUBGRAPH_MANAGER:
        # 0.3.64's page: no blueprint of ours among its node definitions, no page error about
        # blueprints (frontend 1.27 logs one unrelated start-up error, which test_browser.py also
        # leaves out by counting only the errors of a workflow load)
        defs = page.evaluate(BLUEPRINT_DEFS_JS) or []
        assert not [d for d in defs if d["display_name"] in NAMES], defs
        assert not [t for t in page.evaluate("() => Object.keys(LiteGraph.registered_node_types)")
                    if t.startswith("SubgraphBlueprint.")]
        assert not [e for e in page.page_errors if "subgraph" in e.lower() or "blueprint" in e.lower()], \
            page.page_errors
        return

    # the page's node definitions: both blueprints, under the pack's category
    defs = {d["display_name"]: d for d in page.evaluate(BLUEPRINT_DEFS_JS) if d["display_name"] in NAMES}
    assert sorted(defs) == sorted(NAMES)
    for bp in blueprints.BLUEPRINTS:
        assert defs[bp.name]["category"] == f"Subgraph Blueprints/{blueprints.CATEGORY}"
        assert defs[bp.name]["inputs"] == [p.name for p in bp.inputs]
        assert defs[bp.name]["outputs"] == blueprints.node_info(bp, object_info)["output"]

    # the node library, as a user opens it
    page.evaluate("() => app.graph.clear()")
    page.locator(".node-library-tab-button").first.click()
    for folder in LIBRARY_PATH:
        page.get_by_text(folder, exact=True).first.click()
        page.wait_for_timeout(300)
    for name in NAMES:
        assert page.get_by_text(name, exact=True).first.is_visible(), f"{name} not in the node library"
    page.screenshot(path=str(artifacts / "blueprints_node_library.png"))
    spots = {NAMES[0]: (800, 300), NAMES[1]: (800, 700)}
    for name in NAMES:  # click the entry, then click the canvas: the page places it there
        page.get_by_text(name, exact=True).first.click()
        page.mouse.move(*spots[name])
        page.mouse.click(*spots[name])
        page.wait_for_timeout(500)
    placed = page.evaluate("""() => app.graph._nodes.map(n => ({id: n.id, title: n.title, type: n.type,
        subgraph: !!n.subgraph, widgets: (n.widgets || []).map(w => [w.name, w.value]),
        inner: n.subgraph ? n.subgraph.nodes.map(m => [m.id, m.type]) : []}))""")
    assert sorted(n["title"] for n in placed) == sorted(NAMES), placed
    by_title = {n["title"]: n for n in placed}
    for bp in blueprints.BLUEPRINTS:
        n = by_title[bp.name]
        assert n["subgraph"], n
        assert sorted(t for _, t in n["inner"]) == sorted(x.type for x in bp.nodes)
        want = [[p.name, blueprints.port_default(bp, p, object_info)]
                for p in blueprints.widget_ports(bp, object_info)]
        assert n["widgets"] == want, n["widgets"]
    page.keyboard.press("Escape")

    # wire them into a graph; the exposed widgets get non-default values
    identity, personalize = by_title[NAMES[0]]["id"], by_title[NAMES[1]]["id"]
    page.evaluate(WIRE_JS, {"identity": identity, "personalize": personalize, "photo": "wild_1.jpg",
                            "latent": LATENT_PX, "steps": STEPS, "crop": str(CROP_PX)})
    with page.expect_request(lambda r: r.url.endswith("/prompt") and r.method == "POST") as sent:
        page.evaluate("() => app.queuePrompt(0, 1)")
    prompt = json.loads(sent.value.post_data)["prompt"]
    prompt_id = sent.value.response().json()["prompt_id"]

    # the page sent the inner nodes, flattened ("<placed node>:<inner node>"), with the widget values
    # (the page may renumber inner nodes when it places a blueprint: its own ids are used)
    inner = {k: v for k, v in prompt.items() if ":" in k}
    key = {(title, t): f"{by_title[title]['id']}:{i}" for title in NAMES for i, t in by_title[title]["inner"]}
    assert sorted(inner) == sorted(key.values()), (sorted(inner), key)
    for (title, t), k in key.items():
        assert inner[k]["class_type"] == t
    align = inner[key[NAMES[0], "WPlusFaceAlign"]]["inputs"]
    assert (align["size"], align["face_select"], align["face_index"]) == (str(CROP_PX), "index", 0)
    assert inner[key[NAMES[0], "WPlusRestoreFace"]]["inputs"]["strength"] == 0  # restoration off
    apply = inner[key[NAMES[1], "ApplyWPlusAdapter"]]["inputs"]
    assert (apply["weight"], apply["start_at"]) == (0.7, 0.3)
    assert not prompt.get(str(identity)) and not prompt.get(str(personalize)), "the subgraph nodes themselves were sent"

    entry = server.wait(prompt_id, timeout=900)
    images = {}
    for node_id, ref in output_images(entry):
        images.setdefault(node_id, []).append(np.asarray(Image.open(io.BytesIO(server.view(ref))).convert("RGB"),
                                                         dtype=np.float64))
    titles = {k: v["_meta"]["title"] for k, v in prompt.items()}
    by_name = {titles[k]: v for k, v in images.items()}
    assert set(by_name) == {"Aligned face", "e4e reconstruction", "Personalised"}, sorted(by_name)
    for title, size in (("Aligned face", CROP_PX), ("e4e reconstruction", 256), ("Personalised", LATENT_PX)):
        (img,) = by_name[title]
        assert img.shape[:2] == (size, size), (title, img.shape)
        assert img.std() > 2.0, f"{title} is (nearly) constant"
    saved = [v for v in entry["outputs"].values() if v.get("text")]
    assert saved and (server.output_dir / saved[0]["text"][0]).is_file(), entry["outputs"]

    # restoration on: the same photo, restored by PSFRGAN before inversion, gives another face
    page.evaluate("""(id) => { const n = app.graph.getNodeById(id);
        n.widgets.find(w => w.name === 'restore_strength').value = 1.0; }""", identity)
    with page.expect_request(lambda r: r.url.endswith("/prompt") and r.method == "POST") as sent:
        page.evaluate("() => app.queuePrompt(0, 1)")
    again = json.loads(sent.value.post_data)["prompt"]
    assert again[key[NAMES[0], "WPlusRestoreFace"]]["inputs"]["strength"] == 1.0
    entry = server.wait(sent.value.response().json()["prompt_id"], timeout=900)
    restored = [np.asarray(Image.open(io.BytesIO(server.view(ref))).convert("RGB"), dtype=np.float64)
                for node_id, ref in output_images(entry) if titles.get(node_id) == "Aligned face"]
    assert len(restored) == 1 and restored[0].shape == by_name["Aligned face"][0].shape
    assert np.abs(restored[0] - by_name["Aligned face"][0]).mean() > 1.0, "restore_strength 1 changed nothing"

    page.wait_for_timeout(1500)  # the previews arrive over the websocket
    page.locator(".node-library-tab-button").first.click()  # close the library, deselect, whole graph
    page.evaluate("() => app.canvas.deselectAll && app.canvas.deselectAll()")
    browser.fit_view(page)
    page.screenshot(path=str(artifacts / "blueprints_placed_and_run.png"))
    assert not page.page_errors, page.page_errors


WIRE_JS = """({identity, personalize, photo, latent, steps, crop}) => {
    const g = app.graph, add = (type, pos, values = {}, title = null) => {
        const n = LiteGraph.createNode(type); g.add(n); n.pos = pos;
        for (const [k, v] of Object.entries(values)) n.widgets.find(w => w.name === k).value = v;
        if (title) n.title = title;
        return n;
    };
    const set = (n, name, v) => { n.widgets.find(w => w.name === name).value = v; };
    const id = g.getNodeById(identity), pm = g.getNodeById(personalize);
    id.pos = [450, 60]; pm.pos = [450, 560];
    const load = add('LoadImage', [50, 60], {image: photo}, 'Photo');
    const ckpt = add('CheckpointLoaderSimple', [50, 560]);
    load.connect(0, id, 0); load.connect(0, pm, 1); ckpt.connect(0, pm, 0);
    set(id, 'face_select', 'index'); set(id, 'face_index', 0); set(id, 'size', crop); set(id, 'restore_strength', 0);
    set(pm, 'weight', 0.7); set(pm, 'start_at', 0.3);
    const aligned = add('PreviewImage', [850, 60], {}, 'Aligned face');
    const recon = add('PreviewImage', [1150, 60], {}, 'e4e reconstruction');
    aligned.size = [260, 300]; recon.size = [260, 300];
    const save = add('WPlusSave', [850, 420], {filename_prefix: 'wplus/blueprint'});
    id.connect(0, aligned, 0); id.connect(2, recon, 0); id.connect(1, save, 0);
    const pos = add('CLIPTextEncode', [450, 800], {text: 'a photo of a person'});
    const neg = add('CLIPTextEncode', [450, 1000], {text: 'lowres'});
    ckpt.connect(1, pos, 0); ckpt.connect(1, neg, 0);
    const empty = add('EmptyLatentImage', [850, 1000], {width: latent, height: latent, batch_size: 1});
    const ks = add('KSampler', [850, 560], {steps, seed: 1});
    pm.connect(0, ks, 0); pos.connect(0, ks, 1); neg.connect(0, ks, 2); empty.connect(0, ks, 3);
    const dec = add('VAEDecode', [1150, 560]);
    ks.connect(0, dec, 0); ckpt.connect(2, dec, 1);
    const out = add('SaveImage', [1150, 700], {filename_prefix: 'wplus/blueprint'}, 'Personalised');
    dec.connect(0, out, 0);
    app.canvas.setDirty(true, true);
}"""


def test_committed_blueprints_match_their_description(object_info):
    """subgraphs/*.json are what `python -m cli blueprints --write` makes with this ComfyUI's nodes."""
    stale = blueprints.write_all(object_info, check_only=True)
    assert not stale, f"out of date (regenerate with `python -m cli blueprints --write`): {stale}"
