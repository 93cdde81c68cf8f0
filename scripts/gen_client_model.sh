#!/usr/bin/env bash
# Regenerates exporter/vendor/client_model/metrics_pb2.py from the vendored metrics.proto (the
# Prometheus client data model, Apache-2.0, see LICENSE and NOTICE beside it). Needs grpcio-tools
# whose protoc matches the protobuf runtime's major version (protobuf 6.x: grpcio-tools < 1.77),
# e.g. in a throwaway venv: PROTOC_PYTHON=/tmp/gen/bin/python bash scripts/gen_client_model.sh
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
py=${PROTOC_PYTHON:-python3}
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
# under its canonical path, so the descriptor registers as io/prometheus/client/metrics.proto
mkdir -p "$tmp/io/prometheus/client"
cp "$here/exporter/vendor/client_model/metrics.proto" "$tmp/io/prometheus/client/"
"$py" -m grpc_tools.protoc -I"$tmp" --python_out="$tmp" --pyi_out="$tmp" io/prometheus/client/metrics.proto
cp "$tmp/io/prometheus/client/metrics_pb2.py" "$tmp/io/prometheus/client/metrics_pb2.pyi" \
   "$here/exporter/vendor/client_model/"
