"""The one checkpoint registry (wplus_core.checkpoint_kinds, used through wplus_core.checkpoints):
each kind is recognised from a minimal key set and from the real layouts, a file of another kind is
refused by every loader with the same sentence naming what it is and where it belongs, and unknown
files are refused with what they hold."""
import warnings

import pytest
import torch

from wplus_core import WPlusError, load_e4e, load_wplus_adapter
from wplus_core.checkpoint_kinds import KINDS
from wplus_core.checkpoints import check_state_dict, describe, identify, kind_named
from wplus_core.restoration import PSFRGenerator, load_psfrgan

T = torch.zeros(2)

# the fewest keys that give each kind away (values do not matter to recognition)
MINIMAL = {
    "wplus_adapter": {"w_proj": {"norm.weight": torch.ones(768)}, "wplus_adapter": {"1.to_q_wplus.weight": T}},
    "ip_adapter": {"image_proj": {"proj.weight": T}, "ip_adapter": {"1.to_k_ip.weight": T}},
    "parsenet": {"encoder.0.conv2d.weight": T, "decoder.0.conv2d.weight": T, "out_mask_conv.conv2d.weight": T},
    "bisenet": {"cp.resnet.conv1.weight": T, "ffm.convblk.conv.weight": T},
    "retinaface_resnet50": {"body.conv1.weight": T, "BboxHead.0.conv1x1.weight": T},
    "retinaface_mobile0.25": {"body.stage1.0.0.weight": T, "ClassHead.0.conv1x1.weight": T},
    "psfrgan": {"const_input": T, "head.0.weight_orig": T, "img_out.weight_orig": T},
    "e4e": {"state_dict": {"encoder.input_layer.0.weight": T, "decoder.input.input": T}, "latent_avg": T},
    "e4e_encoder": {"input_layer.0.weight": T, "styles.0.convs.0.weight": T},
    "stylegan2": {"g_ema": {"style.1.weight": T}, "d": {"convs.0.0.weight": T}},
    "basicsr": {"params_ema": {"conv_body_first.weight": T}},
    "sd_checkpoint": {"model.diffusion_model.input_blocks.0.0.weight": T, "first_stage_model.decoder.conv_in.weight": T},
    "sd_unet": {"input_blocks.0.0.weight": T, "output_blocks.0.0.weight": T},
}
UNKNOWN = {"alpha.weight": T, "beta.bias": T}

# loader -> (the kind it loads, how to call it)
LOADERS = {"e4e": load_e4e, "psfrgan": load_psfrgan, "wplus_adapter": load_wplus_adapter}


def _refusal(load, data, path) -> str:
    torch.save(data, path)
    with pytest.raises(WPlusError) as info:
        load(path)
    message = str(info.value)
    assert str(path) in message, message
    return message


def test_every_kind_has_a_minimal_key_set():
    assert [k.name for k in KINDS] == list(MINIMAL), "a kind without a recognition test (or the reverse)"
    assert len({k.name for k in KINDS}) == len(KINDS)


@pytest.mark.parametrize("name", list(MINIMAL))
def test_each_kind_is_recognised_from_its_minimal_keys(name):
    assert identify(MINIMAL[name]).name == name
    assert identify({f"module.{k}": v for k, v in MINIMAL[name].items()}).name == name  # DataParallel
    kind = kind_named(name)
    sentence = describe(MINIMAL[name])
    assert sentence.startswith(f"It is {kind.title}") and sentence.endswith(f": {kind.home}."), sentence
    assert describe(MINIMAL[name], wanted=name) == ""  # its own loader hears nothing about it


def test_order_and_generic_keys():
    """ParseNet's encoder.*/decoder.* keys do not make it e4e; keys many nets share are not enough."""
    assert identify(MINIMAL["parsenet"]).name == "parsenet"
    assert identify(dict(MINIMAL["parsenet"], latent_avg=T)).name == "parsenet"
    for generic in ({"body.conv1.weight": T}, {"head.0.weight": T, "body.0.weight": T}, {"cp.x.weight": T},
                    {"input_blocks.0.0.weight": T}, {"input_layer.0.weight": T}, UNKNOWN, {}):
        assert identify(generic) is None, generic
    assert identify([1, 2]) is None and identify(torch.zeros(1)) is None


def test_real_layouts_are_recognised():
    from e4e_reference import official_checkpoint, random_e4e_weights
    from test_adapter import official_state_dict
    with torch.device("meta"):
        psfrgan = PSFRGenerator().state_dict()
    assert identify(psfrgan).name == "psfrgan"
    assert identify({"state_dict": psfrgan}).name == "psfrgan"
    assert identify(official_checkpoint(*random_e4e_weights(seed=1, size=64))).name == "e4e"
    sd = official_state_dict()
    assert identify(sd).name == "wplus_adapter"
    assert identify({f"{s}.{k}": v for s, part in sd.items() for k, v in part.items()}).name == "wplus_adapter"


