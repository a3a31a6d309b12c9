#!/usr/bin/env bash
# Installs what varkv's build needs from Debian's packages, only what is missing (idempotent).
# The CUDA toolkit (nvcc, CUB/CCCL) is expected from the machine image; without it the CPU parts
# still build and test.
set -euo pipefail
packages=(cmake ninja-build g++ ccache pkg-config libfmt-dev libboost-dev libgtest-dev libgmock-dev libbenchmark-dev
          libcli11-dev nlohmann-json3-dev libstb-dev libpng-dev libomp-dev python3)
missing=()
for p in "${packages[@]}"; do
  dpkg-query -W -f='${Status}' "$p" 2>/dev/null | grep -q "install ok installed" || missing+=("$p")
done
if ((${#missing[@]})); then
  echo "varkv setup: installing ${missing[*]}" >&2
  sudo=""
  [ "$(id -u)" -eq 0 ] || sudo="sudo"
  export DEBIAN_FRONTEND=noninteractive
  $sudo apt-get update -qq
  $sudo apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
fi
if [ -x /usr/local/cuda/bin/nvcc ] && ! command -v nvcc >/dev/null; then
  echo "varkv setup: nvcc is at /usr/local/cuda/bin; it is added to PATH by the build scripts" >&2
fi
