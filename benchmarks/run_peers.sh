#!/usr/bin/env bash
# modelport next to the peers on the shared bench's models, in one run (see ../shared/bench/README.md).
# Needs the peer venvs: bash ../shared/bench/setup.sh torch perf fastapi mlserver pytriton
#   bash benchmarks/run_peers.sh TAG [DURATION_S] [REPEATS]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd); root=$(dirname "$here")
bench=${BENCH:-$root/../shared/bench}
PEERS=${PEERS:-$HOME/.cache/modelport-bench}
tag=${1:?usage: run_peers.sh TAG [DURATION_S] [REPEATS]}; dur=${2:-5}; repeat=${3:-1}
py=$PEERS/venv-torch/bin/python
export MODELPORT=$root/.venv/bin/modelport
cd "$bench"
# the in-process ceiling, measured in the same session as the servers
"$py" raw_ort.py --seconds 3 --models cnn,mlp --json "$PEERS/results/raw_ort_$tag.json"
for model in mlp cnn; do
  batch=32; [ "$model" = cnn ] && batch=8
  MODELPORT_CONFIG=$here/configs/bench-$model.yaml MODELPORT_BATCH=$batch \
    "$py" compare.py --servers modelport,pytriton --models "$model" --conc 1,8,32 \
    --loaders wrk,pa-http,pa-grpc --dur "$dur" --warm 1 --tag "$tag" --repeat "$repeat"
  "$py" compare.py --servers fastapi,mlserver --models "$model" --conc 1,8,32 \
    --loaders wrk --dur "$dur" --warm 1 --tag "$tag" --repeat "$repeat"
done
"$py" summarize.py --tags "$tag" | tee "$PEERS/results/summary_$tag.md"
"$root/.venv/bin/python" "$here/plot_peers.py" --tag "$tag" --out "$here/results/peers-$tag.png"  # rename to peers-DATE-TAG.png when committing
