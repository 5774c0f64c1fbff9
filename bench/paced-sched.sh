#!/usr/bin/env bash
# Paced request/response through meshgate with its shard threads' scheduling
# changed from outside, interleaved with no proxy and with the unchanged
# gateway: does the shards' place in the run queue make the latency tail?
# (BENCHMARKS.md, "Latency at a paced rate".)
#
#   bench/paced-sched.sh REPS MODE...
#
#   MODE   none        the gateway as it starts
#          slice:NS    sched_setattr with a custom slice of NS nanoseconds
#                      (SCHED_OTHER; the kernel clamps it to 0.1-100 ms)
#          nice:N      setpriority N on every shard thread (below 0: root)
#
# Each repetition runs no proxy, then one freshly started gateway per MODE,
# each for the same paced run as scripts/bench.sh's rr-rate (16 connections,
# 16,000 requests/s, 2.5 s after 0.5 s warm-up). Prints per MODE the added
# p50, added p99 and added host CPU per request over no proxy in the same
# repetition: median [min-max]. Uses the release build of meshgate and
# meshgate-bench (cargo build --release -p meshgate -p meshgate-bench).
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
reps="${1:-}"; shift || true
case "$reps" in ''|*[!0-9]*|0) echo "usage: bench/paced-sched.sh REPS MODE... (see the top of the file)" >&2; exit 64 ;; esac
[ $# -gt 0 ] || { echo "paced-sched.sh: give at least one MODE (none, slice:NS, nice:N)" >&2; exit 64; }
for m in "$@"; do
  case "$m" in none|slice:[0-9]*|nice:-[0-9]*|nice:[0-9]*) ;; *) echo "paced-sched.sh: MODE $m: expected none, slice:NS or nice:N" >&2; exit 64 ;; esac
done
bin="${CARGO_TARGET_DIR:-$root/target}/release"
for b in meshgate meshgate-bench; do
  [ -x "$bin/$b" ] || { echo "paced-sched.sh: $bin/$b missing: cargo build --release -p meshgate -p meshgate-bench" >&2; exit 69; }
done
work="$(mktemp -d)"
mg=""
trap '[ -n "$mg" ] && kill "$mg" 2>/dev/null; rm -rf "$work"' EXIT
ip=127.0.0.61 port=18700 backend=127.0.0.61:19171
sni="web.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
printf '[[routes]]\nsni = "%s"\nendpoints = ["%s"]\n' "$sni" "$backend" >"$work/routes.toml"
run=(rr -c 16 -d 2.5 --warmup-secs 0.5 --rate 16000 --sni "$sni" --backend-listen "$backend" --quiet)

# Applies MODE to every meshgate-shard thread of PID.
apply() { # pid mode
  python3 - "$1" "$2" <<'PY'
import ctypes, glob, os, struct, sys
pid, mode = sys.argv[1], sys.argv[2]
libc = ctypes.CDLL(None, use_errno=True)
for t in glob.glob(f"/proc/{pid}/task/*"):
    if not open(t + "/comm").read().startswith("meshgate-shard"):
        continue
    tid = int(os.path.basename(t))
    if mode.startswith("slice:"):
        # struct sched_attr (56 bytes): size, policy, flags, nice, priority,
        # runtime (the slice for SCHED_OTHER), deadline, period, util min/max.
        attr = ctypes.create_string_buffer(
            struct.pack("IIQiIQQQII", 56, 0, 0, 0, 0, int(mode[6:]), 0, 0, 0, 0))
        if libc.syscall(314, tid, attr, 0) != 0:  # SYS_sched_setattr, x86_64
            sys.exit(f"sched_setattr on thread {tid}: errno {ctypes.get_errno()}")
    elif mode.startswith("nice:"):
        os.setpriority(os.PRIO_PROCESS, tid, int(mode[5:]))
PY
}

out="$work/runs"
: >"$out"
for r in $(seq 1 "$reps"); do
  "$bin/meshgate-bench" "${run[@]}" --no-proxy | sed "s/^/$r no-proxy /" >>"$out"
  for m in "$@"; do
    "$bin/meshgate" serve --listen "$ip:$port" --routes "$work/routes.toml" --admin none \
      --drain-timeout-secs 1 >"$work/log" 2>&1 &
    mg=$!
    for _ in $(seq 1 100); do
      [ -n "$(ss -Hltn "src $ip:$port")" ] && break
      kill -0 "$mg" 2>/dev/null || { echo "paced-sched.sh: meshgate exited: $(tail -n 2 "$work/log")" >&2; exit 1; }
      sleep 0.05
    done
    [ "$m" = none ] || apply "$mg" "$m"
    "$bin/meshgate-bench" "${run[@]}" --target "$ip:$port" --proxy-pid "$mg" | sed "s/^/$r $m /" >>"$out"
    kill "$mg"; wait "$mg" || true; mg=""
  done
  echo "repetition $r of $reps done" >&2
done
python3 - "$out" "$@" <<'PY'
import json, statistics, sys
runs = {}
for line in open(sys.argv[1]):
    rep, mode, js = line.split(" ", 2)
    runs[(int(rep), mode)] = json.loads(js)
def added(mode, f):
    v = [f(r) - f(runs[(rep, "no-proxy")]) for (rep, m), r in runs.items() if m == mode]
    return f"{statistics.median(v):.1f} [{min(v):.1f}-{max(v):.1f}]"
p50 = lambda r: r["latency_us"]["p50"]
p99 = lambda r: r["latency_us"]["p99"]
host = lambda r: r["host"]["busy_us_per_request"]
for mode in sys.argv[2:]:
    ok = sum(1 for (_, m), r in runs.items() if m == mode and r["status"] == "ok")
    print(f"{mode}: added p50 {added(mode, p50)} µs, added p99 {added(mode, p99)} µs, "
          f"added host {added(mode, host)} µs/req, {ok} ok")
PY
