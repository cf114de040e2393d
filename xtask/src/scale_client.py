# The kernel-side client of the scale test and `cargo xtask bench scale` (xtask/src/scale.rs).
# Runs in the lab's peer namespace: opens N TCP connections to HOST, spread round-robin over
# PORTS, at most INFLIGHT handshakes at a time, and holds them all open; then obeys commands
# on stdin, answering each with one JSON line on stdout:
#   echo K SIZE  - send a distinct SIZE-byte message on K connections spread over all of
#                  them, read each echo back and compare it byte for byte
#   close        - shut every connection down (our FIN first), wait for the server's FIN
#                  (EOF) on each, then close it
#   quit         - exit
# usage: python3 scale_client.py HOST PORT[,PORT...] N INFLIGHT
import collections
import errno
import json
import resource
import select
import socket
import sys
import time

TCP_ESTABLISHED = 1
LIMIT = 600.0


def out(**kw):
    sys.stdout.write(json.dumps(kw) + "\n")
    sys.stdout.flush()


def main():
    host = sys.argv[1]
    ports = [int(p) for p in sys.argv[2].split(",")]
    n = int(sys.argv[3])
    inflight = int(sys.argv[4])
    want = n + 1024
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    resource.setrlimit(resource.RLIMIT_NOFILE, (max(soft, want), max(hard, want)))

    socks = [None] * n
    ep = select.epoll()
    pending = {}
    todo = collections.deque(range(n))
    retries = 0
    t0 = time.monotonic()

    def connect_all():
        nonlocal retries
        done = sum(1 for s in socks if s is not None)
        while done < n:
            while len(pending) < inflight and todo:
                i = todo.popleft()
                s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
                s.setblocking(False)
                err = s.connect_ex((host, ports[i % len(ports)]))
                if err not in (0, errno.EINPROGRESS):
                    s.close()
                    retries += 1
                    todo.append(i)
                    continue
                pending[s.fileno()] = (i, s)
                ep.register(s.fileno(), select.EPOLLOUT)
            for fd, _ in ep.poll(1.0):
                i, s = pending.pop(fd)
                ep.unregister(fd)
                if s.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR) == 0:
                    socks[i] = s
                    done += 1
                else:
                    # Refused (a full accept queue answers with RST): try again.
                    s.close()
                    retries += 1
                    todo.append(i)
            if time.monotonic() - t0 > LIMIT:
                out(event="error", what="connect", done=done, n=n)
                sys.exit(1)

    connect_all()
    # A handshake the server reset after it completed here would look established: check
    # every socket's state and reopen the dead ones.
    while True:
        dead = 0
        for i, s in enumerate(socks):
            state = s.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 8)[0]
            if state != TCP_ESTABLISHED:
                s.close()
                socks[i] = None
                todo.append(i)
                dead += 1
        if dead == 0:
            break
        retries += dead
        connect_all()
    out(event="established", n=n, retries=retries, secs=time.monotonic() - t0)

    for line in sys.stdin:
        words = line.split()
        if not words:
            continue
        if words[0] == "echo":
            k, size = int(words[1]), int(words[2])
            t = time.monotonic()
            sample = sorted({j * n // k for j in range(k)})
            msgs = {}
            for i in sample:
                head = b"%010d:" % i
                body = bytes((i + j) & 0xFF for j in range(size - len(head)))
                msgs[i] = head + body
                s = socks[i]
                s.setblocking(True)
                s.settimeout(LIMIT)
                s.sendall(msgs[i])
            ok = bad = 0
            for i in sample:
                s = socks[i]
                got = b""
                while len(got) < size:
                    chunk = s.recv(size - len(got))
                    if not chunk:
                        break
                    got += chunk
                if got == msgs[i]:
                    ok += 1
                else:
                    bad += 1
                s.setblocking(False)
            out(event="echoed", ok=ok, bad=bad, bytes=len(sample) * size,
                sample=len(sample), secs=time.monotonic() - t)
        elif words[0] == "close":
            # Paced like the connects: at most INFLIGHT connections between our FIN and the
            # server's. shutdown(SHUT_WR), not close(): a closed socket is an orphan, and the
            # kernel gives an orphan's FIN only a few retransmissions (TCPAbortOnTimeout), so a
            # burst of 100 k FINs that meets a busy receiver would leave connections behind.
            t = time.monotonic()
            todo = collections.deque(range(n))
            waiting = {}
            eof = errors = unexpected = 0
            while todo or waiting:
                while len(waiting) < inflight and todo:
                    i = todo.popleft()
                    s = socks[i]
                    s.setblocking(False)
                    s.shutdown(socket.SHUT_WR)
                    waiting[s.fileno()] = (i, s)
                    ep.register(s.fileno(), select.EPOLLIN | select.EPOLLRDHUP)
                for fd, _ in ep.poll(1.0):
                    i, s = waiting[fd]
                    try:
                        data = s.recv(65536)
                    except BlockingIOError:
                        continue
                    except OSError:
                        errors += 1
                    else:
                        if data:
                            unexpected += 1
                            continue
                        eof += 1
                    del waiting[fd]
                    ep.unregister(fd)
                    s.close()
                    socks[i] = None
                if time.monotonic() - t > LIMIT:
                    out(event="error", what="close", eof=eof, left=len(waiting) + len(todo))
                    sys.exit(1)
            out(event="closed", n=n, eof=eof, errors=errors, unexpected_data=unexpected,
                secs=time.monotonic() - t)
        elif words[0] == "quit":
            break
        else:
            out(event="error", unknown=line.strip())


main()
