"""What the agent's end-to-end tests put around the real agent and the real cloud.

The targets a tunnel reaches (an echo server, a refused port, a port whose handshake never
completes, a console on a serial line), a stand-in for a platform that answers garbage, an uplink
that can be cut, the TLS front and the HTTP proxy a gateway may reach its platform through, and
the steps a user or an administrator takes on the cloud. Everything listens on and connects to
127.0.0.1 only; every thread started here is joined, with a timeout, when its owner closes.
"""
import contextlib
import http.server
import json
import os
import re
import select
import socket
import ssl
import threading
import time
import tty
import uuid
from urllib.parse import parse_qs, urlsplit

from support import ADMIN, wait_for_status

from cra import config as agent_config_module

LOCALHOST = "127.0.0.1"
JOIN_TIMEOUT = 5
ACCEPT_POLL = 0.1


def free_port():
    """A port nothing listens on right now, for a cloud that must come back where it was."""
    with socket.socket() as probe:
        probe.bind((LOCALHOST, 0))
        return probe.getsockname()[1]


def _shutdown(sock):
    try:
        sock.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass


def _pipe(source, target, stalled=frozenset(), deaf=None, closing=None):
    """Copy source to target until source ends or fails, then end target both ways; what is read
    while either is in `stalled` is dropped. Once `deaf` is set, source is read no more until
    `closing` is: what it sends waits in the sockets, as for a peer that stopped reading."""
    try:
        while True:
            if deaf is not None and deaf.is_set():
                closing.wait()
                break
            data = source.recv(65536)
            if not data:
                break
            if source not in stalled and target not in stalled:
                target.sendall(data)
    except OSError:
        pass
    _shutdown(target)


def _join(threads):
    deadline = time.monotonic() + JOIN_TIMEOUT
    for thread in threads:
        thread.join(max(0, deadline - time.monotonic()))
    stuck = [t.name for t in threads if t.is_alive()]
    assert not stuck, f"threads did not end within {JOIN_TIMEOUT} s: {stuck}"


class _Acceptor:
    """A listening socket and the thread that hands each connection to `serve`, until close()."""

    def __init__(self, serve, port=0, address=LOCALHOST):
        family = socket.AF_INET6 if ":" in address else socket.AF_INET
        self._listener = socket.create_server((address, port), family=family)
        self._listener.settimeout(ACCEPT_POLL)
        self.port = self._listener.getsockname()[1]
        self._serve = serve
        self._stop = threading.Event()
        self._lock = threading.Lock()
        self._sockets, self._threads = [], []
        self._start(self._accept, "accept")

    def _start(self, target, name, *args):
        thread = threading.Thread(target=target, args=args, name=f"{type(self).__name__}-{name}", daemon=True)
        with self._lock:
            self._threads.append(thread)
        thread.start()

    def track(self, sock):
        with self._lock:
            self._sockets.append(sock)
        if self._stop.is_set():  # closed while this connection was being set up
            _shutdown(sock)

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(None)
            self.track(conn)
            self._start(self._serve, "conn", conn)

    def connect_upstream(self, port):
        """A tracked connection to 127.0.0.1:port, blocking once open; None when it cannot be made."""
        try:
            upstream = socket.create_connection((LOCALHOST, port), timeout=JOIN_TIMEOUT)
        except OSError:
            return None
        upstream.settimeout(None)
        self.track(upstream)
        return upstream

    def splice(self, conn, upstream):
        """Copy bytes both ways between conn and upstream (one of the two on a thread of its own)."""
        self._start(_pipe, "down", upstream, conn)
        _pipe(conn, upstream)

    def close(self):
        self._stop.set()
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            _shutdown(sock)
        _join(threads)
        for sock in sockets:
            sock.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


class EchoServer(_Acceptor):
    """A local service that sends back every byte, on as many connections as tunnels reach it."""

    def __init__(self, address=LOCALHOST):
        super().__init__(lambda conn: _pipe(conn, conn), address=address)


