#!/usr/bin/env bash
# Debian's chromium for the browser end-to-end tests (Playwright drives it by executable_path;
# `playwright install` is never used). Idempotent: does nothing when chromium already runs.
set -euo pipefail
BROWSER=${WPLUS_CHROMIUM:-/usr/bin/chromium}
if [ -x "$BROWSER" ] && "$BROWSER" --version >/dev/null 2>&1; then
  echo "chromium present: $("$BROWSER" --version 2>/dev/null | head -1)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
    echo "install_browser: not root and no sudo: install chromium by hand (apt-get install chromium)" >&2
    exit 1
  fi
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq chromium fonts-liberation >/dev/null
"$BROWSER" --version
