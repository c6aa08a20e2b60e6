"""What stands between the agent and its cloud, on 127.0.0.1: a relay in front of the real cloud
that sees what passes and fails the ways a network does, the TLS front of an on-premises
platform, and the HTTP proxy a gateway may reach its platform through. All built on
servers.TcpServer: every thread they start is joined, with a timeout, when they close.
"""
import threading
from urllib.parse import urlsplit

from toolkit.servers import SETUP_TIMEOUT, TcpServer, splice
from toolkit.sockets import LOCALHOST, read_head, recv_exactly, shutdown, split_frames
from toolkit.waiting import join_all

OPCODE_PING, OPCODE_PONG = 0x9, 0xA
DEVICE_LEG = b"GET /service/remoteaccess/device/"


class CloudRelay(TcpServer):
    """The agent's [c8y] url: a relay in front of the real cloud, which its users still reach directly.

    What it sees: `seen()`, the line of every request the agent sends, exactly as sent, keep-alive
    requests and WebSocket upgrades included (cra-cloud's own access log masks connection keys):
    each request's head is read, noted and passed on, then its Content-Length body; after an
    upgrade the rest passes unread. A request it cannot frame (a chunked body) is noted in
    `unframed`, and its connection passes unread from there. `rest`, the agent's REST connections
    (any but a device WebSocket) as (the agent's port, this relay's port), to tell its REST sockets
    from its tunnels' (sockets.open_fds). On device WebSocket legs it reads the frames as they
    pass: `pings`, the agent's, and `pongs`, the cloud's.

    How it fails: with `drop_pongs` it swallows the pongs, a cloud that stops answering while it
    still relays everything else; cut() refuses connections and drops the open ones, and restore()
    takes them again on the same port, while the cloud stays up for its users; stall() makes the
    open connections go silent both ways and stay open, as through a NAT that forgot them without a
    word, while new ones work; stop_reading() takes no more of what the agent sends, as a cloud
    that takes no more: it waits in the sockets.
    """

    def __init__(self, cloud_url, drop_pongs=False):
        self.cloud_port = urlsplit(cloud_url).port
        self.drop_pongs = drop_pongs
        self.pings = self.pongs = 0
        self.rest, self.unframed, self._lines = set(), [], []
        self._stalled, self._deaf = set(), threading.Event()
        super().__init__()
        self.url = f"http://{LOCALHOST}:{self.port}"

    def seen(self):
        with self._lock:
            return list(self._lines)

    def stall(self):
        with self._lock:
            self._stalled.update(self._sockets)

    def stop_reading(self):
        self._deaf.set()

    def cut(self):
        self.close()

    def restore(self):
        self.listen(self.port)

    def serve(self, agent):
        with self.tracked(self.connect(self.cloud_port)) as cloud:
            head = self._request(agent, cloud)
            leg = head.startswith(DEVICE_LEG)
            if head and not leg:
                self.rest.add((agent.getpeername()[1], self.port))
            down = self.start(self._pass, "down", cloud, agent, self._from_cloud if leg else None)
            try:
                while head and not _passes_unread(head):
                    head = self._request(agent, cloud)
                if head:
                    self._pass(agent, cloud, self._from_agent if leg else None, up=True)
            finally:  # down must end before its socket is closed: a close does not wake a recv
                shutdown(cloud)
                join_all([down])

    def _request(self, agent, cloud):
        """One request from the agent passed on to the cloud, its line noted; its head, b"" once the
        agent ends (or fails, or sends what is not HTTP)."""
        if self._deaf.is_set():
            self._stop.wait()  # what the agent sends waits in the sockets until close()
            return b""
        try:
            head = read_head(agent)
            if head:
                line = head.split(b"\r\n", 1)[0].decode("latin-1")
                with self._lock:
                    self._lines.append(line)
                self._send(agent, cloud, head)
                if "transfer-encoding" in _headers(head):
                    self.unframed.append(line)
                elif not _passes_unread(head):
                    self._send(agent, cloud, recv_exactly(agent, int(_headers(head).get("content-length", 0))))
            return head
        except (OSError, ValueError):
            return b""

    def _pass(self, source, target, keep=None, up=False):
        """Bytes from source to target until source ends or fails, then target ended both ways: when
        keep is given, whole WebSocket frames, those keep(opcode) lets through (coming from the cloud,
        once the HTTP head that answers the upgrade has passed and said 101). What is read while
        source or target is stalled is dropped; once the relay stops reading, the agent (up) is read
        no more."""
        try:
            if keep is not None and not up:
                head = read_head(source)
                self._send(source, target, head)
                if head.split(b" ", 2)[1:2] != [b"101"]:  # refused: an answer with a body, no frames
                    keep = None
            buffer = b""
            while True:
                if up and self._deaf.is_set():
                    self._stop.wait()
                    break
                chunk = source.recv(65536)
                if not chunk:
                    break
                if keep is None:
                    self._send(source, target, chunk)
                    continue
                frames, buffer = split_frames(buffer + chunk)
                for opcode, raw in frames:
                    if keep(opcode):
                        self._send(source, target, raw)
        except (OSError, ValueError):
            pass
        shutdown(target)

    def _send(self, source, target, data):
        if source not in self._stalled and target not in self._stalled:
            target.sendall(data)

    def _from_agent(self, opcode):
        self.pings += opcode == OPCODE_PING
        return True

    def _from_cloud(self, opcode):
        self.pongs += opcode == OPCODE_PONG
        return not (self.drop_pongs and opcode == OPCODE_PONG)


