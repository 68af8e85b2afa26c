# Probes and listeners for the kernel-isolation tests (netns_isolation.rs):
# `serve tcp|udp|dns IP PORT...`, `tcp|udp|dns IP PORT` (exit 0 = reached),
# `spoof SRC IP PORT`, `recv IP PORT SRC SECS`, `tcp-from SRC SPORT IP PORT`.
import socket, struct, sys, threading, time

def fam(ip):
    return socket.AF_INET6 if ':' in ip else socket.AF_INET

def dns_query(qid, name):
    q = b''.join(bytes([len(p)]) + p.encode() for p in name.split('.')) + b'\0'
    return struct.pack('>HHHHHH', qid, 0x0100, 1, 0, 0, 0) + q + struct.pack('>HH', 1, 1)

def serve_tcp(ip, p):
    s = socket.socket(fam(ip)); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    s.bind((ip, p)); s.listen(64)
    while True:
        c, _ = s.accept(); c.close()

def serve_udp(ip, p):
    s = socket.socket(fam(ip), socket.SOCK_DGRAM); s.bind((ip, p))
    while True:
        d, a = s.recvfrom(2048); s.sendto(d, a)

def serve_dns(ip, p):
    s = socket.socket(fam(ip), socket.SOCK_DGRAM); s.bind((ip, p))
    while True:
        d, a = s.recvfrom(2048)
        if len(d) < 12: continue
        qid, = struct.unpack('>H', d[:2])
        end = d.index(b'\0', 12) + 5
        ans = b'\xc0\x0c' + struct.pack('>HHIH', 1, 1, 0, 4) + bytes([192, 0, 2, 99])
        s.sendto(struct.pack('>HHHHHH', qid, 0x8180, 1, 1, 0, 0) + d[12:end] + ans, a)

def main():
    mode, args = sys.argv[1], sys.argv[2:]
    if mode == 'serve':
        kind, ip = args[0], args[1]
        target = {'tcp': serve_tcp, 'udp': serve_udp, 'dns': serve_dns}[kind]
        for p in args[2:]:
            threading.Thread(target=target, args=(ip, int(p)), daemon=True).start()
        time.sleep(600)
    elif mode == 'tcp':
        ip, port = args[0], int(args[1])
        s = socket.socket(fam(ip)); s.settimeout(1)
        sys.exit(0 if s.connect_ex((ip, port)) == 0 else 1)
    elif mode == 'udp':
        ip, port = args[0], int(args[1])
        s = socket.socket(fam(ip), socket.SOCK_DGRAM); s.settimeout(1)
        try:
            s.sendto(b'probe', (ip, port)); d, _ = s.recvfrom(64)
            sys.exit(0 if d == b'probe' else 1)
        except OSError:
            sys.exit(1)
    elif mode == 'dns':
        ip, port = args[0], int(args[1])
        s = socket.socket(fam(ip), socket.SOCK_DGRAM); s.settimeout(1)
        try:
            s.sendto(dns_query(0x4242, 'probe.chokepoint.test'), (ip, port)); d, _ = s.recvfrom(512)
            ok = d[:2] == b'\x42\x42' and struct.unpack('>H', d[6:8])[0] >= 1
            sys.exit(0 if ok else 1)
        except OSError:
            sys.exit(1)
    elif mode == 'spoof':
        # UDP from a source address the sender does not own on its subnet.
        src, ip, port = args[0], args[1], int(args[2])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((src, 0))
        for _ in range(3):
            s.sendto(b'spoofed', (ip, port)); time.sleep(0.1)
    elif mode == 'recv':
        # One datagram from `src` within `secs`: exit 0; otherwise 1.
        ip, port, src, secs = args[0], int(args[1]), args[2], float(args[3])
        s = socket.socket(socket.AF_INET, socket.SOCK_DGRAM); s.bind((ip, port))
        print('ready', flush=True)
        end = time.time() + secs
        while time.time() < end:
            s.settimeout(max(0.05, end - time.time()))
            try:
                d, a = s.recvfrom(64)
            except OSError:
                break
            if a[0] == src:
                sys.exit(0)
        sys.exit(1)
    elif mode == 'tcp-from':
        # A TCP connection opened FROM src:sport (not a reply).
        src, sport, ip, port = args[0], int(args[1]), args[2], int(args[3])
        s = socket.socket(socket.AF_INET); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((src, sport)); s.settimeout(1)
        sys.exit(0 if s.connect_ex((ip, port)) == 0 else 1)

main()
