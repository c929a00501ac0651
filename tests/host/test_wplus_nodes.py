"""W+ latent nodes inside the real host (folder_paths, node classes as ComfyUI calls them)."""
import os

import pytest
import torch

from tests.host.v3 import inputs, options, run, ui


@pytest.fixture(scope="module")
def nodes(pack_nodes):
    return pack_nodes


def test_registered_keys_and_display_names(pack_nodes, object_info_of_pack):
    keys = set(pack_nodes)
    assert {"ApplyWPlusAdapter", "WPlusAdapterLoader", "WPlusEdit", "WPlusInterpolate", "WPlusSave", "WPlusLoad"} <= keys
    assert "FaceAlign" not in keys  # namespaced: a bare key collides with other face packs
    assert all(info["display_name"].startswith("W+") for info in object_info_of_pack.values())
    for cls in pack_nodes.values():
        spec = inputs(cls)
        for kind, group in spec.items():
            if kind == "hidden":  # filled by ComfyUI (UNIQUE_ID...), never shown to the user
                continue
            for name, (typ, *opts) in group.items():
                assert opts and "tooltip" in opts[0], f"{cls.__name__}.{name} has no tooltip"


def test_edit_sweep_is_one_batch_with_both_ends(nodes, pack):
    core = pack.wplus_core.directions
    w = torch.randn(2, 18, 512)
    (out,) = run(nodes["WPlusEdit"], w, "interfacegan/smile", "-4..4/5", -1, -1, "relative")
    assert out.shape == (10, 18, 512)
    d = core.load_direction("interfacegan/smile")
    torch.testing.assert_close(out[4], w[0] + 4 * d.vector)
    torch.testing.assert_close(out[5], w[1] - 4 * d.vector)
    (one,) = run(nodes["WPlusEdit"], w[:1], "ganspace/big_smile", "3", 2, 5, "relative")
    assert torch.equal(one[0, :2], w[0, :2]) and not torch.equal(one[0, 2:5], w[0, 2:5])
    assert torch.equal(one[0, 5:], w[0, 5:])


def test_bad_strengths_and_wrong_shape_are_clear(nodes, pack):
    err = pack.wplus_core.errors.WPlusError
    with pytest.raises(err, match="strengths 'smile' is not understood"):
        run(nodes["WPlusEdit"], torch.randn(1, 18, 512), "interfacegan/age", "smile", -1, -1, "relative")
    with pytest.raises(err, match=r"shape \(1, 16, 512\)"):
        run(nodes["WPlusEdit"], torch.randn(1, 16, 512), "interfacegan/age", "1", -1, -1, "relative")


def test_interpolate_groups(nodes):
    a, b = torch.zeros(1, 18, 512), torch.ones(1, 18, 512)
    (m,) = run(nodes["WPlusInterpolate"], a, b, 0.5, 1.0, -1.0, -1.0, 0.0)
    assert torch.equal(m[0, :4], b[0, :4]) and torch.allclose(m[0, 4:12], torch.full((8, 512), 0.5))
    assert torch.equal(m[0, 12:], a[0, 12:])


def test_save_never_overwrites_and_load_round_trips(nodes, pack, tmp_path, monkeypatch):
    import folder_paths
    monkeypatch.setattr(folder_paths, "output_directory", str(tmp_path))
    w = torch.randn(1, 18, 512)
    first = ui(nodes["WPlusSave"], w, "wplus/face")["text"][0]
    second = ui(nodes["WPlusSave"], w * 2, "wplus/face")["text"][0]
    assert first != second and os.path.isfile(tmp_path / first) and os.path.isfile(tmp_path / second)
    loaded, meta = pack.wplus_core.latents.load_wplus(str(tmp_path / first))
    assert torch.equal(loaded, w) and meta.get("pack_version")
    with pytest.raises(pack.wplus_core.errors.WPlusError):
        run(nodes["WPlusSave"], w, "../escape")


