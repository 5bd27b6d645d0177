#!/usr/bin/env bash
# End-to-end tests of the dashboard in headless Chromium against real `meshsync` nodes.
#
# Installs what it needs when missing: Debian's chromium (apt-get, non-interactive), Node.js and
# npm (apt-get), and the pinned playwright-core (npm ci, from package-lock.json; it drives the
# system Chromium and downloads no browser). Then runs dashboard.test.js with node's test runner:
# it starts nodes on free loopback ports, joins them into a mesh, drives the page and saves a
# screenshot of each view.
#
# Usage:   tests/dashboard/run.sh PATH/TO/meshsync
#          (build it first, e.g. cargo build -p meshsync-cli, or --release)
# Options: SCREENSHOTS_DIR=DIR  where the screenshots go (default target/dashboard-screenshots;
#                               docs/screenshots refreshes the README's)
#          CHROMIUM=/path       another Chromium (default /usr/bin/chromium)
set -euo pipefail

bin=${1:?usage: tests/dashboard/run.sh PATH/TO/meshsync}
if [[ ! -x $bin ]]; then
  echo "dashboard: $bin is not an executable; build it with: cargo build -p meshsync-cli" >&2
  exit 2
fi
bin=$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../.." && pwd)
export DEBIAN_FRONTEND=noninteractive

apt_install() {
  local sudo=()
  if [[ $(id -u) -ne 0 ]]; then sudo=(sudo -n); fi
  echo "dashboard: installing $* with apt-get"
  "${sudo[@]}" apt-get update -qq </dev/null
  "${sudo[@]}" apt-get install -y -qq --no-install-recommends "$@" </dev/null >/dev/null
}

chromium=${CHROMIUM:-/usr/bin/chromium}
if [[ ! -x $chromium ]]; then
  apt_install chromium fonts-dejavu-core
fi
if ! command -v node >/dev/null || ! command -v npm >/dev/null; then
  apt_install nodejs npm
fi
node_major=$(node -p 'process.versions.node.split(".")[0]')
if (( node_major < 20 )); then
  echo "dashboard: Node.js $(node --version) is too old; the tests need 20 or later" >&2
  exit 2
fi

# playwright-core exactly as locked; npm ci starts from a clean node_modules, so only when needed.
wanted=$(node -p 'require(process.argv[1]).packages["node_modules/playwright-core"].version' "$here/package-lock.json")
have=$(node -p 'try { require(process.argv[1]).version } catch { "" }' "$here/node_modules/playwright-core/package.json" 2>/dev/null || true)
if [[ $have != "$wanted" ]]; then
  echo "dashboard: installing playwright-core $wanted (npm ci)"
  (cd "$here" && PLAYWRIGHT_SKIP_BROWSER_DOWNLOAD=1 npm ci --no-audit --no-fund --loglevel=error </dev/null)
fi

shots=${SCREENSHOTS_DIR:-target/dashboard-screenshots}
if [[ $shots != /* ]]; then shots=$root/$shots; fi
echo "dashboard: $("$chromium" --version 2>/dev/null || echo "$chromium"), playwright-core $wanted, node $(node --version)"
started=$(date +%s)
cd "$here"
MESHSYNC_BIN=$bin CHROMIUM=$chromium SCREENSHOTS_DIR=$shots \
  node --test --test-concurrency=1 --test-reporter=spec dashboard.test.js </dev/null
echo "dashboard: browser tests passed in $(( $(date +%s) - started )) s; screenshots in $shots"
