import os
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TESTS = Path(__file__).resolve().parent
for p in (ROOT, TESTS):  # the pack's core, and the tests' shared helpers (e4e_reference, ...)
    if str(p) not in sys.path:
        sys.path.insert(0, str(p))

REFERENCE = Path(os.environ.get("WPLUS_REFERENCE", ROOT.parent / "shared" / "reference"))


@pytest.fixture(scope="session")
def reference_dir() -> Path:
    """../shared/reference when present; tests that need it skip with a message otherwise."""
    if not REFERENCE.is_dir():
        pytest.skip(f"reference data not found at {REFERENCE} (only on the project's dev machines)")
    return REFERENCE
