"""A counting TCP relay: what an idle agent costs on the wire, recorded where it crosses.

    agent --> WireRelay --> cra-cloud, or its TLS front (stunnel)

The relay sits in the bench's own process, so every record is on the bench's one clock and the
figures can be cut into windows afterwards. For each connection it records, with the time:
  - every chunk relayed, its size and direction (agent -> cloud "up", cloud -> agent "down");
  - when `http` is set (the bytes are plain HTTP/1.1), every request the agent sends: its method,
    path, and for the Bayeux endpoint the channel of its first message;
  - the TCP segments each way on the agent's side, read from the kernel (TCP_INFO's
    tcpi_segs_in / tcpi_segs_out, Linux >= 4.2) every SAMPLE_EVERY seconds and as it ends: pure
    ACKs and keepalive probes count, so segments x header bytes estimates the TCP/IP overhead
    with no packet capture.
Only 127.0.0.1; every thread ends when the relay is closed or its connection ends.
"""
import json
import socket
import struct
import threading
import time

from bench.traffic import close_socket

CHUNK = 64 * 1024
SAMPLE_EVERY = 0.5  # s between two readings of the segment counters of the open connections
LINGER = 0.2  # s after a connection has ended before its counters are read: the last ACKs arrive
_TCP_INFO_SEGS = struct.Struct("II")  # tcpi_segs_out, tcpi_segs_in in struct tcp_info (linux/tcp.h)
_TCP_INFO_SEGS_AT = 136
BAYEUX_PATH = "/notification/operations"


def segments(sock):
    """(segments received from the agent, segments sent to it) so far on this socket, or None when
    the kernel does not say (no TCP_INFO, or a struct too old to have the counters)."""
    try:
        info = sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_INFO, 256)
    except (OSError, AttributeError):
        return None
    if len(info) < _TCP_INFO_SEGS_AT + _TCP_INFO_SEGS.size:
        return None
    segs_out, segs_in = _TCP_INFO_SEGS.unpack_from(info, _TCP_INFO_SEGS_AT)
    return segs_in, segs_out


class RequestReader:
    """Splits the agent's side of an HTTP/1.1 connection into requests (a head, then Content-Length
    bytes of body) and hands each to `on_request(method, path, body)`. The agent's REST client
    always sends a Content-Length, so no chunked bodies are expected; one would end the parsing of
    the connection with a request named "unparsed"."""

    def __init__(self, on_request):
        self._on_request = on_request
        self._buffer = b""
        self._request = None  # (method, path) whose body is still being read
        self._body_left = 0
        self._lost = False

    def feed(self, data):
        if self._lost:
            return
        self._buffer += data
        while self._step():
            pass

    def _step(self):
        if self._request is None:
            end = self._buffer.find(b"\r\n\r\n")
            if end < 0:
                return False
            head, self._buffer = self._buffer[:end].decode("latin-1"), self._buffer[end + 4:]
            method, path, length = _parse_head(head)
            if length is None:
                self._lost = True
                self._on_request("unparsed", path, b"")
                return False
            self._request, self._body_left = (method, path), length
        if len(self._buffer) < self._body_left:
            return False
        body, self._buffer = self._buffer[:self._body_left], self._buffer[self._body_left:]
        (method, path), self._request = self._request, None
        self._on_request(method, path, body)
        return True


def _parse_head(head):
    """(method, path without query, body length or None when it is not given by Content-Length)."""
    lines = head.split("\r\n")
    method, target = (lines[0].split(" ") + ["", ""])[:2]
    headers = {name.strip().lower(): value.strip() for name, _, value in (line.partition(":") for line in lines[1:])}
    if "transfer-encoding" in headers:
        return method, target.split("?")[0], None
    return method, target.split("?")[0], int(headers.get("content-length", "0") or 0)


def request_name(method, path, body):
    """What a request is, in a word the report can group by: the Bayeux channel for the
    notification endpoint ("/meta/connect"), else the method and path with ids as {id}."""
    if path == BAYEUX_PATH:
        try:
            messages = json.loads(body)
            return messages[0]["channel"]
        except (ValueError, LookupError, TypeError):
            return f"{method} {path}"
    parts = ["{id}" if part.isdigit() else part for part in path.split("/")]
    return f"{method} {'/'.join(parts)}"


class Connection:
    """One relayed connection: its records, and the socket facing the agent for its segment counts."""

    def __init__(self, number, agent_side):
        self.number = number
        self.agent_side = agent_side
        self.opened = time.monotonic()
        self.closed = None
        self.chunks = []  # (time, "up" | "down", bytes)
        self.requests = []  # (time, name)
        self.samples = [(self.opened, 0, 0)]  # (time, segments in from the agent, segments out to it)
        self.cloud_side = None

    def sample(self):
        counts = segments(self.agent_side)
        if counts:
            self.samples.append((time.monotonic(), *counts))


