"""Argument parsing and dispatch of the pack's commands (run, workflows, blueprints, thumbnails, docs)."""
from __future__ import annotations

import argparse
import sys
import tempfile
from pathlib import Path


def _with_server(args, job, placeholder_models: bool = False) -> int:
    """Run ``job(server)`` against a throwaway CPU ComfyUI on loopback (maintainer commands). With
    ``placeholder_models``, its models folder holds an empty file for every model file the example
    workflows name, so the page shows no missing-model warning (nothing is ever loaded from them)."""
    from .comfy_server import ComfyServer, find_comfyui
    comfyui = find_comfyui(args.comfyui)
    if comfyui is None:
        print("No ComfyUI found: pass --comfyui PATH or set COMFYUI_PATH.", file=sys.stderr)
        return 2
    with tempfile.TemporaryDirectory(prefix="wplus-cli-") as tmp:
        models = None
        if placeholder_models:
            from . import workflows
            models = Path(tmp) / "models"
            for spec in workflows.SPECS:
                for n in spec.nodes:
                    widget, folder = workflows.MODEL_INPUTS.get(n.type, (None, None))
                    if isinstance(n.inputs.get(widget), str):
                        (models / folder).mkdir(parents=True, exist_ok=True)
                        (models / folder / n.inputs[widget]).touch()
        with ComfyServer(comfyui, Path(tmp), models_dir=models, cpu=True) as server:
            return job(server)


def _generated_files(args, write_all) -> int:
    """Compare (or with --write rewrite) generated files with what ``write_all(object_info, check)``
    makes from a throwaway ComfyUI's node definitions: example workflows or blueprints."""
    info = {}
    rc = _with_server(args, lambda server: info.update(server.get_json("/object_info")))
    if rc:
        return rc
    stale = write_all(info, not args.write)
    for name in stale:
        print(("wrote " if args.write else "out of date: ") + name)
    return 1 if stale and not args.write else 0


def _thumbnails(args) -> int:
    import shutil
    from . import browser, workflows
    photos = args.photos or Path(__file__).resolve().parents[2] / "shared" / "reference" / "photos"
    unknown = sorted(set(args.only) - {s.name for s in workflows.SPECS})
    if unknown:
        print(f"--only {', '.join(unknown)}: no such workflow; they are "
              + ", ".join(s.name for s in workflows.SPECS), file=sys.stderr)
        return 2

    def job(server):
        # the workflows' example photos (wild_1.jpg, aligned_1.png, pose_1.png), so Load Image shows them
        found = [p for p in (photos.glob("*") if photos.is_dir() else ()) if p.suffix.lower() in (".jpg", ".png")]
        for p in found:
            shutil.copy2(p, server.input_dir / p.name)
        if not found:
            print(f"no photos in {photos} (--photos DIR): Load Image nodes stay empty", file=sys.stderr)
        docs = Path(__file__).resolve().parents[1] / "web" / "docs" / "images"
        names = [s.name for s in workflows.SPECS if not args.only or s.name in args.only]
        for path in browser.make_thumbnails(server, names, workflows.WORKFLOWS_DIR,
                                            docs_dir=docs, with_photos=bool(found)):
            print("wrote", path)
        return 0

    return _with_server(args, job, placeholder_models=True)


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(prog="python -m cli", description="W+ Adapter for ComfyUI: command line.")
    sub = ap.add_subparsers(dest="command", required=True)
    from . import run
    p_run = sub.add_parser("run", help="photos + prompt -> images with an example workflow, in a throwaway "
                                         "local ComfyUI or on running servers (--server)")
    run.add_arguments(p_run)
    p_wf = sub.add_parser("workflows", help="check (or --write) example_workflows/ against cli/workflows.py")
    p_wf.add_argument("--comfyui", type=Path, default=None)
    p_wf.add_argument("--write", action="store_true")
    p_bp = sub.add_parser("blueprints", help="check (or --write) the subgraph blueprints in subgraphs/ against "
                                             "cli/blueprints.py (ComfyUI 0.28+ lists them in the node library)")
    p_bp.add_argument("--comfyui", type=Path, default=None)
    p_bp.add_argument("--write", action="store_true")
    p_th = sub.add_parser("thumbnails", help="write example_workflows/<name>.jpg and web/docs/images/workflow_*.jpg "
                                             "(needs playwright + /usr/bin/chromium)")
    p_th.add_argument("--comfyui", type=Path, default=None)
    p_th.add_argument("--photos", type=Path, default=None,
                      help="folder with the workflows' photos (default: ../shared/reference/photos)")
    p_th.add_argument("--only", action="append", default=[], metavar="NAME",
                      help="only this workflow's pictures (repeatable; default: every workflow)")
    p_docs = sub.add_parser("docs", help="check (or --write) the README's model-file table and pyproject's "
                                         "[[tool.comfy.Models]] against wplus_core/model_files.py")
    p_docs.add_argument("--write", action="store_true")
    args = ap.parse_args(argv)
    if args.command == "docs":
        from . import docs
        return docs.main(args)
    if args.command == "run":
        return run.main(args)
    if args.command == "thumbnails":
        return _thumbnails(args)
    if args.command == "blueprints":
        from . import blueprints
        return _generated_files(args, blueprints.write_all)
    from . import workflows
    return _generated_files(args, workflows.write_all)