class CuttableLink(_Acceptor):
    """The agent's uplink: a TCP forwarder to the cloud that a test cuts (connections refused, open
    ones dropped) and restores on the same port, while the cloud itself stays up for the user; or
    stalls: the open connections go silent both ways and stay open, as through a NAT that forgot
    them without a word, while new ones work; or stops reading what the agent sends, as a cloud
    that takes no more."""

    def __init__(self, cloud_url):
        self._target = urlsplit(cloud_url).port
        self._stalled = set()
        self._deaf = threading.Event()
        super().__init__(self._forward)
        self.url = f"http://{LOCALHOST}:{self.port}"

    def _forward(self, conn):
        upstream = self.connect_upstream(self._target)
        if upstream is None:
            return _shutdown(conn)
        self._start(_pipe, "down", upstream, conn, self._stalled)
        _pipe(conn, upstream, self._stalled, self._deaf, self._stop)

    def stall(self):
        with self._lock:
            self._stalled.update(self._sockets)

    def stop_reading(self):
        self._deaf.set()

    def cut(self):
        self.close()

    def restore(self):
        _Acceptor.__init__(self, self._forward, self.port)


class TlsTerminator(_Acceptor):
    """The platform's HTTPS in front of a plain cra-cloud: TLS is ended here with a server-side
    ssl.SSLContext and the bytes go on to the cloud's port, so the agent's REST calls and its
    WebSocket (wss://) meet a real certificate while the cloud and its users stay on plain HTTP."""

    def __init__(self, cloud_url, context):
        self._target = urlsplit(cloud_url).port
        self._context = context
        super().__init__(self._terminate)
        self.url = f"https://{LOCALHOST}:{self.port}"

    def _terminate(self, conn):
        tls = self._context.wrap_socket(conn, server_side=True, do_handshake_on_connect=False)
        self.track(tls)  # conn itself is detached now: tls owns the descriptor
        try:
            tls.settimeout(JOIN_TIMEOUT)
            tls.do_handshake()  # fails when the agent does not trust the certificate
        except OSError:
            return _shutdown(tls)
        tls.settimeout(None)
        upstream = self.connect_upstream(self._target)
        if upstream is None:
            return _shutdown(tls)
        _pump(tls, upstream)


def _pump(one, other):
    """Copy bytes both ways on this one thread until either side ends: an SSLSocket must not be
    read on one thread while another writes it, as two _pipe threads would."""
    peer = {one: other, other: one}
    try:
        while True:
            readable, _, _ = select.select(list(peer), [], [])
            for source in readable:
                data = source.recv(65536)
                while isinstance(source, ssl.SSLSocket) and source.pending():
                    data += source.recv(65536)
                if not data:
                    return
                peer[source].sendall(data)
    except (OSError, ValueError):  # ValueError: select() on a socket closed by close()
        pass
    finally:
        _shutdown(one)
        _shutdown(other)


class HttpProxy(_Acceptor):
    """A gateway's HTTP proxy, reaching 127.0.0.1 only. It serves CONNECT (how websocket-client
    goes through a proxy, for ws:// as well) and absolute-form requests (how requests sends
    http:// URLs to a proxy), one request per connection, and records each request line in
    `handled` as (method, target): a test tells from it which of the agent's ways to the cloud
    went through. With refuse_connect it answers CONNECT 403, as a proxy whose policy forbids tunnels.
    """

    def __init__(self, refuse_connect=False):
        self.refuse_connect = refuse_connect
        self.handled = []
        super().__init__(self._proxy)
        self.url = f"http://{LOCALHOST}:{self.port}"

    def _proxy(self, conn):
        try:
            conn.settimeout(JOIN_TIMEOUT)
            head = _read_head(conn)
            method, target, _ = head.split(b"\r\n", 1)[0].decode("latin-1").split(" ", 2)
            host, port, forward = self._route(method, target, head)
            self.handled.append((method, target))
            if host != LOCALHOST or (method == "CONNECT" and self.refuse_connect):
                return self._answer(conn, b"403 Forbidden")
            upstream = self.connect_upstream(port)
            if upstream is None:
                return self._answer(conn, b"502 Bad Gateway")
            if method == "CONNECT":
                conn.sendall(b"HTTP/1.1 200 Connection established\r\n\r\n")
            upstream.sendall(forward)
            conn.settimeout(None)
        except (OSError, ValueError):
            return _shutdown(conn)
        self.splice(conn, upstream)

    @staticmethod
    def _answer(conn, status):
        conn.sendall(b"HTTP/1.1 " + status + b"\r\nContent-Length: 0\r\nConnection: close\r\n\r\n")
        _shutdown(conn)

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


