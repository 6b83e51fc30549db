#!/usr/bin/python3
"""An HTTP/1.1 proxy between drfs and an S3 server that injects faults.

usage: faultproxy.py LISTEN_PORT UPSTREAM_HOST:PORT CONTROL_FILE

Before each request it reads CONTROL_FILE (absent or empty: pass through),
one line of words:
  mode=pass | reset | 500 | 503 | slow | truncate
  count=N     the fault applies to the next N requests only
  prob=P      each request is hit with probability P
  delay=S     seconds, for mode=slow
reset closes the client's connection with a TCP reset and no answer; 500
and 503 answer with an S3 error body (InternalError, SlowDown); slow waits
DELAY seconds before forwarding; truncate forwards the answer's head and
half its body, then closes.  Writing the file anew restarts the count.
One line per request goes to stderr.
"""
import os
import random
import signal
import socket
import struct
import sys
import threading
import time

LISTEN, UPSTREAM, CONTROL = int(sys.argv[1]), sys.argv[2], sys.argv[3]
UP_HOST, UP_PORT = UPSTREAM.rsplit(":", 1)[0], int(UPSTREAM.rsplit(":", 1)[1])
lock = threading.Lock()
state = {"key": None, "left": None}


def decide():
    """The fault for this request: (mode, delay) or None."""
    try:
        with open(CONTROL) as f:
            st = os.fstat(f.fileno())
            text = f.read().strip()
        key = (text, st.st_ino, st.st_mtime_ns, st.st_size)
    except OSError:
        text, key = "", None
    opts = dict(w.split("=", 1) for w in text.split() if "=" in w)
    with lock:
        # any write of the file starts a new count, even with the same text
        if key != state["key"]:
            state["key"] = key
            state["left"] = int(opts["count"]) if "count" in opts else None
        mode = opts.get("mode", "pass")
        if mode == "pass":
            return None
        if state["left"] is not None:
            if state["left"] <= 0:
                return None
        if "prob" in opts and random.random() >= float(opts["prob"]):
            return None
        if state["left"] is not None:
            state["left"] -= 1
    return mode, float(opts.get("delay", "1"))


def read_head(sock, buf):
    """Reads up to the end of an HTTP head; returns (head bytes, rest) or (None, buf) at EOF."""
    while b"\r\n\r\n" not in buf:
        data = sock.recv(65536)
        if not data:
            return None, buf
        buf += data
    i = buf.index(b"\r\n\r\n") + 4
    return buf[:i], buf[i:]


def header(head, name):
    for line in head.split(b"\r\n")[1:]:
        k, _, v = line.partition(b":")
        if k.strip().lower() == name:
            return v.strip()
    return None


def read_exact(sock, buf, n):
    while len(buf) < n:
        data = sock.recv(65536)
        if not data:
            raise ConnectionError("short body")
        buf += data
    return buf[:n], buf[n:]


def read_chunked(sock, buf):
    """Reads a chunked body; returns its raw bytes (chunk framing kept) and the rest."""
    out = b""
    while True:
        while b"\r\n" not in buf:
            data = sock.recv(65536)
            if not data:
                raise ConnectionError("short chunked body")
            buf += data
        line, buf = buf.split(b"\r\n", 1)
        size = int(line.split(b";")[0], 16)
        out += line + b"\r\n"
        chunk, buf = read_exact(sock, buf, size + 2)
        out += chunk
        if size == 0:
            return out, buf


def upstream(request):
    """Sends REQUEST to the server on a new connection; returns (head, body)."""
    up = socket.create_connection((UP_HOST, UP_PORT), timeout=60)
    try:
        up.sendall(request)
        head, rest = read_head(up, b"")
        if head is None:
            raise ConnectionError("no answer")
        method = request.split(b" ", 1)[0]
        status = int(head.split(b" ")[1])
        if method == b"HEAD" or status in (204, 304):
            return head, b""
        cl = header(head, b"content-length")
        if cl is not None:
            body, _ = read_exact(up, rest, int(cl))
        elif (header(head, b"transfer-encoding") or b"").lower() == b"chunked":
            body, _ = read_chunked(up, rest)
        else:
            body = rest
            while True:
                data = up.recv(65536)
                if not data:
                    break
                body += data
        return head, body
    finally:
        up.close()


def without_connection(head):
    """HEAD without its Connection header: that one was for the proxy's own connection."""
    return b"\r\n".join(l for l in head.split(b"\r\n")
                        if not l.lower().startswith(b"connection:"))


def error_answer(status):
    code, text = ("SlowDown", "Service Unavailable") if status == 503 else \
        ("InternalError", "Internal Server Error")
    body = ("<?xml version='1.0' encoding='UTF-8'?>\n<Error><Code>%s</Code>"
            "<Message>injected by the test proxy</Message></Error>" % code).encode()
    head = ("HTTP/1.1 %d %s\r\nContent-Type: application/xml\r\nContent-Length: %d\r\n\r\n"
            % (status, text, len(body))).encode()
    return head + body


def serve(client):
    buf = b""
    try:
        while True:
            head, buf = read_head(client, buf)
            if head is None:
                return
            if (header(head, b"expect") or b"").lower() == b"100-continue":
                # answer it here; the server gets the whole request at once
                client.sendall(b"HTTP/1.1 100 Continue\r\n\r\n")
                head = b"\r\n".join(l for l in head.split(b"\r\n")
                                     if not l.lower().startswith(b"expect:"))
            cl = header(head, b"content-length")
            body = b""
            if cl is not None:
                body, buf = read_exact(client, buf, int(cl))
            elif (header(head, b"transfer-encoding") or b"").lower() == b"chunked":
                body, buf = read_chunked(client, buf)
            line = head.split(b"\r\n", 1)[0].decode(errors="replace")
            fault = decide()
            sys.stderr.write("%s %s%s\n" % (time.strftime("%H:%M:%S"), line,
                                            " [%s]" % fault[0] if fault else ""))
            if fault and fault[0] == "reset":
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if fault and fault[0] in ("500", "503"):
                client.sendall(error_answer(int(fault[0])))
                continue
            if fault and fault[0] == "slow":
                time.sleep(fault[1])
            # one upstream connection per request; the client's stays open
            # unless it asks otherwise
            client_close = (header(head, b"connection") or b"").lower() == b"close"
            req = without_connection(head).replace(
                b"\r\n\r\n", b"\r\nConnection: close\r\n\r\n", 1)
            try:
                rhead, rbody = upstream(req + body)
            except (OSError, ConnectionError):
                client.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
                return
            if fault and fault[0] == "truncate" and rbody:
                client.sendall(rhead + rbody[:len(rbody) // 2])
                return
            framed = header(rhead, b"content-length") is not None or \
                (header(rhead, b"transfer-encoding") or b"").lower() == b"chunked" or \
                req.split(b" ", 1)[0] == b"HEAD" or int(rhead.split(b" ")[1]) in (204, 304)
            if client_close or not framed:
                client.sendall(rhead + rbody)
                return
            client.sendall(without_connection(rhead) + rbody)
    except (OSError, ConnectionError, ValueError):
        return
    finally:
        client.close()


def main():
    signal.signal(signal.SIGTERM, lambda *_: os._exit(0))
    srv = socket.socket()
    srv.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    srv.bind(("127.0.0.1", LISTEN))
    srv.listen(64)
    while True:
        c, _ = srv.accept()
        threading.Thread(target=serve, args=(c,), daemon=True).start()


if __name__ == "__main__":
    main()
