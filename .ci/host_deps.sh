#!/usr/bin/env bash
# Dependencies of the host and end-to-end tests, installed only when a real ComfyUI checkout is
# found ($COMFYUI_PATH, the folder two levels up, ~/comfy/ComfyUI; see design/HOST.md):
#  - ComfyUI's requirements.txt without torch/torchvision/torchaudio (the host's torch stays);
#  - playwright (Python package only; it drives Debian's chromium, never a downloaded browser);
#  - Debian's chromium through .ci/install_browser.sh.
# Without ComfyUI it prints one line and exits 0 (the host and e2e tests then skip).
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-python3}
COMFY=""
for cand in "${COMFYUI_PATH:-}" "$(cd ../.. && pwd)" "$HOME/comfy/ComfyUI"; do
  if [ -n "$cand" ] && [ -f "$cand/main.py" ] && [ -f "$cand/comfy/model_patcher.py" ]; then COMFY=$cand; break; fi
done
if [ -z "$COMFY" ]; then
  echo "host_deps: no ComfyUI checkout found: host and end-to-end tests will skip"
  exit 0
fi
echo "host_deps: ComfyUI at $COMFY"
REQ=$(mktemp)
trap 'rm -f "$REQ"' EXIT
grep -viE '^[[:space:]]*(torch|torchvision|torchaudio)([<>=!~ ;\[]|$)' "$COMFY/requirements.txt" > "$REQ" || true
$PY -m pip install -q -r "$REQ"
$PY -m pip install -q "playwright>=1.40"
bash .ci/install_browser.sh || echo "host_deps: chromium not installed: browser tests will skip"
