#!/usr/bin/env bash
# The browser end-to-end tests drive Debian's chromium (no browser download is reachable).
# Install it when missing and we may (root with apt); otherwise the e2e tests skip with a reason.
set -uo pipefail
if command -v chromium >/dev/null 2>&1 || [ -n "${BROKERLINK_SKIP_BROWSER:-}" ]; then exit 0; fi
if [ "$(id -u)" = "0" ] && command -v apt-get >/dev/null 2>&1; then
  echo "install-browser: installing Debian chromium for the browser tests" >&2
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) \
    || echo "install-browser: could not install chromium; browser tests will skip" >&2
else
  echo "install-browser: chromium missing and not root; browser tests will skip" >&2
fi
exit 0
