"""The README's node table is tested against the nodes themselves: every node is in it, under its
key, and its row names every input the node declares (hidden inputs, filled by ComfyUI, aside)."""
import re
from pathlib import Path

README = Path(__file__).resolve().parents[2] / "README.md"


def table_rows() -> dict:
    """{node key: row text} from the README's '## Nodes' table (a row may list several keys)."""
    text = README.read_text()
    section = text[text.index("## Nodes"):]
    section = section[:section.index("\n## ", 4)]
    rows = {}
    for line in section.splitlines():
        if line.startswith("| **"):
            for key in re.findall(r"`(\w+)`", line.split("|")[1]):
                rows[key] = line
    return rows


def test_every_node_and_input_is_in_the_readme_table(pack):
    rows = table_rows()
    missing_nodes, missing_inputs = [], []
    for key, cls in pack.NODE_CLASS_MAPPINGS.items():
        if key not in rows:
            missing_nodes.append(key)
            continue
        spec = cls.INPUT_TYPES()
        for group in ("required", "optional"):
            for name in spec.get(group, {}):
                if not re.search(rf"\b{re.escape(name)}\b", rows[key]):
                    missing_inputs.append(f"{key}.{name}")
    assert not missing_nodes, f"nodes missing from the README's node table: {missing_nodes}"
    assert not missing_inputs, "inputs missing from their README row: " + ", ".join(missing_inputs)
