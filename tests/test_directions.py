"""Editing directions: bundled data, the three official kinds with their exact formulas, user
files, sweeps, interpolation by token group and directions computed from latents."""
import csv
import hashlib
import math
import os

import numpy as np
import pytest
import torch

from wplus_core.directions import (BUNDLED_DIR, Direction, DirectionLibrary, direction_from_latents,
                                   edit, edit_sweep, interpolate, list_directions, load_direction,
                                   load_direction_file, load_direction_set, read_ganspace_presets,
                                   save_direction, sweep_strengths)
from wplus_core.errors import WPlusError
from wplus_core.latents import TOKEN_GROUPS

BUNDLED_FILES = (["interfacegan_directions/age.pt", "interfacegan_directions/smile.pt",
                  "interfacegan_directions/pose.pt", "gan_space/ffhq_pca.pt",
                  "gan_space/ganspace_configs.csv"])
LATENT_NAMES = ["age", "angle_horizontal", "angle_pitch", "beauty", "emotion_angry", "emotion_disgust",
                "emotion_easy", "emotion_fear", "emotion_happy", "emotion_sad", "emotion_surprise",
                "eyes_open", "face_shape", "gender", "glasses", "height", "race_black", "race_white",
                "race_yellow", "smile", "width"]


def _w(b=2, seed=0):
    g = torch.Generator().manual_seed(seed)
    return torch.randn(b, 18, 512, generator=g) * 0.5


def _sha(path):
    return hashlib.sha256(open(path, "rb").read()).hexdigest()


def _pca(data_dir=BUNDLED_DIR):
    return torch.load(os.path.join(data_dir, "gan_space", "ffhq_pca.pt"), map_location="cpu", weights_only=True)


# ------------------------------------------------------------------------------- bundled data

def test_bundled_data_is_complete_small_and_licensed():
    for rel in BUNDLED_FILES + [f"latent_directions/{n}.npy" for n in LATENT_NAMES]:
        assert os.path.isfile(os.path.join(BUNDLED_DIR, rel)), rel
    total = sum(os.path.getsize(os.path.join(d, f)) for d, _, fs in os.walk(BUNDLED_DIR) for f in fs)
    assert total < 5 * 1024 * 1024
    notice = open(os.path.join(BUNDLED_DIR, "NOTICE.md"), encoding="utf-8").read()
    for word in ("S-Lab License 1.0", "non-commercial", "csxmli2016/w-plus-adapter", "e4e",
                 "GANSpace", "InterFaceGAN"):
        assert word in notice
    # NOTICE lists a checksum for every shipped data file, and they match.
    for d, _, fs in os.walk(BUNDLED_DIR):
        for f in fs:
            if f != "NOTICE.md":
                rel = os.path.relpath(os.path.join(d, f), BUNDLED_DIR).replace(os.sep, "/")
                assert f"{_sha(os.path.join(d, f))}  {rel}" in notice, rel


def test_library_lists_every_bundled_direction():
    names = list_directions()
    assert names[:3] == ["interfacegan/age", "interfacegan/pose", "interfacegan/smile"]
    assert [n for n in names if n.startswith("latent/")] == [f"latent/{n}" for n in LATENT_NAMES]
    assert len([n for n in names if n.startswith("ganspace/")]) == 42
    assert len(names) == len(set(names)) == 3 + 21 + 42
    for n in names:
        d = load_direction(n)
        assert d.name == n and d.vector.shape == (18, 512) and d.vector.dtype == torch.float32
        assert torch.isfinite(d.vector).all()


def test_bundled_copies_equal_the_reference(reference_dir):
    ref = reference_dir / "directions"
    for rel in [r for r in BUNDLED_FILES if "pose" not in r] + [f"latent_directions/{n}.npy" for n in LATENT_NAMES]:
        assert _sha(ref / rel) == _sha(os.path.join(BUNDLED_DIR, rel)), rel
    # pose.pt is entry 1 of the training-time set (all 18 rows equal).
    att = torch.load(ref / "att_direction_scale.pth", map_location="cpu", weights_only=True)
    pose = torch.load(os.path.join(BUNDLED_DIR, "interfacegan_directions", "pose.pt"), weights_only=True)
    assert pose.shape == (1, 512)
    assert torch.equal(att[1][0], pose.expand(18, 512))


