"""Node docs pages (the frontend's docs panel reads WEB_DIRECTORY/docs/<NODE_KEY>.md): one per node,
titled with the node's display name, saying what goes in and out, with every picture it shows
present next to it. No ComfyUI needed: node keys and display names are read from the source."""
import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "web" / "docs"


def _mappings() -> dict:
    """{node key: display name} from the NODE_CLASS_MAPPINGS / NODE_DISPLAY_NAME_MAPPINGS literals in nodes/."""
    keys, names = set(), {}
    for path in sorted((ROOT / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Dict):
                target = [t.id for t in node.targets if isinstance(t, ast.Name)]
                literal = {k.value: v for k, v in zip(node.value.keys, node.value.values) if isinstance(k, ast.Constant)}
                if target == ["NODE_CLASS_MAPPINGS"]:
                    keys |= set(literal)
                elif target == ["NODE_DISPLAY_NAME_MAPPINGS"]:
                    names.update({k: v.value for k, v in literal.items() if isinstance(v, ast.Constant)})
    return {k: names.get(k, k) for k in sorted(keys)}


NODES = _mappings()


def test_the_pack_serves_web_docs():
    init = (ROOT / "__init__.py").read_text()
    assert re.search(r'^WEB_DIRECTORY = "\./web"$', init, re.M), "WEB_DIRECTORY must be ./web"
    assert '"WEB_DIRECTORY"' in init  # exported in __all__
    assert len(NODES) >= 11, NODES


@pytest.mark.parametrize("key", list(NODES))
def test_every_node_has_a_docs_page(key):
    page = DOCS / f"{key}.md"
    assert page.is_file(), f"{key} has no docs page: write web/docs/{key}.md"
    text = page.read_text()
    assert text.startswith(f"# {NODES[key]}\n"), f"{page.name} must start with '# {NODES[key]}'"
    assert len(text) > 400, f"{page.name} is a stub"
    assert re.search(r"^## (Inputs?|Outputs?)\b", text, re.M), f"{page.name} says nothing about inputs/outputs"
    for src in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text):
        assert not re.match(r"^(/|https?://)", src), f"{page.name}: picture {src} must be relative to web/docs"
        assert (DOCS / src).is_file(), f"{page.name} shows {src}, which is not in web/docs"


def test_no_page_without_a_node():
    pages = {p.stem for p in DOCS.glob("*.md")}
    assert not pages - set(NODES), f"docs pages for unknown nodes: {sorted(pages - set(NODES))}"
