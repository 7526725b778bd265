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
.venv/bin/pytest "$@"
