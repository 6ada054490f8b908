#!/usr/bin/env bash
# Starts `sandq dev` (Redis, MinIO and a worker), runs the example analysis
# job end to end and prints its result with download links, then stops the
# stack. Used by `make demo`.
set -euo pipefail
cd "$(dirname "$0")/.."
SANDQ=bin/sandq
DATA=${SANDQ_DEV_DIR:-$HOME/.local/share/sandq/dev}
mkdir -p "$DATA"

if (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
	echo "port 6379 is in use: is a sandq dev already running? (stop it, or run the enqueue line below against it)" >&2
	exit 1
fi
$SANDQ dev --data-dir "$DATA" > "$DATA/dev.out" 2>&1 &
dev=$!
trap 'kill -TERM $dev 2>/dev/null; wait $dev 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
	grep -q "sandq dev is running" "$DATA/dev.out" 2>/dev/null && break
	kill -0 $dev 2>/dev/null || { cat "$DATA/dev.out"; exit 1; }
	sleep 0.5
done
cat "$DATA/dev.out"
echo
echo "+ sandq enqueue examples/sales_summary.py --input examples/sales.csv --wait"
$SANDQ enqueue examples/sales_summary.py --input examples/sales.csv --wait
