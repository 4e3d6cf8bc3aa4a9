#!/bin/sh
# Debian's redis-server for the shared-state tests (tests/e2e/test_state_e2e.py and the
# integration tests that need a real server). `make test` runs this first. It never fails the
# build: where it cannot install redis-server it says why, and those tests skip with the same
# reason. The tests start their own server on a free loopback port (no persistence) and stop it
# by its PID; the package's own service is never used.
set -u
say() { echo "install-redis: $*"; }

if command -v redis-server >/dev/null 2>&1; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    say "redis-server is missing and this is not root; the shared-state tests will skip" \
        "(install it with: sudo apt-get install redis-server)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "redis-server is missing and there is no apt-get; the shared-state tests will skip"
    exit 0
fi
say "installing redis-server with apt-get, for the shared-state tests"
log=$(mktemp)
export DEBIAN_FRONTEND=noninteractive
if apt-get install -y -q --no-install-recommends redis-server >"$log" 2>&1 \
    || { apt-get update -q >>"$log" 2>&1 \
        && apt-get install -y -q --no-install-recommends redis-server >>"$log" 2>&1; }; then
    say "installed $(redis-server --version 2>/dev/null | cut -d' ' -f1-3)"
else
    tail -n 5 "$log"
    say "apt-get could not install redis-server; the shared-state tests will skip"
fi
rm -f "$log"
exit 0
