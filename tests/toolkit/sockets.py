"""Sockets on 127.0.0.1 and what a process holds: ports a test needs (free, refused, unanswered),
reading exactly what is expected from a socket or a WebSocket, an HTTP head, WebSocket frames as
they pass, and a process's descriptors, TCP connections, threads and memory as /proc tells them.
"""
import contextlib
import os
import re
import socket

LOCALHOST = "127.0.0.1"


def free_port():
    """A port nothing listens on right now, for a cloud that must come back where it was."""
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


@contextlib.contextmanager
def refused_port():
    """A port held bound but never listening: connecting is refused, and nothing else can take it."""
    with socket.socket() as sock:
        sock.bind((LOCALHOST, 0))
        yield sock.getsockname()[1]


@contextlib.contextmanager
def unanswered_port(fillers=8):
    """A port whose TCP handshake never completes: a listener with backlog 0 whose accept queue is
    filled with connections it never accepts, so the kernel drops every further SYN."""
    listener = socket.socket()
    listener.bind((LOCALHOST, 0))
    listener.listen(0)
    port = listener.getsockname()[1]
    opened = []
    try:
        for _ in range(fillers):
            filler = socket.socket()
            filler.setblocking(False)
            filler.connect_ex((LOCALHOST, port))
            opened.append(filler)
            try:
                opened.append(socket.create_connection((LOCALHOST, port), timeout=0.3))
            except socket.timeout:
                break
        else:
            raise RuntimeError(f"connections to port {port} still complete after {fillers} fillers")
        yield port
    finally:
        for sock in opened:
            sock.close()
        listener.close()


def shutdown(sock):
    """End a connection both ways (a peer reading it sees EOF), whatever state it is in."""
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def recv_exactly(sock, size):
    """`size` bytes from a socket, or whatever came before EOF."""
    chunks, received = [], 0
    while received < size:
        chunk = sock.recv(min(size - received, 1 << 20))
        if not chunk:
            break
        chunks.append(chunk)
        received += len(chunk)
    return b"".join(chunks)


def recv_until_eof(sock, limit=64 << 20):
    """Everything a socket delivers until the peer ends it (recv returns b""); more than `limit` is an error."""
    chunks, received = [], 0
    while received <= limit:
        chunk = sock.recv(1 << 20)
        if not chunk:
            return b"".join(chunks)
        chunks.append(chunk)
        received += len(chunk)
    raise AssertionError(f"more than {limit} bytes and still no EOF")


def read_head(sock, limit=64 << 10):
    """An HTTP head through its blank line, and none of what follows it: what has come is looked at
    (MSG_PEEK) and only the head's bytes are taken. b"" when the peer ends before its first byte;
    ValueError when it ends within the head, or the head is longer than `limit`."""
    head = b""
    while len(head) < limit:
        peeked = sock.recv(limit, socket.MSG_PEEK)
        if not peeked:
            if head:
                raise ValueError("the connection ended within an HTTP head")
            return b""
        tail = head[-3:]
        end = (tail + peeked).find(b"\r\n\r\n")
        if end >= 0:
            return head + recv_exactly(sock, end + 4 - len(tail))
        head += recv_exactly(sock, len(peeked))
    raise ValueError(f"no complete HTTP head within {limit} bytes")


def ws_recv_exactly(ws, size):
    """`size` bytes of binary frames from a websocket-client WebSocket (its timeout bounds each frame)."""
    chunks, received = [], 0
    while received < size:
        data = ws.recv()
        assert isinstance(data, bytes) and data, f"expected binary data, got {data!r}"
        chunks.append(data)
        received += len(data)
    return b"".join(chunks)


def split_frames(buffer):
    """The whole RFC 6455 frames at the start of buffer as (opcode, raw bytes), and the rest."""
    frames = []
    while len(buffer) >= 2:
        length, offset = buffer[1] & 0x7F, 2
        if length == 126:
            length, offset = int.from_bytes(buffer[2:4], "big"), 4
        elif length == 127:
            length, offset = int.from_bytes(buffer[2:10], "big"), 10
        if len(buffer) < offset:
            break
        end = offset + (4 if buffer[1] & 0x80 else 0) + length
        if len(buffer) < end:
            break
        frames.append((buffer[0] & 0x0F, buffer[:end]))
        buffer = buffer[end:]
    return frames, buffer


# What a process holds, as /proc tells it.


def open_fds(pid, except_connections=frozenset()):
    """How many descriptors pid has open, not counting its TCP sockets whose (local port, remote
    port) is one of except_connections. (A local port alone does not tell a connection: one to
    another address may share it.)"""
    return sum(connection not in except_connections for connection in _descriptors(pid))


def tcp_connections_of(pid):
    """(local port, remote port) of each of pid's open TCP sockets."""
    return [connection for connection in _descriptors(pid) if connection is not None]


def _descriptors(pid):
    """For each of pid's open descriptors, (local port, remote port) if it is a TCP socket, else None."""
    ends = {}
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                ends[f"socket:[{fields[9]}]"] = tuple(int(f.rsplit(":", 1)[1], 16) for f in fields[1:3])
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed while we looked
            continue
        found.append(ends.get(target))
    return found


def threads_of(pid):
    return len(os.listdir(f"/proc/{pid}/task"))


def rss_kib(pid):
    with open(f"/proc/{pid}/status") as status:
        return int(re.search(r"VmRSS:\s+(\d+)", status.read()).group(1))
