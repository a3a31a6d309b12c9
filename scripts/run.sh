#!/usr/bin/env bash
# The main job on its built-in default: varkv-generate with a randomly initialised VAR-d4 and the
# official VQ-VAE shape (256 px, 10 scales, 2 classes x CFG), full KV cache, CPU path. Writes the
# images, a grid and report.json (settings, time per scale, KV bytes per layer and scale) to
# ./varkv-out. Arguments go to varkv-generate (try --help; --var/--vae for real checkpoints).
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$VARKV_ROOT/scripts/setup.sh"
configure_and_build "$VARKV_ROOT/build" -- varkv-generate varkv-demo >&2
exec "$VARKV_ROOT/build/reference/varkv-generate" "$@"
