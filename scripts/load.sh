#!/usr/bin/env bash
# Load run of issue 8: hold 50,000 concurrent connections through meshgate,
# close them, then churn 1,000,000 short connections through it; before and
# after, record the gateways' descriptors, pipes, threads and RSS and say
# whether they came back within 5% of where they started; then hold the same
# number again, to tell memory kept at a high-water mark from a leak. Root,
# loopback only; finishes by itself (about 10 minutes here).
#
#   scripts/load.sh [--hold N] [--churn N] [--gateways G] [--forward MODE]
#                   [--engine auto|uring|epoll] [--apply-preset NAME] [--out FILE]
#
#   --hold N         connections held at once (default 50000), opened by
#                    ceil(N / 10000) meshgate-bench idle processes
#   --churn N        short connections in the churn (default 1000000)
#   --gateways G     meshgate processes sharing the listening sockets
#                    (default: enough for --hold, see below)
#   --forward MODE   meshgate --forward (default splice)
#   --engine E       meshgate --engine (default auto)
#   --apply-preset   run `scripts/tune.sh apply NAME` first (host-wide sysctls;
#                    not needed on this machine at the default sizes)
#   --out FILE       the summary (Markdown) also goes here
#                    (default target/load/<time>/summary.md)
#   --no-build       use target/release/{meshgate,meshgate-bench} as they are
#
# Why several gateway processes: a proxied connection costs the gateway two
# descriptors, so 50,000 need 100,000, and the hard RLIMIT_NOFILE of a process
# is 20,000 on this machine and cannot be raised, not even by root
# (`prlimit --nofile=200000:200000 true` fails with EPERM; fs.nr_open is not
# the limit here, the sandbox is). meshgate binds every listener with
# SO_REUSEPORT, so G processes started with the same --listen addresses form
# one group per address and the kernel spreads new connections over all their
# sockets: the same thing one process with a raised LimitNOFILE would do. Each
# process gets --max-connections so that an unlucky spread sheds (counted)
# rather than running into EMFILE. Where the limit can be raised, run with
# --gateways 1 instead.
#
# Ephemeral ports are per (source, destination) pair: each idle client process
# targets its own 127.0.0.x listen address and its backend listens on its own
# 127.0.0.y address, so no pair needs more than 10,000 ports (the default
# range has 28,232). The churn relies on net.ipv4.tcp_tw_reuse (2, the
# default, enables it on loopback) to reuse TIME_WAIT ports.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
invocation="scripts/load.sh${*:+ $*}"

hold=50000 churn=1000000 gateways="" forward=splice engine=auto preset="" out="" build=1
while [ $# -gt 0 ]; do
  case "$1" in
    --hold) hold="$2"; shift ;;
    --churn) churn="$2"; shift ;;
    --gateways) gateways="$2"; shift ;;
    --forward) forward="$2"; shift ;;
    --engine) engine="$2"; shift ;;
    --apply-preset) preset="$2"; shift ;;
    --out) out="$2"; shift ;;
    --no-build) build=0 ;;
    -h|--help) sed -n '2,41p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "load.sh: unknown argument '$1' (see --help)" >&2; exit 64 ;;
  esac
  shift
done
for v in hold churn; do
  case "${!v}" in ''|*[!0-9]*) echo "load.sh: --$v must be a number" >&2; exit 64 ;; esac
done
[ "$(id -u)" -eq 0 ] || { echo "load.sh: run as root (it raises its own limits)" >&2; exit 77; }

per_client=10000
clients=$(( (hold + per_client - 1) / per_client ))
[ "$clients" -ge 1 ] || clients=1
nofile_hard=$(ulimit -Hn)
ulimit -n "$nofile_hard"
if [ -z "$gateways" ]; then
  # Two descriptors per connection, 10% slack for an uneven spread, 500 for
  # the process itself.
  per_gw=$(( (nofile_hard - 500) / 2 * 9 / 10 ))
  gateways=$(( (hold + per_gw - 1) / per_gw ))
  [ "$gateways" -ge 1 ] || gateways=1
fi
max_conns=$(( (nofile_hard - 500) / 2 ))

