#!/usr/bin/env bash
# Install (if needed) and run the test suite; extra arguments go to pytest (e.g. -m slow).
source "$(dirname "$0")/env.sh"
pytest "$@"
