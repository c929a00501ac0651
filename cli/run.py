"""`run`: workflow 1 (photo -> W+ -> personalised image) headless, in the real ComfyUI engine.

ComfyUI is started on loopback (a free port, temporary input/output folders, the pack loaded
through the extra_model_paths YAML), the API twin of example_workflows/wplus_1_photo_to_image.json is
submitted with the photo, prompt and options filled in, and the saved images are copied to --out.
Before anything starts, the model files the workflow names are looked up: when one is missing the
command stops at once, listing each file, the folder it belongs in and where to get it
(--download fetches the official W+/e4e files when the network allows).
"""
from __future__ import annotations

import shutil
import sys
import tempfile
import time
from pathlib import Path

from . import workflows
from .comfy_server import ComfyServer, ExecutionFailed, PromptRejected, ServerError, find_comfyui, output_images

WORKFLOW = "wplus_1_photo_to_image"
# facexlib weights behind W+ Face Align's options (nodes/face_nodes.py, wplus_core/parsing.py)
FACEXLIB_FOR_DETECTOR = {"retinaface_resnet50": "detection_Resnet50_Final.pth",
                         "retinaface_mobile0.25": "detection_mobilenet0.25_Final.pth"}
FACEXLIB_FOR_PARSER = {"parsenet": "parsing_parsenet.pth", "bisenet": "parsing_bisenet.pth"}


def add_arguments(ap) -> None:
    ap.add_argument("--photo", required=True, type=Path, help="photo with a face (jpg/png/webp)")
    ap.add_argument("--prompt", required=True, help="what to generate, e.g. 'a photo of a person on a beach'")
    ap.add_argument("--out", required=True, type=Path, help="folder for the generated images")
    ap.add_argument("--comfyui", type=Path, default=None,
                    help="ComfyUI root (default: $COMFYUI_PATH, the folder two levels up, ~/comfy/ComfyUI)")
    ap.add_argument("--models", type=Path, default=None,
                    help="models folder with checkpoints/ wplus/ e4e/ facexlib/ (default: ComfyUI's models/)")
    ap.add_argument("--negative", default=workflows.NEGATIVE, help="negative prompt (default: the reference's)")
    ap.add_argument("--checkpoint", default=None, help=f"SD1.5 checkpoint file name (default {workflows.CHECKPOINT})")
    ap.add_argument("--weight", type=float, default=None, help="identity strength (default 1.0)")
    ap.add_argument("--start-at", type=float, default=None, help="identity joins at this fraction (default 0.2)")
    ap.add_argument("--seed", type=int, default=None)
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--cfg", type=float, default=None)
    ap.add_argument("--width", type=int, default=None)
    ap.add_argument("--height", type=int, default=None)
    ap.add_argument("--batch", type=int, default=None, help="images per run")
    ap.add_argument("--face-index", type=int, default=None, help="use the face at this index (0 = leftmost, -1 = rightmost) instead of the largest")
    ap.add_argument("--no-freeu", action="store_true", help="bypass FreeU")
    ap.add_argument("--cpu", action="store_true", help="run ComfyUI with --cpu")
    ap.add_argument("--download", action="store_true",
                    help="download missing official W+ files (wplus_adapter.bin, e4e, facexlib) first")
    ap.add_argument("--timeout", type=float, default=3600.0, help="seconds allowed for the run")
    ap.add_argument("--keep", action="store_true", help="keep ComfyUI's temporary folder and log")


def _find(prompt, class_type):
    return [(k, v) for k, v in prompt.items() if v["class_type"] == class_type]


def prepare_prompt(prompt: dict, args, image_name: str) -> dict:
    """Fill the photo, prompts and options into the API workflow (nodes found by class and links)."""
    (_, load), = _find(prompt, "LoadImage")
    load["inputs"]["image"] = image_name
    (_, sampler), = _find(prompt, "KSampler")
    prompt[sampler["inputs"]["positive"][0]]["inputs"]["text"] = args.prompt
    prompt[sampler["inputs"]["negative"][0]]["inputs"]["text"] = args.negative
    for key, value in (("seed", args.seed), ("steps", args.steps), ("cfg", args.cfg)):
        if value is not None:
            sampler["inputs"][key] = value
    (_, latent), = _find(prompt, "EmptyLatentImage")
    for key, value in (("width", args.width), ("height", args.height), ("batch_size", args.batch)):
        if value is not None:
            latent["inputs"][key] = value
    (_, apply), = _find(prompt, "ApplyWPlusAdapter")
    if args.weight is not None:
        apply["inputs"]["weight"] = args.weight
    if args.start_at is not None:
        apply["inputs"]["start_at"] = args.start_at
    if args.checkpoint:
        (_, ckpt), = _find(prompt, "CheckpointLoaderSimple")
        ckpt["inputs"]["ckpt_name"] = args.checkpoint
    if args.face_index is not None:
        (_, align), = _find(prompt, "WPlusFaceAlign")
        if "face_select" in align["inputs"]:
            align["inputs"]["face_select"] = "index"
        align["inputs"]["face_index"] = args.face_index
    if args.no_freeu:
        for key, freeu in _find(prompt, "FreeU"):
            src = freeu["inputs"]["model"]
            for node in prompt.values():
                for name, v in node["inputs"].items():
                    if v == [key, 0]:
                        node["inputs"][name] = src
            del prompt[key]
    # the latent file and previews are for the graph editor; headless runs only want the images
    for key, _ in _find(prompt, "WPlusSave") + _find(prompt, "PreviewImage"):
        del prompt[key]
    return prompt


