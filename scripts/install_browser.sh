#!/usr/bin/env bash
# Installs the browser the UI tests drive (tests/test_ui.py): Debian's `chromium` package,
# used by Playwright through executable_path (Playwright's own browser download is never used).
# Idempotent: does nothing when a chromium is already on the PATH. Needs root (or sudo) to install.
set -euo pipefail
if command -v chromium >/dev/null 2>&1; then
  echo "chromium: $(command -v chromium)"
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  SUDO="sudo"
fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get update
# fonts: so that page text renders (and screenshots look the same) on a bare image
$SUDO apt-get install -y --no-install-recommends chromium fonts-dejavu-core fonts-liberation
echo "chromium: $(command -v chromium)"
