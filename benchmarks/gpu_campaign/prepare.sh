#!/usr/bin/env bash
# Build the GPU campaign's carry folder here, from the repository root:
#   benchmarks/gpu_campaign/prepare.sh [DEST]      (default DEST: .whl, git-ignored)
# It holds: a wheel of pipesd-kit itself; a wheel for CPython 3.12 on x86-64 Linux of every
# package in packages.txt, at the version installed here; llama-cpp-python's source package
# with the test vocabularies (vendor/llama.cpp/models/*.gguf) and documentation stripped, so
# that everything fits the device's 64 MiB carry limit with the repository. On the GPU machine,
# benchmarks/gpu_campaign/install.sh DEST installs it all without network.
set -euo pipefail
DEST=${1:-.whl}
PY=${PYTHON:-python3}
LIMIT_MIB=${LIMIT_MIB:-56}   # the carry's share of 64 MiB (the repository takes ~7)
mkdir -p "$DEST"
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT

version() { "$PY" -c "import importlib.metadata as m, sys; print(m.version(sys.argv[1]))" "$1"; }

echo "pipesd-kit (this checkout)"
had_build=$([ -e build ] && echo yes || echo no)
"$PY" -m pip wheel --quiet --no-deps --no-build-isolation -w "$DEST" .
[ "$had_build" = yes ] || rm -rf build   # setuptools' scratch folder, made just now

platforms=(--platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64
           --platform manylinux2014_x86_64 --platform any)
grep -v '^#' benchmarks/gpu_campaign/packages.txt | while read -r name; do
    [ -n "$name" ] || continue
    pinned="$name==$(version "$name")"
    echo "$pinned"
    if ! "$PY" -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
            --implementation cp --abi cp312 --abi abi3 --abi none "${platforms[@]}" \
            -d "$DEST" "$pinned" 2>/dev/null; then
        # a source-only package: build its (pure-Python) wheel here
        "$PY" -m pip wheel --quiet --no-deps -w "$DEST" "$pinned"
    fi
done

lcpp="llama-cpp-python==$(version llama-cpp-python)"
echo "$lcpp (source package, stripped)"
"$PY" -m pip download --quiet --no-deps --no-binary :all: -d "$work" "$lcpp"
sdist=$(ls "$work"/llama_cpp_python-*.tar.gz)
tar -xzf "$sdist" -C "$work"
root=$(ls -d "$work"/llama_cpp_python-*/)
rm -rf "$root"/vendor/llama.cpp/models/*.gguf "$root"/vendor/llama.cpp/docs "$root"/docs
tar -czf "$DEST/$(basename "$sdist")" -C "$work" "$(basename "$root")"

size_mib=$(du -sm "$DEST" | cut -f1)
ls -la "$DEST"
echo "carry folder $DEST: ${size_mib} MiB (limit ${LIMIT_MIB} MiB)"
[ "$size_mib" -le "$LIMIT_MIB" ] || { echo "too large for the device's carry limit" >&2; exit 1; }