def required_files(prompt: dict) -> list[tuple[str, str]]:
    """(models folder, file name) of every model file the prompt loads."""
    need = []
    for node in prompt.values():
        spec = workflows.MODEL_INPUTS.get(node["class_type"])
        if spec and isinstance(node["inputs"].get(spec[0]), str):
            need.append((spec[1], node["inputs"][spec[0]]))
        if node["class_type"] == "WPlusFaceAlign":
            det = FACEXLIB_FOR_DETECTOR.get(node["inputs"].get("detector"))
            if det:
                need.append(("facexlib", det))
            if node["inputs"].get("remove_background"):
                need.append(("facexlib", FACEXLIB_FOR_PARSER.get(node["inputs"].get("parser"), "parsing_parsenet.pth")))
    return need


def model_roots(comfyui: Path, models: Path | None) -> list[Path]:
    roots = [models] if models else []
    return roots + [comfyui / "models"]


def locate(roots, folder, name) -> Path | None:
    for root in roots:
        for sub in ({"wplus_directions": "wplus/directions"}.get(folder, folder),):
            p = root / sub / name
            if p.is_file():
                return p
    return None


def missing_files(prompt, comfyui, models):
    roots = model_roots(comfyui, models)
    return [(folder, name) for folder, name in required_files(prompt) if locate(roots, folder, name) is None]


def report_missing(missing, comfyui, models) -> str:
    base = models or comfyui / "models"
    lines = ["Missing model files (nothing was started):"]
    for folder, name in missing:
        known = workflows.model_url(name)
        url = known[1] if known else "(your own file: pick one you have with the matching option)"
        lines.append(f"  {name}\n      folder: {base / folder}\n      get it: {url}")
    lines.append("The W+ files are under the NTU S-Lab License 1.0 (non-commercial use). "
                 "--download fetches the official W+/e4e/facexlib files when the network allows.")
    return "\n".join(lines)


def download(missing, comfyui, models) -> list[tuple[str, str]]:
    """Fetch the files wplus_core.download knows; returns what is still missing."""
    from wplus_core.download import KNOWN_FILES, ensure_known_file
    base = models or comfyui / "models"
    left = []
    for folder, name in missing:
        if name not in KNOWN_FILES:
            left.append((folder, name))
            continue
        print(f"downloading {name} -> {base / folder}", flush=True)
        ensure_known_file(str(base / folder), name)
    return left


def free_path(path: Path) -> Path:
    """``path``, or ``name-2.png``, ``name-3.png``... when taken: earlier runs are never overwritten."""
    k = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return candidate


def main(args) -> int:
    t0 = time.monotonic()
    comfyui = find_comfyui(args.comfyui)
    if comfyui is None:
        print("No ComfyUI found: pass --comfyui PATH or set COMFYUI_PATH (a ComfyUI checkout with main.py).",
              file=sys.stderr)
        return 2
    if not args.photo.is_file():
        print(f"--photo {args.photo}: no such file.", file=sys.stderr)
        return 2
    models = args.models.resolve() if args.models else None
    prompt = prepare_prompt(workflows.load_api(WORKFLOW), args, args.photo.name)
    missing = missing_files(prompt, comfyui, models)
    if missing and args.download:
        try:
            missing = download(missing, comfyui, models)
        except Exception as e:  # WPlusError from the downloader: already says file, folder, URL
            print(f"download failed: {e}", file=sys.stderr)
    if missing:
        print(report_missing(missing, comfyui, models), file=sys.stderr)
        return 3

    workdir = Path(tempfile.mkdtemp(prefix="wplus-run-"))
    server = ComfyServer(comfyui, workdir, models_dir=models, cpu=args.cpu)
    server.input_dir.mkdir(parents=True, exist_ok=True)
    shutil.copy2(args.photo, server.input_dir / args.photo.name)
    try:
        print(f"starting ComfyUI ({comfyui}) on {server.url} ...", flush=True)
        server.start()
        if server.import_failures():
            print("the pack failed to import:\n" + server.log_tail(), file=sys.stderr)
            return 4
        print("running workflow 1 ...", flush=True)
        entry = server.run(prompt, timeout=args.timeout)
        args.out.mkdir(parents=True, exist_ok=True)
        written = []
        for _, ref in output_images(entry):
            if ref.get("type") != "output":
                continue
            target = free_path(args.out / Path(ref["filename"]).name)
            target.write_bytes(server.view(ref))
            written.append(target)
        for p in written:
            print(p)
        print(f"{len(written)} image(s) in {time.monotonic() - t0:.0f} s", flush=True)
        return 0 if written else 5
    except PromptRejected as e:
        print(f"ComfyUI rejected the workflow:\n{e}", file=sys.stderr)
        return 4
    except ExecutionFailed as e:
        print(f"the workflow failed: {e}", file=sys.stderr)
        return 4
    except ServerError as e:
        print(str(e), file=sys.stderr)
        return 4
    finally:
        server.stop()
        if args.keep:
            print(f"ComfyUI folder and log kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)
