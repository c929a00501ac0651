"""Command line of the W+ Adapter pack (standard library + the pack; ComfyUI runs as a subprocess).

    python -m cli run --photo face.jpg --prompt "a photo of a person on a beach" --out out/
    python -m cli workflows --write        # regenerate example_workflows/ from cli/workflows.py

Run from the pack's folder (ComfyUI/custom_nodes/<pack>); `python <pack folder> run ...` works
from anywhere (the pack's __main__.py). See `python -m cli --help`.
"""