class WireRelay:
    """Listens on 127.0.0.1 (port) and relays every connection to 127.0.0.1:upstream, recording it."""

    def __init__(self, upstream, http):
        self.upstream, self.http = upstream, http
        self.connections = []
        self._server = socket.create_server(("127.0.0.1", 0), backlog=64)
        self.port = self._server.getsockname()[1]
        self._closing = threading.Event()
        threading.Thread(target=self._accept, name=f"wire-{self.port}", daemon=True).start()
        threading.Thread(target=self._sample, name=f"wire-{self.port}-segments", daemon=True).start()

    def close(self):
        """Stops accepting and cuts every connection still open (their pumps then end)."""
        self._closing.set()
        self._server.close()
        for connection in self.connections:
            if connection.closed is None:
                connection.sample()
            for sock in (connection.agent_side, connection.cloud_side):
                if sock is not None:
                    close_socket(sock)

    def _accept(self):
        while not self._closing.is_set():
            try:
                agent_side, _ = self._server.accept()
            except OSError:
                return
            try:
                cloud_side = socket.create_connection(("127.0.0.1", self.upstream), timeout=10)
            except OSError:
                close_socket(agent_side)
                continue
            cloud_side.settimeout(None)
            connection = Connection(len(self.connections) + 1, agent_side)
            self.connections.append(connection)
            threading.Thread(target=self._relay, args=(connection, cloud_side), daemon=True).start()

    def _relay(self, connection, cloud_side):
        """Both directions until the cloud's side has ended. An end is passed on as a half close;
        once the cloud has closed, the agent's side is closed too, as the cloud's own socket would
        be (the kernel then answers the agent as it would have answered the cloud: a late keepalive
        probe meets a reset, not a relay that stays alive)."""
        connection.cloud_side = cloud_side
        reader = RequestReader(lambda method, path, body: connection.requests.append(
            (time.monotonic(), request_name(method, path, body)))) if self.http else None
        up = threading.Thread(target=self._pump, args=(connection.agent_side, cloud_side, connection, "up", reader), daemon=True)
        up.start()
        self._pump(cloud_side, connection.agent_side, connection, "down", None)
        time.sleep(LINGER)
        connection.sample()
        connection.closed = time.monotonic()
        close_socket(connection.agent_side)
        close_socket(cloud_side)
        up.join(LINGER)

    @staticmethod
    def _pump(source, sink, connection, direction, reader):
        try:
            while True:
                data = source.recv(CHUNK)
                if not data:
                    break
                connection.chunks.append((time.monotonic(), direction, len(data)))
                if reader:
                    reader.feed(data)
                sink.sendall(data)
        except OSError:
            pass
        try:
            sink.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def _sample(self):
        while not self._closing.wait(SAMPLE_EVERY):
            for connection in list(self.connections):
                if connection.closed is None:
                    connection.sample()

    def window(self, start, end):
        """What crossed the relay from `start` to `end` (monotonic seconds): bytes each way,
        segments each way on the agent's side, the requests by name, the connections opened; and
        apart, the segments of the connections that were open but moved no byte in it ("silent":
        keepalive probes and their answers), which go by time, not by request."""
        totals = {"up": 0, "down": 0, "segments_in": 0, "segments_out": 0, "requests": {}, "connections_opened": 0,
                  "silent": {"connections": 0, "segments_in": 0, "segments_out": 0}}
        for connection in self.connections:
            if connection.opened >= end or (connection.closed is not None and connection.closed < start):
                continue
            moved = [(direction, size) for when, direction, size in connection.chunks if start <= when < end]
            for direction, size in moved:
                totals[direction] += size
            for when, name in connection.requests:
                if start <= when < end:
                    totals["requests"][name] = totals["requests"].get(name, 0) + 1
            if connection.opened >= start:
                totals["connections_opened"] += 1
            first, last = _segments_at(connection.samples, start), _segments_at(connection.samples, end)
            for total in [totals] + ([] if moved else [totals["silent"]]):
                total["segments_in"] += last[0] - first[0]
                total["segments_out"] += last[1] - first[1]
            if not moved:
                totals["silent"]["connections"] += 1
        return totals

    def quiet(self, longer_than, margin=1.0):
        """Segments on the agent's side while no byte moved, over every stretch of silence longer
        than `longer_than` s on any connection so far (between two chunks, or from the last chunk
        to its end or to now): the keepalive probes and their answers, measured rather than assumed.
        `margin` s at each end of a stretch are left out, for the ACKs of what came before."""
        found = {"seconds": 0.0, "segments_in": 0, "segments_out": 0, "stretches": []}  # stretches: [seconds, segments]
        now = time.monotonic()
        for connection in self.connections:
            ended = connection.closed - LINGER if connection.closed is not None else now
            times = [when for when, _, _ in connection.chunks] + [ended]
            for begin, end in zip(times, times[1:]):
                begin, end = begin + margin, end - margin
                if end - begin > longer_than - 2 * margin:
                    first, last = _segments_at(connection.samples, begin), _segments_at(connection.samples, end)
                    found["seconds"] += end - begin
                    found["segments_in"] += last[0] - first[0]
                    found["segments_out"] += last[1] - first[1]
                    found["stretches"].append([end - begin + 2 * margin, last[0] - first[0] + last[1] - first[1]])
        return found

    def request_times(self, name):
        """When each request of this name was sent, in order, over every connection."""
        return sorted(when for connection in self.connections for when, seen in connection.requests if seen == name)


def _segments_at(samples, when):
    """The segment counters of the last reading at or before `when` ((0, 0) before the connection).
    Readings come every SAMPLE_EVERY s, so a window's ends should fall where the line is quiet."""
    counts = (0, 0)
    for sampled, segs_in, segs_out in samples:
        if sampled > when:
            break
        counts = (segs_in, segs_out)
    return counts