def _headers(head):
    """An HTTP head's header fields, {lower-case name: value}."""
    fields = (line.decode("latin-1").partition(":") for line in head.split(b"\r\n")[1:] if line)
    return {name.strip().lower(): value.strip() for name, _, value in fields}


def _passes_unread(head):
    """Whether what follows this request is no longer framed as requests: an upgrade, or a chunked body."""
    headers = _headers(head)
    return "upgrade" in headers.get("connection", "").lower() or "transfer-encoding" in headers


class TlsTerminator(TcpServer):
    """The platform's HTTPS in front of a plain cra-cloud: TLS is ended here with a server-side
    ssl.SSLContext and the bytes go on to the cloud's port, so the agent's REST calls and its
    WebSocket (wss://) meet a real certificate while the cloud and its users stay on plain HTTP."""

    def __init__(self, cloud_url, context):
        self._target = urlsplit(cloud_url).port
        self._context = context
        super().__init__()
        self.url = f"https://{LOCALHOST}:{self.port}"

    def serve(self, conn):
        tls = self._context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        with self.tracked(tls):  # conn itself is detached now: tls owns the descriptor
            tls.settimeout(SETUP_TIMEOUT)
            tls.do_handshake()  # fails when the agent does not trust the certificate
            tls.settimeout(None)
            with self.tracked(self.connect(self._target)) as upstream:
                splice(tls, upstream)


class HttpProxy(TcpServer):
    """A gateway's HTTP proxy, reaching 127.0.0.1 only. It serves CONNECT (how websocket-client
    goes through a proxy, for ws:// as well) and absolute-form requests (how requests sends
    http:// URLs to a proxy), one request per connection, and records each request line in
    `handled` as (method, target): a test tells from it which of the agent's ways to the cloud
    went through. With refuse_connect it answers CONNECT 403, as a proxy whose policy forbids tunnels.
    """

    def __init__(self, refuse_connect=False):
        self.refuse_connect = refuse_connect
        self.handled = []
        super().__init__()
        self.url = f"http://{LOCALHOST}:{self.port}"

    def serve(self, conn):
        conn.settimeout(SETUP_TIMEOUT)
        try:
            head = read_head(conn)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            host, port, forward = self._route(method, target, head)
        except ValueError:
            return
        self.handled.append((method, target))
        if host != LOCALHOST or (method == "CONNECT" and self.refuse_connect):
            return self._answer(conn, b"403 Forbidden")
        try:
            upstream = self.connect(port)
        except OSError:
            return self._answer(conn, b"502 Bad Gateway")
        with self.tracked(upstream):
            if method == "CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            upstream.sendall(forward)
            conn.settimeout(None)
            splice(conn, upstream)

    @staticmethod
    def _answer(conn, status):
        conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        shutdown(conn)

    @staticmethod
    def _route(method, target, head):
        """(host, port, what to send upstream first) for a CONNECT or an absolute-form request."""
        if method == "CONNECT":
            host, _, port = target.rpartition(":")
            return host, int(port), b""
        url = urlsplit(target)
        origin_form = (url.path or "/") + (f"?{url.query}" if url.query else "")
        headers = [line for line in head.split(b"\r\n")[1:]
                   if line and not line.lower().startswith((b"connection:", b"proxy-connection:"))]
        # Connection: close makes the cloud end the connection after its answer, so that the
        # client's next request comes on a new connection and is seen (and recorded) here.
        forward = b"\r\n".join([f"{method} {origin_form} HTTP/1.1".encode(), *headers, b"Connection: close", b"", b""])
        return url.hostname, url.port or 80, forward
