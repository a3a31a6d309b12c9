#!/usr/bin/env bash
# The main job on its built-in default. Now: exact multi-scale attention through a full KV cache on a
# VAR-d16-shaped random problem, with the KV bytes per layer and scale. Arguments go to varkv-demo
# (try --help).
set -euo pipefail
source "$(dirname "$0")/env.sh"
"$VARKV_ROOT/scripts/setup.sh"
configure_and_build "$VARKV_ROOT/build" -- varkv-demo >&2
exec "$VARKV_ROOT/build/examples/varkv-demo" "$@"