def test_training_set_is_read_and_labelled(reference_dir):
    entries = load_direction_set(reference_dir / "directions" / "att_direction_scale.pth")
    assert len(entries) == 17
    labels = [e.name.split(" ", 1)[1] if " " in e.name else None for e in entries]
    assert labels[:3] == ["(interfacegan/age)", "(interfacegan/pose)", "(interfacegan/smile)"]
    assert None not in labels, "every entry equals a bundled direction"
    assert labels[4] == labels[15] == "(latent/emotion_angry)"


def test_training_set_file_in_user_folder_gives_a_clear_error(tmp_path):
    torch.save([torch.zeros(1, 18, 512), torch.ones(1, 18, 512)], tmp_path / "set.pth")
    with pytest.raises(WPlusError, match="set.pth.*list of 2.*load_direction_set"):
        load_direction_file(tmp_path / "set.pth")


# ------------------------------------------------------------------------------ official kinds

@pytest.mark.parametrize("source", ["bundled", "reference"])
@pytest.mark.parametrize("att", ["age", "smile"])
def test_interfacegan_edit_is_w_plus_s_d_on_all_layers(source, att, request):
    folder = BUNDLED_DIR if source == "bundled" else str(request.getfixturevalue("reference_dir") / "directions")
    path = os.path.join(folder, "interfacegan_directions", f"{att}.pt")
    d_raw = torch.load(path, map_location="cpu", weights_only=True)
    assert d_raw.shape == (1, 512)
    lib = DirectionLibrary(data_dir=folder)
    w = _w()
    for s in (-3.0, 0.0, 2.5):
        out = lib.load(f"interfacegan/{att}").apply(w, s)
        assert torch.allclose(out, w + s * d_raw.view(1, 1, 512), atol=1e-6)
    assert (edit(w, lib.load(f"interfacegan/{att}"), 2.0) - w).abs().amax(-1).gt(0).all(), "all 18 layers move"


def test_latent_direction_edit_is_w_plus_s_d(reference_dir):
    w = _w()
    for name in ("age", "emotion_happy", "glasses"):
        raw = torch.from_numpy(np.load(reference_dir / "directions" / "latent_directions" / f"{name}.npy"))
        assert raw.shape == (18, 512) and raw.dtype == torch.float64
        out = edit(w, f"latent/{name}", -1.5)
        assert torch.allclose(out.double(), w.double() - 1.5 * raw, atol=1e-5)


def test_ganspace_preset_table_parsed_completely():
    path = os.path.join(BUNDLED_DIR, "gan_space", "ganspace_configs.csv")
    with open(path, newline="") as f:
        rows = [r for r in csv.reader(f, delimiter="\t") if r]
    presets = read_ganspace_presets(path)
    assert len(rows) == len(presets) == 42
    for name, idx, start, end, strength in rows:
        p = presets[name]
        assert (p.pca_index, p.layer_start, p.layer_end, p.strength) == (int(idx), int(start), int(end), float(strength))
        d = load_direction(f"ganspace/{name}")
        assert d.layers == (int(start), int(end)) and d.default_strength == float(strength)
        assert d.component.index == int(idx)
    assert presets["overexposed"].layer_end == 18 and presets["disgusted"].strength == -30


def test_ganspace_relative_mode():
    pca = _pca()
    d = load_direction("ganspace/eye_openness")  # component 54, layers [7, 8)
    w = _w(3)
    assert torch.equal(d.apply(w, 0.0), w), "relative s=0 is the identity"
    out = d.apply(w, 4.0)
    changed = (out - w).abs().amax(-1).gt(0)
    assert changed[:, 7].all() and changed.sum() == 3, "only layer 7 of each sample moves"
    step = 4.0 * pca["std"][54] * pca["comp"][54].view(512)
    assert torch.allclose(out[:, 7] - w[:, 7], step.expand(3, 512), atol=1e-5)
    # A custom range overrides the preset's.
    out = d.apply(w, 1.0, layers=(2, 5))
    changed = (out - w).abs().amax(-1).gt(0)[0]
    assert changed.nonzero().flatten().tolist() == [2, 3, 4]


