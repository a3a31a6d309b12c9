# Sourced by the run scripts: build directory, parallelism, CUDA on PATH.
VARKV_ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -d /usr/local/cuda/bin ] && export PATH="/usr/local/cuda/bin:$PATH"
VARKV_JOBS="${VARKV_JOBS:-$(nproc)}"
configure_and_build() {  # configure_and_build <build-dir> [cmake args...] -- [targets...]
  local dir="$1"; shift
  local cmake_args=() targets=()
  while (($#)); do [ "$1" = "--" ] && { shift; targets=("$@"); break; }; cmake_args+=("$1"); shift; done
  cmake -S "$VARKV_ROOT" -B "$dir" -G Ninja -DCMAKE_BUILD_TYPE=Release "${cmake_args[@]}" >/dev/null
  cmake --build "$dir" -j "$VARKV_JOBS" ${targets[@]:+--target "${targets[@]}"}
}
