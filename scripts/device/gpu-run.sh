#!/usr/bin/env bash
# On the GPU machine (device tool): unpack the carried Debian packages into a private prefix, build
# for sm_90a, run the gpu-labelled tests and the GPU benchmarks; logs go to $OUT.
#   device run: bash scripts/device/gpu-run.sh [ctest-regex] [bench-filter]   carry: [".deps"]
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/varkv-out}
mkdir -p "$OUT"
PREFIX=/opt/varkv-deps
if [ ! -d "$PREFIX/usr/include/boost" ]; then
  mkdir -p "$PREFIX"
  for f in .deps/debs/*.deb; do dpkg -x "$f" "$PREFIX"; done
fi
export LD_LIBRARY_PATH="$PREFIX/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$OUT/gpu.txt"
nvcc --version | tail -2; cmake --version | head -1
cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX/usr" \
  -DCMAKE_INCLUDE_PATH="$PREFIX/usr/include" >"$OUT/configure.log" 2>&1 || { tail -40 "$OUT/configure.log"; exit 1; }
# Only the GPU targets: the GPU test binary and every varkv_bench_gpu_* benchmark.
targets=(varkv_gpu_tests $(ninja -C build-gpu -t targets all 2>/dev/null | grep -o '^varkv_bench_gpu_[A-Za-z0-9_]*' | sort -u))
cmake --build build-gpu -j 16 --target "${targets[@]}" >"$OUT/build.log" 2>&1 \
  || { grep -E "error|Error" -A5 "$OUT/build.log" | head -80; exit 1; }
echo "build ok"
(cd build-gpu && ctest -L gpu --output-on-failure ${1:+-R "$1"} 2>&1 | tee "$OUT/ctest-gpu.log" | tail -40)
for b in build-gpu/bench/varkv_bench_gpu_*; do
  [ -x "$b" ] || continue
  "$b" ${2:+--benchmark_filter="$2"} --benchmark_out="$OUT/$(basename "$b").json" --benchmark_out_format=json 2>&1 \
    | tee "$OUT/$(basename "$b").txt" | tail -60
done
