#!/usr/bin/env bash
# Installs Debian's redis-server for the task-queue tests (idempotent: does nothing when it is there).
#
#   scripts/install_redis.sh          # as root, or with sudo available
#
# The tests start their own throwaway server (tests/redis_fixtures.py: `redis-server` on a free
# loopback port in a temporary folder, no persistence) and stop it at the end; this script only
# puts the binary on the machine.  It does not start or enable the system service.
set -euo pipefail
if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo"; else
        echo "redis-server is missing and this is not root: install it with 'apt-get install redis-server'" >&2
        exit 1
    fi
fi
export DEBIAN_FRONTEND=noninteractive
# the package's postinst may try to start the service; without systemd/init that is harmless
$SUDO apt-get update -qq
$SUDO apt-get install -y -qq --no-install-recommends redis-server >/dev/null
command -v redis-server >/dev/null
# the Debian package starts a system-wide server on 6379 where it can; the tests never use it
redis-server --version
