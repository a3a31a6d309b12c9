#!/usr/bin/env bash
# On the GPU machine (device tool): unpack the carried Debian packages into a private prefix, build
# for sm_90a, run the gpu-labelled tests and the GPU benchmarks; logs go to $OUT.
#   device run: bash scripts/device/gpu-run.sh [ctest-regex] [bench-filter]   carry: [".deps"]
# Optional environment:
#   VARKV_SANITIZE_FILTER=GLOB   also run compute-sanitizer memcheck + racecheck on varkv_gpu_tests with
#                                this gtest filter (logs: $OUT/sanitizer-*.log)
#   VARKV_SKIP_PEERS=1           skip the PyTorch peer script (bench/peers/sdpa_peer.py)
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
if [ -z "${VARKV_SKIP_PEERS:-}" ] && [ -f bench/peers/sdpa_peer.py ] && python3 -c 'import torch' 2>/dev/null; then
  ours=$OUT/varkv_bench_gpu_attention.json
  PYTHONUNBUFFERED=1 python3 bench/peers/sdpa_peer.py --out "$OUT/sdpa_peer.json" ${2:+--quick} \
    $( [ -f "$ours" ] && echo --ours "$ours" ) 2>&1 | tee "$OUT/sdpa_peer.txt" | tail -30
fi
if [ -n "${VARKV_SANITIZE_FILTER:-}" ]; then
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 3 build-gpu/tests/varkv_gpu_tests \
      --gtest_filter="$VARKV_SANITIZE_FILTER" >"$OUT/sanitizer-$tool.log" 2>&1
    echo "compute-sanitizer $tool ($VARKV_SANITIZE_FILTER): exit $? -- $(grep -E 'ERROR SUMMARY|PASSED|FAILED' "$OUT/sanitizer-$tool.log" | tr '\n' ' ')"
  done
fi
