"""The headless command's pure parts (no ComfyUI): every example workflow filled from the options,
photo lists, output names, server choice, URLs and the summary."""
import copy
import json
from types import SimpleNamespace

import pytest

from cli import batch, prompts, remote, run, workflows


def opts(**kw):
    base = {k: None for k in run.OPTION_NAMES}
    base["no_freeu"] = False
    base.update(kw)
    return base


def _of(prompt, class_type):
    return [v for v in prompt.values() if v["class_type"] == class_type]


def _links_ok(prompt):
    for node in prompt.values():
        for v in node["inputs"].values():
            if isinstance(v, list) and len(v) == 2 and isinstance(v[0], str):
                assert v[0] in prompt, (node["class_type"], v)


def test_resolve_by_number_name_part_and_file(tmp_path):
    names = prompts.workflow_names()
    assert prompts.resolve(None)[0] == names[0] == run.WORKFLOW
    assert prompts.resolve("3")[0] == names[2]
    assert prompts.resolve("smile")[0] == "wplus_2_smile_edit_sweep"
    assert prompts.resolve("wplus_5_controlnet_lora_composition")[0] == names[4]
    with pytest.raises(prompts.WorkflowError, match="none of the example workflows"):
        prompts.resolve("sdxl")
    with pytest.raises(prompts.WorkflowError, match="several"):
        prompts.resolve("wplus")
    api = tmp_path / "mine.json"
    api.write_text(json.dumps(workflows.load_api(names[0])))
    assert prompts.resolve(str(api)) == ("mine", workflows.load_api(names[0]))
    body = tmp_path / "body.json"  # a saved POST /prompt body
    body.write_text(json.dumps({"prompt": workflows.load_api(names[0]), "client_id": "x"}))
    assert prompts.resolve(str(body))[1] == workflows.load_api(names[0])
    ui = tmp_path / "ui.json"
    ui.write_text(json.dumps(workflows.load_ui(names[0])))
    with pytest.raises(prompts.WorkflowError, match="Export \\(API\\)"):
        prompts.resolve(str(ui))
    with pytest.raises(prompts.WorkflowError, match="no such file"):
        prompts.resolve(str(tmp_path / "absent.json"))


@pytest.mark.parametrize("name", prompts.workflow_names())
def test_every_example_workflow_takes_photo_prompt_seed(name):
    template = workflows.load_api(name)
    p = prompts.headless(prompts.apply_options(copy.deepcopy(template),
                                               opts(prompt="an astronaut", negative="blurry", seed=11, steps=2,
                                                    width=64, height=64)))
    roles = prompts.image_roles(p)
    assert list(roles.values()).count(prompts.PHOTO) == 1
    prompts.fill_images(p, {prompts.PHOTO: "wplus-headless/abc-me.jpg"})
    (photo,) = [k for k, r in roles.items() if r == prompts.PHOTO]
    assert p[photo]["inputs"]["image"] == "wplus-headless/abc-me.jpg"
    # the photo is the one that reaches the face aligner
    assert prompts.reaches(p, photo, ("WPlusFaceAlign",))
    for s in prompts.samplers(p):
        assert p[s]["inputs"]["seed"] == 11 and p[s]["inputs"]["steps"] == 2
        pos = prompts.text_nodes(p, s, "positive")
        neg = prompts.text_nodes(p, s, "negative")
        assert pos and neg and not set(pos) & set(neg)
        assert all(p[k]["inputs"]["text"] == "an astronaut" for k in pos)
        assert all(p[k]["inputs"]["text"] == "blurry" for k in neg)
    assert not _of(p, "PreviewImage") and not _of(p, "WPlusSave")
    # an e4e preview that nothing shows any more is made at the smallest size
    cons = prompts.consumers(p)
    for k in prompts.of_class(p, "WPlusE4EInvert"):
        used = any(slot == 1 for _, _, slot in cons.get(k, []))
        assert p[k]["inputs"]["preview_size"] == (template[k]["inputs"]["preview_size"] if used else "128")
    labels = prompts.output_labels(p)
    assert list(labels.values()).count("") == 1  # one main image per photo
    _links_ok(p)
    # unset options keep the workflow's own values (e.g. its sampler, CFG, weights)
    kept = prompts.apply_options(copy.deepcopy(template), opts())
    assert kept == template


