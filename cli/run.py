"""`run`: example workflows (or any API-format workflow of the pack) headless, in the real ComfyUI engine.

    python -m cli run --photo me.jpg --prompt "..." --out out/                 # throwaway local ComfyUI
    python -m cli run --photo photos/ --workflow 2 --server http://gpu1:8188 --server http://gpu2:8188 --out out/

Without --server, ComfyUI is started on loopback (a free port, temporary input/output folders, the
pack loaded through the extra_model_paths YAML) once for all the photos. Before anything starts,
the model files the workflow names are looked up: when one is missing the command stops at once,
listing each file, the folder it belongs in, its size and licence and where to get it (--download
fetches them all when the network allows: wplus_core/model_files.py is the one list). With --server, each server is asked first (GET
/object_info) whether it has the workflow's nodes and files.

Then every photo becomes one prompt (cli/prompts.py fills the API workflow: options left unset
keep the workflow's own values), and cli/batch.py spreads the prompts over the servers, follows
them on the websocket, re-queues the prompts of a server that stops answering, writes the images
to --out named after their photo (never overwriting), and on Ctrl-C removes only our prompts.
Exit codes: 0 all done, 2 bad usage, 3 model files or nodes missing, 4 a prompt or server failed,
5 a prompt finished without an image, 130 interrupted.
"""
from __future__ import annotations

import glob as globmod
import shutil
import sys
import tempfile
import time
import uuid
from pathlib import Path

from wplus_core import model_files

from . import batch, prompts, workflows
from .comfy_server import ComfyServer, ServerError, find_comfyui

WORKFLOW = "wplus_1_photo_to_image"  # the default --workflow

def add_arguments(ap) -> None:
    names = ", ".join(f"{i} {n}" for i, n in enumerate(prompts.workflow_names(), 1))
    g = ap.add_argument_group("what to run")
    g.add_argument("--photo", action="append", default=None, metavar="PATH",
                   help="photo with a face: a file, a folder (its jpg/png/webp files) or a glob such as "
                        "'photos/*.jpg'; repeatable. One prompt per photo, outputs named after it")
    g.add_argument("--prompt", default=None, help="what to generate, e.g. 'a photo of a person on a beach' "
                                                  "(default: the workflow's own)")
    g.add_argument("--out", required=True, type=Path, help="folder for the generated images (never overwritten)")
    g.add_argument("--workflow", default=None, metavar="NAME",
                   help=f"example workflow by number or name ({names}; default 1), or the path of an "
                        "API-format .json that uses the pack (photo, prompt and seed are overridden)")
    g.add_argument("--server", action="append", default=None, metavar="URL",
                   help="a running ComfyUI (http://host:8188) with the pack installed; repeatable: prompts are "
                        "spread over the servers by how busy each is. Default: start a throwaway local one")
    g.add_argument("--photo-b", type=Path, default=None, help="second face for the interpolation (workflow 3)")
    g.add_argument("--control-image", "--pose", dest="control_image", type=Path, default=None,
                   help="ControlNet image, e.g. an OpenPose skeleton (workflow 5)")
    g.add_argument("--quiet", action="store_true", help="no progress bars or notes: only the written paths "
                                                        "(stdout) and failures (stderr)")
    o = ap.add_argument_group("options (unset = the workflow's own value)")
    o.add_argument("--negative", default=None, help="negative prompt")
    o.add_argument("--checkpoint", default=None, help=f"SD1.5 checkpoint file name (workflows: {workflows.CHECKPOINT})")
    o.add_argument("--adapter", default=None,
                   help=f"W+ adapter file, e.g. {workflows.ADAPTER_STAGE1} for stage-1 close-ups")
    o.add_argument("--vae", default=None, help="VAE file name in models/vae (workflows 1 and 4 load one)")
    o.add_argument("--weight", type=float, default=None, help="identity strength")
    o.add_argument("--start-at", type=float, default=None, help="identity joins at this fraction of the steps")
    o.add_argument("--seed", type=int, default=None)
    o.add_argument("--steps", type=int, default=None)
    o.add_argument("--cfg", type=float, default=None)
    o.add_argument("--sampler", default=None, help="KSampler sampler_name, e.g. euler, ddim, dpmpp_2m")
    o.add_argument("--scheduler", default=None, help="KSampler scheduler, e.g. normal, karras, ddim_uniform")
    o.add_argument("--width", type=int, default=None)
    o.add_argument("--height", type=int, default=None)
    o.add_argument("--batch", type=int, default=None, help="images per prompt")
    o.add_argument("--face-index", type=int, default=None, help="use the face at this index (0 = leftmost, -1 = rightmost) instead of the largest")
    o.add_argument("--no-freeu", action="store_true", help="bypass FreeU")
    o.add_argument("--restore", type=float, nargs="?", const=1.0, default=None, metavar="STRENGTH",
                   help="restore blurry or small faces with PSFRGAN before inversion (the reference's -s; "
                        f"strength 0..1, default 1); downloads {workflows.PSFRGAN} on first use")
    o.add_argument("--direction", default=None, help="W+ Edit direction, e.g. interfacegan/age (workflows 2, 4)")
    o.add_argument("--strengths", default=None, help="W+ Edit strengths, e.g. '-3, 0, 3': one image each (workflows 2, 4)")
    o.add_argument("--mix", type=float, default=None, help="interpolation weight: 0 = photo, 1 = photo B (workflow 3)")
    o.add_argument("--lora", default=None, help="LoRA file name in models/loras (workflow 5)")
    o.add_argument("--lora-strength", type=float, default=None, help="LoRA strength, model and CLIP (workflow 5)")
    o.add_argument("--controlnet", default=None, help="ControlNet file name in models/controlnet (workflow 5)")
    o.add_argument("--control-strength", type=float, default=None, help="ControlNet strength (workflow 5)")
    r = ap.add_argument_group("running")
    r.add_argument("--timeout", type=float, default=3600.0, help="seconds one prompt may run before it is interrupted")
    r.add_argument("--server-timeout", type=float, default=60.0,
                   help="seconds without an answer before a server is given up (its prompts go to the others)")
    l = ap.add_argument_group("the throwaway local server (without --server)")
    l.add_argument("--comfyui", type=Path, default=None,
                   help="ComfyUI root (default: $COMFYUI_PATH, the folder two levels up, ~/comfy/ComfyUI)")
    l.add_argument("--models", type=Path, default=None,
                   help="models folder with checkpoints/ wplus/ e4e/ facexlib/ (default: ComfyUI's models/)")
    l.add_argument("--cpu", action="store_true", help="run ComfyUI with --cpu")
    l.add_argument("--download", action="store_true",
                   help="download every missing file the workflow needs first (checkpoint, VAE, ControlNet, "
                        "W+ adapter, e4e, facexlib and dlib models: wplus_core/model_files.py), after printing "
                        "each one's size and licence")
    l.add_argument("--keep", action="store_true", help="keep ComfyUI's temporary folder and log")


