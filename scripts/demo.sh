#!/usr/bin/env bash
# meshgate demo: two TLS backends behind the gateway, picked by SNI alone.
#
# What it does, all on 127.0.0.1 and in a throwaway directory:
#   1. builds meshgate (cargo build --release -p meshgate), unless MESHGATE_BIN names a binary;
#   2. makes a CA and two server certificates with the openssl CLI;
#   3. starts two `openssl s_server -www` backends, "api" on :9001 and "web" on :9002;
#   4. starts meshgate on :8443 with examples/routes.toml and waits for its readiness line;
#   5. connects through the gateway with `openssl s_client -servername NAME` for each name,
#      verifying the certificate against the demo CA, and prints which backend answered
#      (its certificate subject) and the first line of its HTTP answer;
#   6. shows that an unknown name is refused.
# Everything it started is stopped on exit; it exits non-zero if any step fails.
# Needs: bash, cargo (unless MESHGATE_BIN is set), openssl, timeout (coreutils).
set -euo pipefail

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
ROUTES="$ROOT/examples/routes.toml"
TD="11111111-2222-3333-4444-555555555555.consul"
API="api.default.dc1.internal.$TD"
WEB="web.default.dc1.internal.$TD"
UNKNOWN="db.default.dc1.internal.$TD"
GATEWAY="127.0.0.1:8443"

step() { printf '\n== %s\n' "$*"; }
fail() { printf 'demo: FAILED: %s\n' "$*" >&2; exit 1; }

