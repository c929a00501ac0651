"""The real server serves the pack's WEB_DIRECTORY: every node of the pack has its docs page at the
URL the frontend's docs panel fetches (/extensions/<pack folder>/docs/<NODE_KEY>.md, the folder
taken from the node's python_module), explaining each input the server defines, and every picture
a page shows resolves the way the frontend resolves it (relative to /extensions/<pack folder>/docs/)."""
from __future__ import annotations

import io
import re
import urllib.error

from PIL import Image


def test_every_node_docs_page_and_picture_is_served(server, object_info):
    ours = {k: v for k, v in object_info.items() if v.get("category") == "W+ Adapter"}
    assert len(ours) >= 11, sorted(ours)
    modules = {v["python_module"] for v in ours.values()}
    assert len(modules) == 1 and next(iter(modules)).startswith("custom_nodes."), modules
    folder = next(iter(modules)).split(".", 1)[1]
    base = f"/extensions/{folder}/docs/"
    for key, info in sorted(ours.items()):
        try:
            text = server._request(f"{base}{key}.md").decode()
        except urllib.error.HTTPError as e:
            raise AssertionError(f"{base}{key}.md: HTTP {e.code}") from None
        assert text.startswith(f"# {info['display_name']}\n"), (key, text[:80])
        # every input the server defines is explained on the page (as `name`, or in a range `x_2` .. `x_4`)
        inputs = [n for group in ("required", "optional") for n in (info["input"].get(group) or {})]
        named = set(re.findall(r"`(\w+)`", text))
        for stem, a, b in re.findall(r"`(\w+?)_(\d+)`\s*\.\.\s*`\1_(\d+)`", text):
            named |= {f"{stem}_{k}" for k in range(int(a), int(b) + 1)}
        undocumented = [n for n in inputs if n not in named]
        assert not undocumented, f"web/docs/{key}.md does not explain input(s) {undocumented}"
        for src in re.findall(r"!\[[^\]]*\]\(([^)\s]+)", text):
            data = server._request(base + src)
            img = Image.open(io.BytesIO(data))
            assert img.width >= 300, (key, src, img.size)
