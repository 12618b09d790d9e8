#!/usr/bin/env bash
# Install what the tests need (the package, and Debian's Chromium for the browser tests), then run them.
# Extra arguments go to pytest, e.g. `bash scripts/test.sh -m "not slow"`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/install.sh
if ! command -v chromium >/dev/null 2>&1; then
  if [ "$(id -u)" = 0 ]; then
    (apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q chromium) >/dev/null
  else
    echo "note: Debian's chromium is not installed: the browser tests will be skipped" >&2
  fi
fi
exec .venv/bin/python -m pytest -ra -p no:cacheprovider "$@"