def _reference_absolute(pca, latent, idx, start, end, strength):
    """The official formula, written out independently (one latent (18,512))."""
    centered = latent[0] - pca["mean"].view(512)
    comp = pca["comp"][idx].view(512)
    coord = float(sum(centered.double() * comp.double()) / float(pca["std"][idx]))
    delta = (strength - coord) * comp.double() * float(pca["std"][idx])
    out = latent.double().clone()
    for layer in range(start, end):
        out[layer] += delta
    return out


def test_ganspace_absolute_mode_matches_the_reference_formula():
    pca = _pca()
    w = _w(2, seed=3) + pca["mean"].view(1, 1, 512)
    for name in ("big_smile", "face_roundness", "overexposed"):
        d = load_direction(f"ganspace/{name}")
        i, (a, b) = d.component.index, d.layers
        for s in (0.0, 5.0, -20.0):
            out = d.apply(w, s, mode="absolute")
            for k in range(2):
                ref = _reference_absolute(pca, w[k], i, a, b, s)
                assert torch.allclose(out[k].double(), ref, atol=1e-4)
            moved = (out - w).abs().amax(-1).gt(0)
            assert moved[:, a:b].all() and not moved[:, :a].any() and not moved[:, b:].any()


def test_ganspace_absolute_zero_is_not_identity_and_sets_the_coordinate():
    pca = _pca()
    w = _w(2, seed=5)
    d = load_direction("ganspace/face_roundness")  # layers [0, 5): includes layer 0
    comp, std = pca["comp"][d.component.index].view(512), pca["std"][d.component.index]
    coord = ((w[:, 0] - pca["mean"]) @ comp) / std
    assert coord.abs().min() > 1e-3
    out = d.apply(w, 0.0, mode="absolute")
    assert not torch.allclose(out, w)
    assert torch.allclose(((out[:, 0] - pca["mean"]) @ comp) / std, torch.zeros(2), atol=1e-4)
    out = d.apply(w, 7.0, mode="absolute")
    assert torch.allclose(((out[:, 0] - pca["mean"]) @ comp) / std, torch.full((2,), 7.0), atol=1e-3)


def test_absolute_mode_only_for_ganspace_and_bad_arguments():
    w = _w(1)
    with pytest.raises(WPlusError, match="absolute mode exists only for GANSpace"):
        edit(w, "interfacegan/age", 1.0, mode="absolute")
    with pytest.raises(WPlusError, match="mode"):
        edit(w, "interfacegan/age", 1.0, mode="sideways")
    for layers in ((5, 5), (-1, 4), (0, 19), "all"):
        with pytest.raises(WPlusError, match="layer range"):
            edit(w, "interfacegan/age", 1.0, layers=layers)
    for s in (float("nan"), "x", []):
        with pytest.raises(WPlusError, match="strength"):
            edit(w, "interfacegan/age", s)
    with pytest.raises(WPlusError, match="W\\+ latent to edit.*\\(1, 512\\)"):
        edit(torch.zeros(1, 512), "interfacegan/age", 1.0)
    bad = w.clone(); bad[0, 0, 0] = float("inf")
    with pytest.raises(WPlusError, match="NaN or Inf"):
        edit(bad, "interfacegan/age", 1.0)
    with pytest.raises(WPlusError, match="unknown direction 'interfacegan/agee'.*interfacegan/age"):
        load_direction("interfacegan/agee")
    with pytest.raises(WPlusError, match="component 80 does not exist"):
        load_direction("ganspace/pc80")


