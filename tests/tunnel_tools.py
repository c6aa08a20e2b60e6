"""What the agent's tunnel tests stand on either side of the agent: the local services a tunnel
reaches (TCP servers on 127.0.0.1), and a wiretap between the agent and the cloud that sees the
WebSocket control frames the tests cannot see from the client's end.

Every wait here is bounded: sockets carry timeouts, loops carry deadlines, threads are joined
with a timeout, and a thread still alive after its join is reported rather than ignored.
"""
import os
import socket
import threading
import time

IO_TIMEOUT = 30
LIFETIME = 120
JOIN_TIMEOUT = 10

OPCODE_PING, OPCODE_PONG = 0x9, 0xA


def join_all(threads, timeout=JOIN_TIMEOUT):
    """Join every thread within one shared deadline; AssertionError names any that did not end."""
    deadline = time.monotonic() + timeout
    for thread in threads:
        thread.join(max(0.0, deadline - time.monotonic()))
    alive = [t.name for t in threads if t.is_alive()]
    assert not alive, f"threads still running after {timeout} s: {alive}"


def start_thread(target, *args, name=None):
    thread = threading.Thread(target=target, args=args, name=name, daemon=True)
    thread.start()
    return thread


def in_parallel(function, count, timeout=60):
    """[function(0), ..., function(count - 1)], each called on its own thread; the first exception re-raised."""
    results = [None] * count

    def call(index):
        try:
            results[index] = (True, function(index))
        except BaseException as exc:  # handed to the caller
            results[index] = (False, exc)

    join_all([start_thread(call, i, name=f"parallel-{i}") for i in range(count)], timeout)
    for ok, value in results:
        if not ok:
            raise value
    return [value for _, value in results]


def wait_until(condition, timeout=15, interval=0.05):
    """condition()'s last value, polled until it is truthy or `timeout` has passed."""
    deadline = time.monotonic() + timeout
    value = condition()
    while not value and time.monotonic() < deadline:
        time.sleep(interval)
        value = condition()
    return value


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


def ws_recv_exactly(ws, size):
    """`size` bytes of binary frames from a websocket-client WebSocket (its timeout bounds each frame)."""
    chunks, received = [], 0
    while received < size:
        data = ws.recv()
        assert isinstance(data, bytes) and data, f"expected binary data, got {data!r}"
        chunks.append(data)
        received += len(data)
    return b"".join(chunks)


class Connection:
    """One accepted connection of a LocalServer and, once its handler returns, its outcome."""

    def __init__(self, sock):
        self.sock = sock
        self._done = threading.Event()
        self._result = self._error = None

    def finish(self, result=None, error=None):
        self._result, self._error = result, error
        self._done.set()

    def outcome(self, timeout=20):
        """What the handler returned; its exception re-raised; AssertionError if it is still running."""
        assert self._done.wait(timeout), f"the local server's handler is still running after {timeout} s"
        if self._error is not None:
            raise self._error
        return self._result

    def hang_up(self):
        """The local service ends the connection (as a server that exits does)."""
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


