"""The example workflows of the V1 pack (tests/data/v1/workflows, UI and API format) are still
shipped unchanged: the V3 nodes load them as they were saved."""
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
V1 = ROOT / "tests" / "data" / "v1" / "workflows"
FILES = sorted(p.relative_to(V1) for p in V1.rglob("*.json"))


def test_the_v1_workflows_are_there():
    assert sorted(str(f.parent) for f in FILES) == ["."] * 6 + ["api"] * 6


@pytest.mark.parametrize("name", [str(f) for f in FILES])
def test_example_workflow_is_byte_identical_to_v1(name):
    shipped = ROOT / "example_workflows" / name
    assert shipped.is_file(), f"example_workflows/{name} is gone"
    assert shipped.read_bytes() == (V1 / name).read_bytes(), f"example_workflows/{name} differs from V1"
