#!/bin/bash
# Runs 27 and 28 (docs/validation.md, "Runs 27-29"): run 26's probe with the edge's CPU
# contended. The pipesd process (the edge: draft, uplink threads, the delay relay) is pinned
# to core 0 beside a busy loop at nice NICE (default 5: the draft keeps about 3/4 of the core);
# the server's processes go to core 1. Needs 2 cores and root for tbf; about 8 minutes.
#   docs/validation/contend_edge.sh OUT [NICE]
set -u
OUT=${1:?usage: contend_edge.sh OUT [NICE]}
NICE=${2:-5}
cd "$(dirname "$0")/../.."
pipesd validate scenarios/testbed_cpu_real82_notune005.toml \
  --profile docs/validation/cpu-run25-real82-ablations/calibration/profile.json \
  --target smollm2-135m --draft ~/.cache/pipesd/models/SmolLM2-135M-Instruct.Q4_1.q4_0.gguf \
  --target-threads 1 --draft-threads 1 --shaping tbf --acceptance real --quiet --out "$OUT" &
PID=$!
taskset -a -p -c 0 $PID > /dev/null
nice -n "$NICE" taskset -c 0 python -c "while True: pass" &
HOG=$!
trap 'kill $HOG 2>/dev/null' EXIT
descendants() { for c in $(pgrep -P "$1"); do echo "$c"; descendants "$c"; done; }
while kill -0 $PID 2>/dev/null; do
  taskset -a -p -c 0 $PID > /dev/null 2>&1  # threads started since
  for c in $(descendants $PID); do taskset -a -p -c 1 "$c" > /dev/null 2>&1; done
  sleep 1
done
wait $PID
