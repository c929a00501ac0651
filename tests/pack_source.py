"""The pack's nodes as its source declares them, read without ComfyUI: every
``io.Schema(node_id="...", display_name="...")`` in nodes/*.py."""
import ast
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def node_display_names() -> dict[str, str]:
    """{node id: display name (the id when none is given)}."""
    found = {}
    for path in sorted((ROOT / "nodes").glob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.Call) and getattr(node.func, "attr", getattr(node.func, "id", None)) == "Schema":
                kw = {k.arg: k.value.value for k in node.keywords if isinstance(k.value, ast.Constant)}
                if "node_id" in kw:
                    found[kw["node_id"]] = kw.get("display_name", kw["node_id"])
    return dict(sorted(found.items()))
