"""The command line's pure parts (no ComfyUI): filling workflow 1 from the options, the model files it
needs and the report when they are missing, never overwriting earlier images."""
from types import SimpleNamespace

from cli import run, workflows
from cli.comfy_server import describe_rejection

OPTS = ("seed", "steps", "cfg", "width", "height", "batch", "weight", "start_at", "checkpoint", "face_index")


def args(**kw):
    base = dict({k: None for k in OPTS}, prompt="a photo of a person", negative=workflows.NEGATIVE, no_freeu=False)
    base.update(kw)
    return SimpleNamespace(**base)


def _of(prompt, class_type):
    return [v for v in prompt.values() if v["class_type"] == class_type]


def _links_ok(prompt):
    for node in prompt.values():
        for v in node["inputs"].values():
            if isinstance(v, list):
                assert v[0] in prompt, (node["class_type"], v)


def test_prepare_prompt_fills_photo_prompt_and_options():
    p = run.prepare_prompt(workflows.load_api(run.WORKFLOW),
                           args(prompt="an astronaut", seed=7, steps=3, width=64, height=96, batch=2, weight=0.6,
                                start_at=0.1, checkpoint="mine.safetensors", face_index=1), "me.jpg")
    (load,) = _of(p, "LoadImage")
    assert load["inputs"]["image"] == "me.jpg"
    (sampler,) = _of(p, "KSampler")
    assert p[sampler["inputs"]["positive"][0]]["inputs"]["text"] == "an astronaut"
    assert p[sampler["inputs"]["negative"][0]]["inputs"]["text"] == workflows.NEGATIVE
    assert (sampler["inputs"]["seed"], sampler["inputs"]["steps"]) == (7, 3)
    (latent,) = _of(p, "EmptyLatentImage")
    assert (latent["inputs"]["width"], latent["inputs"]["height"], latent["inputs"]["batch_size"]) == (64, 96, 2)
    (apply,) = _of(p, "ApplyWPlusAdapter")
    assert (apply["inputs"]["weight"], apply["inputs"]["start_at"]) == (0.6, 0.1)
    assert _of(p, "CheckpointLoaderSimple")[0]["inputs"]["ckpt_name"] == "mine.safetensors"
    (align,) = _of(p, "WPlusFaceAlign")
    assert (align["inputs"]["face_select"], align["inputs"]["face_index"]) == ("index", 1)
    # headless: no previews, no latent file; FreeU stays unless asked
    assert not _of(p, "PreviewImage") and not _of(p, "WPlusSave") and _of(p, "FreeU")
    _links_ok(p)


def test_no_freeu_rewires_the_model():
    p = run.prepare_prompt(workflows.load_api(run.WORKFLOW), args(no_freeu=True), "me.jpg")
    assert not _of(p, "FreeU")
    (sampler,) = _of(p, "KSampler")
    assert p[sampler["inputs"]["model"][0]]["class_type"] == "ApplyWPlusAdapter"
    _links_ok(p)


def test_required_and_missing_files(tmp_path):
    p = run.prepare_prompt(workflows.load_api(run.WORKFLOW), args(), "me.jpg")
    need = run.required_files(p)
    assert ("checkpoints", workflows.CHECKPOINT) in need
    assert ("wplus", "wplus_adapter.bin") in need and ("e4e", "e4e_ffhq_encode.pt") in need
    assert ("facexlib", "parsing_parsenet.pth") in need  # remove_background is on
    (align,) = _of(p, "WPlusFaceAlign")
    align["inputs"]["detector"] = "retinaface_resnet50"
    assert ("facexlib", "detection_Resnet50_Final.pth") in run.required_files(p)

    comfy = tmp_path / "ComfyUI"
    models = tmp_path / "models"
    (models / "e4e").mkdir(parents=True)
    (models / "e4e" / "e4e_ffhq_encode.pt").write_bytes(b"x")
    missing = run.missing_files(p, comfy, models)
    assert ("e4e", "e4e_ffhq_encode.pt") not in missing and ("wplus", "wplus_adapter.bin") in missing
    text = run.report_missing(missing, comfy, models)
    for folder, name in missing:
        assert name in text and str(models / folder) in text
    assert "https://github.com/csxmli2016/w-plus-adapter/releases/download/v1/wplus_adapter.bin" in text
    assert workflows.model_url(workflows.CHECKPOINT)[1] in text


def test_free_path_never_overwrites(tmp_path):
    first = tmp_path / "img_00001_.png"
    assert run.free_path(first) == first
    first.write_bytes(b"x")
    second = run.free_path(first)
    assert second.name == "img_00001_-2.png"
    second.write_bytes(b"x")
    assert run.free_path(first).name == "img_00001_-3.png"


def test_rejection_message_names_node_and_reason():
    data = {"error": {"message": "Prompt outputs failed validation"},
            "node_errors": {"4": {"class_type": "WPlusE4ELoader",
                                  "errors": [{"message": "Value not in list", "details": "e4e_name: 'x.pt'"}]}}}
    text = describe_rejection(data)
    assert "WPlusE4ELoader" in text and "x.pt" in text and "failed validation" in text