def test_options_of_each_workflow():
    p = prompts.apply_options(workflows.load_api("wplus_2_smile_edit_sweep"),
                              opts(direction="interfacegan/age", strengths="-2, 2", batch=2, weight=0.7,
                                   start_at=0.1, sampler="euler", scheduler="normal", cfg=5.0))
    (edit,) = _of(p, "WPlusEdit")
    assert (edit["inputs"]["direction"], edit["inputs"]["strengths"]) == ("interfacegan/age", "-2, 2")
    assert _of(p, "EmptyLatentImage")[0]["inputs"]["batch_size"] == 2
    (apply,) = _of(p, "ApplyWPlusAdapter")
    assert (apply["inputs"]["weight"], apply["inputs"]["start_at"]) == (0.7, 0.1)
    (ks,) = _of(p, "KSampler")
    assert (ks["inputs"]["sampler_name"], ks["inputs"]["scheduler"], ks["inputs"]["cfg"]) == ("euler", "normal", 5.0)
    labels = prompts.output_labels(prompts.headless(p))
    assert sorted(labels.values()) == ["", "smile_sweep_stylegan"]

    p = prompts.apply_options(workflows.load_api("wplus_3_identity_interpolation"), opts(mix=0.25))
    assert _of(p, "WPlusInterpolate")[0]["inputs"]["weight"] == 0.25
    assert sorted(prompts.image_roles(p).values()) == [prompts.PHOTO, prompts.PHOTO_B]

    p = prompts.apply_options(workflows.load_api("wplus_4_stage1_closeup_edits"),
                              opts(adapter="wplus_adapter_stage1.bin", strengths="0"))
    assert _of(p, "WPlusAdapterLoader")[0]["inputs"]["adapter_name"] == "wplus_adapter_stage1.bin"

    p = prompts.apply_options(workflows.load_api("wplus_5_controlnet_lora_composition"),
                              opts(lora="mine.safetensors", lora_strength=0.5, controlnet="depth.safetensors",
                                   control_strength=0.6, prompt="dancing"))
    (lora,) = _of(p, "LoraLoader")
    assert (lora["inputs"]["lora_name"], lora["inputs"]["strength_model"], lora["inputs"]["strength_clip"]) == \
        ("mine.safetensors", 0.5, 0.5)
    assert _of(p, "ControlNetLoader")[0]["inputs"]["control_net_name"] == "depth.safetensors"
    assert _of(p, "ControlNetApplyAdvanced")[0]["inputs"]["strength"] == 0.6
    assert sorted(prompts.image_roles(p).values()) == [prompts.CONTROL, prompts.PHOTO]
    # the prompt text is found through the ControlNet apply node
    (ks,) = _of(p, "KSampler")
    (pos,) = prompts.text_nodes(p, prompts.samplers(p)[0], "positive")
    assert p[pos]["inputs"]["text"] == "dancing" and p[ks["inputs"]["positive"][0]]["class_type"] == \
        "ControlNetApplyAdvanced"


def test_option_without_a_target_names_the_workflows_that_have_one():
    for option, kw, hint in (("--direction", {"direction": "interfacegan/age"}, "2 and 4"),
                             ("--mix", {"mix": 0.5}, "workflow 3"),
                             ("--lora", {"lora": "x.safetensors"}, "workflow 5")):
        with pytest.raises(prompts.WorkflowError, match=f"{option}.*{hint}"):
            prompts.apply_options(workflows.load_api("wplus_1_photo_to_image"), opts(**kw))