def _read_head(sock, limit=64 << 10):
    """An HTTP request head through its blank line, a byte at a time so that none of the body is taken."""
    head = b""
    while not head.endswith(b"\r\n\r\n"):
        byte = sock.recv(1)
        if not byte or len(head) >= limit:
            raise ValueError("no complete HTTP head")
        head += byte
    return head


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


class PtyConsole:
    """The device at the far end of a serial line: a pseudo-terminal pair whose slave the agent opens
    as its serial port, while the test plays the console on the master. The master is in raw mode,
    so that the line discipline passes every byte as it is.

    The test does not hold the slave open: pyserial opens a port without exclusive access (no flock,
    no TIOCEXCL, as its default exclusive=None), so holding it would change nothing for the agent,
    and not holding it leaves the agent the only one on the line. `device` is the slave's /dev/pts
    path; `url` is what the agent is configured with: the device, or with `link` a symlink to it (as
    /dev/serial/by-id/... are), so that the same configured port can be plugged in again after a
    hang-up, which removes the /dev/pts node.
    """

    def __init__(self, link=None):
        self.master, slave = os.openpty()
        self.device = os.ttyname(slave)
        os.close(slave)
        tty.setraw(self.master)
        os.set_blocking(self.master, False)
        self.url = self.device
        if link is not None:
            with contextlib.suppress(FileNotFoundError):
                os.unlink(link)
            os.symlink(self.device, link)
            self.url = str(link)

    def exchange(self, outgoing=b"", incoming=0, timeout=30):
        """Write `outgoing` to the line while reading `incoming` bytes from it; the bytes read.

        One poll loop does both, so that neither direction waits on the other (a pty buffers only
        a few KiB); AssertionError, with what did get through, when `timeout` passes first."""
        pending, received, size = memoryview(outgoing), bytearray(), 0
        poller = select.poll()
        deadline = time.monotonic() + timeout
        while pending or size < incoming:
            left = deadline - time.monotonic()
            assert left > 0, (f"the console wrote {len(outgoing) - len(pending)} of {len(outgoing)} bytes and "
                              f"read {size} of {incoming} within {timeout} s")
            poller.register(self.master, (select.POLLOUT if pending else 0) | (select.POLLIN if size < incoming else 0))
            for _, events in poller.poll(min(left, 0.5) * 1000):
                if events & (select.POLLIN | select.POLLHUP | select.POLLERR) and size < incoming:
                    try:
                        chunk = os.read(self.master, min(incoming - size, 65536))
                    except OSError as exc:  # EIO: nobody holds the serial port open any more
                        raise AssertionError(f"the serial line went dead after {size} of {incoming} bytes: {exc}")
                    received += chunk
                    size += len(chunk)
                if events & select.POLLOUT and pending:
                    with contextlib.suppress(BlockingIOError):
                        pending = pending[os.write(self.master, pending):]
        return bytes(received)

    def write(self, data, timeout=30):
        self.exchange(outgoing=data, timeout=timeout)

    def read(self, size, timeout=30):
        return self.exchange(incoming=size, timeout=timeout)

    def held_by(self, pid):
        """How many descriptors process pid holds on the serial device (lsof's view of "the port is open")."""
        held = 0
        for fd in os.listdir(f"/proc/{pid}/fd"):
            with contextlib.suppress(FileNotFoundError):  # closed while we looked
                held += os.readlink(f"/proc/{pid}/fd/{fd}") in (self.device, f"{self.device} (deleted)")
        return held

    def hang_up(self):
        """The console side goes away, as a device that is switched off or unplugged."""
        if self.master is not None:
            os.close(self.master)
            self.master = None

    close = hang_up


