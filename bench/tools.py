#!/usr/bin/env python3
"""Helpers for bench/proxy-bench.sh (loopback only, every loop bounded).

  tools.py dns PORT IP              answer every A query with IP (UDP, 127.0.0.1)
  tools.py report RESULTS           medians per proxy of the bench's result
                                    lines, the table and the targets
  tools.py idle PROXY TARGET N PID  hold N idle CONNECT tunnels, print the
                                    proxy's VmRSS/VmHWM in KiB, then close
"""
import socket
import statistics
import struct
import sys
import time


def dns(port, ip):
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.bind(("127.0.0.1", int(port)))
    addr = socket.inet_aton(ip)
    deadline = time.time() + 3600
    while time.time() < deadline:
        data, peer = sock.recvfrom(2048)
        if len(data) < 12:
            continue
        qid, flags, qd = struct.unpack("!HHH", data[:6])
        # Question section ends after the name's zero byte + type + class.
        end = data.index(b"\x00", 12) + 5
        question = data[12:end]
        qtype = struct.unpack("!H", data[end - 4:end - 2])[0]
        answers = 1 if qtype == 1 else 0
        # Other types get NODATA with an SOA, as a real server answers, so
        # resolvers can cache the negative answer (RFC 2308).
        header = struct.pack("!HHHHHH", qid, 0x8180, 1, answers, 1 - answers, 0)
        body = question
        if answers:
            body += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + addr
        else:
            soa = b"\x00\x00" + struct.pack("!IIIII", 1, 3600, 600, 86400, 300)
            body += b"\xc0\x0c" + struct.pack("!HHIH", 6, 1, 300, len(soa)) + soa
        sock.sendto(header + body, peer)


def connect(proxy, target):
    host, port = proxy.rsplit(":", 1)
    s = socket.create_connection((host, int(port)), timeout=5)
    s.sendall(f"CONNECT {target} HTTP/1.1\r\nHost: {target}\r\n\r\n".encode())
    buf = b""
    while b"\r\n\r\n" not in buf:
        chunk = s.recv(4096)
        if not chunk:
            raise OSError("proxy closed")
        buf += chunk
    if not buf.startswith(b"HTTP/1.1 200") and not buf.startswith(b"HTTP/1.0 200"):
        raise OSError(buf.split(b"\r\n")[0].decode(errors="replace"))
    return s


def idle(proxy, target, n, pid):
    held = []
    for _ in range(int(n)):
        held.append(connect(proxy, target))
    time.sleep(1)
    rss = hwm = 0
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmRSS:"):
                rss = int(line.split()[1])
            if line.startswith("VmHWM:"):
                hwm = int(line.split()[1])
    print(f"{len(held)} {rss} {hwm}")
    for s in held:
        s.close()


COLUMNS = ["req/s", "p50 ms", "p99 ms", "CPU us/req", "bulk MiB/s", "tunnels/s",
           "setup ms", "CPU us/tun", "1k idle MiB", "peak MiB", "usr us/req"]


def report(path):
    rows = {}
    per_round = {}
    for line in open(path):
        rnd, name, *vals = line.split()
        vals = [None if v == "-" else float(v) for v in vals]
        rows.setdefault(name, []).append(vals)
        per_round.setdefault(rnd, {})[name] = vals
    med = {}
    for name, rounds in rows.items():
        med[name] = []
        for col in range(len(COLUMNS)):
            xs = sorted(r[col] for r in rounds if r[col] is not None)
            med[name].append(statistics.median(xs) if xs else None)
    fmt = "{:<13}" + " {:>11}" * len(COLUMNS)
    print(fmt.format("proxy", *COLUMNS))
    for name, vals in med.items():
        print(fmt.format(name, *("-" if v is None else f"{v:.4g}" for v in vals)))

    def col(name, c, table):
        vals = table.get(name)
        return vals[COLUMNS.index(c)] if vals else None

    # Each target is judged on the median of its per-round value (both
    # sides measured minutes apart, not a whole run apart); the range shows
    # how much this machine moved between rounds.
    def per(fn):
        xs = sorted(x for x in (fn(t) for t in per_round.values()) if x is not None)
        if not xs:
            return None, None, None
        return statistics.median(xs), xs[0], xs[-1]

    def ratio(a, b, c):
        def f(t):
            x, y = col(a, c, t), col(b, c, t)
            return x / y if x and y else None
        return per(f)

    e = "egress-proxy"
    checks = [
        ("forwarded req/s vs squid", ratio(e, "squid", "req/s"), 2.0, "x", True),
        ("tunnel bulk vs direct", ratio(e, "direct", "bulk MiB/s"), 0.95, "x", True),
        ("new tunnels/s vs squid", ratio(e, "squid", "tunnels/s"), 1.3, "x", True),
    ]

    def added(name):
        def f(t):
            x, y = col(name, "setup ms", t), col("direct", "setup ms", t)
            return x - y if x is not None and y is not None else None
        return f

    checks.append(("tunnel setup added (ms)", per(added(e)), 0.3, " ms", False))
    checks.append(("peak RSS, 1,000 idle (MiB)",
                   per(lambda t: col(e, "1k idle MiB", t)), 64, " MiB", False))
    print()
    print("targets (egress-proxy): median over rounds [min..max]")
    for what, (m, lo, hi), target, unit, higher in checks:
        if m is None:
            print(f"  {what:<28} -")
            continue
        if higher:
            ok, sign = m >= target, ">="
        elif unit == " ms":
            ok, sign = m <= target, "<="
        else:
            ok, sign = m < target, "<"
        print(f"  {what:<28} {m:>7.2f}{unit:<4} [{lo:.2f}..{hi:.2f}]  "
              f"target {sign} {target:g}{unit}  {'met' if ok else 'MISSED'}")
    for what, (m, lo, hi) in [
        ("req/s vs direct", ratio(e, "direct", "req/s")),
        ("req/s vs tinyproxy", ratio(e, "tinyproxy", "req/s")),
        ("tunnels/s vs direct", ratio(e, "direct", "tunnels/s")),
        ("squid req/s vs direct", ratio("squid", "direct", "req/s")),
        ("squid tunnels/s vs direct", ratio("squid", "direct", "tunnels/s")),
        ("CPU per request vs squid", ratio(e, "squid", "CPU us/req")),
        ("CPU per tunnel vs squid", ratio(e, "squid", "CPU us/tun")),
        ("user CPU per request vs squid", ratio(e, "squid", "usr us/req")),
        ("egress-base CPU/req vs squid", ratio("egress-base", "squid", "CPU us/req")),
        ("egress-base usr/req vs squid", ratio("egress-base", "squid", "usr us/req")),
        ("egress-base CPU/tun vs squid", ratio("egress-base", "squid", "CPU us/tun")),
        ("CPU per request vs egress-base", ratio(e, "egress-base", "CPU us/req")),
    ]:
        if m is not None:
            print(f"  {what:<32} {m:>7.2f}x    [{lo:.2f}..{hi:.2f}]")
    m, lo, hi = per(added("squid"))
    if m is not None:
        print(f"  {'squid setup added (ms)':<28} {m:>7.2f} ms [{lo:.2f}..{hi:.2f}]")


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "dns":
        dns(*args)
    elif cmd == "report":
        report(*args)
    elif cmd == "idle":
        idle(*args)
    else:
        sys.exit(__doc__)