@pytest.fixture
def wplus_folder(tmp_path, monkeypatch):
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "wplus", ([str(tmp_path)], {".bin", ".safetensors"}))
    return tmp_path


def test_adapter_loader_lists_files_and_official_names(nodes, wplus_folder):
    from test_adapter import official_state_dict
    torch.save(official_state_dict(), wplus_folder / "my_adapter.bin")
    choices = options(nodes["WPlusAdapterLoader"], "adapter_name")
    assert {"my_adapter.bin", "wplus_adapter.bin", "wplus_adapter_stage1.bin"} <= set(choices)
    (adapter,) = run(nodes["WPlusAdapterLoader"], "my_adapter.bin")
    assert adapter.project(torch.zeros(1, 18, 512)).shape == (1, 4, 768)


def test_missing_official_file_offline_names_file_folder_url(nodes, pack, wplus_folder, monkeypatch):
    monkeypatch.setenv("WPLUS_OFFLINE", "1")
    with pytest.raises(pack.wplus_core.errors.WPlusError) as info:
        run(nodes["WPlusAdapterLoader"], "wplus_adapter.bin")
    msg = str(info.value)
    assert "wplus_adapter.bin" in msg and str(wplus_folder) in msg
    assert "https://github.com/csxmli2016/w-plus-adapter/releases/download/v1/wplus_adapter.bin" in msg
    assert not list(wplus_folder.iterdir())  # nothing partial left behind


def test_each_loader_lists_only_its_own_kind(nodes, tmp_path, monkeypatch):
    """models/wplus holds directions/ and latents/ (sub-folders of other kinds): ComfyUI lists a
    folder recursively, but the W+ Adapter Loader offers adapters only, Load W+ latents only."""
    import folder_paths
    wplus, directions, latents = tmp_path / "wplus", tmp_path / "wplus" / "directions", tmp_path / "wplus" / "latents"
    for folder, name in ((wplus, "my_adapter.bin"), (wplus / "sub", "other_adapter.safetensors"),
                         (directions, "my_direction.pt"), (latents, "face_00001.safetensors")):
        folder.mkdir(parents=True, exist_ok=True)
        (folder / name).write_bytes(b"x")
    exts = {".bin", ".pt", ".pth", ".safetensors", ".npy"}
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "wplus", ([str(wplus)], set(exts)))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "wplus_directions", ([str(directions)], set(exts)))
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "wplus_latents", ([str(latents)], set(exts)))
    # what ComfyUI itself would list: everything under models/wplus
    assert any(f.startswith("directions") for f in folder_paths.get_filename_list("wplus"))
    adapters = options(nodes["WPlusAdapterLoader"], "adapter_name")
    assert set(adapters) == {"my_adapter.bin", os.path.join("sub", "other_adapter.safetensors"),
                             "wplus_adapter.bin", "wplus_adapter_stage1.bin"}
    latent_files = options(nodes["WPlusLoad"], "latent_file")
    assert latent_files == ["face_00001.safetensors"]


def test_load_reruns_when_the_file_changes(nodes, pack, tmp_path, monkeypatch):
    """W+ Load's fingerprint (ComfyUI reruns the node when it changes) is the file's mtime."""
    import folder_paths
    monkeypatch.setitem(folder_paths.folder_names_and_paths, "wplus_latents", ([str(tmp_path)], {".safetensors"}))
    w = torch.randn(1, 18, 512)
    pack.wplus_core.latents.save_wplus(str(tmp_path / "a.safetensors"), w, {})
    fingerprint = nodes["WPlusLoad"].fingerprint_inputs
    assert fingerprint(latent_file="a.safetensors") == os.path.getmtime(tmp_path / "a.safetensors")
    assert fingerprint(latent_file="gone.safetensors") == "gone.safetensors"
    (loaded,) = run(nodes["WPlusLoad"], "a.safetensors")
    assert torch.equal(loaded, w)