def test_no_freeu_drops_every_freeu_and_rewires():
    p = prompts.apply_options(workflows.load_api("wplus_1_photo_to_image"), opts(no_freeu=True))
    assert not _of(p, "FreeU")
    _links_ok(p)


def test_graph_roles_without_titles():
    p = workflows.load_api("wplus_3_identity_interpolation")
    for node in p.values():
        node.pop("_meta", None)
    roles = prompts.image_roles(p)
    assert roles == {"2": prompts.PHOTO, "30": prompts.PHOTO_B}
    p = workflows.load_api("wplus_5_controlnet_lora_composition")
    for node in p.values():
        node.pop("_meta", None)
    assert prompts.image_roles(p) == {"3": prompts.PHOTO, "31": prompts.CONTROL}


def _args(**kw):
    base = dict({k: None for k in run.OPTION_NAMES}, no_freeu=False, photo_b=None, control_image=None)
    base.update(kw)
    return SimpleNamespace(**base)


def test_expand_photos_files_folders_globs(tmp_path):
    (tmp_path / "a").mkdir()
    for name in ("a/1.jpg", "a/2.PNG", "a/notes.txt", "b.webp"):
        (tmp_path / name).write_bytes(b"x")
    got = run.expand_photos([str(tmp_path / "a"), str(tmp_path / "*.webp"), str(tmp_path / "a" / "1.jpg")])
    assert [p.name for p in got] == ["1.jpg", "2.PNG", "b.webp"]  # each once, in order
    for bad, msg in ((tmp_path / "none.jpg", "no such file"), (tmp_path / "*.gif", "no image matches")):
        with pytest.raises(ValueError, match=msg):
            run.expand_photos([str(bad)])
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no jpg"):
        run.expand_photos([str(tmp_path / "empty")])


def test_jobs_need_the_workflows_extra_images(tmp_path):
    a, b = tmp_path / "x" / "me.jpg", tmp_path / "y" / "me.jpg"
    for p in (a, b):
        p.parent.mkdir()
        p.write_bytes(b"x")
    t1 = run.prepare_prompt(workflows.load_api("wplus_1_photo_to_image"), _args())
    jobs = run.make_jobs(t1, [a, b], _args())
    assert [j.stem for j in jobs] == ["me", "me"] and jobs[0].name != jobs[1].name  # same name: paths shown
    with pytest.raises(prompts.WorkflowError, match="--photo-b: this workflow has no"):
        run.make_jobs(t1, [a], _args(photo_b=b))
    t3 = run.prepare_prompt(workflows.load_api("wplus_3_identity_interpolation"), _args())
    with pytest.raises(prompts.WorkflowError, match="give --photo-b"):
        run.make_jobs(t3, [a], _args())
    (job,) = run.make_jobs(t3, [a], _args(photo_b=b))
    assert job.images == {prompts.PHOTO: a, prompts.PHOTO_B: b}
    t5 = run.prepare_prompt(workflows.load_api("wplus_5_controlnet_lora_composition"), _args())
    with pytest.raises(prompts.WorkflowError, match="give --control-image"):
        run.make_jobs(t5, [a], _args())


def test_output_names():
    ref = {"filename": "photo_to_image_00003_.png"}
    assert batch.output_name("me", "", 1, 1, ref) == "me.png"
    assert batch.output_name("me", "", 2, 5, ref) == "me_2.png"
    assert batch.output_name("me", "smile_sweep_stylegan", 3, 12, {"filename": "x.webp"}) == \
        "me_smile_sweep_stylegan_03.webp"