OPTION_NAMES = ("prompt", "negative", "seed", "steps", "cfg", "sampler", "scheduler", "width", "height", "batch",
                "weight", "start_at", "checkpoint", "adapter", "vae", "face_index", "no_freeu", "direction", "strengths",
                "mix", "lora", "lora_strength", "controlnet", "control_strength", "restore")


def prepare_prompt(prompt: dict, args, image_name: str | None = None) -> dict:
    """Apply the options to an API workflow (nodes found by class and links: cli/prompts.py) and drop
    the graph editor's previews; ``image_name`` (optional) goes into the photo's LoadImage."""
    prompts.apply_options(prompt, {k: getattr(args, k, None) for k in OPTION_NAMES})
    prompts.headless(prompt)
    if image_name is not None:
        prompts.fill_images(prompt, {prompts.PHOTO: image_name})
    return prompt


def required_files(prompt: dict) -> list[tuple[str, str]]:
    """(models folder, file name) of every model file the prompt loads (wplus_core/model_files.py)."""
    return model_files.files_for_prompt(prompt)


def model_roots(comfyui: Path, models: Path | None) -> list[Path]:
    roots = [models] if models else []
    return roots + [comfyui / "models"]


def folder_path(base: Path, folder: str) -> Path:
    """The sub-folder of a models folder that holds ``folder``'s files (models/wplus/directions...)."""
    sub = model_files.FOLDERS.get(folder, (folder,))[0]
    return base.joinpath(*sub.split("/"))


def locate(roots, folder, name) -> Path | None:
    """The file in one of the models folders, or where a package ships it (dlib's models come with
    face-recognition-models, where W+ Face Align and W+ Identity Score find them too)."""
    for root in roots:
        p = folder_path(root, folder) / name
        if p.is_file():
            return p
    packaged = model_files.packaged_path(name)
    return Path(packaged) if packaged else None


def missing_files(prompt, comfyui, models):
    roots = model_roots(comfyui, models)
    return [(folder, name) for folder, name in required_files(prompt) if locate(roots, folder, name) is None]