# A platform that answers what the test scripts: (status, content type, body bytes), or one of these.
HANG = "hang"  # keep the request waiting (until the server closes, at most JOIN_TIMEOUT)
DROP = "drop"  # close the connection without an answer


def json_answer(status, body):
    return status, "application/json", json.dumps(body).encode()


def text_answer(status, text, content_type="text/html"):
    return status, content_type, text.encode()


class ScriptedPlatform:
    """An HTTP server on 127.0.0.1 that answers every request with answer(method, path, query)."""

    def __init__(self, answer):
        platform = self
        self.requests = []
        self._closing = threading.Event()

        class Handler(http.server.BaseHTTPRequestHandler):
            def _any(self):
                length = int(self.headers.get("Content-Length") or 0)
                if length:
                    self.rfile.read(length)
                parts = urlsplit(self.path)
                query = {k: v[0] for k, v in parse_qs(parts.query).items()}
                platform.requests.append((self.command, parts.path, query))
                reply = answer(self.command, parts.path, query)
                if reply == HANG:
                    platform._closing.wait(JOIN_TIMEOUT)
                    return
                if reply == DROP:
                    return
                status, content_type, body = reply
                self.send_response(status)
                self.send_header("Content-Type", content_type)
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                self.wfile.write(body)

            do_GET = do_POST = do_PUT = _any

            def log_message(self, *args):
                pass

        self._server = http.server.ThreadingHTTPServer((LOCALHOST, 0), Handler)
        self._server.daemon_threads = False  # server_close() joins them; each ends within JOIN_TIMEOUT
        self.url = f"http://{LOCALHOST}:{self._server.server_address[1]}"
        self._thread = threading.Thread(target=self._server.serve_forever, args=(ACCEPT_POLL,),
                                        name="scripted-platform", daemon=True)
        self._thread.start()

    def close(self):
        self._closing.set()
        self._server.shutdown()
        self._server.server_close()
        _join([self._thread])

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def cloud_access(tmp_path, url, **c8y):
    """The agent's CloudAccess, loaded from an INI file as the agent loads it (gw-001 by default)."""
    options = {"url": url, "tenant": "t100", "user": "device_gw-001", "password": "dev-pw",
               "external_id": "gw-001", **c8y}
    path = tmp_path / f"direct-{uuid.uuid4().hex[:8]}.conf"
    path.write_text("[c8y]\n" + "".join(f"{k} = {v}\n" for k, v in options.items()))
    return agent_config_module.load(path, environ={}).cloud


# The cloud, as its users and administrators use it.


def add_configuration(cloud, device_id, hostname, port, **fields):
    """A remote access configuration a user can connect to (PASSTHROUGH unless `fields` say otherwise); its id."""
    body = {"name": f"target-{uuid.uuid4().hex[:8]}", "hostname": hostname, "port": port, **fields}
    answer = cloud.api(ADMIN).post(f"/service/remoteaccess/devices/{device_id}/configurations", json=body)
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def create_operation(cloud, device_id, fragment):
    """An operation as an administrator (or a faulty integration) creates it, malformed or not; its id."""
    answer = cloud.api(ADMIN).post("/devicecontrol/operations",
                                   json={"deviceId": device_id, "c8y_RemoteAccessConnect": fragment})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def operation(cloud, op_id):
    return cloud.api(ADMIN).get(f"/devicecontrol/operations/{op_id}").json()


