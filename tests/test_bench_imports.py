"""The benchmarks import the pack one way (bench/pack.py): one copy of every module."""
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]

CHECK = """
import importlib.util, sys
spec = importlib.util.spec_from_file_location("bench_run", sys.argv[1])
run = importlib.util.module_from_spec(spec); spec.loader.exec_module(run)   # bench/run.py, not its main()
import wplus_core, wplus_core.errors, wplus_core.adapter
from test_adapter import official_state_dict        # a tests helper that says `import wplus_core`
import comfyui_wplus_adapter.wplus_core.errors as packed
assert sys.modules["wplus_core"] is sys.modules["comfyui_wplus_adapter.wplus_core"]
assert wplus_core.errors.WPlusError is packed.WPlusError is wplus_core.adapter.WPlusError
assert wplus_core.adapter.__spec__.name == "comfyui_wplus_adapter.wplus_core.adapter"
dup = [n for n in sys.modules if n.startswith("wplus_core") and
       sys.modules[n] is not sys.modules.get("comfyui_wplus_adapter." + n)]
assert not dup, dup
adapter = wplus_core.adapter.load_wplus_adapter(official_state_dict())
try:
    wplus_core.adapter.load_wplus_adapter({"x": 1})
except packed.WPlusError:
    print("one WPlusError")
"""


def test_bench_holds_one_copy_of_the_pack():
    out = subprocess.run([sys.executable, "-c", CHECK, str(ROOT / "bench" / "run.py")], cwd=ROOT / "bench",
                         capture_output=True, text=True, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    assert "one WPlusError" in out.stdout