class LocalServer:
    """A TCP service on 127.0.0.1 behind the agent: each connection goes to handler(sock) on its own thread."""

    def __init__(self, handler):
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.port = self.listener.getsockname()[1]
        self.connections = []
        self._handler = handler
        self._changed = threading.Condition()
        self._closed = False
        self._threads = []
        self._accepter = start_thread(self._accept, name=f"server-{self.port}")

    def connection(self, index, timeout=20):
        """The index-th accepted connection (from 0), waiting for it."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.connections) > index, timeout), \
                f"127.0.0.1:{self.port} accepted {len(self.connections)} connections, not {index + 1}"
            return self.connections[index]

    def close(self):
        self._closed = True
        join_all([self._accepter])
        for connection in self.connections:
            connection.hang_up()
        join_all(self._threads)
        for connection in self.connections:
            connection.sock.close()
        self.listener.close()

    def _accept(self):
        deadline = time.monotonic() + LIFETIME
        while not self._closed and time.monotonic() < deadline:
            try:
                sock, _ = self.listener.accept()
            except socket.timeout:
                continue
            sock.settimeout(IO_TIMEOUT)
            connection = Connection(sock)
            self._threads.append(start_thread(self._serve, connection, name=f"conn-{self.port}"))
            with self._changed:
                self.connections.append(connection)
                self._changed.notify_all()

    def _serve(self, connection):
        try:
            connection.finish(result=self._handler(connection.sock))
        except Exception as exc:  # handed to the test through outcome()
            connection.finish(error=exc)


class Wiretap:
    """A TCP relay on 127.0.0.1 for the agent's [c8y] url, in front of the real cloud.

    On device WebSocket legs it reads the frames as they pass: it counts the agent's pings and
    the cloud's pongs, and with `drop_pongs` swallows the pongs, making a cloud that stops
    answering while it still relays everything else. Any other connection (REST) passes untouched;
    `rest_ports` are the agent's ends of those, to tell its REST sockets from its tunnels' sockets.
    """

    def __init__(self, cloud_port, drop_pongs=False):
        self.cloud_port, self.drop_pongs = cloud_port, drop_pongs
        self.pings = self.pongs = 0
        self.rest_ports = set()
        self.listener = socket.create_server(("127.0.0.1", 0))
        self.listener.settimeout(0.1)
        self.url = f"http://127.0.0.1:{self.listener.getsockname()[1]}"
        self._sockets = []
        self._closed = False
        self._threads = []
        self._accepter = start_thread(self._accept, name="wiretap")

    def close(self):
        self._closed = True
        join_all([self._accepter])
        for sock in self._sockets:
            try:
                sock.shutdown(socket.SHUT_RDWR)
            except OSError:
                pass
        join_all(self._threads)
        for sock in self._sockets:
            sock.close()
        self.listener.close()

    def _accept(self):
        deadline = time.monotonic() + LIFETIME
        while not self._closed and time.monotonic() < deadline:
            try:
                agent, (_, agent_port) = self.listener.accept()
            except socket.timeout:
                continue
            cloud = socket.create_connection(("127.0.0.1", self.cloud_port), timeout=IO_TIMEOUT)
            agent.settimeout(IO_TIMEOUT)
            self._sockets += [agent, cloud]
            self._threads.append(start_thread(self._relay, agent, agent_port, cloud, name="wiretap-relay"))

    def _relay(self, agent, agent_port, cloud):
        request = _read_head(agent)
        cloud.sendall(request)
        if request.startswith(b"GET /service/remoteaccess/device/"):
            down = start_thread(self._frames, cloud, agent, self._from_cloud, True, name="wiretap-down")
            self._frames(agent, cloud, self._from_agent, False)
        else:
            self.rest_ports.add(agent_port)
            down = start_thread(_copy, cloud, agent, name="wiretap-down")
            _copy(agent, cloud)
        join_all([down], IO_TIMEOUT + JOIN_TIMEOUT)

    def _frames(self, source, target, keep, head_first):
        """WebSocket frames from source to target, those keep(opcode) says to (after an HTTP head, when head_first)."""
        try:
            if head_first:
                target.sendall(_read_head(source))
            buffer = b""
            deadline = time.monotonic() + LIFETIME
            while time.monotonic() < deadline:
                chunk = source.recv(1 << 16)
                if not chunk:
                    break
                frames, buffer = _split_frames(buffer + chunk)
                for opcode, raw in frames:
                    if keep(opcode):
                        target.sendall(raw)
        except OSError:
            pass
        finally:
            _end(target)

    def _from_agent(self, opcode):
        self.pings += opcode == OPCODE_PING
        return True

    def _from_cloud(self, opcode):
        self.pongs += opcode == OPCODE_PONG
        return not (self.drop_pongs and opcode == OPCODE_PONG)


def _read_head(sock, limit=64 << 10):
    """An HTTP head, through its blank line, read a byte at a time so that nothing after it is taken."""
    head = b""
    while not head.endswith(b"\r\n\r\n") and len(head) < limit:
        byte = sock.recv(1)
        if not byte:
            break
        head += byte
    return head


def _copy(source, target):
    deadline = time.monotonic() + LIFETIME
    try:
        while time.monotonic() < deadline:
            chunk = source.recv(1 << 16)
            if not chunk:
                break
            target.sendall(chunk)
    except OSError:
        pass
    finally:
        _end(target)


def _end(sock):
    try:
        sock.shutdown(socket.SHUT_WR)
    except OSError:
        pass


def _split_frames(buffer):
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


def open_fds(pid, except_ports=frozenset()):
    """How many descriptors pid has open, not counting its TCP sockets on one of except_ports."""
    ports = _local_ports(pid)
    count = 0
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed while we looked
            continue
        count += ports.get(target) not in except_ports
    return count


def tcp_ports_of(pid):
    """The local ports of pid's open TCP sockets."""
    ports = _local_ports(pid)
    found = []
    for fd in os.listdir(f"/proc/{pid}/fd"):
        try:
            target = os.readlink(f"/proc/{pid}/fd/{fd}")
        except FileNotFoundError:  # closed while we looked
            continue
        if target in ports:
            found.append(ports[target])
    return found


def _local_ports(pid):
    """{"socket:[inode]": local port} for the TCP sockets of pid's network namespace."""
    ports = {}
    for table in ("tcp", "tcp6"):
        with open(f"/proc/{pid}/net/{table}") as rows:
            for row in list(rows)[1:]:
                fields = row.split()
                ports[f"socket:[{fields[9]}]"] = int(fields[1].rsplit(":", 1)[1], 16)
    return ports


def threads_of(pid):
    return len(os.listdir(f"/proc/{pid}/task"))
