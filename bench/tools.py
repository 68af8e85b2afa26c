#!/usr/bin/env python3
"""Helpers for bench/proxy-bench.sh (loopback only, every loop bounded).

  tools.py dns PORT IP              answer every A query with IP (UDP, 127.0.0.1)
  tools.py tunnels PROXY TARGET HOST N SECONDS CAFILE
                                    open CONNECT+TLS tunnels one after another
                                    (at most N, at most SECONDS); print
                                    "count rate_per_s median_setup_ms"
  tools.py direct-tls HOSTPORT HOST N SECONDS CAFILE
                                    the same without a proxy (TLS handshakes)
  tools.py idle PROXY TARGET N PID  hold N idle CONNECT tunnels, print the
                                    proxy's VmRSS/VmHWM in KiB, then close
"""
import socket
import ssl
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
        header = struct.pack("!HHHHHH", qid, 0x8180, 1, answers, 0, 0)
        body = question
        if answers:
            body += b"\xc0\x0c" + struct.pack("!HHIH", 1, 1, 300, 4) + addr
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


def tunnels(proxy, target, host, n, seconds, cafile, direct=False):
    ctx = ssl.create_default_context(cafile=cafile)
    n, seconds = int(n), float(seconds)
    setups = []
    start = time.time()
    while len(setups) < n and time.time() - start < seconds:
        t0 = time.perf_counter()
        if direct:
            h, p = target.rsplit(":", 1)
            raw = socket.create_connection((h, int(p)), timeout=5)
        else:
            raw = connect(proxy, target)
        tls = ctx.wrap_socket(raw, server_hostname=host)
        setups.append((time.perf_counter() - t0) * 1000)
        tls.close()
    elapsed = time.time() - start
    setups.sort()
    print(f"{len(setups)} {len(setups) / elapsed:.1f} {setups[len(setups) // 2]:.3f}")


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


if __name__ == "__main__":
    cmd, args = sys.argv[1], sys.argv[2:]
    if cmd == "dns":
        dns(*args)
    elif cmd == "tunnels":
        tunnels(*args)
    elif cmd == "direct-tls":
        hostport, host, n, seconds, cafile = args
        tunnels(None, hostport, host, n, seconds, cafile, direct=True)
    elif cmd == "idle":
        idle(*args)
    else:
        sys.exit(__doc__)
