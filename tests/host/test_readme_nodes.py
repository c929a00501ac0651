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


def test_every_node_and_input_is_in_the_readme_table(object_info_of_pack):
    rows = table_rows()
    missing_nodes, missing_inputs = [], []
    for key, info in object_info_of_pack.items():
        if key not in rows:
            missing_nodes.append(key)
            continue
        spec = info["input"]
        for group in ("required", "optional"):
            for name in spec.get(group, {}):
                if not re.search(rf"\b{re.escape(name)}\b", rows[key]):
                    missing_inputs.append(f"{key}.{name}")
    assert not missing_nodes, f"nodes missing from the README's node table: {missing_nodes}"
    assert not missing_inputs, "inputs missing from their README row: " + ", ".join(missing_inputs)


DOCS = README.parent / "web" / "docs"


def _section(page: str, heading: str) -> str:
    match = re.search(rf"^## {heading}s?\n(.*?)(?=^## |\Z)", page, re.M | re.S)
    assert match, f"no '## {heading}(s)' section"
    return match.group(1)


def _first_cell_names(section: str) -> list[str]:
    """Input names of a docs table: every `name` in each row's first cell; `x_2` .. `x_4` is a range."""
    names = []
    for cell in re.findall(r"^\| (`[^|]*?) \|", section, re.M):
        found = re.findall(r"`(\w+)`", cell)
        span = re.fullmatch(r"`(\w+?)(\d+)` \.\. `\1(\d+)`.*", cell)
        if span:
            found = [f"{span.group(1)}{i}" for i in range(int(span.group(2)), int(span.group(3)) + 1)]
        names += found
    return names


def test_every_docs_page_lists_exactly_the_node_inputs_and_outputs(object_info_of_pack):
    """web/docs/<node>.md: its Inputs table names every input of the node (the schema ComfyUI
    reports on /object_info) and nothing else; its Outputs section names every output."""
    wrong = []
    for key, info in object_info_of_pack.items():
        page = (DOCS / f"{key}.md").read_text()
        inputs = list(info["input_order"].get("required", [])) + list(info["input_order"].get("optional", []))
        listed = _first_cell_names(_section(page, "Input"))
        if sorted(listed) != sorted(inputs):
            wrong.append(f"{key} inputs: page {listed} != node {inputs}")
        if info["output"]:
            outputs = _section(page, "Output").lower()
            for name in info["output_name"]:
                if f"`{name.lower()}`" not in outputs:
                    wrong.append(f"{key}: output `{name}` is not named in its Outputs section")
    assert not wrong, "\n".join(wrong)
