#!/usr/bin/env bash
# Starts `sandq dev` (Redis, MinIO, a worker on the analysis image and the
# API server), runs the spreadsheet example end to end (a workbook and a CSV
# in; a chart and a summary workbook out), prints its result and saves its
# outputs under demo-out/ (SANDQ_DEMO_OUT), which outlive the stack and its
# links, then stops the stack. Used by `make demo`, which builds the
# analysis image first.
set -euo pipefail
cd "$(dirname "$0")/.."
SANDQ=bin/sandq
DATA=${SANDQ_DEV_DIR:-$HOME/.local/share/sandq/dev}
mkdir -p "$DATA"

if (exec 3<>/dev/tcp/127.0.0.1/6379) 2>/dev/null; then
	echo "port 6379 is in use: is a sandq dev already running? (stop it, or run the enqueue line below against it)" >&2
	exit 1
fi
# sandq dev hands its environment to its worker: SANDQ_IMAGE is the image
# jobs run on unless they name one.
SANDQ_IMAGE=analysis $SANDQ dev --data-dir "$DATA" > "$DATA/dev.out" 2>&1 &
dev=$!
trap 'kill -TERM $dev 2>/dev/null; wait $dev 2>/dev/null || true' EXIT
for _ in $(seq 1 120); do
	grep -q "sandq dev is running" "$DATA/dev.out" 2>/dev/null && break
	kill -0 $dev 2>/dev/null || { cat "$DATA/dev.out"; exit 1; }
	sleep 0.5
done
cat "$DATA/dev.out"
echo
OUT=${SANDQ_DEMO_OUT:-demo-out}
echo "+ sandq enqueue examples/budget_report.py --input examples/budget.xlsx --input examples/actuals.csv --wait --download $OUT/"
$SANDQ enqueue examples/budget_report.py --input examples/budget.xlsx --input examples/actuals.csv --wait --download "$OUT/"
echo
echo "The chart and the workbook are in $(cd "$OUT" && pwd)/"
