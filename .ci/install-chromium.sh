#!/bin/sh
# Headless Chromium for tests/test_show.py (the HTML page must render with no console errors).
# Debian/Ubuntu package `chromium`; does nothing when it is already installed.
set -eu
if [ -x /usr/bin/chromium ]; then
    exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
    SUDO="sudo"
fi
$SUDO apt-get update -qq
DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium
/usr/bin/chromium --version
