#!/usr/bin/env bash
# Dependencies of the host and end-to-end tests for a ComfyUI checkout the user already has
# ($COMFYUI_PATH, the folder two levels up, ~/comfy/ComfyUI; see design/HOST.md), installed into the
# current python: its requirements.txt without torch/torchvision/torchaudio (the host's torch stays)
# and playwright (the Python package only: it drives Debian's chromium, never a downloaded browser).
# The snapshots in ../shared/hosts get their own venvs instead (.ci/prepare_host.sh).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
COMFY=""
for cand in "${COMFYUI_PATH:-}" "$(cd ../.. && pwd)" "$HOME/comfy/ComfyUI"; do
  if [ -n "$cand" ] && [ -f "$cand/main.py" ] && [ -f "$cand/comfy/model_patcher.py" ]; then COMFY=$cand; break; fi
done
if [ -z "$COMFY" ]; then
  echo "host_deps: no ComfyUI checkout found"
  exit 0
fi
echo "host_deps: ComfyUI at $COMFY"
REQ=$(mktemp)
trap 'rm -f "$REQ"' EXIT
grep -viE '^[[:space:]]*(torch|torchvision|torchaudio)([<>=!~ ;\[]|$)' "$COMFY/requirements.txt" > "$REQ" || true
$PY -m pip install -q -r "$REQ"
$PY -m pip install -q "playwright>=1.40"
