#!/usr/bin/env bash
# Make sure Debian's Chromium is at /usr/bin/chromium for the browser tests (tests/test_ui.py).
#
# Installs it with apt-get when it is missing and we are root on a machine with apt-get. This
# script never fails the build: without Chromium the UI tests skip themselves (loudly), so it
# always exits 0, but it says loudly when it could not install the browser.
set -u

CHROMIUM=/usr/bin/chromium
# upper bounds for each apt-get step, in seconds (a stuck mirror must not hang `make test`)
APT_TIMEOUT="${CLICKLOOP_APT_TIMEOUT:-300}"

warn() {
    echo "" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "!!! ensure_chromium: $*" >&2
    echo "!!! The browser tests in tests/test_ui.py will be SKIPPED." >&2
    echo "!!! Install it by hand: apt-get install chromium chromium-driver" >&2
    echo "!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!!" >&2
    echo "" >&2
}

if [ -x "$CHROMIUM" ]; then
    exit 0
fi
if [ "$(id -u)" != "0" ]; then
    warn "$CHROMIUM is missing and we are not root, so it cannot be installed here."
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    warn "$CHROMIUM is missing and this machine has no apt-get."
    exit 0
fi

echo "ensure_chromium: installing Debian's chromium (a minute or two) ..."
export DEBIAN_FRONTEND=noninteractive
if timeout "$APT_TIMEOUT" apt-get update -qq >/tmp/ensure_chromium.log 2>&1 \
    && timeout "$APT_TIMEOUT" apt-get install -y -qq --no-install-recommends \
        chromium chromium-driver fonts-dejavu-core >>/tmp/ensure_chromium.log 2>&1 \
    && [ -x "$CHROMIUM" ]; then
    echo "ensure_chromium: installed $("$CHROMIUM" --version 2>/dev/null || echo chromium)"
else
    tail -n 20 /tmp/ensure_chromium.log >&2 2>/dev/null || true
    warn "apt-get could not install chromium (see /tmp/ensure_chromium.log)."
fi
exit 0
