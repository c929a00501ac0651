"""Generated parts of the docs: `python -m cli docs` checks them, `--write` rewrites them.

    README.md        the table of model files, between the MODEL_FILES markers
    pyproject.toml   the [[tool.comfy.Models]] entries, between the same markers

Both come from wplus_core/model_files.py, so a file's name, folder, URL, size and licence are
written once; tests/test_model_files.py fails when a generated part differs.
"""
from __future__ import annotations

import re
from pathlib import Path

from wplus_core import model_files

ROOT = Path(__file__).resolve().parents[1]
BEGIN = "<!-- MODEL_FILES: generated from wplus_core/model_files.py by `python -m cli docs --write` -->"
END = "<!-- /MODEL_FILES -->"
TOML_BEGIN = "# MODEL_FILES: generated from wplus_core/model_files.py by `python -m cli docs --write`"
TOML_END = "# /MODEL_FILES"


def generated() -> dict[Path, tuple[str, str, str]]:
    """file -> (begin marker, end marker, what lies between them)."""
    return {ROOT / "README.md": (BEGIN, END, model_files.readme_table()),
            ROOT / "pyproject.toml": (TOML_BEGIN, TOML_END, model_files.pyproject_models())}


def _block(text: str, begin: str, end: str) -> re.Match | None:
    return re.search(re.escape(begin) + r"\n(.*?)\n?" + re.escape(end), text, flags=re.S)


def stale() -> list[str]:
    """The generated parts that differ from the table (empty = all current)."""
    out = []
    for path, (begin, end, body) in generated().items():
        found = _block(path.read_text(encoding="utf-8"), begin, end)
        if found is None:
            out.append(f"{path.name}: the markers {begin!r} ... {end!r} are missing")
        elif found.group(1).strip() != body.strip():
            out.append(f"{path.name}: the model-files block differs from wplus_core/model_files.py")
    return out


def write() -> list[Path]:
    written = []
    for path, (begin, end, body) in generated().items():
        text = path.read_text(encoding="utf-8")
        found = _block(text, begin, end)
        if found is None:
            raise SystemExit(f"{path}: add the lines {begin!r} and {end!r} where the block belongs")
        new = text[:found.start()] + f"{begin}\n{body}\n{end}" + text[found.end():]
        if new != text:
            path.write_text(new, encoding="utf-8")
            written.append(path)
    return written


def main(args) -> int:
    if args.write:
        for path in write():
            print("wrote", path)
        return 0
    problems = stale()
    for p in problems:
        print(p)
    if problems:
        print("run: python -m cli docs --write")
    return 1 if problems else 0
