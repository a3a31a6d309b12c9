#!/usr/bin/env bash
# On the development machine (same CUDA 13.0 as the GPU machine): build the GPU binaries for sm_90a
# and pack them into .device/bin.tar.xz (git-ignored), so a device call spends its time running, not
# compiling. e2e-run.sh unpacks them and falls back to building there when they do not load.
#   scripts/device/prebuild.sh [build-dir]      (default build-device)
set -euo pipefail
cd "$(dirname "$0")/../.."
BUILD=${1:-build-device}
cmake -S . -B "$BUILD" -G Ninja -DCMAKE_BUILD_TYPE=Release >/dev/null
targets=(varkv_gpu_tests varkv_bench_e2e_generation varkv_bench_gpu_attention)
cmake --build "$BUILD" -j "$(nproc)" --target "${targets[@]}"
rm -rf .device/bin && mkdir -p .device/bin
cp "$BUILD/tests/varkv_gpu_tests" "$BUILD/bench/varkv_bench_e2e_generation" "$BUILD/bench/varkv_bench_gpu_attention" .device/bin/
strip .device/bin/*
# Runtime libraries of the Debian packages the GPU machine lacks (Google Benchmark).
mkdir -p .device/bin/lib
for b in .device/bin/varkv_*; do
  ldd "$b" | awk '/libbenchmark/ {print $3}'
done | sort -u | xargs -r -I{} cp -L {} .device/bin/lib/
tar -C .device -cJf .device/bin.tar.xz bin
rm -rf .device/bin
git rev-parse HEAD > .device/bin.commit
git status --short --untracked-files=no | sed 's/^/dirty: /' >> .device/bin.commit
ls -la .device/bin.tar.xz; cat .device/bin.commit