def test_ganspace_components_by_index():
    pca = _pca()
    d = load_direction("ganspace/pc0")
    assert d.layers == (0, 18) and d.component.index == 0
    assert torch.allclose(d.vector, (pca["std"][0] * pca["comp"][0]).expand(18, 512))


# ------------------------------------------------------------------- dtype, device and batches

@pytest.mark.parametrize("dtype", [torch.float16, torch.bfloat16])
def test_half_precision_in_half_out_with_float32_maths(dtype):
    w32 = _w(2)
    w = w32.to(dtype)
    for name, mode in (("latent/smile", "relative"), ("ganspace/big_smile", "absolute")):
        d = load_direction(name)
        out = d.apply(w, 3.0, mode=mode)
        assert out.dtype == dtype and out.device == w.device
        assert torch.equal(out, d.apply(w.float(), 3.0, mode=mode).to(dtype))
    out = interpolate(w, w32, 0.5)
    assert out.dtype == dtype


def test_inputs_are_never_modified():
    w = _w(2)
    keep = w.clone()
    edit(w, "interfacegan/age", 5.0)
    edit(w, "ganspace/big_smile", 5.0, mode="absolute")
    edit_sweep(w, "latent/age", [1, 2])
    interpolate(w, torch.zeros(18, 512), 0.3)
    assert torch.equal(w, keep)


def test_per_sample_strengths_broadcast_b_vs_1():
    d = load_direction("interfacegan/smile")
    w = _w(2)
    out = d.apply(w, [1.0, -2.0])
    assert torch.allclose(out[0], d.apply(w[:1], 1.0)[0]) and torch.allclose(out[1], d.apply(w[1:], -2.0)[0])
    out = d.apply(w[:1], torch.tensor([0.0, 1.0, 2.0]))  # one latent, three strengths
    assert out.shape == (3, 18, 512) and torch.equal(out[0], w[0])
    with pytest.raises(WPlusError, match="batch 2.*3"):
        d.apply(w, [1.0, 2.0, 3.0])


def test_2d_input_gives_batch_of_one():
    assert edit(torch.zeros(18, 512), "interfacegan/age", 1.0).shape == (1, 18, 512)


# --------------------------------------------------------------------------------------- sweep

def test_sweep_includes_both_ends():
    assert sweep_strengths(-4, 4, 5) == [-4.0, -2.0, 0.0, 2.0, 4.0]  # range(-4, 4, 2) misses +4
    s = sweep_strengths(-3, 7, 4)
    assert s[0] == -3 and s[-1] == 7 and len(s) == 4
    assert sweep_strengths(2, 2, 1) == [2.0]
    for bad in (0, 2.5, -1):
        with pytest.raises(WPlusError, match="count"):
            sweep_strengths(0, 1, bad)


def test_edit_sweep_is_sample_major_and_ends_inclusive():
    d = load_direction("interfacegan/age")
    w = _w(2)
    strengths = sweep_strengths(-4, 4, 5)
    out = edit_sweep(w, d, strengths)
    assert out.shape == (10, 18, 512)
    for b in range(2):
        for k, s in enumerate(strengths):
            assert torch.equal(out[b * 5 + k], d.apply(w[b:b + 1], s)[0])
    assert torch.allclose(out[4], w[0] + 4.0 * d.vector, atol=1e-6), "the +L end is present"
    ab = edit_sweep(w, "ganspace/big_smile", [0.0, 3.0], mode="absolute")
    assert torch.equal(ab[3], load_direction("ganspace/big_smile").apply(w[1:], 3.0, mode="absolute")[0])


# ------------------------------------------------------------------------------- interpolation

def test_interpolation_endpoints_and_midpoint():
    a, b = _w(2, 1), _w(2, 2)
    assert torch.equal(interpolate(a, b, 0.0), a)
    assert torch.equal(interpolate(a, b, 1.0), b)
    assert torch.equal(interpolate(a, b, (1, 1, 1, 1)), b)
    assert torch.allclose(interpolate(a, b, 0.25), 0.75 * a + 0.25 * b, atol=1e-6)
    assert torch.allclose(interpolate(a, b, 1.5), a + 1.5 * (b - a), atol=1e-5), "extrapolation"