def test_facexlib_layouts_are_recognised():
    pytest.importorskip("facexlib")
    from facexlib.detection.retinaface import RetinaFace
    from facexlib.parsing.bisenet import BiSeNet
    from facexlib.parsing.parsenet import ParseNet
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        models = {"parsenet": ParseNet(in_size=512, out_size=512, parsing_ch=19), "bisenet": BiSeNet(num_class=19),
                  "retinaface_resnet50": RetinaFace(network_name="resnet50", device="cpu"),
                  "retinaface_mobile0.25": RetinaFace(network_name="mobile0.25", device="cpu")}
    for name, model in models.items():
        state = model.state_dict()
        assert identify(state).name == name
        assert identify({f"module.{k}": v for k, v in state.items()}).name == name


def test_shapes_say_what_they_can():
    wide = {"w_proj.norm.weight": torch.ones(2048), "wplus_adapter.1.to_q_wplus.weight": T}
    assert "2048-wide tokens" in describe(wide) and describe(MINIMAL["wplus_adapter"]) == \
        f"It is {kind_named('wplus_adapter').title}: {kind_named('wplus_adapter').home}."
    e4e_256 = {f"decoder.to_rgbs.{i}.bias": T for i in range(6)}
    e4e_256.update({f"encoder.styles.{i}.linear.weight": T for i in range(14)}, latent_avg=T)
    assert "256 px StyleGAN2 (14 styles)" in describe(e4e_256)
    assert "256 px" in describe(e4e_256, wanted="e4e")
    with torch.device("meta"):
        sd = PSFRGenerator().state_dict()
    plain = {k[:-5] if k.endswith("_orig") else k: v for k, v in sd.items() if not k.endswith(("_u", "_v"))}
    assert "without spectral norm" in describe(plain, wanted="psfrgan")
    assert describe(sd, wanted="psfrgan") == ""


@pytest.mark.parametrize("found", list(MINIMAL))
def test_a_foreign_file_gets_one_message_from_every_loader(found, tmp_path):
    sentence = describe(MINIMAL[found])
    assert sentence.startswith("It is ")
    seen = 0
    for wanted, load in LOADERS.items():
        if wanted == found:
            continue
        path = tmp_path / f"{found}_for_{wanted}.pth"
        message = _refusal(load, MINIMAL[found], path)
        assert message.startswith(f"'{path}' is not {kind_named(wanted).title}. {sentence} Expected "), message
        seen += 1
    assert seen >= 2


@pytest.mark.parametrize("wanted", list(LOADERS))
def test_own_kind_is_never_called_foreign(wanted, tmp_path):
    """A damaged file of the loader's own kind gets the loader's precise refusal, not the registry's."""
    message = _refusal(LOADERS[wanted], MINIMAL[wanted], tmp_path / "damaged.pth")
    assert "It is " not in message and f"is not {kind_named(wanted).title}." not in message, message


@pytest.mark.parametrize("wanted", list(LOADERS))
def test_unknown_and_non_dict_files_are_refused_clearly(wanted, tmp_path):
    message = _refusal(LOADERS[wanted], UNKNOWN, tmp_path / "mystery.pth")
    assert "Its keys start with: alpha.weight, beta.bias." in message and "It is " not in message, message
    message = _refusal(LOADERS[wanted], torch.zeros(3), tmp_path / "tensor.pth")
    assert f"is not {kind_named(wanted).title}. It holds a Tensor, not a dict of weights." in message, message


def test_check_state_dict_names_the_foreign_kind_and_keeps_the_hint_otherwise():
    with torch.device("meta"):
        expected = PSFRGenerator().state_dict()
    with pytest.raises(WPlusError) as info:
        check_state_dict(dict(MINIMAL["bisenet"]), expected, "x.pth", "PSFRGAN", hint=lambda s: " HINT")
    message = str(info.value)
    assert describe(MINIMAL["bisenet"]) in message and "HINT" not in message and "missing" in message, message
    own = {k: v for k, v in expected.items() if not k.startswith("body.4.")}  # same kind, keys missing
    with pytest.raises(WPlusError) as info:
        check_state_dict(own, expected, "x.pth", "PSFRGAN", hint=lambda s: " HINT")
    assert "HINT" in str(info.value) and "It is " not in str(info.value)


def test_the_parser_and_detector_loaders_use_the_registry(tmp_path):
    pytest.importorskip("facexlib")
    from facexlib.parsing.bisenet import BiSeNet

    from wplus_core.detection.facexlib_retinaface import FacexlibRetinaFace
    from wplus_core.parsing import FaceParser
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        state = BiSeNet(num_class=19).state_dict()
    path = tmp_path / "parsing_parsenet.pth"
    torch.save(state, path)
    with pytest.raises(WPlusError) as info:
        FaceParser.from_file("parsenet", path)
    assert describe(state) in str(info.value) and str(path) in str(info.value)
    path = tmp_path / "detection_Resnet50_Final.pth"
    torch.save(MINIMAL["psfrgan"], path)
    with pytest.raises(WPlusError) as info:
        FacexlibRetinaFace.from_file("retinaface_resnet50", path)
    assert describe(MINIMAL["psfrgan"]) in str(info.value)
