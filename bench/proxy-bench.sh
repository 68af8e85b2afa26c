#!/usr/bin/env bash
# egress-proxy beside squid, tinyproxy and a direct connection, in one run, on
# loopback only. Prints one table. Not part of `cargo test`.
#
#   bench/proxy-bench.sh            # needs: nginx squid tinyproxy wrk curl openssl python3
#
# Origins: nginx on 127.0.0.2:18080 (http) and 127.0.0.3:18443 (https, a
# self-signed cert for repo.chokepoint.dev). egress-proxy resolves that name
# through a tiny DNS responder (bench/tools.py); squid reads a hosts file;
# tinyproxy is sent to the address (127.0.0.3) with the same SNI.
# Every load is bounded: wrk runs 5 s, tunnel loops stop at N or T seconds.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
for t in nginx squid tinyproxy wrk curl openssl python3; do
    command -v "$t" >/dev/null || { echo "missing: $t (apt-get install -y nginx squid tinyproxy wrk curl openssl python3)" >&2; exit 2; }
done

TMP=$(mktemp -d /tmp/chokepoint-bench.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    [ -f "$TMP/squid.pid" ] && kill "$(cat "$TMP/squid.pid")" 2>/dev/null || true
    sleep 0.5
    rm -rf "$TMP"
}
trap cleanup EXIT
ulimit -n 8192 || true

# PROXY_BIN=/path/to/egress-proxy measures that build instead of this
# tree's, and builds nothing (tunnel-load and head-trickle must be built).
if [ -z "${PROXY_BIN:-}" ]; then
    echo "building egress-proxy (release)..." >&2
    cargo build --release -q -p egress-proxy -p chokepoint-bench
fi
TARGET_DIR=${CARGO_TARGET_DIR:-$ROOT/target}
PROXY_BIN=${PROXY_BIN:-$TARGET_DIR/release/egress-proxy}
LOAD=$TARGET_DIR/release/tunnel-load
TRICKLE=$TARGET_DIR/release/head-trickle
TOOLS=$ROOT/bench/tools.py

# --- origin ---------------------------------------------------------------
mkdir -p "$TMP/www"
head -c 1024 /dev/zero | tr '\0' 'a' > "$TMP/www/small"
head -c $((200 * 1024 * 1024)) /dev/zero > "$TMP/www/big"
chmod -R a+rX "$TMP/www"
openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:prime256v1 -nodes -days 1 \
    -subj /CN=repo.chokepoint.dev -addext subjectAltName=DNS:repo.chokepoint.dev -addext basicConstraints=critical,CA:FALSE \
    -keyout "$TMP/key.pem" -out "$TMP/cert.pem" 2>/dev/null
chmod 644 "$TMP/key.pem"
cat > "$TMP/nginx.conf" <<EOF
worker_processes 1;
daemon off;
pid $TMP/nginx.pid;
error_log $TMP/nginx.err;
events { worker_connections 8192; }
http {
    access_log off;
    sendfile on;
    keepalive_requests 1000000;
    server { listen 127.0.0.2:18080; root $TMP/www; }
    server {
        listen 127.0.0.3:18443 ssl;
        ssl_certificate $TMP/cert.pem;
        ssl_certificate_key $TMP/key.pem;
        root $TMP/www;
    }
}
EOF
nginx -c "$TMP/nginx.conf" & PIDS+=($!)

# --- egress-proxy -----------------------------------------------------------
python3 "$TOOLS" dns 15353 127.0.0.3 & PIDS+=($!)
cat > "$TMP/policy.yaml" <<EOF
version: v1
unsafe_allow_ranges: [127.0.0.2/32, 127.0.0.3/32]
read_ports: [18080]
package_repos:
  - host: repo.chokepoint.dev
    ports: [18443]
orgs:
  bench:
    clients: [127.0.0.1/32]
