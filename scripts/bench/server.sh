#!/usr/bin/env bash
# Server benchmark: start-up to /readyz, idle memory, binary size and kine
# write throughput (FULL vs NORMAL). Usage: scripts/bench/server.sh [serverbench flags]
set -euo pipefail
cd "$(dirname "$0")/../.."
BERTH_BIN=${BERTH_BIN:-bin/berth}
mkdir -p bin dist/bench
go build -o bin/serverbench ./scripts/bench/serverbench
out=dist/bench/server-$(date +%Y%m%d-%H%M%S).txt
bin/serverbench -bin "$BERTH_BIN" "$@" | tee "$out"
echo "saved to $out"