@pytest.mark.parametrize("group", range(4))
def test_group_weights_touch_only_their_layers(group):
    a, b = _w(1, 1), _w(1, 2)
    weights = [0.0] * 4
    weights[group] = 0.7
    out = interpolate(a, b, weights)
    start, end = TOKEN_GROUPS[group]
    for layer in range(18):
        if start <= layer < end:
            assert torch.allclose(out[0, layer], 0.3 * a[0, layer] + 0.7 * b[0, layer], atol=1e-6)
        else:
            assert torch.equal(out[0, layer], a[0, layer])


def test_per_layer_weights_and_errors():
    a, b = _w(1, 1), _w(1, 2)
    t = torch.linspace(0, 1, 18)
    out = interpolate(a, b, t)
    assert torch.equal(out[0, 0], a[0, 0]) and torch.equal(out[0, 17], b[0, 17])
    with pytest.raises(WPlusError, match="1 number, 4.*18"):
        interpolate(a, b, (0.1, 0.2))
    with pytest.raises(WPlusError, match="finite"):
        interpolate(a, b, float("nan"))
    with pytest.raises(WPlusError, match="W\\+ latent B"):
        interpolate(a, torch.zeros(1, 17, 512), 0.5)


def test_interpolation_batch_broadcasting():
    a, b = _w(3, 1), _w(1, 2)
    out = interpolate(a, b, 1.0)
    assert out.shape == (3, 18, 512) and torch.equal(out, b.expand(3, 18, 512))
    out = interpolate(b, a, 0.0)
    assert out.shape == (3, 18, 512) and torch.equal(out, b.expand(3, 18, 512))
    with pytest.raises(WPlusError, match="batch 3.*2"):
        interpolate(a, _w(2), 0.5)


# ------------------------------------------------------------------------- computed directions

def test_direction_from_latents_recovers_a_planted_direction():
    g = torch.Generator().manual_seed(7)
    planted = torch.zeros(18, 512)
    planted[4:8] = torch.randn(4, 512, generator=g)  # lives in token group 1 only
    a = torch.randn(64, 18, 512, generator=g) * 0.5
    b = torch.randn(64, 18, 512, generator=g) * 0.5 + 3.0 * planted  # other identities, same trait
    d = direction_from_latents(a, b)
    assert d.vector.shape == (18, 512) and d.kind == "computed"
    cos = torch.nn.functional.cosine_similarity(d.vector.flatten(), planted.flatten(), dim=0)
    assert cos > 0.95
    assert math.isclose(float(d.vector.norm()), math.sqrt(18), rel_tol=1e-5)
    # Paired sets give the planted direction exactly; sign goes from a to b.
    d = direction_from_latents(a, a + 3.0 * planted, normalize="none")
    assert torch.allclose(d.vector, 3.0 * planted, atol=1e-5)
    d = direction_from_latents(a + 3.0 * planted, a)
    assert torch.allclose(d.vector, -planted * math.sqrt(18) / planted.norm(), atol=1e-5)
    d = direction_from_latents(a, a + 3.0 * planted, normalize="per_layer")
    norms = d.vector.norm(dim=1)
    assert torch.allclose(norms[4:8], torch.ones(4), atol=1e-5) and norms[:4].eq(0).all() and norms[8:].eq(0).all()


def test_direction_from_latents_inputs():
    a = [torch.randn(18, 512), torch.randn(1, 18, 512)]
    d = direction_from_latents(a, torch.randn(2, 18, 512))
    out = d.apply(torch.zeros(18, 512), 1.0)
    assert out.shape == (1, 18, 512)
    with pytest.raises(WPlusError, match="same mean"):
        direction_from_latents(a[1], a[1].clone())
    with pytest.raises(WPlusError, match="W\\+ latents B"):
        direction_from_latents(a, torch.randn(2, 512))
    with pytest.raises(WPlusError, match="normalize"):
        direction_from_latents(a, a, normalize="max")