def test_choose_server_by_queue_length():
    # (queue_remaining as reported, ours there)
    assert batch.choose_server([(0, 0), (0, 0)], 2) == 0
    assert batch.choose_server([(1, 1), (0, 0)], 2) == 1
    assert batch.choose_server([(2, 2), (1, 1)], 2) == 1
    assert batch.choose_server([(2, 2), (2, 2)], 2) is None          # both full of ours: wait
    assert batch.choose_server([(5, 0), (0, 0)], 2) == 1             # other people's queue counts
    assert batch.choose_server([(5, 0), (2, 2)], 2) is None          # ours there: wait for it
    assert batch.choose_server([(7, 0), (3, 0)], 2) == 1             # all busy, none of ours: least busy
    assert batch.choose_server([(0, 1), (1, 0)], 2) == 1             # a lagging report: ours count
    assert batch.choose_server([], 2) is None


def test_urls():
    assert remote.normalize_url("127.0.0.1") == "http://127.0.0.1:8188"
    assert remote.normalize_url("gpu1:8000/") == "http://gpu1:8000"
    assert remote.normalize_url("https://box.example/comfy/") == "https://box.example:8188/comfy"
    with pytest.raises(ValueError, match="--server"):
        remote.normalize_url("ftp://x")
    r = remote.Remote("http://me:s%40cret@box:8188", "cid")
    assert r.url == "http://box:8188" and r.headers["Authorization"].startswith("Basic ")
    assert r.ws_url() == "ws://box:8188/ws?clientId=cid"
    assert remote.Remote("https://box:443", "c").ws_url() == "wss://box:443/ws?clientId=c"


def test_upload_names_are_content_addressed(tmp_path):
    from pathlib import Path
    a = remote.upload_name(Path("my photo (1).jpg"), b"abc")
    assert a.endswith("-my_photo_1_.jpg") and a == remote.upload_name(Path("my photo (1).jpg"), b"abc")
    assert a != remote.upload_name(Path("my photo (1).jpg"), b"abd")
    body, ctype = remote._multipart({"type": "input"}, "image", "x.png", b"\x89PNG")
    assert ctype.startswith("multipart/form-data; boundary=") and b'name="image"; filename="x.png"' in body


def test_summary_names_each_failure():
    jobs = [batch.Job(0, "a.jpg", {prompts.PHOTO: "p/a.jpg"}, {}), batch.Job(1, "b.jpg", {prompts.PHOTO: "p/b.jpg"}, {})]
    jobs[0].state, jobs[0].outputs = batch.DONE, ["out/a.png"]
    jobs[1].state, jobs[1].error = batch.FAILED, "WPlusFaceAlign (node 3): FaceAlign: no face found"
    line, block = batch.summary(jobs, 12.3)
    assert line.startswith("1 done, 1 failed of 2 prompt(s); 1 image(s)")
    assert "b.jpg (p/b.jpg): WPlusFaceAlign (node 3): FaceAlign: no face found" in block and "a.jpg" not in block
    entry = {"status": {"status_str": "error", "messages": [
        ["execution_start", {}],
        ["execution_error", {"node_id": "3", "node_type": "WPlusFaceAlign", "exception_message": "no face\n"}]]}}
    assert batch.describe_failure(entry) == "WPlusFaceAlign (node 3): no face"


def test_progress_bars_overall_and_per_prompt():
    import io
    stream = io.StringIO()
    ui = batch.Progress(stream=stream, bars=True)
    job = batch.Job(0, "anna.jpg", {prompts.PHOTO: "anna.jpg"}, {})
    server = batch.ServerState(0, remote.Remote("http://127.0.0.1:8188", "c"), None, 1.0)
    ui.start(2)
    ui.running(job, server)
    job.progress = (7, 30, "13")
    ui.progress(job, "KSampler")
    text = stream.getvalue()
    assert "anna.jpg @ 127.0.0.1:8188" in text and "7/30" in text and "KSampler" in text
    ui.done_bar(job)
    job.state = batch.DONE
    ui.finished(job)
    ui.close()
    assert "photos" in stream.getvalue() and "1/2" in stream.getvalue()
    quiet = batch.Progress(quiet=True, stream=io.StringIO())
    quiet.start(1)
    quiet.note("x")
    assert not quiet.bars and quiet.stream.getvalue() == ""
