#!/usr/bin/env bash
# The GPU campaign on a bare GPU machine, in one command from the repository root:
#   benchmarks/gpu_campaign/run.sh [CAMPAIGN_DIR] [BUDGET_S]
# installs the carry folder (install.sh .whl), prints the plan and runs it within BUDGET_S
# seconds by its own estimate (default 540: 10 minutes less the install), then packs the
# campaign folder (parts, profiles, manifest, validation) into $OUT/campaign.tar.gz when $OUT
# is set (the device tool brings $OUT back). Run again with the same CAMPAIGN_DIR to resume.
set -uo pipefail
DIR=${1:-runs/gpu-campaign}
BUDGET=${2:-540}
PY=${PYTHON:-python3}
benchmarks/gpu_campaign/install.sh .whl || exit $?
nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
PYTHONUNBUFFERED=1 "$PY" -c 'import sys; from pipesd.cli import main; sys.exit(main())' \
    calibrate campaign --device cuda --out "$DIR" --budget-s "$BUDGET"
status=$?
if [ -n "${OUT:-}" ]; then
    tar -czf "$OUT/campaign.tar.gz" --exclude='*.gguf' "$DIR" && ls -la "$OUT"
fi
exit $status
