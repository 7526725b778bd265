#!/usr/bin/env bash
# The whole suite: install into .venv, then lint, type-check and test.
# pytest exits 5 when it collects no tests; with `set -e` that fails the run, as it should.
set -euo pipefail
cd "$(dirname "$0")/.."
python3 -m venv .venv
.venv/bin/python -m pip install -q --disable-pip-version-check -e '.[test]'
.venv/bin/ruff check nbqup tests
.venv/bin/ruff format --check nbqup tests
.venv/bin/mypy nbqup
# tests/test_browser.py drives Debian's chromium: as root with apt-get, install it when missing
if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && ! command -v chromium >/dev/null; then
  (apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq chromium >/dev/null) ||
    echo "chromium could not be installed: tests/test_browser.py will be skipped" >&2
fi
.venv/bin/pytest "$@"
