"""Packaging: pyproject.toml in sync with requirements.txt and the code version, the license file,
and the example workflows' JSON (both formats) consistent with each other. No ComfyUI needed
(tests/e2e checks the workflows against a live ComfyUI's node definitions)."""
import json
import re
import tomllib
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
WORKFLOWS = ROOT / "example_workflows"
FRONTEND_ONLY = {"MarkdownNote", "Note"}


def _requirement_lines(path):
    return [l.split("#")[0].strip() for l in path.read_text().splitlines() if l.split("#")[0].strip()]


def _norm(req):
    name, rest = re.match(r"^([A-Za-z0-9_.\-]+)(.*)$", req.replace(" ", "")).groups()
    return re.sub(r"[-_.]+", "-", name).lower() + rest


@pytest.fixture(scope="module")
def pyproject():
    return tomllib.loads((ROOT / "pyproject.toml").read_text())


def test_dependencies_match_requirements(pyproject):
    reqs = sorted(map(_norm, _requirement_lines(ROOT / "requirements.txt")))
    deps = sorted(map(_norm, pyproject["project"]["dependencies"]))
    assert deps == reqs, "pyproject.toml [project].dependencies and requirements.txt differ"
    assert not any(_norm(d).startswith(("torch", "torchvision", "torchaudio")) for d in deps), \
        "torch belongs to the ComfyUI host: never a dependency of the pack"


def test_project_metadata(pyproject):
    from wplus_core.version import __version__
    project = pyproject["project"]
    assert project["name"] == "comfyui-wplus-adapter"
    assert project["version"] == __version__
    assert project["license"] == "GPL-3.0-or-later"
    assert project["description"] and project["urls"]
    comfy = pyproject["tool"]["comfy"]
    assert {"PublisherId", "DisplayName", "Icon"} <= set(comfy)
    from wplus_core import model_files
    for model in comfy.get("Models", []):  # the file is saved under the location's name, whatever the URL's
        known = model_files.by_name(Path(model["location"]).name)
        assert known is not None and model["model_url"] == known.url, model


def test_license_is_gpl3_full_text():
    text = (ROOT / "LICENSE").read_text()
    assert text.lstrip().startswith("GNU GENERAL PUBLIC LICENSE")
    assert "Version 3, 29 June 2007" in text and "END OF TERMS AND CONDITIONS" in text
    assert len(text) > 30000  # the full text, not a stub


def _pairs():
    ui = sorted(WORKFLOWS.glob("*.json"))
    return [(p, WORKFLOWS / "api" / p.name) for p in ui]


def test_every_ui_workflow_has_an_api_twin():
    pairs = _pairs()
    assert len(pairs) >= 5
    for ui, api in pairs:
        assert api.is_file(), f"{ui.name} has no API-format twin in example_workflows/api/"
    assert sorted(p.name for p in (WORKFLOWS / "api").glob("*.json")) == sorted(ui.name for ui, _ in pairs)


