#!/usr/bin/env bash
# Where egress-proxy's CPU goes per forwarded request (issue #11, item 10),
# with its audit log on (to a file), under a bounded wrk load of small
# absolute-form GETs to a local nginx, as proxy-bench.sh sends them.
# Loopback only; every load is bounded in time.
#
#   bash bench/proxy-profile.sh              # needs: perf strace nginx wrk
#   TOP=40 SECONDS_LOAD=8 bash bench/proxy-profile.sh
#   PROXY_BIN=/path/to/egress-proxy bash bench/proxy-profile.sh   # another build
#   WHO=squid bash bench/proxy-profile.sh   # squid under the same load
#
# Prints, for one window of load (`--threads 1`, wrk -t1 -c$CONNECTIONS):
#   - requests, and the proxy's user / system CPU per request (/proc/PID/stat);
#   - `perf record` (cpu-clock, DWARF call graphs) of the proxy only: the
#     top symbols by self time, and the share (inclusive) of the parts that
#     issue #11 asks about: our head reader, Pingora's head parse, policy,
#     the audit line, metrics, upstream connection handling, the kernel;
#   - system calls per request, from `strace -c -f` over a second, shorter
#     window (strace slows the proxy, not the count per request).
# Compare two builds by running it twice (PROXY_BIN=...), minutes apart:
# CPU per request moves with the machine's load, shares and counts do not.
set -euo pipefail
cd "$(dirname "$0")/.."
ROOT=$PWD
for t in perf strace nginx wrk; do
    command -v "$t" >/dev/null || { echo "missing: $t (apt-get install -y linux-perf strace nginx wrk)" >&2; exit 2; }
done
SECONDS_LOAD=${SECONDS_LOAD:-6}
CONNECTIONS=${CONNECTIONS:-32}
TOP=${TOP:-30}
TMP=$(mktemp -d /tmp/chokepoint-profile.XXXXXX)
chmod 755 "$TMP"
PIDS=()
cleanup() {
    for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
    [ -f "$TMP/nginx.pid" ] && kill "$(cat "$TMP/nginx.pid")" 2>/dev/null || true
    sleep 0.3
    rm -rf "$TMP"
}
trap cleanup EXIT
KEEP=${KEEP:-}   # a directory to copy perf.data and the reports into
WHO=${WHO:-egress-proxy}   # or squid: the same load and counts for squid

if [ -z "${PROXY_BIN:-}" ] && [ "$WHO" != squid ]; then
    echo "building egress-proxy (release)..." >&2
    # The same packages as proxy-bench.sh: another set unifies features
    # differently and rebuilds egress-proxy (tens of minutes on 2 cores).
    cargo build --release -q -p egress-proxy -p chokepoint-bench
    PROXY_BIN=${CARGO_TARGET_DIR:-$ROOT/target}/release/egress-proxy
fi

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
if [ "$WHO" = squid ]; then
    # squid as proxy-bench.sh runs it: no cache, access log written by squid.
    chmod 777 "$TMP"
    cat > "$TMP/squid.conf" <<EOF
http_port 127.0.0.1:13138
http_access allow all
cache deny all
cache_mem 0 MB
access_log stdio:$TMP/squid-access.log squid
cache_log $TMP/squid-cache.log
pid_filename $TMP/squid.pid
coredump_dir $TMP
shutdown_lifetime 1 seconds
EOF
    squid -N -f "$TMP/squid.conf" 2>"$TMP/squid.err" & PID=$!; PIDS+=($PID)
else
    "$PROXY_BIN" --policy "$TMP/policy.yaml" --listen 127.0.0.1:13138 --admin-listen 127.0.0.1:19098 \
        --threads 1 --audit-log "$TMP/audit.jsonl" 2>"$TMP/proxy.err" & PID=$!; PIDS+=($PID)
fi

wait_port() { for _ in $(seq 100); do (exec 3<>"/dev/tcp/$1/$2") 2>/dev/null && return 0; sleep 0.1; done; echo "no listener on $1:$2" >&2; exit 1; }
wait_port 127.0.0.2 18080; wait_port 127.0.0.1 13138

cat > "$TMP/abs.lua" <<'EOF'
wrk.path = "http://127.0.0.2:18080/small"
wrk.headers["Host"] = "127.0.0.2:18080"
EOF
load() { # seconds → requests completed
    wrk -t1 -c"$CONNECTIONS" -d"$1"s -s "$TMP/abs.lua" http://127.0.0.1:13138 \
        | awk '/requests in/ {print $1}'
}
ticks() { awk '{print $14, $15}' "/proc/$PID/stat"; }
CLK=$(getconf CLK_TCK)

# Warm up: first connections, the upstream pool, lazy statics.
load 1 >/dev/null

# 1. CPU per request and the profile, over one window.
read -r u0 s0 <<<"$(ticks)"
perf record -q -F 999 --call-graph dwarf,16384 -p "$PID" -o "$TMP/perf.data" -- sleep "$SECONDS_LOAD" \
    2>"$TMP/perf.err" & PERF=$!
