"""Bytes through a chain, both ends in the bench's own process, so every time is read on one clock.

The user's end is a byte stream: plain TCP for direct TCP and the floor relay (TLS for the floor
over wss), and for the device sides behind cra-cloud a WebSocket client of the relay's client
endpoint (WebSocketStream), the same for every device side and as cheap as a client can be, so
that the user's end is never what limits a chain.

One protocol for every chain. The user's end sends a 9-byte header (a mode and a flow id); the
target behind the device side notes when it arrived (the first byte through, for set-up times),
answers b"!" (the tunnel is open end to end), and then:
  E  echoes, for ping-pong;
  S  swallows and counts, per flow, for the user -> device direction ("up");
  D  waits for one byte, then streams until the connection ends, for device -> user ("down").
Throughput is counted where the bytes arrive, in a window after a warm-up, so no buffer on the
way (kernel, relay, device side) counts as moved.
"""
import base64
import itertools
import os
import socket
import struct
import threading
import time

HEADER = struct.Struct("!cQ")
CHUNK = 64 * 1024  # the user's frames: what cra-connect or a browser sends for a bulk copy
BLOCK = 4 * CHUNK  # large writes and reads keep the bench's own CPU per byte small
TIMEOUT = 30.0  # every blocking call of the bench is bounded by this (the relay's operation timeout)
_flow_ids = itertools.count(1)


