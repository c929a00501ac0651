"""Node docs pages (the frontend's docs panel reads WEB_DIRECTORY/docs/<NODE_KEY>.md): one per node,
titled with the node's display name, saying what goes in and out, with every picture it shows
present next to it. No ComfyUI needed: node keys and display names are read from the source."""
import re
from pathlib import Path

import pytest

from tests.pack_source import node_display_names

ROOT = Path(__file__).resolve().parents[1]
DOCS = ROOT / "web" / "docs"
NODES = node_display_names()  # read from the io.Schema(...) of nodes/*.py


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
