#!/usr/bin/env bash
# On the GPU machine (device tool): the GPU test suite, then the end-to-end generation benchmark of
# varkv beside the official-style PyTorch peer, in one call; logs and JSON go to $OUT (also as one
# tarball, since only 8 files come back).
#   device run: bash scripts/device/e2e-run.sh      carry: [".deps", ".golden", ".device"]
# Binaries: .device/bin.tar.xz from scripts/device/prebuild.sh when they load here, else built here
# from the carried Debian packages (.deps, see gpu-run.sh).
# Optional environment:
#   VARKV_GTEST_FILTER=GLOB      gtest filter of varkv_gpu_tests (default: all)
#   VARKV_SANITIZE_FILTER=GLOB   compute-sanitizer memcheck and racecheck on that filter
#   VARKV_ATTN_FILTER=REGEX      run varkv_bench_gpu_attention with this benchmark filter ("." = all), then
#                                bench/peers/sdpa_peer.py with its JSON (--ours); VARKV_SDPA_ARGS adds arguments,
#                                VARKV_SKIP_SDPA=1 skips the peer
#   VARKV_E2E_ARGS="..."         arguments of varkv_bench_e2e_generation (default: none = full plan)
#   VARKV_PEER_ARGS="..."        arguments of bench/peers/var_torch_peer.py; VARKV_SKIP_PEER=1 skips it
#   VARKV_SKIP_E2E=1             tests only
set -uo pipefail
cd "$(dirname "$0")/../.."
OUT=${OUT:-/tmp/varkv-out}
mkdir -p "$OUT/logs"
LOG=$OUT/logs
export VARKV_GOLDEN_DIR=${VARKV_GOLDEN_DIR:-$PWD/.golden}
nvidia-smi --query-gpu=name,memory.total,clocks.sm,clocks.mem --format=csv | tee "$LOG/gpu.txt"
BIN=/tmp/varkv-bin
rm -rf "$BIN" && mkdir -p "$BIN"
if [ -f .device/bin.tar.xz ] && tar -C /tmp -xJf .device/bin.tar.xz && mv /tmp/bin/* "$BIN"/ \
   && "$BIN/varkv_gpu_tests" --gtest_list_tests >/dev/null 2>"$LOG/prebuilt.err"; then
  echo "prebuilt binaries ($(head -1 .device/bin.commit 2>/dev/null))"
  export LD_LIBRARY_PATH="$BIN/lib:${LD_LIBRARY_PATH:-}"
else
  echo "prebuilt binaries unusable ($(head -3 "$LOG/prebuilt.err" 2>/dev/null)); building here"
  PREFIX=/opt/varkv-deps
  mkdir -p "$PREFIX"; for f in .deps/debs/*.deb; do dpkg -x "$f" "$PREFIX"; done
  export LD_LIBRARY_PATH="$PREFIX/usr/lib/x86_64-linux-gnu:${LD_LIBRARY_PATH:-}"
  cmake -S . -B build-gpu -G Ninja -DCMAKE_BUILD_TYPE=Release -DCMAKE_PREFIX_PATH="$PREFIX/usr" \
    -DCMAKE_INCLUDE_PATH="$PREFIX/usr/include" >"$LOG/configure.log" 2>&1 || { tail -40 "$LOG/configure.log"; exit 1; }
  cmake --build build-gpu -j 16 --target varkv_gpu_tests varkv_bench_e2e_generation >"$LOG/build.log" 2>&1 \
    || { grep -E "error" -A5 "$LOG/build.log" | head -60; exit 1; }
  cmake --build build-gpu -j 16 --target varkv_bench_gpu_attention >>"$LOG/build.log" 2>&1
  cp build-gpu/tests/varkv_gpu_tests build-gpu/bench/varkv_bench_e2e_generation build-gpu/bench/varkv_bench_gpu_attention "$BIN"/
fi
"$BIN/varkv_gpu_tests" ${VARKV_GTEST_FILTER:+--gtest_filter="$VARKV_GTEST_FILTER"} >"$LOG/gtest.log" 2>&1
echo "varkv_gpu_tests: exit $?"; grep -E "^\[  (PASSED|FAILED|SKIPPED) |FAILED  \]|tests? ran" "$LOG/gtest.log" | head -30
if [ -n "${VARKV_SANITIZE_FILTER:-}" ]; then
  for tool in memcheck racecheck; do
    compute-sanitizer --tool "$tool" --error-exitcode 3 "$BIN/varkv_gpu_tests" --gtest_filter="$VARKV_SANITIZE_FILTER" \
      >"$LOG/sanitizer-$tool.log" 2>&1
    echo "compute-sanitizer $tool ($VARKV_SANITIZE_FILTER): exit $? -- $(grep -E 'ERROR SUMMARY|RACECHECK SUMMARY' "$LOG/sanitizer-$tool.log" | tr '\n' ' ')"
  done
fi
if [ -n "${VARKV_ATTN_FILTER:-}" ] && [ -x "$BIN/varkv_bench_gpu_attention" ]; then
  "$BIN/varkv_bench_gpu_attention" --benchmark_filter="$VARKV_ATTN_FILTER" --benchmark_out="$OUT/attention.json" \
    --benchmark_out_format=json >"$LOG/attention.txt" 2>&1
  echo "attention bench: exit $?"; grep -E "^attn|^select|^step|GPU " "$LOG/attention.txt" | head -150
  if [ -z "${VARKV_SKIP_SDPA:-}" ] && python3 -c 'import torch' 2>/dev/null; then
    PYTHONUNBUFFERED=1 python3 bench/peers/sdpa_peer.py --out "$OUT/sdpa_peer.json" --ours "$OUT/attention.json" \
      ${VARKV_SDPA_ARGS:-} >"$LOG/sdpa_peer.txt" 2>&1
    echo "sdpa peer: exit $?"; tail -25 "$LOG/sdpa_peer.txt"
  fi
fi
if [ -z "${VARKV_SKIP_E2E:-}" ]; then
  if [ -z "${VARKV_SKIP_PEER:-}" ] && python3 -c 'import torch' 2>/dev/null; then
    PYTHONUNBUFFERED=1 python3 bench/peers/var_torch_peer.py --out "$OUT/var_torch_peer.json" ${VARKV_PEER_ARGS:-} \
      >"$LOG/var_torch_peer.txt" 2>&1
    echo "peer: exit $?"; tail -30 "$LOG/var_torch_peer.txt"
  fi
  peer=(); [ -f "$OUT/var_torch_peer.json" ] && peer=(--peer "$OUT/var_torch_peer.json")
  "$BIN/varkv_bench_e2e_generation" --out "$OUT/e2e.json" "${peer[@]}" ${VARKV_E2E_ARGS:-} 2>&1 | tee "$LOG/e2e.txt"
fi
tar -C "$OUT" -czf "$OUT/logs.tgz" logs
