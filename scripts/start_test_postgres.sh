#!/usr/bin/env bash
# Starts a throwaway PostgreSQL 16 + pgvector 0.6.2 (binaries from the `pgserver` PyPI package,
# run as the unprivileged user `pgtest` when we are root) and prints shell exports for it:
#
#   eval "$(scripts/start_test_postgres.sh)"     # FACEREC_TEST_DATABASE_URL, FACEREC_TEST_PG_PID
#   .venv/bin/python -m pytest tests/test_gallery.py   # the tests then use this server
#   kill "$FACEREC_TEST_PG_PID"                  # stops the server and deletes its data
#
# The tests do not need this: without FACEREC_TEST_DATABASE_URL they start (and stop) their own
# server the same way.  It is for running the tests or benchmarks against one long-lived server,
# e.g. `python -m benchmarks.gallery_scale --pg-url "$FACEREC_TEST_DATABASE_URL"`.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
log=$(mktemp /tmp/facerec-pg-start.XXXXXX)
"$PY" -m tests.pg_fixtures >"$log" 2>&1 &
pid=$!
for _ in $(seq 1 120); do
    url=$(head -n 1 "$log" || true)
    if [[ "$url" == postgresql://* ]]; then
        echo "export FACEREC_TEST_DATABASE_URL='$url' FACEREC_TEST_PG_PID=$pid"
        exit 0
    fi
    if ! kill -0 "$pid" 2>/dev/null; then
        echo "PostgreSQL did not start:" >&2
        cat "$log" >&2
        exit 1
    fi
    sleep 0.5
done
echo "PostgreSQL did not start within 60 s:" >&2
cat "$log" >&2
kill "$pid" 2>/dev/null || true
exit 1
