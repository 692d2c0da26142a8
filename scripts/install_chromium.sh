#!/usr/bin/env bash
# Debian's headless Chromium for the status page's browser test (tests/service/test_status_page.py).
# Idempotent: does nothing when /usr/bin/chromium is there.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then exit 0; fi
if ! command -v apt-get >/dev/null; then
  echo "install_chromium: no apt-get; install Chromium and set ETL_TEST_CHROMIUM to its path" >&2
  exit 1
fi
SUDO=""; if [ "$(id -u)" != 0 ]; then SUDO="sudo"; fi
export DEBIAN_FRONTEND=noninteractive
$SUDO apt-get install -y -q chromium >/dev/null 2>&1 || { $SUDO apt-get update -q >/dev/null && $SUDO apt-get install -y -q chromium >/dev/null; }
