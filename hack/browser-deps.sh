#!/usr/bin/env bash
# Headless Chromium and playwright-core for the router playground's browser test
# (tests/router/test_router_playground.py), installed when missing and cached outside the repo.
#
# Prints the environment the tests need, for `env="$(hack/browser-deps.sh)" && eval "$env"` (the Makefile's
# test targets and .ci/run; a bare `eval "$(...)"` would hide the exit status). Exits non-zero, saying what
# is missing, when it cannot install something, so the browser test is never skipped silently.
# KUBEMOE_BROWSER=skip opts out: the test then skips, saying so.
set -euo pipefail

PLAYWRIGHT_VERSION=1.65.1

if [ "${KUBEMOE_BROWSER:-}" = skip ]; then
  echo "browser-deps: KUBEMOE_BROWSER=skip: the playground browser test will be skipped" >&2
  exit 0
fi

fail() {
  echo "browser-deps: $*" >&2
  echo "browser-deps: install it, or run with KUBEMOE_BROWSER=skip to skip the playground browser test" >&2
  exit 1
}

if ! command -v chromium >/dev/null && ! command -v chromium-browser >/dev/null && [ -z "${CHROMIUM:-}" ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    echo "browser-deps: installing Debian's chromium" >&2
    { apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium; } >/dev/null ||
      fail "apt-get install chromium failed"
  else
    fail "chromium is not installed (as root: apt-get install chromium; or set CHROMIUM=/path/to/chromium)"
  fi
fi

command -v node >/dev/null || fail "node is not installed (apt-get install nodejs npm)"
command -v npm >/dev/null || fail "npm is not installed (apt-get install npm)"
dir="${XDG_CACHE_HOME:-$HOME/.cache}/kubemoe/playwright-$PLAYWRIGHT_VERSION"
if [ ! -d "$dir/node_modules/playwright-core" ]; then
  echo "browser-deps: installing playwright-core@$PLAYWRIGHT_VERSION into $dir" >&2
  npm install --silent --no-audit --no-fund --prefix "$dir" "playwright-core@$PLAYWRIGHT_VERSION" >&2 ||
    fail "npm install playwright-core@$PLAYWRIGHT_VERSION failed"
fi

# Require the browser from here on: a missing piece is an error in the test run, not a skip.
printf 'export PLAYWRIGHT_NODE_PATH=%q KUBEMOE_BROWSER=require\n' "$dir/node_modules"
