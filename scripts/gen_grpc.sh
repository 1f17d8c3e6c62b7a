#!/usr/bin/env bash
# Regenerate the protobuf modules (messages and the service descriptor) from src/modelport/frontends/grpc/proto/inference.proto.
#   bash scripts/gen_grpc.sh            # writes src/modelport/frontends/grpc/generated/
#   bash scripts/gen_grpc.sh --check    # fails if the committed modules are out of date
# The virtual include path makes the generated imports package-relative.
set -euo pipefail
cd "$(dirname "$0")/.."
PY=${PYTHON:-.venv/bin/python}
PROTO_DIR=src/modelport/frontends/grpc/proto
PACKAGE_PATH=modelport/frontends/grpc/generated
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT
"$PY" -m grpc_tools.protoc -I"$PACKAGE_PATH=$PROTO_DIR" \
  --python_out="$out" --pyi_out="$out" "$PACKAGE_PATH/inference.proto"
target=src/$PACKAGE_PATH
if [[ "${1:-}" == "--check" ]]; then
  for f in inference_pb2.py inference_pb2.pyi; do
    if ! cmp -s "$out/$PACKAGE_PATH/$f" "$target/$f"; then
      echo "gRPC stubs are out of date: $target/$f differs; run: bash scripts/gen_grpc.sh" >&2
      exit 1
    fi
  done
  echo "gRPC stubs are current"
else
  cp "$out/$PACKAGE_PATH"/inference_pb2{.py,.pyi} "$target/"
  echo "wrote $target/inference_pb2.py and inference_pb2.pyi"
fi
