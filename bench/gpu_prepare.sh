#!/usr/bin/env bash
# Gather, on a machine with a package index, what bench/gpu_check.py needs on a GPU machine that
# has none: the two ComfyUI source snapshots and the wheels of the Python packages that the
# in-process hosts import and that the GPU image lacks. Everything lands in .gpu/ (git-ignored);
# carry it with the working tree (the device tool: carry [".gpu"]), then there run
#   python3 -m bench.gpu_check --device cuda --out $OUT/gpu_check.json
# which installs .gpu/wheels into .gpu/site (no index, no deps) and extracts the snapshots.
#
# The list is what ComfyUI 0.3.64 / 0.28.0 import in-process (comfy.*, the pack, facexlib for
# the parser) minus what the H200 image already holds (its package list, .library/device/KINDS.md,
# read 2026-11-17: torch 2.11, numpy, scipy, opencv-python-headless, transformers, safetensors,
# pillow, einops, psutil, pyyaml, tqdm, ...). Versions: those of venv-0.28.0 when it exists.
#   usage: bench/gpu_prepare.sh   (about 41 MB, comfy-kitchen 29 MB of it; what travels: 64 MiB in all)
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
HOSTS=${WPLUS_HOSTS:-$HOME/.cache/wplus-hosts}
SHARED=${WPLUS_SHARED:-../shared}
mkdir -p .gpu/hosts .gpu/wheels
for v in ${WPLUS_GPU_HOSTS:-0.3.64 0.28.0 0.33.0}; do
  cp -f "$SHARED/hosts/ComfyUI-$v.tar.gz" .gpu/hosts/ 2>/dev/null || echo "gpu_prepare: $SHARED/hosts/ComfyUI-$v.tar.gz not found" >&2
done
NAMES="comfy-aimdo comfy-kitchen facexlib filterpy torchsde trampoline trio outcome sniffio truststore httpcore2 httpx2"
REQ=$(mktemp)
trap 'rm -f "$REQ"' EXIT
VPY=$HOSTS/venv-0.28.0/bin/python
for n in $NAMES; do
  ver=$([ -x "$VPY" ] && "$VPY" -m pip show "$n" 2>/dev/null | sed -n 's/^Version: //p' || true)
  echo "$n${ver:+==$ver}" >> "$REQ"
done
# the GPU image runs Python 3.12 on x86-64 (manylinux); pure-Python wheels fit any platform
$PY -m pip download -q --disable-pip-version-check --no-deps --only-binary=:all: --python-version 3.12 \
  --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 \
  --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 --platform any \
  -d .gpu/wheels -r "$REQ"
rm -rf .gpu/site  # reinstalled from the wheels on the GPU machine
du -sh .gpu
