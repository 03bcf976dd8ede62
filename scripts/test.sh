#!/usr/bin/env bash
# Installs buttress with its test dependencies into .venv and runs the whole test suite.
# The suite starts its own redis-server and PostgreSQL cluster on 127.0.0.1, and makes test
# certificates with openssl; Debian's packages are installed when missing.
set -euo pipefail
cd "$(dirname "$0")/.."
missing=()
command -v redis-server >/dev/null 2>&1 || missing+=(redis-server)
# Debian keeps initdb/pg_ctl under /usr/lib/postgresql/<version>/bin, off PATH
command -v initdb >/dev/null 2>&1 || compgen -G "/usr/lib/postgresql/*/bin/initdb" >/dev/null \
  || missing+=(postgresql)
command -v openssl >/dev/null 2>&1 || missing+=(openssl)
# the dashboard's browser test drives Debian's Chromium through Playwright (no browser download)
[ -x /usr/bin/chromium ] || missing+=(chromium)
if [ ${#missing[@]} -gt 0 ] && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
  export DEBIAN_FRONTEND=noninteractive
  apt-get update -qq && apt-get install -y -qq "${missing[@]}" >/dev/null
fi
[ -x .venv/bin/python ] || python3 -m venv .venv
.venv/bin/pip install -q -e '.[test]'
exec .venv/bin/python -m pytest "$@"
