"""W+ adapter: official layout loading, projection, reference attention and its folded fast form."""
import os
import pickle

import pytest
import torch
from safetensors.torch import save_file

from wplus_core import WPlusError, load_wplus_adapter
from wplus_core.adapter import SITES, FoldedSite, adapter_state_dict, wplus_attention

FORMATS = os.path.join(os.path.dirname(__file__), "..", "..", "shared", "formats", "wplus_adapter.bin.tsv")


def official_state_dict(seed=0, std=0.02):
    """Random weights in the exact official layout (torch.save({'w_proj':..., 'wplus_adapter':...}))."""
    g = torch.Generator().manual_seed(seed)
    r = lambda *s: torch.randn(*s, generator=g) * std
    w_proj = {f"proj_{i}.weight": r(768, 512 * n) for i, n in enumerate((4, 4, 4, 6))}
    w_proj["norm.weight"] = 1 + r(768)
    w_proj["norm.bias"] = r(768)
    ada = {}
    for s in SITES:
        ada[f"{s.index}.to_k_wplus.weight"] = r(s.hidden, 768)
        ada[f"{s.index}.to_v_wplus.weight"] = r(s.hidden, 768)
        ada[f"{s.index}.to_q_wplus.weight"] = r(s.hidden, s.hidden)
    return {"w_proj": w_proj, "wplus_adapter": ada}


@pytest.fixture(scope="module")
def adapter_file(tmp_path_factory):
    p = tmp_path_factory.mktemp("wplus") / "wplus_adapter.bin"
    torch.save(official_state_dict(), p)
    return p


def test_layout_matches_official_table():
    if not os.path.exists(FORMATS):
        pytest.skip("shared/formats not present")
    rows = [l.split("\t") for l in open(FORMATS).read().splitlines() if l and not l.startswith("#")]
    sd = official_state_dict()
    got = {(sec, k): "x".join(map(str, t.shape)) for sec in sd for k, t in sd[sec].items()}
    want = {(r[0], r[1]): r[2] for r in rows}
    assert got == want


def test_load_bin_and_safetensors_agree(adapter_file, tmp_path):
    a = load_wplus_adapter(adapter_file)
    st = tmp_path / "wplus_adapter.safetensors"
    save_file(adapter_state_dict(a), str(st))
    b = load_wplus_adapter(st)
    w = torch.randn(2, 18, 512)
    assert torch.equal(a.project(w), b.project(w))
    assert len(a.sites) == 16 and ("middle", 0) in a.sites


def test_projection_matches_reference_maths(adapter_file):
    sd = official_state_dict()["w_proj"]
    a = load_wplus_adapter(adapter_file)
    w = torch.randn(3, 18, 512)
    toks = []
    for i, (s, e) in enumerate(((0, 4), (4, 8), (8, 12), (12, 18))):
        toks.append(w[:, s:e].reshape(3, -1) @ sd[f"proj_{i}.weight"].T)
    ref = torch.nn.functional.layer_norm(torch.stack(toks, 1), (768,), sd["norm.weight"], sd["norm.bias"])
    torch.testing.assert_close(a.project(w), ref, rtol=1e-5, atol=1e-5)
    # uncond = projection of a zero W+, which is NOT zero tokens (LayerNorm bias)
    u = a.uncond_tokens()
    assert u.shape == (1, 4, 768)
    torch.testing.assert_close(u, sd["norm.bias"].expand(1, 4, 768))


@pytest.mark.parametrize("site_index", [0, 8, 15])
def test_folded_branch_equals_reference(adapter_file, site_index):
    a = load_wplus_adapter(adapter_file)
    s = SITES[site_index]
    sw = a.sites[s.block]
    torch.manual_seed(1)
    text_out = torch.randn(2, 64, s.hidden)
    tokens = a.project(torch.randn(2, 18, 512))
    ref = wplus_attention(text_out, sw, tokens, heads=8, scale=0.7)
    fold = FoldedSite(sw, tokens, heads=8, scale=0.7)
    got = text_out + fold.branch(text_out)
    assert (got - ref).abs().max() / ref.abs().max() < 1e-5
    # one token set shared by the batch
    fold1 = FoldedSite(sw, tokens[:1], heads=8, scale=0.7).select(0)
    ref1 = wplus_attention(text_out, sw, tokens[:1], heads=8, scale=0.7)
    assert (text_out + fold1.branch(text_out) - ref1).abs().max() / ref1.abs().max() < 1e-5


def test_ip_adapter_file_is_refused(tmp_path):
    p = tmp_path / "ip-adapter_sd15.bin"
    torch.save({"image_proj": {"proj.weight": torch.zeros(3072, 1024)},
                "ip_adapter": {"1.to_k_ip.weight": torch.zeros(320, 768)}}, p)
    with pytest.raises(WPlusError, match="IP-Adapter"):
        load_wplus_adapter(p)


def test_sdxl_sized_file_is_refused(tmp_path):
    sd = official_state_dict()
    sd["w_proj"]["norm.weight"] = torch.ones(2048)
    p = tmp_path / "wplus_sdxl.bin"
    torch.save(sd, p)
    with pytest.raises(WPlusError, match="2048"):
        load_wplus_adapter(p)
    sd = official_state_dict()
    for i in range(33, 141, 2):
        sd["wplus_adapter"][f"{i}.to_k_wplus.weight"] = torch.zeros(640, 2048)
    torch.save(sd, p)
    with pytest.raises(WPlusError, match="SDXL"):
        load_wplus_adapter(p)


def test_wrong_site_shape_is_refused(tmp_path):
    sd = official_state_dict()
    sd["wplus_adapter"]["1.to_k_wplus.weight"] = torch.zeros(320, 1024)
    p = tmp_path / "bad.bin"
    torch.save(sd, p)
    with pytest.raises(WPlusError, match="site 1 "):
        load_wplus_adapter(p)


def test_truncated_and_empty_files_are_refused(adapter_file, tmp_path):
    data = open(adapter_file, "rb").read()
    cut = tmp_path / "cut.bin"
    cut.write_bytes(data[: len(data) // 2])
    with pytest.raises(WPlusError, match="cut.bin"):
        load_wplus_adapter(cut)
    empty = tmp_path / "empty.bin"
    empty.write_bytes(b"")
    with pytest.raises(WPlusError, match="empty"):
        load_wplus_adapter(empty)
    st = tmp_path / "cut.safetensors"
    save_file({"w_proj.norm.weight": torch.ones(768)}, str(st))
    st.write_bytes(st.read_bytes()[:-100])
    with pytest.raises(WPlusError, match="cut.safetensors"):
        load_wplus_adapter(st)


class _RunsCode:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (open, (self.marker, "w"))


def test_pickle_that_runs_code_is_refused(tmp_path):
    marker = tmp_path / "pwned"
    p = tmp_path / "evil.bin"
    with open(p, "wb") as f:
        pickle.dump({"w_proj": _RunsCode(str(marker))}, f)
    with pytest.raises(WPlusError, match="refused"):
        load_wplus_adapter(p)
    assert not marker.exists()


def test_bad_wplus_inputs(adapter_file):
    a = load_wplus_adapter(adapter_file)
    with pytest.raises(WPlusError, match="shape"):
        a.project(torch.zeros(1, 14, 512))
    w = torch.zeros(1, 18, 512)
    w[0, 3, 7] = float("nan")
    with pytest.raises(WPlusError, match="NaN"):
        a.project(w)
