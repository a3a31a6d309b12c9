#!/usr/bin/env bash
# On the GPU machine (device tool): A/B(/C...) of varkv_bench_gpu_attention binaries in one call, so
# that kernel variants are compared on the same GPU, side by side.
#   bash scripts/device/ab-bench.sh 'BENCH_FILTER' ROUNDS BIN [BIN ...]
# Each round runs every binary in turn on the filter; per benchmark it prints us_graph, us_host and us_median
# ("us_graph=... us_host=... us_median=... NAME" lines under "== BIN round R" headers), after each binary's
# register / stack use per fused-attention kernel (cuobjdump). Compare the minimum over rounds; put
# one binary first and last to see whether position in a round matters. Binaries from a development
# machine (e.g. copies of build/bench/varkv_bench_gpu_attention, one per variant) travel in a
# git-ignored folder named in `carry`; Google Benchmark's library comes from .device/bin.tar.xz
# (scripts/device/prebuild.sh) when present.
set -uo pipefail
[ $# -ge 3 ] || { echo "usage: $0 'BENCH_FILTER' ROUNDS BIN [BIN ...]" >&2; exit 2; }
filter=$1 rounds=$2
shift 2
if [ -f .device/bin.tar.xz ]; then
  mkdir -p /tmp/ab && tar -C /tmp/ab -xJf .device/bin.tar.xz && export LD_LIBRARY_PATH=/tmp/ab/bin/lib:${LD_LIBRARY_PATH:-}
fi
for b in "$@"; do
  [ -x "$b" ] || { echo "not an executable: $b" >&2; exit 2; }
  echo "== $b registers"
  cuobjdump --dump-resource-usage "$b" | grep -A1 "fused_attention" | grep -oE "REG:[0-9]+ STACK:[0-9]+" | sort | uniq -c | tr '\n' ' '
  echo
done
for r in $(seq 1 "$rounds"); do
  for b in "$@"; do
    echo "== $b round $r"
    "$b" --benchmark_filter="$filter" 2>&1 | grep -E "^attn|^select|^step" |
      awk '{ for (i = 1; i <= NF; i++) if ($i ~ /us_(median|graph|host)/) printf "%s ", $i; print $1 }'
  done
done