def report_missing(missing, comfyui, models) -> str:
    base = models or comfyui / "models"
    lines = ["Missing model files (nothing was started):"]
    for folder, name in missing:
        known = model_files.by_name(name)
        if known:
            lines.append(f"  {name} ({known.approx_size}, licence: {known.licence})\n"
                         f"      folder: {folder_path(base, folder)}\n      get it: {known.url}")
        else:
            lines.append(f"  {name}\n      folder: {folder_path(base, folder)}\n"
                         "      get it: (your own file: pick one you have with the matching option)")
    if any(model_files.by_name(name) for _, name in missing):
        lines.append("--download fetches the files listed with a URL (sizes and licences above; the W+ files are "
                     "under the NTU S-Lab License 1.0, non-commercial use).")
    return "\n".join(lines)


def download(missing, comfyui, models, quiet: bool = False) -> list[tuple[str, str]]:
    """Fetch every missing file the table of model files knows (size and licence printed first, then
    progress; sha256-checked where one is published; written atomically); returns what is still missing."""
    from wplus_core.download import ensure_known_file
    base = models or comfyui / "models"
    known = [(folder, name) for folder, name in missing if model_files.by_name(name)]
    left = [(folder, name) for folder, name in missing if not model_files.by_name(name)]
    if known:
        print("downloading:", flush=True)
        for folder, name in known:
            f = model_files.by_name(name)
            print(f"  {name}  {f.approx_size}  licence: {f.licence}  -> {folder_path(base, folder)}", flush=True)
    for folder, name in known:
        ensure_known_file(str(folder_path(base, folder)), name, progress=None if quiet else _progress_printer(name))
    return left


def _progress_printer(name: str):
    """A download progress(done, total) that redraws one line on stderr, at most every 1 %."""
    last = [-1]

    def progress(done, total):
        step = int(100 * done / total) if total else done >> 20
        if step != last[0] or (total and done == total):
            last[0] = step
            shown = f"{step:3d} % of {total / 1e6:.1f} MB" if total else f"{done / 1e6:.1f} MB"
            end = "\n" if total and done == total else ""
            print(f"\r  {name}: {shown}", end=end, file=sys.stderr, flush=True)

    return progress


def free_path(path: Path) -> Path:
    """``path``, or ``name-2.png``, ``name-3.png``... when taken: earlier runs are never overwritten."""
    k = 2
    candidate = path
    while candidate.exists():
        candidate = path.with_name(f"{path.stem}-{k}{path.suffix}")
        k += 1
    return candidate


IMAGE_SUFFIXES = {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".tif", ".tiff"}


def expand_photos(values) -> list[Path]:
    """--photo values (files, folders, globs) -> photo files, in order, each once."""
    out = []
    for value in values:
        path = Path(value).expanduser()
        if path.is_dir():
            found = sorted(p for p in path.iterdir() if p.is_file() and p.suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"--photo {value}: the folder has no jpg/png/webp/bmp/tif file")
        elif path.is_file():
            found = [path]
        elif any(c in str(value) for c in "*?["):
            found = sorted(Path(p) for p in globmod.glob(str(path), recursive=True)
                           if Path(p).is_file() and Path(p).suffix.lower() in IMAGE_SUFFIXES)
            if not found:
                raise ValueError(f"--photo {value}: no image matches")
        else:
            raise ValueError(f"--photo {value}: no such file or folder")
        for p in found:
            if p.resolve() not in {q.resolve() for q in out}:
                out.append(p)
    return out


def make_jobs(template: dict, photos: list[Path], args) -> list[batch.Job]:
    """One job per photo (the same extra images for all); errors name the option to give."""
    roles = set(prompts.image_roles(template).values())
    extra = {prompts.PHOTO_B: args.photo_b, prompts.CONTROL: args.control_image}
    for role, path in extra.items():
        option = prompts.ROLE_OPTIONS[role]
        if path is not None and role not in roles:
            raise prompts.WorkflowError(f"{option}: this workflow has no such image input")
        if role in roles and path is None:
            what = "a second face to mix with" if role == prompts.PHOTO_B else "the ControlNet image (e.g. a pose)"
            raise prompts.WorkflowError(f"this workflow needs {what}: give {option} FILE")
        if path is not None and not Path(path).is_file():
            raise prompts.WorkflowError(f"{option} {path}: no such file")
    if prompts.PHOTO not in roles:
        raise prompts.WorkflowError("this workflow has no photo input (a LoadImage feeding W+ Face Align)")
    names = [p.name for p in photos]
    jobs = []
    for i, photo in enumerate(photos):
        images = {prompts.PHOTO: photo}
        images.update({r: Path(p) for r, p in extra.items() if p is not None})
        name = photo.name if names.count(photo.name) == 1 else str(photo)
        jobs.append(batch.Job(i, name, images, template))
    return jobs