def tcp(port, wrap=None):
    """A TCP connection to 127.0.0.1:port as the user's end, TLS when `wrap` is given."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    return TcpStream(wrap(sock) if wrap else sock)


class TcpStream:
    def __init__(self, sock):
        self.sock = sock
        self.bulk = bytes(BLOCK)

    def send(self, data):
        self.sock.sendall(data)

    def send_bulk(self):
        self.sock.sendall(self.bulk)

    def recv(self, size):
        return self.sock.recv(size)

    def close(self):
        close_socket(self.sock)


def websocket(port, path, authorization):
    """The user's end as a WebSocket client (RFC 6455) of the relay at 127.0.0.1:port: the upgrade
    with Authorization and the `binary` subprotocol (docs/wire.md section 4), which creates the operation."""
    sock = socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT)
    sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
    key = base64.b64encode(os.urandom(16)).decode()
    sock.sendall((f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{port}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
                  f"Sec-WebSocket-Key: {key}\r\nSec-WebSocket-Version: 13\r\nSec-WebSocket-Protocol: binary\r\n"
                  f"Authorization: {authorization}\r\n\r\n").encode())
    answer = b""
    while b"\r\n\r\n" not in answer:
        more = sock.recv(4096)
        if not more:
            raise ConnectionError(f"the relay closed during the upgrade: {answer[:200]!r}")
        answer += more
    head, rest = answer.split(b"\r\n\r\n", 1)
    if not head.startswith(b"HTTP/1.1 101"):
        sock.close()
        raise ConnectionError(f"the relay refused the upgrade: {head.splitlines()[0]!r}")
    return WebSocketStream(sock, rest)


class WebSocketStream:
    """A WebSocket with a byte-stream face: send() is one binary frame, recv() gives payload bytes.

    The frames are masked, as a client's must be, with the all-zero key: valid on the wire (the
    relay unmasks them as any others) and free for the bench, whose CPU competes with the chain's.
    """

    def __init__(self, sock, received=b""):
        self.sock = sock
        self.bulk = self._frame(bytes(CHUNK)) * (BLOCK // CHUNK)
        self._raw = memoryview(received)  # received and not yet parsed
        self._left = 0  # payload bytes of the current frame not yet handed out
        self._data = True  # whether the current frame carries data (binary or continuation) or control
        self._closed = False  # whether it is the relay's close frame

    @staticmethod
    def _frame(data, opcode=0x2):
        size = len(data)
        if size < 126:
            length = bytes([0x80 | size])
        elif size < 65536:
            length = bytes([0x80 | 126]) + size.to_bytes(2, "big")
        else:
            length = bytes([0x80 | 127]) + size.to_bytes(8, "big")
        return bytes([0x80 | opcode]) + length + b"\0\0\0\0" + data

    def send(self, data):
        self.sock.sendall(self._frame(data))

    def send_bulk(self):
        self.sock.sendall(self.bulk)

    def recv(self, size):
        """Up to `size` payload bytes of the next data frame; b"" once the relay closed."""
        while True:
            if self._left and self._raw:
                take = min(self._left, len(self._raw), size)
                data, self._raw = self._raw[:take], self._raw[take:]
                self._left -= take
                if self._data:
                    return data
            elif self._left or not self._next_header():
                more = self.sock.recv(BLOCK)
                if not more:
                    return b""
                self._raw = memoryview(bytes(self._raw) + more) if self._raw else memoryview(more)
            elif self._closed:
                return b""

    def _next_header(self):
        """Parse the next frame header from what was received, if it is all there."""
        raw = self._raw
        if len(raw) < 2:
            return False
        opcode, size, start = raw[0] & 0x0F, raw[1] & 0x7F, 2
        if size >= 126:
            start += 2 if size == 126 else 8
            if len(raw) < start:
                return False
            size = int.from_bytes(raw[2:start], "big")
        self._raw, self._left = raw[start:], size
        self._data, self._closed = opcode in (0x0, 0x2), opcode == 0x8
        return True

    def close(self):
        try:
            self.sock.sendall(self._frame((1000).to_bytes(2, "big"), opcode=0x8))
        except OSError:
            pass
        close_socket(self.sock)


def close_socket(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    sock.close()


def _recv_exact(stream, size):
    data = b""
    while len(data) < size:
        chunk = stream.recv(size - len(data))
        if not chunk:
            raise ConnectionError(f"closed after {len(data)} of {size} bytes")
        data += chunk
    return data


class Target:
    """The service behind the device side (a configuration's hostname:port): one thread per connection."""

    def __init__(self):
        self._server = socket.create_server(("127.0.0.1", 0), backlog=512)
        self.port = self._server.getsockname()[1]
        self.arrived = {}  # flow id -> perf_counter() when its header came through
        self.counts = {}  # flow id -> bytes swallowed (mode S)
        self.live = {}  # connection -> (the peer's port, what it carries), while it lasts
        threading.Thread(target=self._accept, name="target", daemon=True).start()

    def close(self):
        self._server.close()

    def _accept(self):
        while True:
            try:
                conn, _ = self._server.accept()
            except OSError:
                return
            threading.Thread(target=self._serve, args=(conn,), daemon=True).start()

    def _serve(self, conn):
        peer = conn.getpeername()[1]
        self.live[conn] = (peer, "no header yet")
        try:
            conn.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
            conn.settimeout(None)  # a tunnel may idle as long as a test keeps it open
            mode, flow = HEADER.unpack(_recv_exact(conn, HEADER.size))
            self.arrived[flow] = time.perf_counter()
            self.live[conn] = (peer, f"mode {mode.decode()}, flow {flow}")
            conn.sendall(b"!")
            if mode == b"E":
                while True:
                    data = conn.recv(65536)
                    if not data:
                        break
                    conn.sendall(data)
            elif mode == b"S":
                self.counts[flow] = 0
                buf = bytearray(BLOCK)
                while True:
                    n = conn.recv_into(buf)
                    if not n:
                        break
                    self.counts[flow] += n
            elif mode == b"D":
                conn.recv(1)
                block = bytes(BLOCK)
                while True:
                    conn.sendall(block)
        except OSError:
            pass  # the far end went away: the normal end of a D stream, and of any test
        finally:
            del self.live[conn]
            conn.close()

    def wait_idle(self, timeout=2 * TIMEOUT):
        """True once every connection to the target has ended: the device side closed its tunnels
        (a hundred flooded tunnels take seconds to wind down on a busy machine)."""
        deadline = time.monotonic() + timeout
        while self.live and time.monotonic() < deadline:
            time.sleep(0.05)
        return not self.live


class Tunnel:
    """The user's end of one chain. Opening is split in two so that many tunnels can wait for their
    device side at once: the constructor connects and sends the header, ready() waits for the answer."""

    def __init__(self, connect, mode):
        self.flow = next(_flow_ids)
        self.started = time.perf_counter()
        self.stream = connect()
        self.stream.send(HEADER.pack(mode, self.flow))
        self.received = 0

    def ready(self):
        if _recv_exact(self.stream, 1) != b"!":
            raise ConnectionError("the target's answer was not b'!'")
        return self

    def close(self):
        self.stream.close()


def open_tunnels(connect, mode, count):
    """`count` tunnels opened at once (each needs its own operation), all answered, or an exception."""
    tunnels = []
    try:
        for _ in range(count):
            tunnels.append(Tunnel(connect, mode))
        for tunnel in tunnels:
            tunnel.ready()
    except BaseException:
        close_all(tunnels)
        raise
    return tunnels


def close_all(tunnels):
    for tunnel in tunnels:
        tunnel.close()


def stream(tunnels, target, direction, warmup, seconds, meter):
    """Move bytes through every tunnel at once, as fast as they go; closes the tunnels.

    Returns (bytes per tunnel in the window, window seconds, meter() at its start, meter() at its end).
    """
    stop = threading.Event()

    def up(tunnel):
        try:
            while not stop.is_set():
                tunnel.stream.send_bulk()
        except OSError:
            pass

    def down(tunnel):
        try:
            tunnel.stream.send(b"g")
            while not stop.is_set():
                n = len(tunnel.stream.recv(BLOCK))
                if not n:
                    return
                tunnel.received += n
        except OSError:
            pass

    if direction == "up":
        counted = lambda: [target.counts.get(t.flow, 0) for t in tunnels]  # noqa: E731
    else:
        counted = lambda: [t.received for t in tunnels]  # noqa: E731
    threads = [threading.Thread(target=up if direction == "up" else down, args=(t,), daemon=True) for t in tunnels]
    for thread in threads:
        thread.start()
    try:
        time.sleep(warmup)
        before, meter_before, start = counted(), meter(), time.perf_counter()
        time.sleep(seconds)
        after, meter_after, end = counted(), meter(), time.perf_counter()
    finally:
        stop.set()
        close_all(tunnels)
        for thread in threads:
            thread.join(TIMEOUT)
    return [a - b for a, b in zip(after, before)], end - start, meter_before, meter_after


def ping_pong(connect, size, rounds, limit):
    """Round-trip times (seconds) of `size`-byte messages through one fresh tunnel: at most `rounds`,
    for at most `limit` seconds, after a few unrecorded rounds that warm the path."""
    tunnel = open_tunnels(connect, b"E", 1)[0]
    payload, times = b"x" * size, []
    try:
        deadline = time.monotonic() + limit
        for i in range(rounds + 20):
            start = time.perf_counter()
            tunnel.stream.send(payload)
            _recv_exact(tunnel.stream, size)
            if i >= 20:
                times.append(time.perf_counter() - start)
            if time.monotonic() > deadline:
                break
    finally:
        tunnel.close()
    return times


def setup_time(connect, target):
    """Seconds from the user's connection (the relay creates the operation as it answers the
    upgrade) to the first byte arriving at the target; the tunnel is closed again."""
    tunnel = open_tunnels(connect, b"E", 1)[0]
    tunnel.close()
    return target.arrived[tunnel.flow] - tunnel.started


def setup_samples(connect, target, interval, count, rng):
    """Set-up times of `count` sessions, each after a random wait of up to `interval`: a user's click
    at a random point of the poll cycle waits half an interval for the poll on average, and the mean
    beyond that is the side's own set-up (a fixed wait would tie each click to the cycle)."""
    samples = []
    for _ in range(count):
        time.sleep(rng.uniform(0, interval))
        samples.append(setup_time(connect, target))
    return samples