work="$root/target/load/$(date -u +%Y%m%dT%H%M%SZ)"
mkdir -p "$work"
out="${out:-$work/summary.md}"
log() { printf '[load %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

if [ -n "$preset" ]; then
  log "applying sysctl preset $preset (host-wide)"
  scripts/tune.sh apply "$preset" >"$work/preset.log"
fi

if [ "$build" = 1 ]; then
  log "building release binaries"
  cargo build --release --locked -q -p meshgate -p meshgate-bench
fi
mg="$root/target/release/meshgate"
bench="$root/target/release/meshgate-bench"

# ------------------------------------------------------------------ routes
td="11111111-2222-3333-4444-555555555555.consul"
name() { echo "$1.default.dc1.internal.$td"; }
client_ip() { echo "127.0.1.$(( $1 + 1 ))"; }   # listen address client i targets
backend_ip() { echo "127.0.2.$(( $1 + 1 ))"; }  # where client i's backend listens
churn_ip=127.0.1.200 churn_backend=127.0.2.200
{
  echo '{"version": 1, "routes": ['
  for i in $(seq 1 "$clients"); do
    echo "  {\"sni\": \"$(name "idle$i")\", \"endpoints\": [\"$(backend_ip "$i"):9101\"]},"
  done
  echo "  {\"sni\": \"$(name churn)\", \"endpoints\": [\"$churn_backend:9101\"]}"
  echo ']}'
} >"$work/routes.json"

# ---------------------------------------------------------------- gateways
pids=() admins=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${bench_pids[@]:-}"; do [ -n "$p" ] && kill "$p" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
bench_pids=()
listen_args=(--listen "$churn_ip:8443")
for i in $(seq 1 "$clients"); do listen_args+=(--listen "$(client_ip "$i"):8443"); done
for g in $(seq 1 "$gateways"); do
  admin="127.0.3.$g:19000"
  "$mg" serve "${listen_args[@]}" --routes "$work/routes.json" --forward "$forward" \
    --engine "$engine" --admin "$admin" --max-connections "$max_conns" \
    --hello-timeout-ms 30000 </dev/null 2>"$work/meshgate-$g.log" &
  pids+=("$!") admins+=("$admin")
done
for g in $(seq 1 "$gateways"); do
  ok=0
  for _ in $(seq 1 150); do
    [ "$(grep -c 'INFO meshgate::serve: listening' "$work/meshgate-$g.log" 2>/dev/null)" -ge $((clients + 1)) ] && { ok=1; break; }
    kill -0 "${pids[$((g-1))]}" 2>/dev/null || break
    sleep 0.1
  done
  [ "$ok" = 1 ] || { echo "load.sh: meshgate $g did not start:" >&2; cat "$work/meshgate-$g.log" >&2; exit 70; }
done
log "$gateways meshgate processes (pids ${pids[*]}), --forward $forward --engine $engine, sharing $((clients + 1)) listen addresses"

# -------------------------------------------------------------- measuring
# fds pipes threads rss_kib, summed over the gateway processes
snapshot() {
  local fds=0 pipes=0 threads=0 rss=0 p
  for p in "${pids[@]}"; do
    kill -0 "$p" 2>/dev/null || { echo "load.sh: meshgate $p exited" >&2; exit 70; }
    fds=$((fds + $(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 | wc -l)))
    pipes=$((pipes + $(find "/proc/$p/fd" -mindepth 1 -maxdepth 1 -lname 'pipe:*' | wc -l)))
    threads=$((threads + $(find "/proc/$p/task" -mindepth 1 -maxdepth 1 | wc -l)))
    rss=$((rss + $(awk '/^VmRSS:/{print $2}' "/proc/$p/status")))
  done
  echo "$fds $pipes $threads $rss"
}
# Sum of one metric (no labels, or all label sets) over the gateways.
metric() {
  local total=0 a v
  for a in "${admins[@]}"; do
    v=$(curl -s --max-time 5 "http://$a/metrics" | awk -v m="$1" '$1 == m || index($1, m "{") == 1 {s += $2} END {printf "%d", s}')
    total=$((total + ${v:-0}))
  done
  echo "$total"
}
# Waits (at most $2 s) until every gateway holds no connection and no pipe.
wait_quiet() {
  local what="$1" limit="$2" t=0
  while [ "$t" -lt $((limit * 10)) ]; do
    [ "$(metric meshgate_connections_active)" = 0 ] && [ "$(metric meshgate_pipes)" = 0 ] && return 0
    sleep 0.1; t=$((t + 1))
  done
  log "WARNING: $what: still $(metric meshgate_connections_active) connections / $(metric meshgate_pipes) pipes after ${limit}s"
}

cold=$(snapshot)
log "at start: fds pipes threads rss_kib = $cold"

# Warm-up: the first connections allocate what a shard keeps for good (buffer
# rings are registered at start, but pages are touched on first use).
log "warm-up: 20,000 short connections and 2,000 held"
"$bench" cps --target "$churn_ip:8443" --sni "$(name churn)" --backend-listen "$churn_backend:9101" \
  -c 64 -n 20000 -q >"$work/warmup-cps.json" 2>"$work/warmup-cps.log"
"$bench" idle --target "$(client_ip 1):8443" --sni "$(name idle1)" --backend-listen "$(backend_ip 1):9101" \
  -n 2000 -c 64 -d 0.5 --settle-ms 200 -q >"$work/warmup-idle.json" 2>"$work/warmup-idle.log"
wait_quiet "after the warm-up" 30
sleep 2 # idle pipes close after 1 s unused; io_uring workers exit when idle
base=$(snapshot)
log "baseline: fds pipes threads rss_kib = $base"

# ------------------------------------------------------------ (a) hold
# Holds $hold connections for hold_secs, then lets them close. Sets peak,
# peak_snap, reached and established; $1 names the phase in the files.
hold_secs=40
hold_phase() {
  local phase="$1" left=$hold i n p e active alive
  log "($phase) holding $hold connections: $clients idle clients of up to $per_client each"
  for i in $(seq 1 "$clients"); do
    n=$(( left < per_client ? left : per_client )); left=$((left - n))
    "$bench" idle --target "$(client_ip "$i"):8443" --sni "$(name "idle$i")" \
      --backend-listen "$(backend_ip "$i"):9101" --backend-process \
      -n "$n" -c 64 -d "$hold_secs" --settle-ms 500 -q \
      >"$work/idle-$phase-$i.json" 2>"$work/idle-$phase-$i.log" &
    bench_pids+=("$!")
  done
  peak=0 peak_snap="" reached=""
  local t0
  t0=$(date +%s.%N)
  while :; do
    active=$(metric meshgate_connections_active)
    if [ "$active" -gt "$peak" ]; then peak=$active; peak_snap=$(snapshot); fi
    if [ -z "$reached" ] && [ "$active" -ge "$hold" ]; then
      reached=$(awk -v a="$t0" -v b="$(date +%s.%N)" 'BEGIN {printf "%.1f", b - a}')
      log "all $hold connections open through the gateways after ${reached}s"
    fi
    alive=0
    for p in "${bench_pids[@]}"; do kill -0 "$p" 2>/dev/null && alive=1; done
    [ "$alive" = 1 ] || break
    sleep 1
  done
  for p in "${bench_pids[@]}"; do wait "$p" || log "WARNING: an idle client exited with an error"; done
  bench_pids=()
  established=0
  for i in $(seq 1 "$clients"); do
    e=$(python3 -c 'import json,sys; d=json.load(open(sys.argv[1])); print(d.get("idle",{}).get("established", 0))' "$work/idle-$phase-$i.json" 2>/dev/null || echo 0)
    established=$((established + e))
  done
  log "peak $peak connections open at once in the gateways; clients established $established; snapshot at peak: $peak_snap"
  wait_quiet "after closing the held connections" 60
  sleep 2
}

hold_phase a
peak_a=$peak peak_snap_a=$peak_snap reached_a=$reached established_a=$established
after_hold=$(snapshot)
log "after the hold: fds pipes threads rss_kib = $after_hold"

# ------------------------------------------------------------ (b) churn
log "(b) churn of $churn short connections"
c0=$(date +%s.%N)
"$bench" cps --target "$churn_ip:8443" --sni "$(name churn)" --backend-listen "$churn_backend:9101" \
  -c 64 -n "$churn" -q >"$work/churn.json" 2>"$work/churn.log" || log "WARNING: churn client exited with $?"
c1=$(date +%s.%N)
churn_secs=$(awk -v a="$c0" -v b="$c1" 'BEGIN {printf "%.1f", b - a}')
read -r churn_ok churn_err churn_status < <(python3 -c '
import json, sys
d = json.load(open(sys.argv[1]))
print(d["connections"]["completed"], d["errors"]["total"], d["status"])
' "$work/churn.json" 2>/dev/null || echo "? ? ?")
forwarded=$(metric meshgate_connections_forwarded_total)
log "churn: $churn_ok connections in ${churn_secs}s (errors $churn_err); gateways forwarded $forwarded in all"
wait_quiet "after the churn" 60
sleep 2
after_churn=$(snapshot)
log "after the churn: fds pipes threads rss_kib = $after_churn"

# ------------------------------------------------- (c) the same hold again
# Memory a gateway keeps at its high-water mark (connection slots are
# allocated as concurrency first grows and kept) shows as RSS above the
# baseline after (a); holding the same number again must not raise it.
hold_phase c
peak_c=$peak reached_c=$reached established_c=$established
after_second=$(snapshot)
log "after the second hold: fds pipes threads rss_kib = $after_second"
forwarded=$(metric meshgate_connections_forwarded_total)
shed=$(metric meshgate_connections_shed_total)
accept_errors=$(metric meshgate_accept_errors_total)

# --------------------------------------------------------------- summary
within() { # before after -> "yes"/"no" (within 5%, or equal when before is 0)
  awk -v b="$1" -v a="$2" 'BEGIN { d = a - b; if (d < 0) d = -d; print ((b == 0 ? d == 0 : d <= 0.05 * b) ? "yes" : "no") }'
}
row() { # label snapshot
  read -r f p t r <<<"$2"
  printf '| %s | %s | %s | %s | %s |\n' "$1" "$f" "$p" "$t" "$(awk -v k="$r" 'BEGIN {printf "%.1f MiB", k / 1024}')"
}
verdict() { # label snapshot [reference snapshot, label]
  read -r bf bp bt br <<<"${3:-$base}"
  read -r f p t r <<<"$2"
  printf '| %s vs %s | %s | %s | %s | %s |\n' "$1" "${4:-baseline}" "$(within "$bf" "$f")" "$(within "$bp" "$p")" "$(within "$bt" "$t")" "$(within "$br" "$r")"
}
{
  echo "Command: \`$invocation\` ($(date -u +%Y-%m-%d), $(nproc) cores, kernel $(uname -r),"
  echo "$gateways meshgate processes \`--forward $forward --engine $engine --max-connections $max_conns\` sharing"
  echo "the listeners with SO_REUSEPORT; hard RLIMIT_NOFILE $nofile_hard per process)."
  echo
  echo "| gateways, summed | descriptors | pipes | threads | RSS |"
  echo "|---|---|---|---|---|"
  row "at start (cold)" "$cold"
  row "baseline (after warm-up)" "$base"
  row "(a) while $hold were held (peak)" "$peak_snap_a"
  row "(a) after they closed" "$after_hold"
  row "(b) after the churn" "$after_churn"
  row "(c) after a second hold of $hold" "$after_second"
  verdict "(a) after the hold" "$after_hold"
  verdict "(b) after the churn" "$after_churn"
  verdict "(c) after the second hold" "$after_second"
  verdict "(c) after the second hold" "$after_second" "$after_hold" "after the first hold"
  echo
  echo "- (a) held: peak $peak_a connections open at once in the gateways (clients established $established_a of $hold; all open after ${reached_a:-never}s)."
  echo "- (c) held again: peak $peak_c (clients established $established_c; all open after ${reached_c:-never}s)."
  echo "- (b) churn: $churn_ok connections completed in ${churn_secs}s ($churn_status), $churn_err errors (clients and backend)."
  echo "- Counted by the gateways over the whole run: $forwarded forwarded, $shed shed, $accept_errors accept errors."
  echo "- Raw results and logs: \`${work#"$root"/}\`."
} | tee "$out"
[ "$out" = "$work/summary.md" ] || cp "$out" "$work/summary.md"
