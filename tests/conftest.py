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


# CI on the real hosts (.ci/run) sets WPLUS_REQUIRE_HOST=1: a host or end-to-end test that skips
# there (no ComfyUI found, no browser, no photo...) fails the run instead of hiding behind a green CI.
REQUIRE_HOST = os.environ.get("WPLUS_REQUIRE_HOST") == "1"
_HOST_SKIPS = []


def _is_host_test(nodeid: str) -> bool:
    return nodeid.replace(os.sep, "/").startswith(("tests/host/", "tests/e2e/"))


def pytest_runtest_logreport(report):
    if REQUIRE_HOST and report.skipped and _is_host_test(report.nodeid):
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        _HOST_SKIPS.append(f"{report.nodeid}: {reason}")


def pytest_terminal_summary(terminalreporter):
    if _HOST_SKIPS:
        terminalreporter.section("WPLUS_REQUIRE_HOST=1: host/e2e tests skipped (counted as failures)")
        for line in _HOST_SKIPS:
            terminalreporter.write_line(line)


def pytest_sessionfinish(session, exitstatus):
    if _HOST_SKIPS and session.exitstatus == 0:
        session.exitstatus = 1
