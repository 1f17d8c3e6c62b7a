#!/usr/bin/env bash
# One server process against two (--workers 2) on the shared bench's models, in alternating
# rounds of one run, with the shared bench's driver (see ../shared/bench/README.md).
# Needs: bash ../shared/bench/setup.sh torch perf
#   bash benchmarks/run_workers.sh TAG [ROUNDS] [DURATION_S]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
bench=${BENCH:-$root/../shared/bench}
PEERS=${PEERS:-$HOME/.cache/modelport-bench}
tag=${1:?usage: run_workers.sh TAG [ROUNDS] [DURATION_S]}; rounds=${2:-3}; dur=${3:-5}
py=$PEERS/venv-torch/bin/python
export MODELPORT=$root/.venv/bin/modelport
cd "$bench"
for round in $(seq "$rounds"); do
  for workers in 1 2; do
    MODELPORT_CONFIG=$here/configs/bench-mlp.yaml MODELPORT_BATCH=32 \
      "$py" compare.py --servers modelport --models mlp --conc 8,32 --loaders wrk,pa-http,pa-grpc \
      --dur "$dur" --warm 1 --tag "$tag" --env "MODELPORT_ARGS=--workers $workers"
    cnn=$here/configs/bench-cnn.yaml; [ "$workers" = 2 ] && cnn=$here/configs/bench-cnn-per-worker.yaml
    MODELPORT_CONFIG=$cnn MODELPORT_BATCH=8 \
      "$py" compare.py --servers modelport --models cnn --conc 32 --loaders wrk,pa-http,pa-grpc \
      --dur "$dur" --warm 1 --tag "$tag" --env "MODELPORT_ARGS=--workers $workers"
  done
done
"$py" summarize.py --tags "$tag" --no-raw | tee "$PEERS/results/summary_$tag.md"
