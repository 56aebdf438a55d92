#!/usr/bin/env bash
# Install what the GPU campaign needs on a bare GPU machine (Python 3.12, torch, transformers,
# no internet), from the folder prepare.sh built, then check it:
#   benchmarks/gpu_campaign/install.sh [CARRY]     (default CARRY: .whl), from the repo root
# Wheels go in with --no-index --no-deps (pip never looks for anything else); llama-cpp-python
# is compiled from its source package (about a minute on 16 cores, no CUDA: the draft runs on
# the CPU); pipesd-kit is installed editable from this checkout (scenarios/ and profiles are
# read from it), or from its wheel when there is no checkout here.
set -euo pipefail
CARRY=${1:-.whl}
PY=${PYTHON:-python3}
[ -d "$CARRY" ] || { echo "no carry folder $CARRY (run prepare.sh first)" >&2; exit 2; }
pip_install() { "$PY" -m pip install --quiet --no-index --find-links "$CARRY" --no-deps "$@"; }

wheels=$(ls "$CARRY"/*.whl | grep -v '/pipesd_kit-')
pip_install $wheels
CMAKE_ARGS="${CMAKE_ARGS:--DLLAVA_BUILD=OFF}" CMAKE_BUILD_PARALLEL_LEVEL=$(nproc) \
    pip_install --no-build-isolation "$CARRY"/llama_cpp_python-*.tar.gz
if [ -f pyproject.toml ] && grep -q 'name = "pipesd-kit"' pyproject.toml; then
    pip_install --no-build-isolation -e .
else
    pip_install "$CARRY"/pipesd_kit-*.whl
fi
"$PY" - <<'PY'
import importlib
for name in ("simpy", "skopt", "pydantic", "fastapi", "uvicorn", "gguf", "llama_cpp", "torch",
             "transformers", "pynvml", "calibrate.campaign", "realrun.cloud.server"):
    importlib.import_module(name)
import torch
print("installed; cuda:", torch.cuda.is_available(), torch.cuda.get_device_name(0) if torch.cuda.is_available() else "")
PY