EOF
# One worker thread, as squid has one: the client and the origin use the
# other core's worth of this 2-core machine, and a second proxy thread
# only adds wake-ups (bench/README.md has the A/B). EGRESS_THREADS=2 to
# compare.
# Both proxies log every request to a file, as deployed (issue #11): the
# audit log here, squid's access log below. The caps are raised for the
# 1,000 idle tunnels, all from one client address.
"$PROXY_BIN" --policy "$TMP/policy.yaml" --listen 127.0.0.1:13128 --admin-listen 127.0.0.1:19090 \
    --threads "${EGRESS_THREADS:-1}" \
    --max-connections-per-client 8192 --max-connections-per-org 8192 --max-tunnels-per-org 8192 \
    --dns-server 127.0.0.1:15353 --audit-log "$TMP/egress-audit.jsonl" 2>"$TMP/egress.err" & EGRESS_PID=$!; PIDS+=($EGRESS_PID)

# A second egress-proxy build, measured in the same rounds as "egress-base"
# (before/after side by side): BASELINE_BIN=/path/to/old/egress-proxy.
if [ -n "${BASELINE_BIN:-}" ]; then
    "$BASELINE_BIN" --policy "$TMP/policy.yaml" --listen 127.0.0.1:13131 --admin-listen 127.0.0.1:19091 \
        --threads "${EGRESS_THREADS:-1}" \
        --max-connections-per-client 8192 --max-connections-per-org 8192 --max-tunnels-per-org 8192 \
        --dns-server 127.0.0.1:15353 --audit-log "$TMP/egress-base-audit.jsonl" 2>"$TMP/egress-base.err" & BASE_PID=$!; PIDS+=($BASE_PID)
fi

# --- squid ----------------------------------------------------------------
echo "127.0.0.3 repo.chokepoint.dev" > "$TMP/hosts"
chmod 777 "$TMP"
cat > "$TMP/squid.conf" <<EOF
http_port 127.0.0.1:13129
http_access allow all
cache deny all
cache_mem 0 MB
# stdio: squid writes the log itself (the default daemon module would
# move the writing into a helper process whose CPU is not counted here).
access_log stdio:$TMP/squid-access.log squid
cache_log $TMP/squid-cache.log
pid_filename $TMP/squid.pid
coredump_dir $TMP
hosts_file $TMP/hosts
shutdown_lifetime 1 seconds
EOF
squid -N -f "$TMP/squid.conf" 2>"$TMP/squid.err" & SQUID_PID=$!; PIDS+=($SQUID_PID)

# --- tinyproxy --------------------------------------------------------------
cat > "$TMP/tinyproxy.conf" <<EOF
User nobody
Group nogroup
Port 13130
Listen 127.0.0.1
Timeout 600
LogLevel Warning
LogFile "$TMP/tinyproxy.log"
MaxClients 4096
ConnectPort 18443
EOF
tinyproxy -d -c "$TMP/tinyproxy.conf" 2>"$TMP/tinyproxy.err" & TINY_PID=$!; PIDS+=($TINY_PID)

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done; echo "no listener on $1:$2" >&2; exit 1; }
wait_port 127.0.0.2 18080; wait_port 127.0.0.3 18443
wait_port 127.0.0.1 13128; wait_port 127.0.0.1 13129; wait_port 127.0.0.1 13130
[ -n "${BASELINE_BIN:-}" ] && wait_port 127.0.0.1 13131

cpu_ticks() { awk '{print $14 + $15}' "/proc/$1/stat"; }
usr_ticks() { awk '{print $14}' "/proc/$1/stat"; }
hwm_kib() { awk '/VmHWM/ {print $2}' "/proc/$1/status"; }
CLK=$(getconf CLK_TCK)

cat > "$TMP/abs.lua" <<'EOF'
wrk.path = "http://127.0.0.2:18080/small"
wrk.headers["Host"] = "127.0.0.2:18080"
EOF