n=$(load "$SECONDS_LOAD")
wait "$PERF" || { cat "$TMP/perf.err" >&2; exit 1; }
read -r u1 s1 <<<"$(ticks)"

[ "$WHO" = squid ] && echo "squid $(squid -v | awk 'NR == 1 {print $4}'), access log to a file, wrk -t1 -c$CONNECTIONS ${SECONDS_LOAD}s, load $(cut -d' ' -f1-3 /proc/loadavg)" \
    || echo "egress-proxy $(git rev-parse --short HEAD 2>/dev/null || echo '?'), --threads 1, audit log to a file, wrk -t1 -c$CONNECTIONS ${SECONDS_LOAD}s, load $(cut -d' ' -f1-3 /proc/loadavg)"
echo "requests: $n (the profile slowed them; the CPU per request is what counts)"
awk -v u=$((u1 - u0)) -v s=$((s1 - s0)) -v n="$n" -v k="$CLK" 'BEGIN {
    printf "CPU us/req: %.1f (user %.1f, system %.1f)\n", (u + s) / k * 1e6 / n, u / k * 1e6 / n, s / k * 1e6 / n }'

# Expand once; both views below read the same text.
perf report -i "$TMP/perf.data" --no-children --sort symbol --stdio -g none --percent-limit 0.3 2>/dev/null \
    > "$TMP/self.txt"
perf report -i "$TMP/perf.data" --children --sort symbol --stdio -g none 2>/dev/null > "$TMP/children.txt"

echo
echo "top symbols, self time (share of the proxy's samples):"
grep -E '^ +[0-9.]+%' "$TMP/self.txt" | head -n "$TOP" | sed -E 's/ +$//' | cut -c1-160 || true

echo
echo "inclusive shares (a symbol's time with everything it calls; parts overlap):"
# children.txt: "  Children  Self  Symbol"; the first match per pattern.
share() { # label pattern
    local v
    v=$(grep -E -m1 "$2" "$TMP/children.txt" | awk '{print $1}' || true)
    printf "  %-44s %s\n" "$1" "${v:-<0.3% or not seen}"
}
share_sum() { # label pattern: the sum over the (disjoint) symbols matched
    local v
    v=$(grep -E "$2" "$TMP/children.txt" | awk '{gsub("%", "", $1); t += $1} END {if (t > 0) printf "%.2f%%", t}' || true)
    printf "  %-44s %s\n" "$1" "${v:-<0.3% or not seen}"
}
share "kernel (any [k] symbol under a syscall)" '\[k\] entry_SYSCALL_64_after_hwframe'
share_sum "  sends and writes"                  '\[k\] __x64_sys_(sendto|sendmsg|write|writev) '
share_sum "  receives and reads"                '\[k\] __x64_sys_(recvfrom|recvmsg|read|readv) '
share_sum "  epoll (wait, ctl)"                 '\[k\] __x64_sys_epoll_(wait|pwait|ctl) '
share "  context switches (finish_task_switch)"  '\[k\] finish_task_switch'
share "our head reader (head::read_head)"      'egress_proxy::head::read_head'
share "  its parse (head::parse_head)"         'egress_proxy::head::parse_head'
share "Pingora head parse (read_request)"      'pingora_core::protocols::http::v1::server::HttpSession::read_request'
share "policy decision (netpolicy::decide)"    'netpolicy::decide'
share "destination parse (parse_url)"          'Destination::parse_url'
share "audit line (AuditLog::write)"           'egress_proxy::audit::AuditLog::write'
share "  rendering (audit::render)"            'egress_proxy::audit::render'
share "  scrubbing (scrub::scrub_str)"         'scrub_str'
share "audit writer thread (audit::writer)"    'egress_proxy::audit::writer'
share "metrics (Metrics::request)"             'egress_proxy::metrics::Metrics::request'
share "ProxyHttp::logging"                     'as pingora_proxy::proxy_trait::ProxyHttp>::logging'
share "upstream session (get_http_session)"    'get_http_session'
share "upstream connection release"            'release_http_session'
share "malloc / free (mimalloc)"               'mi_(malloc|free)'

# 2. System calls per request, over a second window.
echo
strace -c -f -q -o "$TMP/strace.txt" -p "$PID" & STRACE=$!
sleep 0.5
n=$(load 3)
kill -INT "$STRACE" 2>/dev/null || true
wait "$STRACE" 2>/dev/null || true
echo "system calls per request (strace -c -f over $n requests):"
awk -v n="$n" '$1 ~ /^[0-9.]+$/ && NF >= 5 && $4 ~ /^[0-9]+$/ {printf "  %-16s %6.2f\n", $NF, $4 / n}' "$TMP/strace.txt" \
    | sort -k2 -nr | head -15
if [ -n "$KEEP" ]; then mkdir -p "$KEEP" && cp "$TMP"/perf.data "$TMP"/*.txt "$KEEP"/; fi
