#!/usr/bin/env bash
# The C++ app runtime for AArch64 Linux, built on an x86-64 Debian 12 host and run under qemu-user:
#
#   bash targets/executorch/app_runtime/arm64/build.sh [OUT]        (default OUT: build/app-runtime-arm64)
#   qemu-aarch64-static -cpu neoverse-n1 OUT/lgc-generate build/android-int8 "a photo of a cat" -o cat.png
#
# Installs what it needs from Debian (qemu-user-static, g++-aarch64-linux-gnu, and ICU, OpenSSL and
# libpng of the arm64 architecture: the same glibc as the loader qemu finds at /lib), takes ExecuTorch's
# manylinux aarch64 wheel from the package index (the same version as the host's), and cross-compiles.
# Everything is cached: a second run only rebuilds what changed. Prints how long the set-up took.
#
# Run the binaries with qemu's default library prefix (/): Debian's cross toolchain ships its own
# glibc under /usr/aarch64-linux-gnu, and a loader from one glibc build with libc.so from another
# (QEMU_LD_PREFIX=/usr/aarch64-linux-gnu with the arm64 multiarch libraries) hangs in pthread_create.
set -euo pipefail
start=$(date +%s)
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../../../.." && pwd)"
out="$(realpath -m "${1:-$repo/build/app-runtime-arm64}")"
cache="${LGC_ARM64_CACHE:-$HOME/.cache/lgc/arm64}"
mkdir -p "$cache" "$out"

need=()
command -v qemu-aarch64-static >/dev/null || need+=(qemu-user-static)
command -v aarch64-linux-gnu-g++ >/dev/null || need+=(g++-aarch64-linux-gnu)
for lib in libicuuc.so libcrypto.so libpng16.so; do
  [ -e "/usr/lib/aarch64-linux-gnu/$lib" ] || { need+=(libicu-dev:arm64 libssl-dev:arm64 libpng-dev:arm64); break; }
done
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]}"
  dpkg --print-foreign-architectures | grep -qx arm64 || dpkg --add-architecture arm64
  apt-get update -qq
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >/dev/null
fi

version="$(python -c 'import importlib.metadata as m; print(m.version("executorch"))')"
et="$cache/executorch-$version"
if [ ! -e "$et/executorch/lib/libexecutorch.so" ]; then
  echo "fetching the executorch $version aarch64 wheel"
  python -m pip download -q "executorch==$version" --no-deps --only-binary=:all: --python-version 3.11 \
    --platform manylinux_2_28_aarch64 -d "$cache/wheels" 2>"$cache/pip.log" || { cat "$cache/pip.log" >&2; exit 1; }
  rm -rf "$et" && mkdir -p "$et"
  python -m zipfile -e "$cache"/wheels/executorch-"$version"-*aarch64.whl "$et/unpacked"
  mkdir -p "$et/executorch" && mv "$et/unpacked/executorch/"{lib,include,share} "$et/executorch/" && rm -rf "$et/unpacked"
fi

json="$(python -c 'import nlohmann_json, os; print(os.path.dirname(nlohmann_json.__file__) + "/include")')"
cmake -S "$repo/targets/executorch/app_runtime" -B "$out" -G Ninja -DCMAKE_BUILD_TYPE=Release \
  -DCMAKE_TOOLCHAIN_FILE="$here/aarch64-linux-gnu.cmake" -DCMAKE_PREFIX_PATH="$et/executorch" \
  -Dnlohmann_json_INCLUDE_DIR="$json" >/dev/null
cmake --build "$out" >/dev/null
echo "arm64 app runtime in $out ($(( $(date +%s) - start )) s)"
