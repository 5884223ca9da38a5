#!/usr/bin/env bash
# Install (if needed) and rebuild the whole pipeline on the defaults: `dvc repro`.
source "$(dirname "$0")/env.sh"
start=$(date +%s)
dvc repro "$@"
echo ">> dvc repro finished in $(( $(date +%s) - start )) s"
dvc status
