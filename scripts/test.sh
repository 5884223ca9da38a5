#!/usr/bin/env bash
# Install (if needed), lint, type-check, then run the test suite; extra arguments go to pytest
# (e.g. -m slow). The checks run first and stop the script on the first finding, so a lint or
# type error fails in seconds instead of after the suite.
source "$(dirname "$0")/env.sh"

check() {
  echo ">> $*"
  "$@" || { echo ">> FAILED: $* (fix the findings above)" >&2; exit 1; }
}

check ruff check src stages tests bench
check mypy                                  # files = src, from [tool.mypy] in pyproject.toml
echo ">> pytest $*"
pytest "$@"
