"""What the pack's nodes share: ComfyUI's V3 node API, the category, the socket types and tooltips.

``comfy_api.v0_0_2`` is the versioned API of every supported host (ComfyUI 0.3.64, 0.28, 0.33);
its ``io`` is each host's own, so the nodes use only what all three have.
"""
from __future__ import annotations

import inspect

from comfy_api.v0_0_2 import ComfyExtension, io  # noqa: F401  (re-exported for the node modules)

CATEGORY = "W+ Adapter"

# the pack's own socket types (the names are the workflows' link types: never rename them)
WPlus = io.Custom("WPLUS")
WPlusAdapter = io.Custom("WPLUS_ADAPTER")
E4EModel = io.Custom("E4E_MODEL")
WPlusCrop = io.Custom("WPLUS_CROP")
WPlusDirection = io.Custom("WPLUS_DIRECTION")

WPLUS_TIP = "W+ latents (B,18,512) from W+ e4e Invert, W+ Load or another W+ node."
PRECISIONS = ["auto", "fp32", "fp16", "bf16"]
PRECISION_TIP = "auto: fp16 on a GPU, fp32 on the CPU."


def precision_input() -> io.Combo.Input:
    return io.Combo.Input("precision", options=PRECISIONS, tooltip=PRECISION_TIP)


def node_id(cls) -> str | None:
    """The UNIQUE_ID of the node being run (None when called outside a prompt, e.g. by a test)."""
    return getattr(cls.hidden, "unique_id", None)


def host_checks_v3_combos() -> bool:
    """Whether this ComfyUI refuses a V3 combo value outside the options by itself (0.28 and later do;
    0.3.64 checks the combos of V1 nodes only: its ``validate_inputs`` looks for a list type, and a
    V3 combo's type is "COMBO"). Read from the host's own validation code; when that cannot be read,
    False, so that the pack checks (a coarser message, never a missed check)."""
    import execution  # ComfyUI's: imported by its main before any custom node

    try:
        return "Combo.io_type" in inspect.getsource(execution.validate_inputs)
    except (OSError, TypeError):
        return False


def check_choices_before_running(node: type[io.ComfyNode]) -> None:
    """Give ``node`` a ``validate_inputs`` that refuses a combo value not among the input's current
    options, before anything runs, on a host that does not (``host_checks_v3_combos``): else a
    misspelt file name in an API prompt would start the prompt and fail only when the node runs.

    ComfyUI reads ``validate_inputs``' argument names to decide which inputs to pass (a ``**kwargs``
    would switch its other checks off), so the generated function names each combo input; the host
    reports a refusal against every input passed, and the sentence names the one at fault. The
    options are read at validation time, as ComfyUI does, so a file added since the server started
    is accepted."""
    combos = [i.id for i in node.define_schema().inputs if isinstance(i, io.Combo.Input)]
    if not combos:
        return

    def validate_inputs(cls, **values):
        return choice_problem(cls, values)

    # positional-or-keyword with a default: ComfyUI passes only the inputs present in the prompt
    params = [inspect.Parameter("cls", inspect.Parameter.POSITIONAL_OR_KEYWORD)]
    params += [inspect.Parameter(name, inspect.Parameter.POSITIONAL_OR_KEYWORD, default=None) for name in combos]
    validate_inputs.__signature__ = inspect.Signature(params)
    validate_inputs.__qualname__ = f"{node.__name__}.validate_inputs"
    node.validate_inputs = classmethod(validate_inputs)


def choice_problem(node: type[io.ComfyNode], values: dict) -> bool | str:
    """True, or a sentence naming the first combo input whose value is not one of its options."""
    for spec in node.define_schema().inputs:
        if not isinstance(spec, io.Combo.Input) or values.get(spec.id) is None:
            continue  # None: the input is linked, its value is not known before running
        value, options = values[spec.id], list(spec.options or [])
        if value in options:
            continue
        shown = ", ".join(repr(o) for o in options[:8]) + (f" and {len(options) - 8} more" if len(options) > 8 else "")
        return (f"{spec.id}: {value!r} is not one of the choices ({shown or 'none'}). If it is a model file, "
                f"put it in its models folder, then refresh the page's lists (press R) and pick it.")
    return True
