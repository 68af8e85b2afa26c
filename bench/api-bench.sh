#!/usr/bin/env bash
# chokepoint-api under load, on loopback only, over TLS. Prints two lines.
# Not part of `cargo test`.
#
#   bench/api-bench.sh                 # needs: openssl
#   SOCKETS=10000 FANOUT_SOCKETS=1000 EVENTS=500 bench/api-bench.sh
#
# 1. idle: SOCKETS authenticated WebSockets (one user each, bearer tokens,
#    HS256), held HOLD seconds; the API's RSS before and after and per
#    socket, and a check that every socket still receives an event.
# 2. fanout: FANOUT_SOCKETS sockets on one conversation; EVENTS events of
#    SIZE bytes posted by 4 keep-alive service connections; events/s posted
#    and frames/s delivered until every socket has every event.
# The client runs on the same machine (one thread). Every loop is bounded
# by a count and by SECONDS.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
command -v openssl >/dev/null || { echo "missing: openssl" >&2; exit 2; }
SOCKETS=${SOCKETS:-10000}
FANOUT_SOCKETS=${FANOUT_SOCKETS:-1000}
EVENTS=${EVENTS:-500}
SIZE=${SIZE:-200}
HOLD=${HOLD:-5}
SECONDS_MAX=${SECONDS_MAX:-300}
PORT=${PORT:-18600}

TMP=$(mktemp -d /tmp/chokepoint-api-bench.XXXXXX)
API_PID=
cleanup() {
    [ -n "$API_PID" ] && kill "$API_PID" 2>/dev/null || true
    sleep 0.3
    rm -rf "$TMP"
}
trap cleanup EXIT
# 10,000 sockets need 10,000 descriptors on each side.
ulimit -n 65536 2>/dev/null || ulimit -n "$(ulimit -Hn)"
echo "open files limit: $(ulimit -n)" >&2

echo "building chokepoint-api and api-load (release)..." >&2
cargo build --release -q -p chokepoint-api -p chokepoint-bench --bin chokepoint-api --bin api-load
TARGET=${CARGO_TARGET_DIR:-$ROOT/target}
API=$TARGET/release/chokepoint-api
LOAD=$TARGET/release/api-load

openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -days 1 \
    -subj /CN=bench-ca -keyout "$TMP/ca.key" -out "$TMP/ca.pem" 2>/dev/null
openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes -subj /CN=localhost \
    -keyout "$TMP/key.pem" -out "$TMP/csr.pem" 2>/dev/null
printf 'subjectAltName=IP:127.0.0.1\nbasicConstraints=CA:FALSE\nextendedKeyUsage=serverAuth\n' > "$TMP/ext.cnf"
openssl x509 -req -days 1 -in "$TMP/csr.pem" -CA "$TMP/ca.pem" -CAkey "$TMP/ca.key" \
    -CAcreateserial -extfile "$TMP/ext.cnf" -out "$TMP/cert.pem" 2>/dev/null
openssl rand -base64 32 > "$TMP/hs.b64"
openssl rand -base64 32 > "$TMP/service.token"

start_api() {
    rm -f "$TMP"/api.db*
    CHOKEPOINT_API_KEY_FILE=$TMP/hs.b64 CHOKEPOINT_API_SERVICE_TOKEN_FILE=$TMP/service.token RUST_LOG=warn \
        "$API" --listen "127.0.0.1:$PORT" --metrics-listen 127.0.0.1:0 --tls-cert "$TMP/cert.pem" --tls-key "$TMP/key.pem" \
        --store "sqlite:$TMP/api.db" --issuer bench --audience bench \
        --max-connections 20000 --rate-per-user 1000 --burst-per-user 1000 2> "$TMP/api.log" &
    API_PID=$!
    for _ in $(seq 50); do
        grep -q . "$TMP/api.log" 2>/dev/null && break
        (exec 3<>"/dev/tcp/127.0.0.1/$PORT") 2>/dev/null && break
        sleep 0.1
    done
}
stop_api() { kill "$API_PID"; wait "$API_PID" 2>/dev/null || true; API_PID=; }

common=(--addr "127.0.0.1:$PORT" --ca "$TMP/ca.pem" --key-file "$TMP/hs.b64"
        --service-token-file "$TMP/service.token" --seconds "$SECONDS_MAX")

echo "run: $(date -u +%FT%TZ) $(git rev-parse --short HEAD) load=$(cut -d' ' -f1-3 /proc/loadavg)"
start_api
"$LOAD" "${common[@]}" --pid "$API_PID" --sockets "$SOCKETS" idle --hold "$HOLD"
stop_api
start_api
"$LOAD" "${common[@]}" --pid "$API_PID" --sockets "$FANOUT_SOCKETS" fanout --events "$EVENTS" --size "$SIZE"
stop_api
