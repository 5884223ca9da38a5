#!/usr/bin/env bash
# Seed-to-seed spread of the headline figures: queue the current pipeline with other training
# seeds (train.seed; data, split and evaluation stay fixed), run the queue, and write mean and
# range over those runs and the committed one to metrics/seed_spread.json.
#   scripts/seed_spread.sh [SEED ...]        default: 1 2 3 4 (with the committed run: 5 seeds)
# The committed run must be up to date (`dvc status` clean); each seed reruns the pipeline up to
# `analyze` (training, evaluation, calibration, analysis: about 5 min on 2 CPU cores).
source "$(dirname "$0")/env.sh"
seeds=("$@")
[ ${#seeds[@]} -gt 0 ] || seeds=(1 2 3 4)
for seed in "${seeds[@]}"; do
  dvc exp remove "seed-$seed" >/dev/null 2>&1 || true   # a previous spread's run of this seed
  dvc exp run --queue --name "seed-$seed" -S "train.seed=$seed" analyze
done
dvc queue start --jobs 1   # one at a time: training takes every core
# grep reads the whole status (no -q): under pipefail an early exit would end the wait
while dvc queue status | grep -E 'Queued|Running' >/dev/null; do sleep 30; done
dvc queue status
dvc exp show --json > .seed_spread_exps.json
python scripts/seed_spread.py .seed_spread_exps.json --names "${seeds[@]/#/seed-}" \
  --out metrics/seed_spread.json
rm .seed_spread_exps.json
