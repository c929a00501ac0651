"""The in-process host runs where WPLUS_TEST_DEVICE / _DTYPE / _COMFY_ARGS say (tests/host/device.py).

On CUDA with ComfyUI 0.28+ and no flag against it, dynamic VRAM must really be on (comfy-aimdo
initialised, ModelPatcherDynamic as CoreModelPatcher), as main.py would start it; with
--disable-dynamic-vram (or on 0.3.64) the legacy ModelPatcher. A silent fallback would make the
"dynamic VRAM" runs of bench/gpu_check.py test the legacy path instead.
"""
from tests.host import device


def test_host_runs_where_asked(comfy, record_property):
    import comfy.cli_args
    import comfy.model_management as mm
    state = device.host_state()
    for key, value in state.items():
        record_property(key, value)
    assert mm.get_torch_device().type == device.DEVICE, state
    enables = getattr(comfy.cli_args, "enables_dynamic_vram", None)  # 0.28+
    want_dynamic = device.DEVICE == "cuda" and enables is not None and enables() and mm.is_nvidia()
    assert state["dynamic_vram"] == want_dynamic, (
        f"dynamic VRAM is {'on' if state['dynamic_vram'] else 'off'} but this configuration should "
        f"have it {'on' if want_dynamic else 'off'} (is comfy-aimdo installed and working?): {state}")
    expected = "ModelPatcherDynamic" if want_dynamic else "ModelPatcher"
    assert device.core_model_patcher().__name__ == expected, state
