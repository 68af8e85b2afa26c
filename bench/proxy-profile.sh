#!/usr/bin/env bash
# Instructions per forwarded request of egress-proxy, with its audit log on
# (to a file), under callgrind: a count of executed instructions, immune to
# the machine's load, so two builds can be compared on a busy machine.
# Loopback only; the load is bounded (wrk for $SECONDS_LOAD s).
#
#   bash bench/proxy-profile.sh            # needs: valgrind nginx wrk python3
#   TOP=40 bash bench/proxy-profile.sh     # more functions in the listing
#
# Prints: requests forwarded, instructions per request, and the functions
# with the most inclusive instructions (callgrind_annotate), so the share of
# the head parse (ours in head.rs, Pingora's in read_request) can be read.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
for t in valgrind callgrind_annotate callgrind_control nginx wrk python3; do
    command -v "$t" >/dev/null || { echo "missing: $t (apt-get install -y valgrind nginx wrk python3)" >&2; exit 2; }
done
TMP=$(mktemp -d /tmp/chokepoint-profile.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    sleep 0.5
    rm -rf "$TMP"
}
trap cleanup EXIT

cargo build --release -q -p egress-proxy
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PROXY_BIN=$TARGET_DIR/release/egress-proxy

mkdir -p "$TMP/www"
head -c 1024 /dev/zero | tr '\0' 'a' > "$TMP/www/small"
chmod -R a+rX "$TMP/www"
cat > "$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx.err;
events { worker_connections 1024; }
http {
    access_log off;
    keepalive_requests 1000000;
    server { listen 127.0.0.2:18080; root $TMP/www; }
}
EOF
nginx -c "$TMP/nginx.conf" & PIDS+=($!)
cat > "$TMP/policy.yaml" <<EOF
version: v1
unsafe_allow_ranges: [127.0.0.2/32]
read_ports: [18080]
orgs:
  bench:
    clients: [127.0.0.1/32]
EOF
valgrind --tool=callgrind --callgrind-out-file="$TMP/callgrind.out" \
    "$PROXY_BIN" --policy "$TMP/policy.yaml" --listen 127.0.0.1:13138 --admin-listen 127.0.0.1:19098 \
    --threads 1 --audit-log "$TMP/audit.jsonl" 2>"$TMP/valgrind.err" & VG_PID=$!; PIDS+=($VG_PID)

wait_port() { for _ in $(seq 600); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done; echo "no listener on $1:$2" >&2; exit 1; }
wait_port 127.0.0.2 18080; wait_port 127.0.0.1 13138

cat > "$TMP/abs.lua" <<'EOF'
wrk.path = "http://127.0.0.2:18080/small"
wrk.headers["Host"] = "127.0.0.2:18080"
EOF
# Warm up (first connections, the resolver, lazy statics), then count only
# the measured window: zero the counters, load, dump.
wrk -t1 -c4 -d2s -s "$TMP/abs.lua" http://127.0.0.1:13138 >/dev/null
sleep 1
before=$(wc -l < "$TMP/audit.jsonl")
callgrind_control -z "$VG_PID" >/dev/null
wrk -t1 -c${CONNECTIONS:-8} -d"${SECONDS_LOAD:-10}"s -s "$TMP/abs.lua" http://127.0.0.1:13138 >/dev/null
sleep 1
callgrind_control -d "$VG_PID" >/dev/null
after=$(wc -l < "$TMP/audit.jsonl")
n=$((after - before))
dump=$(ls -t "$TMP"/callgrind.out.* | head -1)
total=$(callgrind_annotate "$dump" 2>/dev/null | awk '/PROGRAM TOTALS/ {gsub(",", "", $1); print $1; exit}')
echo "egress-proxy $(git rev-parse --short HEAD), --threads 1, audit log to a file"
echo "requests forwarded: $n"
awk -v t="$total" -v n="$n" 'BEGIN {printf "instructions per request: %.0f\n", t / n}'
echo
echo "functions by inclusive instructions (share of the window):"
callgrind_annotate --inclusive=yes --threshold=100 "$dump" 2>/dev/null \
    | awk -v t="$total" -v top="${TOP:-25}" '/^ *[0-9,]+ / && !/PROGRAM TOTALS/ {v=$1; gsub(",", "", v); $1=""; printf "%5.1f%%  %.0f/req  %s\n", 100 * v / t, v / n, $0; if (++k >= top) exit}' n="$n"
