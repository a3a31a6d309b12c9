#!/usr/bin/env bash
# Builds everything (the CUDA code too, when nvcc is present) and runs the CPU tests.
#   --sanitize: instead, builds the host code under AddressSanitizer + UndefinedBehaviorSanitizer (in
#               build-asan) and runs the CPU tests there.
# GPU tests: `ctest --test-dir build -L gpu` on a machine with an NVIDIA GPU.
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$VARKV_ROOT/scripts/setup.sh"
if [ "${1:-}" != "--sanitize" ]; then
  configure_and_build "$VARKV_ROOT/build"
  ctest --test-dir "$VARKV_ROOT/build" -L cpu --output-on-failure -j "$VARKV_JOBS"
else
  configure_and_build "$VARKV_ROOT/build-asan" -DVARKV_SANITIZE=ON -DVARKV_ENABLE_CUDA=OFF -DVARKV_BUILD_BENCH=OFF
  ASAN_OPTIONS=detect_leaks=1:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1 \
    ctest --test-dir "$VARKV_ROOT/build-asan" -L cpu --output-on-failure -j "$VARKV_JOBS"
fi
