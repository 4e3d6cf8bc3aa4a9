#!/bin/sh
# Debian's chromium for the dashboard's browser test (tests/e2e/test_dashboard_e2e.py).
# `make test` runs this first. It never fails the build: where it cannot install chromium it
# says why, and that test skips with the same reason.
set -u
CHROMIUM=/usr/bin/chromium
say() { echo "install-chromium: $*"; }

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" != 0 ]; then
    say "$CHROMIUM is missing and this is not root; the dashboard's browser test will skip" \
        "(install it with: sudo apt-get install chromium)"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    say "$CHROMIUM is missing and there is no apt-get; the dashboard's browser test will skip"
    exit 0
fi
say "installing chromium with apt-get, for the dashboard's browser test"
log=$(mktemp)
export DEBIAN_FRONTEND=noninteractive
if apt-get install -y -q chromium >"$log" 2>&1 \
    || { apt-get update -q >>"$log" 2>&1 && apt-get install -y -q chromium >>"$log" 2>&1; }; then
    say "installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
else
    tail -n 5 "$log"
    say "apt-get could not install chromium; the dashboard's browser test will skip"
fi
rm -f "$log"
exit 0