def _remote_servers(args, template, client_id) -> tuple[list, int]:
    """Remote clients for --server, checked first; (remotes, 0) or ([], exit code)."""
    from .remote import Remote, Unreachable, problems_on_server
    remotes, rc = [], 0
    for url in args.server:
        try:
            remote = Remote(url, client_id)
            remote.get_json("/system_stats", timeout=10)
            problems = problems_on_server(remote, template)
        except ValueError as e:
            print(str(e), file=sys.stderr)
            return [], 2
        except (Unreachable, OSError) as e:
            print(f"--server {url}: no answer ({e}); leaving it out", file=sys.stderr)
            rc = rc or 4
            continue
        if problems:
            print(f"--server {remote.url} cannot run this workflow; leaving it out:\n  " + "\n  ".join(problems),
                  file=sys.stderr)
            rc = 3 if rc in (0, 3) else rc
            continue
        remotes.append(remote)
    return remotes, (0 if remotes else rc or 4)


def main(args) -> int:
    t0 = time.monotonic()
    try:
        name, template = prompts.resolve(args.workflow)
        template = prepare_prompt(template, args)
        photos = expand_photos(args.photo or [])
        if not photos:
            raise ValueError("--photo: give a photo, a folder or a glob")
        jobs = make_jobs(template, photos, args)
    except (ValueError, prompts.WorkflowError) as e:
        print(str(e), file=sys.stderr)
        return 2
    client_id = uuid.uuid4().hex
    ui = batch.Progress(quiet=args.quiet)
    if args.server:
        remotes, rc = _remote_servers(args, template, client_id)
        if not remotes:
            return rc
        return _run_jobs(remotes, jobs, args, ui, t0, name)

    comfyui = find_comfyui(args.comfyui)
    if comfyui is None:
        print("No ComfyUI found: pass --server URL for a running one, or --comfyui PATH / COMFYUI_PATH "
              "(a ComfyUI checkout with main.py) for a throwaway local one.", file=sys.stderr)
        return 2
    models = args.models.resolve() if args.models else None
    missing = missing_files(template, comfyui, models)
    if missing and args.download:
        try:
            missing = download(missing, comfyui, models, quiet=args.quiet)
        except Exception as e:  # WPlusError from the downloader: already says file, folder, URL
            print(f"download failed: {e}", file=sys.stderr)
            missing = missing_files(template, comfyui, models)  # what did arrive is kept
    if missing:
        print(report_missing(missing, comfyui, models), file=sys.stderr)
        return 3

    from .remote import Remote
    workdir = Path(tempfile.mkdtemp(prefix="wplus-run-"))
    server = ComfyServer(comfyui, workdir, models_dir=models, cpu=args.cpu)
    try:
        ui.note(f"starting ComfyUI ({comfyui}) on {server.url} ...")
        server.start()
        if server.import_failures():
            print("the pack failed to import:\n" + server.log_tail(), file=sys.stderr)
            return 4
        return _run_jobs([Remote(server.url, client_id)], jobs, args, ui, t0, name, local=server)
    except ServerError as e:
        print(str(e), file=sys.stderr)
        return 4
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    finally:
        server.stop()
        if args.keep:
            print(f"ComfyUI folder and log kept in {workdir}", file=sys.stderr)
        else:
            shutil.rmtree(workdir, ignore_errors=True)


def _run_jobs(remotes, jobs, args, ui, t0, name, local=None) -> int:
    where = "the local ComfyUI" if local else ", ".join(r.url for r in remotes)
    ui.note(f"{name}: {len(jobs)} prompt(s) on {where}")
    runner = batch.Runner(remotes, jobs, args.out, ui=ui, prompt_timeout=args.timeout,
                          server_timeout=args.server_timeout)
    runner.run()
    line, failures = batch.summary(jobs, time.monotonic() - t0)
    if not args.quiet:
        print(line, flush=True)
    elif batch.repeated(line):
        print(batch.repeated(line), file=sys.stderr, flush=True)
    if failures:
        print("failed:\n" + failures, file=sys.stderr)
        if local is not None and any("stopped answering" in (j.error or "") for j in jobs):
            print("ComfyUI log:\n" + local.log_tail(), file=sys.stderr)
    if runner.cancelled:
        return 130
    failed = [j for j in jobs if j.state == batch.FAILED]
    if failed:
        return 5 if all(j.no_image for j in failed) else 4
    return 0
