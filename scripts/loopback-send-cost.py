#!/usr/bin/env python3
"""What one small TCP send over loopback costs the sender on this machine.

Opens 2,000 loopback connections to a child process that either holds them without
reading ("hold") or reads them with epoll ("read", so each send may have to wake
it), sends 100 bytes on each connection 20 times, and prints the sender's CPU per
send, with the interpreter's loop overhead subtracted. On loopback the sender's
syscall also runs the receiving side of TCP, so this is the floor under every
delivery the gateway writes when the harness runs on the same host.

Usage: python3 scripts/loopback-send-cost.py
"""
import socket
import subprocess
import sys
import time

CONNECTIONS = 2000
ROUNDS = 20

RECEIVER = r"""
import select, socket, sys, time
port, n, mode = int(sys.argv[1]), int(sys.argv[2]), sys.argv[3]
socks = [socket.create_connection(("127.0.0.1", port), timeout=10) for _ in range(n)]
for s in socks:
    s.setblocking(False)
print("ready", flush=True)
end = time.time() + 60
if mode == "hold":
    while time.time() < end and sys.stdin.read(1):
        pass
else:
    ep = select.epoll()
    by_fd = {s.fileno(): s for s in socks}
    for fd in by_fd:
        ep.register(fd, select.EPOLLIN)
    while time.time() < end:
        for fd, _ in ep.poll(1):
            try:
                by_fd[fd].recv(65536)
            except BlockingIOError:
                pass
"""


def measure(mode):
    listener = socket.socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(4096)
    listener.settimeout(10)
    port = listener.getsockname()[1]
    child = subprocess.Popen(
        [sys.executable, "-c", RECEIVER, str(port), str(CONNECTIONS), mode],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
    )
    try:
        conns = [listener.accept()[0] for _ in range(CONNECTIONS)]
        for c in conns:
            c.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        child.stdout.readline()
        msg = b"x" * 100
        started = time.process_time()
        for _ in range(ROUNDS):
            for c in conns:
                len(msg)
        overhead = time.process_time() - started
        started = time.process_time()
        for _ in range(ROUNDS):
            for c in conns:
                c.send(msg)
            time.sleep(0.05)
        cpu = time.process_time() - started - overhead
        for c in conns:
            c.close()
        return cpu * 1e6 / (CONNECTIONS * ROUNDS)
    finally:
        child.kill()
        child.wait()
        listener.close()


if __name__ == "__main__":
    for mode in ("hold", "read"):
        print(f"receiver {mode}: {measure(mode):.1f} us of sender CPU per 100-byte send")
