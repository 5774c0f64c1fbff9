#!/usr/bin/env bash
# Side-by-side host cost of meshgate's forwarding engines, sockmap against
# splice and copy, with no proxy as the baseline (BENCHMARKS.md, "The sockmap
# engine"). Uses the release binaries as they are built:
#
#   cargo build --release -p meshgate -p meshgate-bench
#   bench/sockmap/run.sh [--reps N] [--secs S] [--out FILE]
#
# Every case runs every target once per repetition, the order rotated by one
# each repetition. Each run is one meshgate-bench JSON line in FILE (default
# target/sockmap-bench.jsonl); bench/sockmap/summary.py turns them into the
# table. Needs root (sockmap loads a BPF program). Loopback only.
set -euo pipefail
cd "$(dirname "$0")/../.."

reps=3 secs=5 out=target/sockmap-bench.jsonl idle_n=5000
while [ $# -gt 0 ]; do
  case "$1" in
    --reps) reps="$2"; shift ;;
    --secs) secs="$2"; shift ;;
    --out) out="$2"; shift ;;
    --idle) idle_n="$2"; shift ;;
    *) echo "run.sh: unknown argument '$1'" >&2; exit 64 ;;
  esac
  shift
done

meshgate=target/release/meshgate bench=target/release/meshgate-bench
for b in "$meshgate" "$bench"; do
  [ -x "$b" ] || { echo "run.sh: $b missing (cargo build --release -p meshgate -p meshgate-bench)" >&2; exit 69; }
done
ip=127.0.0.1 port=18443 backend=127.0.0.1:19101 sni=bench.local admin=127.0.0.1:18445
dir=$(mktemp -d)
gw_pid=
stop() {
  if [ -n "$gw_pid" ]; then kill "$gw_pid" 2>/dev/null || true; wait "$gw_pid" 2>/dev/null || true; gw_pid=; fi
}
trap 'stop; rm -rf "$dir"' EXIT
printf '[[routes]]\nsni = "%s"\nendpoints = ["%s"]\n' "$sni" "$backend" >"$dir/routes.toml"

start() { # forward
  "$meshgate" serve --listen "$ip:$port" --routes "$dir/routes.toml" --shards 2 \
    --admin "$admin" --drain-timeout-secs 1 --forward "$1" >"$dir/gw.log" 2>&1 &
  gw_pid=$!
  for _ in $(seq 100); do
    grep -q "listening" "$dir/gw.log" && return 0
    kill -0 "$gw_pid" 2>/dev/null || break
    sleep 0.1
  done
  cat "$dir/gw.log" >&2
  echo "run.sh: meshgate --forward $1 did not start" >&2
  exit 70
}

args_for() { # case
  case "$1" in
    rr) echo "rr -c 32 -d $secs --warmup-secs 1" ;;
    rr-rate) echo "rr -c 16 -d $secs --warmup-secs 1 --rate 8000" ;;
    bulk) echo "bulk -c 4 -d $secs --warmup-secs 1 --direction download" ;;
    cps) echo "cps -c 32 -d $secs" ;;
    idle) echo "idle -n $idle_n -c 64 -d 2 --settle-ms 1000" ;;
  esac
}

# Highest kernel TCP memory (pages, /proc/net/sockstat) and slab (KiB,
# /proc/meminfo) while process $1 runs, as "PAGES SLAB".
sample_kernel() {
  local top_mem=0 top_slab=0 m s
  while kill -0 "$1" 2>/dev/null; do
    m=$(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
    s=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
    [ "$m" -gt "$top_mem" ] && top_mem=$m
    [ "$s" -gt "$top_slab" ] && top_slab=$s
    sleep 0.2
  done
  echo "$top_mem $top_slab"
}

targets=(none sockmap adaptive splice copy)
: >"$out"
for rep in $(seq "$reps"); do
  for case in rr rr-rate bulk cps idle; do
    n=${#targets[@]}
    for i in $(seq 0 $((n - 1))); do
      t=${targets[$(( (i + rep) % n ))]}
      if [ "$t" = none ]; then
        proxy=(--no-proxy)
      else
        start "$t"
        proxy=(--target "$ip:$port" --proxy-pid "$gw_pid")
      fi
      mem0=$(awk '/^TCP:/ {for (i = 1; i < NF; i++) if ($i == "mem") print $(i + 1)}' /proc/net/sockstat)
      slab0=$(awk '/^Slab:/ {print $2}' /proc/meminfo)
      # shellcheck disable=SC2046
      "$bench" $(args_for "$case") "${proxy[@]}" --sni "$sni" --backend-listen "$backend" \
        -q --label "$t" >"$dir/run.json" &
      bench_pid=$!
      top=$(sample_kernel "$bench_pid")
      wait "$bench_pid"
      # Bytes the sockmap engine's program diverted to the gateway, and all
      # bytes forwarded (0 and 0 without a gateway).
      diverted=0 forwarded=0
      if [ "$t" != none ]; then
        metrics=$(curl -s "http://$admin/metrics" || true)
        diverted=$(awk '/^meshgate_sockmap_diverted_bytes_total / {print $2}' <<<"$metrics")
        forwarded=$(awk '/^meshgate_sent_to_(client|upstream)_bytes_total / {s += $2} END {print s + 0}' <<<"$metrics")
      fi
      stop
      python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); d["kernel"]={"tcp_pages_before":int(sys.argv[2]),"slab_kib_before":int(sys.argv[3]),"tcp_pages_max":int(sys.argv[4]),"slab_kib_max":int(sys.argv[5])}; d["gateway"]={"diverted_bytes":float(sys.argv[6] or 0),"forwarded_bytes":float(sys.argv[7] or 0)}; print(json.dumps(d))' \
        "$dir/run.json" "$mem0" "$slab0" $top "${diverted:-0}" "${forwarded:-0}" >>"$out"
      echo "rep $rep $case $t done" >&2
    done
  done
done
python3 bench/sockmap/summary.py "$out"