PIDS=()
WORK="$(mktemp -d "${TMPDIR:-/tmp}/meshgate-demo.XXXXXX")"
cleanup() {
    local status=$?
    for pid in "${PIDS[@]}"; do
        kill "$pid" 2>/dev/null || true
    done
    for pid in "${PIDS[@]}"; do
        wait "$pid" 2>/dev/null || true
    done
    if [ "$status" -ne 0 ] && [ -s "$WORK/meshgate.log" ]; then
        printf '\n-- meshgate log --\n' >&2
        cat "$WORK/meshgate.log" >&2
    fi
    rm -rf "$WORK"
    exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

command -v openssl >/dev/null || fail "the openssl CLI is not installed (Debian: apt-get install openssl)"
command -v timeout >/dev/null || fail "timeout (coreutils) is not installed"

# Is something already listening on HOST:PORT?
listening() { (exec 3<>"/dev/tcp/${1%:*}/${1#*:}") 2>/dev/null; }

# Wait up to 10 s for HOST:PORT to accept connections.
wait_listening() {
    for _ in $(seq 100); do
        listening "$1" && return 0
        sleep 0.1
    done
    return 1
}

for addr in 127.0.0.1:9001 127.0.0.1:9002 "$GATEWAY"; do
    if listening "$addr"; then fail "$addr is already in use; stop whatever listens there"; fi
done

step "meshgate binary"
if [ -n "${MESHGATE_BIN:-}" ]; then
    case "$MESHGATE_BIN" in
        */*)
            [ -x "$MESHGATE_BIN" ] || fail "MESHGATE_BIN=$MESHGATE_BIN is not an executable file"
            BIN="$(cd "$(dirname "$MESHGATE_BIN")" && pwd)/$(basename "$MESHGATE_BIN")"
            ;;
        *) BIN="$(command -v "$MESHGATE_BIN")" || fail "MESHGATE_BIN=$MESHGATE_BIN is not on PATH" ;;
    esac
else
    command -v cargo >/dev/null || fail "cargo is not installed and MESHGATE_BIN is not set"
    (cd "$ROOT" && cargo build --release -p meshgate) || fail "cargo build --release -p meshgate"
    BIN="${CARGO_TARGET_DIR:-$ROOT/target}/release/meshgate"
fi
[ -x "$BIN" ] || fail "no executable at $BIN"
echo "using $BIN"
"$BIN" check --routes "$ROUTES" || fail "meshgate check --routes $ROUTES"

step "throwaway CA and backend certificates (in $WORK)"
cd "$WORK"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj "/CN=meshgate demo CA" -keyout ca.key -out ca.pem 2>/dev/null || fail "making the CA"
issue() { # issue NAME SNI CN
    printf 'subjectAltName=DNS:%s\nextendedKeyUsage=serverAuth\nbasicConstraints=CA:FALSE\n' "$2" > "$1.ext"
    openssl req -new -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes \
        -subj "/CN=$3" -keyout "$1.key" -out "$1.csr" 2>/dev/null || fail "key and CSR for $1"
    openssl x509 -req -in "$1.csr" -CA ca.pem -CAkey ca.key -CAcreateserial -days 1 \
        -extfile "$1.ext" -out "$1.pem" 2>/dev/null || fail "signing the $1 certificate"
    echo "$1: CN=$3, SAN=DNS:$2"
}
issue api "$API" "api backend on 127.0.0.1:9001"
issue web "$WEB" "web backend on 127.0.0.1:9002"

step "backends: openssl s_server -www on 127.0.0.1:9001 (api) and 127.0.0.1:9002 (web)"
openssl s_server -accept 127.0.0.1:9001 -cert api.pem -key api.key -www -quiet \
    < /dev/null > api-server.log 2>&1 &
PIDS+=($!)
openssl s_server -accept 127.0.0.1:9002 -cert web.pem -key web.key -www -quiet \
    < /dev/null > web-server.log 2>&1 &
PIDS+=($!)
wait_listening 127.0.0.1:9001 || fail "the api backend did not start: $(cat api-server.log)"
wait_listening 127.0.0.1:9002 || fail "the web backend did not start: $(cat web-server.log)"
echo "both backends listening"

step "meshgate serve --listen $GATEWAY --routes examples/routes.toml"
RUST_LOG="${RUST_LOG:-meshgate=debug,info}" "$BIN" serve --listen "$GATEWAY" --routes "$ROUTES" \
    --shards 2 --hello-timeout-ms 2000 --admin none > /dev/null 2> meshgate.log &
PIDS+=($!)
GATEWAY_PID=$!
ready=""
for _ in $(seq 100); do
    if grep -v admin meshgate.log 2>/dev/null | grep -q "listening.*address=$GATEWAY"; then ready=yes; break; fi
    kill -0 "$GATEWAY_PID" 2>/dev/null || fail "meshgate exited before it was ready"
    sleep 0.1
done
[ -n "$ready" ] || fail "meshgate printed no readiness line within 10 s"
grep -E 'routes loaded|listening' meshgate.log | sed 's/^/  log: /'

# through NAME: connect via the gateway with SNI NAME, GET /, print who answered.
through() {
    local name="$1" out subject status
    out="$(printf 'GET / HTTP/1.0\r\n\r\n' | timeout 10 openssl s_client -connect "$GATEWAY" \
        -servername "$name" -CAfile ca.pem -verify_return_error -verify_hostname "$name" \
        -ign_eof 2>&1)" || fail "openssl s_client -servername $name through the gateway:
$out"
    subject="$(printf '%s\n' "$out" | grep -m1 '^subject=' || true)"
    status="$(printf '%s\n' "$out" | grep -m1 '^HTTP/' | tr -d '\r' || true)"
    [ -n "$subject" ] || fail "no server certificate for $name:
$out"
    [ -n "$status" ] || fail "no HTTP answer for $name:
$out"
    printf '%s\n' "$out" | grep -q 'Verify return code: 0 (ok)' || fail "certificate for $name did not verify:
$out"
    echo "SNI $name"
    echo "  answered by: $subject"
    echo "  HTTP answer: $status"
    LAST_SUBJECT="$subject"
}

step "through the gateway with the api name"
through "$API"
case "$LAST_SUBJECT" in *"api backend"*) ;; *) fail "the api name reached another backend" ;; esac

step "through the gateway with the web name"
through "$WEB"
case "$LAST_SUBJECT" in *"web backend"*) ;; *) fail "the web name reached another backend" ;; esac

step "an unknown name ($UNKNOWN) is refused"
if out="$(timeout 10 openssl s_client -connect "$GATEWAY" -servername "$UNKNOWN" \
    -CAfile ca.pem -verify_return_error < /dev/null 2>&1)"; then
    fail "the gateway let an unknown name through:
$out"
fi
if printf '%s\n' "$out" | grep -q '^subject='; then
    fail "a backend presented a certificate for an unknown name"
fi
echo "refused: the gateway closed the connection during the handshake, no backend saw it"
printf '%s\n' "$out" | grep -m2 -iE 'errno|error|closed' | sed 's/^/  openssl: /' || true

step "what the gateway logged for these connections (debug level)"
sleep 0.2
sed -n '/listening.*address=/,$p' meshgate.log | grep -v 'listening' | tail -n 12 | sed 's/^/  log: /'

step "done: both names routed by SNI, the unknown one refused"
