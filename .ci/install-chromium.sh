#!/usr/bin/env bash
# Install Debian's Chromium for the report's browser test (tests/test_report.py, marker "browser").
# Does nothing when chromium is already on PATH, so running it again is cheap.
set -euo pipefail

if command -v chromium >/dev/null 2>&1; then
    echo "chromium already installed: $(chromium --version 2>/dev/null | head -n 1)"
    exit 0
fi

if [ "$(id -u)" -ne 0 ]; then
    echo "error: installing chromium with apt-get needs root; run this script as root or install the Debian package 'chromium' yourself." >&2
    exit 1
fi

export DEBIAN_FRONTEND=noninteractive
apt-get update
apt-get install -y chromium
chromium --version