@pytest.mark.parametrize("ui_path,api_path", _pairs(), ids=lambda p: p.stem if isinstance(p, Path) else p)
def test_ui_and_api_twins_agree(ui_path, api_path):
    ui, api = json.loads(ui_path.read_text()), json.loads(api_path.read_text())
    assert ui["version"] == 0.4 and isinstance(ui["nodes"], list) and isinstance(ui["links"], list)
    nodes = {n["id"]: n for n in ui["nodes"]}
    assert len(nodes) == len(ui["nodes"]), "duplicate node ids"
    assert ui["last_node_id"] >= max(nodes) and ui["last_link_id"] >= max([l[0] for l in ui["links"]], default=0)
    for n in ui["nodes"]:
        for key in ("id", "type", "pos", "size", "flags", "order", "mode", "properties"):
            assert key in n, f"node {n.get('id')} lacks {key}"
    # every link is recorded on both ends
    for link_id, src, src_slot, dst, dst_slot, kind in ui["links"]:
        assert link_id in nodes[src]["outputs"][src_slot]["links"]
        assert nodes[dst]["inputs"][dst_slot]["link"] == link_id
        assert nodes[src]["outputs"][src_slot]["type"] == kind
    # the API twin has the same executable nodes and the same connections
    # (a bypassed node, mode 4, is left out and passed through: its consumers read the input of
    # the same type that feeds it, as the graph editor builds the prompt; a subgraph node, one whose
    # type is the id of a definition in definitions.subgraphs, is replaced by its inner nodes,
    # "<node>:<inner node>", as the page flattens it)
    subgraphs = {d["id"]: d for d in (ui.get("definitions") or {}).get("subgraphs", [])}
    for d in subgraphs.values():
        inner = {m["id"] for m in d["nodes"]}
        assert not inner & set(nodes), "inner node ids must differ from the graph's (the page renumbers them)"
    runnable = {i: n for i, n in nodes.items() if n["type"] not in FRONTEND_ONLY and n["mode"] != 4}
    expected = {}  # api key -> (node, links {input: source}, definition or None)
    by_link = {l[0]: l for l in ui["links"]}

    def source(link_id):
        link = by_link[link_id]
        while nodes[link[1]]["mode"] == 4:
            fed = [inp["link"] for inp in nodes[link[1]]["inputs"] if inp["type"] == link[5] and inp.get("link")]
            assert fed, f"bypassed node {link[1]} has no {link[5]} input to pass through"
            link = by_link[fed[0]]
        origin = nodes[link[1]]
        if origin["type"] in subgraphs:  # an output of a subgraph node: the inner node behind it
            (inner,) = [l for l in subgraphs[origin["type"]]["links"] if l["target_id"] == -20
                        and l["target_slot"] == link[2]]
            return [f"{link[1]}:{inner['origin_id']}", inner["origin_slot"]]
        return [str(link[1]), link[2]]

    for i, n in runnable.items():
        if n["type"] not in subgraphs:
            expected[str(i)] = (n, {k: source(v) for k, v in _linked(n).items()})
            continue
        d = subgraphs[n["type"]]
        inner_links = {l["id"]: l for l in d["links"]}
        for m in d["nodes"]:
            links = {}
            for name, link_id in _linked(m).items():
                l = inner_links[link_id]
                if l["origin_id"] == -10:  # an input of the subgraph: what the outer node is linked to
                    outer_link = n["inputs"][l["origin_slot"]].get("link")
                    if outer_link is not None:
                        links[name] = source(outer_link)
                else:
                    links[name] = [f"{i}:{l['origin_id']}", l["origin_slot"]]
            expected[f"{i}:{m['id']}"] = (m, links)
    assert set(api) == set(expected)
    for key, (n, linked) in expected.items():
        entry = api[key]
        assert entry["class_type"] == n["type"]
        api_links = {k: v for k, v in entry["inputs"].items() if isinstance(v, list)}
        assert api_links == linked, (key, n["type"])
        # widget values in order; the UI may hold one extra value per seed (control_after_generate)
        # or image upload widget, which the API format leaves out
        widgets = [v for k, v in entry["inputs"].items() if not isinstance(v, list)]
        values = list(n.get("widgets_values", []))
        it = iter(values)
        assert all(any(w == v for v in it) for w in widgets), (key, n["type"], widgets, values)
        assert len(values) - len(widgets) <= 1, (key, n["type"], widgets, values)


def _linked(node) -> dict:
    """{input name: link id} of a UI node's linked inputs."""
    return {inp["name"]: inp["link"] for inp in node.get("inputs", []) if inp.get("link") is not None}


def test_relative_links_of_the_readme_and_docs_resolve():
    """The README is the front door and sends readers to docs/: every relative link must land."""
    broken = []
    for page in [ROOT / "README.md", *sorted((ROOT / "docs").glob("*.md"))]:
        for target in re.findall(r"\]\(([^)\s#]+)(?:#[^)]*)?\)", page.read_text()):
            if not re.match(r"^[a-z]+://", target) and not (page.parent / target).exists():
                broken.append(f"{page.relative_to(ROOT)} -> {target}")
    assert not broken, broken
