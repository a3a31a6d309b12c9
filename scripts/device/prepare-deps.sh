#!/usr/bin/env bash
# Here (a Debian machine with network): download the Debian packages that the GPU machine lacks into
# .deps/debs (git-ignored). Name `.deps` in the device tool's `carry`; scripts/device/gpu-run.sh
# unpacks them there.
set -euo pipefail
cd "$(dirname "$0")/../.."
mkdir -p .deps/debs
cd .deps/debs
apt-get download libfmt-dev libfmt9 libboost1.74-dev libgtest-dev libgmock-dev libbenchmark-dev libbenchmark1debian \
  libcli11-dev nlohmann-json3-dev libstb-dev libstb0
ls -la