# ---------------------------------------------------------------------------------- user files

def _write(path, t):
    if path.endswith(".npy"):
        np.save(path, t.numpy())
    elif path.endswith(".safetensors"):
        from safetensors.torch import save_file
        save_file({"direction": t.contiguous()}, path)
    else:
        torch.save(t, path)


@pytest.mark.parametrize("ext", [".pt", ".npy", ".safetensors"])
@pytest.mark.parametrize("shape", [(512,), (1, 512), (18, 512), (1, 18, 512)])
def test_user_direction_files_of_accepted_shapes(tmp_path, ext, shape):
    t = torch.randn(shape, dtype=torch.float64 if ext == ".npy" else torch.float32)
    path = str(tmp_path / f"mine{ext}")
    _write(path, t)
    d = load_direction_file(path)
    assert d.vector.shape == (18, 512) and d.vector.dtype == torch.float32 and d.kind == "user"
    expected = t.float().reshape(-1, 512).expand(18, 512)
    assert torch.equal(d.vector, expected)
    w = _w(1)
    assert torch.allclose(edit(w, path, 2.0), w + 2.0 * expected, atol=1e-6)


@pytest.mark.parametrize("ext", [".pt", ".npy", ".safetensors"])
@pytest.mark.parametrize("shape", [(511,), (2, 512), (17, 512), (18, 512, 1), (2, 18, 512), (18, 1, 512)])
def test_user_direction_files_of_bad_shapes(tmp_path, ext, shape):
    path = str(tmp_path / f"bad{ext}")
    _write(path, torch.randn(shape))
    shape_txt = str(tuple(shape)).replace("(", r"\(").replace(")", r"\)")
    with pytest.raises(WPlusError, match=rf"bad{ext}.*shape {shape_txt}.*\(512,\), \(1,512\), \(18,512\)"):
        load_direction_file(path)


@pytest.mark.parametrize("bad", [float("nan"), float("inf")])
def test_user_direction_non_finite(tmp_path, bad):
    t = torch.randn(1, 512)
    t[0, 3] = bad
    path = str(tmp_path / "nf.pt")
    torch.save(t, path)
    with pytest.raises(WPlusError, match="nf.pt.*NaN or Inf"):
        load_direction_file(path)


def test_user_folder_listing_loading_and_saving(tmp_path):
    (tmp_path / "sub").mkdir()
    torch.save(torch.randn(512), tmp_path / "sub" / "curly.pt")
    np.save(tmp_path / "wide.npy", np.random.default_rng(0).standard_normal((18, 512)))
    (tmp_path / "readme.txt").write_text("not a direction")
    lib = DirectionLibrary(user_dirs=[tmp_path, tmp_path / "missing"])
    names = lib.names()
    assert names[-2:] == ["user/sub/curly", "user/wide"]
    assert names[:3] == ["interfacegan/age", "interfacegan/pose", "interfacegan/smile"]
    assert lib.load("user/sub/curly").kind == "user"
    computed = direction_from_latents(_w(4, 1), _w(4, 2), name="mine")
    save_direction(tmp_path / "mine.safetensors", computed)
    with pytest.raises(WPlusError, match="already exists"):
        save_direction(tmp_path / "mine.safetensors", computed)
    assert "user/mine" in lib.names()
    assert torch.equal(lib.load("user/mine").vector, computed.vector)
    assert torch.equal(lib.load(str(tmp_path / "mine.safetensors")).vector, computed.vector)


def test_direction_object_is_usable_directly():
    v = torch.zeros(18, 512)
    v[3, 0] = 1.0
    d = Direction("unit", "user", v, layers=(2, 6))
    out = d.apply(torch.zeros(1, 18, 512), 2.0)
    assert out[0, 3, 0] == 2.0 and out.abs().sum() == 2.0
    assert d.apply(torch.zeros(1, 18, 512), 2.0, layers=(4, 18)).abs().sum() == 0
