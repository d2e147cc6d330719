#!/bin/sh
# Install the headless browser the Swagger UI test drives (tests/test_browser.py): Debian's
# chromium and chromium-driver (/usr/bin/chromium, /usr/bin/chromedriver). Idempotent: does
# nothing when both are there. Never fails the caller: without a browser that test is skipped.
# Quiet: prints one line saying what it did.
set -u
if command -v chromium >/dev/null 2>&1 && command -v chromedriver >/dev/null 2>&1; then
    echo "install_browser: chromium and chromedriver already installed"
    exit 0
fi
if ! command -v apt-get >/dev/null 2>&1; then
    echo "install_browser: no apt-get here; install chromium and chromedriver yourself (the browser test is skipped)"
    exit 0
fi
SUDO=""
if [ "$(id -u)" != 0 ]; then
    if command -v sudo >/dev/null 2>&1; then SUDO="sudo -n"; else
        echo "install_browser: not root and no sudo; the browser test is skipped"
        exit 0
    fi
fi
start=$(date +%s)
log=$(mktemp)
export DEBIAN_FRONTEND=noninteractive
if $SUDO apt-get update -qq >"$log" 2>&1 \
   && $SUDO apt-get install -y -qq --no-install-recommends chromium chromium-driver >>"$log" 2>&1; then
    echo "install_browser: installed $(chromium --version 2>/dev/null | head -n1) and chromedriver in $(( $(date +%s) - start )) s"
else
    echo "install_browser: apt-get failed (the browser test is skipped); last lines:"
    tail -n 5 "$log"
fi
rm -f "$log"
exit 0