def latest_operation(cloud, device_id):
    ops = cloud.api(ADMIN).get("/devicecontrol/operations", params={
        "deviceId": device_id, "pageSize": 1, "revert": "true"}).json()["operations"]
    assert ops, f"device {device_id} has no operation"
    return ops[0]


class User:
    """A user's tool connected to one configuration, and the operation its connecting created."""

    def __init__(self, cloud, device_id, config_id):
        self.ws = cloud.open_client(device_id, config_id)
        self.ws.settimeout(10)
        op = latest_operation(cloud, device_id)
        self.op_id = op["id"]
        self.connection_key = op["c8y_RemoteAccessConnect"]["connectionKey"]

    def echo(self, payload):
        """What comes back through the tunnel for `payload`, frames joined."""
        self.ws.send_binary(payload)
        received = b""
        for _ in range(len(payload)):
            if len(received) >= len(payload):
                break
            received += self.ws.recv()
        return received

    def close(self):
        with contextlib.suppress(Exception):
            self.ws.close(timeout=1)


class Users:
    """Every user's tool a test opened, all closed when it ends."""

    def __init__(self):
        self._opened = []

    def connect(self, cloud, device_id, config_id):
        user = User(cloud, device_id, config_id)
        self._opened.append(user)
        return user

    def waiting_key(self, cloud):
        """A connection key a real client waits on that no agent will take: gw-002's, which has none.

        The cloud matches a device leg to a session by key and tenant, so the agent under test
        (or a test playing it) can join it; the user on the other end sees what arrives."""
        device_id = cloud.device_id("gw-002")
        return self.connect(cloud, device_id, add_configuration(cloud, device_id, LOCALHOST, 22))

    def close(self):
        for user in self._opened:
            user.close()


# The agent's log.


def wait_until(condition, what, timeout=20):
    """Return once condition() holds; fail saying `what` did not happen (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if condition():
            return
        time.sleep(0.05)
    raise AssertionError(f"{what} did not happen within {timeout} s")


def log_lines(agent, pattern):
    return [line for line in agent.log().splitlines() if re.search(pattern, line)]


def wait_for_log_count(agent, pattern, count, timeout=20):
    """The first `count` lines matching `pattern`, once the agent has logged that many (bounded)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = log_lines(agent, pattern)
        if len(lines) >= count:
            return lines[:count]
        time.sleep(0.05)
    raise AssertionError(f"fewer than {count} agent log lines match {pattern!r}:\n{agent.log()}")


def assert_logged_in_order(agent, patterns):
    """Each pattern on a later line than the one before it."""
    lines = agent.log().splitlines()
    position = 0
    for pattern in patterns:
        found = next((i for i in range(position, len(lines)) if re.search(pattern, lines[i])), None)
        assert found is not None, f"no agent log line after line {position} matches {pattern!r}:\n{agent.log()}"
        position = found + 1


def assert_tunnel_works(cloud, users, external_id="gw-001", log=None, count=1):
    """What a user checks: `count` new sessions at once reach a service beside the gateway, each
    operation is SUCCESSFUL and 16 KiB come back intact; their operations' ids. `log`, a file, is
    shown when one is not."""
    device_id = cloud.device_id(external_id)
    with EchoServer() as echo:
        config_id = add_configuration(cloud, device_id, "127.0.0.1", echo.port)
        opened = [users.connect(cloud, device_id, config_id) for _ in range(count)]
        payload = bytes(range(256)) * 64
        for user in opened:
            op = wait_for_status(cloud, user.op_id)
            assert op["status"] == "SUCCESSFUL", f"{op.get('failureReason')}\n{log.read_text() if log else ''}"
            assert user.echo(payload) == payload
            user.close()
    return [user.op_id for user in opened]