# wrk → "rps p50_ms p99_ms requests"
run_wrk() {
    local out
    out=$(wrk -t1 -c32 -d5s --latency "$@")
    local rps p50 p99 reqs
    rps=$(awk '/Requests\/sec/ {print $2}' <<<"$out")
    reqs=$(awk '/requests in/ {print $1}' <<<"$out")
    to_ms() { awk '{v=$1; if (v ~ /us$/) {sub(/us/,"",v); v=v/1000} else if (v ~ /ms$/) {sub(/ms/,"",v)} else if (v ~ /s$/) {sub(/s/,"",v); v=v*1000}; printf "%.3f", v}'; }
    p50=$(awk '$1=="50%" {print $2}' <<<"$out" | to_ms)
    p99=$(awk '$1=="99%" {print $2}' <<<"$out" | to_ms)
    echo "$rps $p50 $p99 $reqs"
}

# 200 MiB through TLS, three times (one transfer is a fraction of a second,
# so one is noise); the median in MiB/s. Args: curl's proxy/resolve flags.
bulk() {
    for _ in 1 2 3; do
        curl -sS "$@" --cacert "$TMP/cert.pem" -o /dev/null -w '%{speed_download}\n' \
            --max-time 60 https://repo.chokepoint.dev:18443/big
    done | sort -n | awk 'NR == 2 {printf "%.0f", $1 / 1048576}'
}

ROUNDS=${ROUNDS:-3}
RESULTS=$TMP/results
: > "$RESULTS"
# One line per proxy per round:
# round name rps p50 p99 cpu_us_req bulk tunnels_s setup_ms cpu_us_tun idle_mib peak_mib usr_us_req
# New TLS connections (full handshakes) through CONNECT or direct; prints
# "count rate_per_s median_setup_ms". Callers assign its output (`out=$(...)`)
# so that a failed connection stops the bench (set -e).
tunnels() {
    RUST_BACKTRACE=0 "$LOAD" --sni repo.chokepoint.dev --ca "$TMP/cert.pem" "$@" || {
        echo "tunnel-load $* failed" >&2; return 1; }
}
measure() { # round name pid proxy_url connect_target
    local round=$1 name=$2 pid=$3 url=$4 target=$5
    echo "round $round: $name..." >&2
    local c0 c1 u0 u1 r out rps p50 p99 reqs bulk n tps setup cpureq usrreq cputun idle hwm
    c0=$(cpu_ticks "$pid"); u0=$(usr_ticks "$pid")
    read -r rps p50 p99 reqs <<<"$(run_wrk -s "$TMP/abs.lua" "$url")"
    c1=$(cpu_ticks "$pid"); u1=$(usr_ticks "$pid")
    cpureq=$(awk -v d=$((c1 - c0)) -v n="$reqs" -v k="$CLK" 'BEGIN {printf "%.1f", d / k * 1e6 / n}')
    # User time only: the proxy's own work, without the kernel's loopback
    # TCP path (which runs the receiver's side in the sender's context).
    usrreq=$(awk -v d=$((u1 - u0)) -v n="$reqs" -v k="$CLK" 'BEGIN {printf "%.1f", d / k * 1e6 / n}')
    if [ -n "${REQUESTS_ONLY:-}" ]; then
        echo "$round $name $rps $p50 $p99 $cpureq - - - - - - $usrreq" >> "$RESULTS"
        return
    fi
    local resolve=()
    # egress-proxy (and egress-base) resolve the name themselves (DNS pinning).
    case $name in egress-*) ;; *) resolve=(--connect-to "repo.chokepoint.dev:18443:127.0.0.3:18443") ;; esac
    bulk=$(bulk -p -x "$url" "${resolve[@]}")
    c0=$(cpu_ticks "$pid")
    out=$(tunnels --addr "${url#http://}" --connect-to "$target" --concurrency "$TUNNEL_CONCURRENCY" --max 30000 --seconds 6)
    c1=$(cpu_ticks "$pid")
    read -r n tps _ <<<"$out"
    cputun=$(awk -v d=$((c1 - c0)) -v n="$n" -v k="$CLK" 'BEGIN {printf "%.1f", d / k * 1e6 / n}')
    out=$(tunnels --addr "${url#http://}" --connect-to "$target" --concurrency 1 --max 3000 --seconds 3)
    read -r _ _ setup <<<"$out"
    idle=$(python3 "$TOOLS" idle "${url#http://}" "$target" 1000 "$pid" | awk '{printf "%.1f", $3 / 1024}')
    hwm=$(awk -v h="$(hwm_kib "$pid")" 'BEGIN {printf "%.1f", h / 1024}')
    echo "$round $name $rps $p50 $p99 $cpureq $bulk $tps $setup $cputun $idle $hwm $usrreq" >> "$RESULTS"
}
measure_direct() { # round
    echo "round $1: direct..." >&2
    local out rps p50 p99 bulk tps setup
    read -r rps p50 p99 _ <<<"$(run_wrk http://127.0.0.2:18080/small)"
    if [ -n "${REQUESTS_ONLY:-}" ]; then
        echo "$1 direct $rps $p50 $p99 - - - - - - - -" >> "$RESULTS"
        return
    fi
    bulk=$(bulk --resolve repo.chokepoint.dev:18443:127.0.0.3)
    out=$(tunnels --addr 127.0.0.3:18443 --concurrency "$TUNNEL_CONCURRENCY" --max 30000 --seconds 6)
    read -r _ tps _ <<<"$out"
    out=$(tunnels --addr 127.0.0.3:18443 --concurrency 1 --max 3000 --seconds 3)
    read -r _ _ setup <<<"$out"
    echo "$1 direct $rps $p50 $p99 - $bulk $tps $setup - - - -" >> "$RESULTS"
}

