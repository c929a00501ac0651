#!/usr/bin/env bash
# Prepare one real ComfyUI host from a source snapshot (../shared/hosts/ComfyUI-<v>.tar.gz):
# extract it OUTSIDE the repository and give it its own virtual environment, so each host gets the
# frontend package its requirements pin. The venv sees the system's packages (torch stays the one
# already installed); the host's requirements go in without their torch/torchvision/torchaudio lines.
#   usage: .ci/prepare_host.sh VERSION   prints one line: the ComfyUI root and the venv's python
# (everything else goes to stderr)
# $WPLUS_HOSTS (default ~/.cache/wplus-hosts) holds ComfyUI-<v>/ and venv-<v>/; reruns reuse them
# when the snapshot is unchanged.
set -euo pipefail
cd "$(dirname "$0")/.."
V=$1
PY=${PYTHON:-python3}
TARBALL=${WPLUS_SHARED:-../shared}/hosts/ComfyUI-$V.tar.gz
HOSTS=${WPLUS_HOSTS:-$HOME/.cache/wplus-hosts}
ROOT=$HOSTS/ComfyUI-$V
VENV=$HOSTS/venv-$V
[ -f "$TARBALL" ] || { echo "prepare_host: $TARBALL not found" >&2; exit 1; }
mkdir -p "$HOSTS"
SUM=$(sha256sum "$TARBALL" | cut -c1-16)
if [ "$(cat "$ROOT/.snapshot" 2>/dev/null)" != "$SUM" ]; then
  rm -rf "$ROOT"
  tar xzf "$TARBALL" -C "$HOSTS"
  echo "$SUM" > "$ROOT/.snapshot"
fi
if [ ! -x "$VENV/bin/python" ]; then
  $PY -m venv --system-site-packages "$VENV" >&2
fi
VPY=$VENV/bin/python
REQ=$(mktemp)
trap 'rm -f "$REQ"' EXIT
grep -viE '^[[:space:]]*(torch|torchvision|torchaudio)([<>=!~ ;\[]|$)' "$ROOT/requirements.txt" > "$REQ" || true
$VPY -m pip install -q --disable-pip-version-check -r "$REQ" -r requirements.txt -r requirements-test.txt "playwright>=1.40" >&2
# 0.28+ imports torchaudio at start-up: a wheel built for the installed torch (HOST.md)
if grep -q "torchaudio" "$ROOT/comfy/ldm/lightricks/vae/audio_vae.py" 2>/dev/null; then
  TORCH=$($VPY -c "import torch; print(torch.__version__.split('+')[0])")
  case "$TORCH" in
    2.14.*) TA=2.11.1 ;;
    *) TA="" ;;
  esac
  if [ -n "$TA" ]; then
    $VPY -c "import torchaudio" 2>/dev/null || $VPY -m pip install -q --disable-pip-version-check --no-deps "torchaudio==$TA" >&2
  else
    $VPY -c "import torchaudio" 2>/dev/null || echo "prepare_host: no known torchaudio for torch $TORCH: install a matching one" >&2
  fi
fi
# what ComfyUI-Manager's e2e test installs with (0.28 pins it in manager_requirements.txt)
if [ -f "$ROOT/manager_requirements.txt" ]; then
  $VPY -m pip install -q --disable-pip-version-check -r "$ROOT/manager_requirements.txt" >&2
fi
echo "$ROOT $VPY"
