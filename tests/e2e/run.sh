#!/usr/bin/env bash
# End-to-end test of the web UI in headless Debian Chromium.
# Needs: node + npm, /usr/bin/chromium (apt-get install chromium), and a built binary
# (cargo build --release -p demon-cli; or set DEMON_BIN). Builds nothing itself.
set -euo pipefail
cd "$(dirname "$0")"
if [ ! -x "${CHROMIUM:-/usr/bin/chromium}" ]; then
  echo "e2e: ${CHROMIUM:-/usr/bin/chromium} not found (apt-get install chromium)" >&2
  exit 1
fi
if ! node -e 'process.exit(Number(process.versions.node.split(".")[0]) >= 20 ? 0 : 1)'; then
  echo "e2e: needs Node.js 20 or newer (playwright-core 1.65); found $(node --version)" >&2
  exit 1
fi
# playwright-core only: it never downloads browsers.
PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error
node worklet.test.mjs
node ui.test.mjs