# New TLS connections in flight at once (one client thread): enough to keep
# every proxy busy on 2 cores (8 leaves them partly idle, 32 adds nothing).
TUNNEL_CONCURRENCY=${TUNNEL_CONCURRENCY:-16}
for round in $(seq "$ROUNDS"); do
    measure_direct "$round"
    measure "$round" egress-proxy "$EGRESS_PID" http://127.0.0.1:13128 repo.chokepoint.dev:18443
    if [ -n "${BASELINE_BIN:-}" ]; then
        measure "$round" egress-base "$BASE_PID" http://127.0.0.1:13131 repo.chokepoint.dev:18443
    fi
    measure "$round" squid "$SQUID_PID" http://127.0.0.1:13129 repo.chokepoint.dev:18443
    [ -n "${REQUESTS_ONLY:-}" ] || measure "$round" tinyproxy "$TINY_PID" http://127.0.0.1:13130 127.0.0.3:18443
done

# Slow heads: connections trickling 64 KiB heads one byte at a time, while
# one client measures normal forwarded requests (issue #11, item 9).
[ -n "${REQUESTS_ONLY:-}" ] || TRICKLE_OUT=$("$TRICKLE" --proxy 127.0.0.1:13128 --url http://127.0.0.2:18080/small \
    --slow "${TRICKLE_CONNECTIONS:-200}" --seconds "${TRICKLE_SECONDS:-10}")

echo
echo "chokepoint proxy bench — $(date -u +%Y-%m-%dT%H:%MZ), $(nproc) cores, $ROUNDS rounds (medians), egress-proxy --threads ${EGRESS_THREADS:-1}, load $(cut -d' ' -f1-3 /proc/loadavg)"
python3 "$TOOLS" report "$RESULTS"
echo
[ -n "${REQUESTS_ONLY:-}" ] || echo "slow heads (egress-proxy): $TRICKLE_OUT"
echo "log sizes: egress-proxy audit $(wc -l < "$TMP/egress-audit.jsonl") lines, squid access $(wc -l < "$TMP/squid-access.log") lines"
