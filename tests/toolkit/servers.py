"""Local TCP services on 127.0.0.1, on one framework: TcpServer accepts each connection on a
thread of its own and, at close(), shuts down every socket it tracks and joins every thread.

On it: EchoServer, which sends back every byte, ShellServer, a shell on each connection, and LocalServer, whose connections each go to a
test's handler, and whose outcome the test reads. middleboxes.py builds the relays on it.
Every wait is bounded: a connection is set up within SETUP_TIMEOUT, close() joins within
waiting.JOIN_TIMEOUT, and a thread still alive then is reported rather than ignored.
"""
import contextlib
import select
import socket
import ssl
import subprocess
import threading

from toolkit.sockets import LOCALHOST, shutdown
from toolkit.waiting import join_all

SETUP_TIMEOUT = 5  # for a connection to be made, a TLS handshake, a proxy's request head
IO_TIMEOUT = 30  # for each read and write of a LocalServer's handler
ACCEPT_POLL = 0.1


class TcpServer:
    """A listening socket and a thread that hands each connection to self.serve(conn) on a thread
    of its own, until close().

    Every socket it tracks (those it accepts, and those serve() opens with `with
    self.tracked(...)`) is set for small writes (TCP_NODELAY: a relay's small writes must not wait
    out delayed ACKs), is shut down by close(), and is closed as soon as its connection is done:
    a thousand connections one after another do not hold a thousand descriptors. `timeout` is
    each accepted socket's (None: blocking, ended by close()).
    """

    def __init__(self, port=0, address=LOCALHOST, timeout=None):
        self.address, self.timeout = address, timeout
        self._lock = threading.Lock()
        self._sockets, self._threads = set(), []
        self.listen(port)

    def listen(self, port):
        """Take connections on `port` (0: any free one), again after a close()."""
        family = socket.AF_INET6 if ":" in self.address else socket.AF_INET
        self._listener = socket.create_server((self.address, port), family=family)
        self._listener.settimeout(ACCEPT_POLL)
        self.port = self._listener.getsockname()[1]
        self._stop = threading.Event()
        self.start(self._accept, "accept")

    def serve(self, conn):
        raise NotImplementedError

    def start(self, target, name, *args):
        """target(*args) on a thread that close() joins; the thread. serve() joins those it starts
        before it returns: closing a socket does not wake a thread blocked reading it."""
        thread = threading.Thread(target=target, args=args, name=f"{type(self).__name__}-{name}", daemon=True)
        with self._lock:  # started within, so that no other start() takes it for one that has ended
            self._threads = [t for t in self._threads if t.is_alive()] + [thread]
            thread.start()
        return thread

    @contextlib.contextmanager
    def tracked(self, sock):
        """`sock`, set for small writes, shut down by close() while the block runs, closed after it."""
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        with self._lock:
            self._sockets.add(sock)
        if self._stop.is_set():  # closed while this connection was being set up
            shutdown(sock)
        try:
            yield sock
        finally:
            with self._lock:
                self._sockets.discard(sock)
            sock.close()

    @staticmethod
    def connect(port):
        """A blocking connection to 127.0.0.1:port, for `with self.tracked(...)`; OSError when it cannot be made."""
        sock = socket.create_connection((LOCALHOST, port), timeout=SETUP_TIMEOUT)
        sock.settimeout(None)
        return sock

    def _accept(self):
        while not self._stop.is_set():
            try:
                conn, _ = self._listener.accept()
            except socket.timeout:
                continue
            except OSError:
                return
            conn.settimeout(self.timeout)
            self.start(self._run, "conn", conn)

    def _run(self, conn):
        try:
            with self.tracked(conn):
                self.serve(conn)
        except OSError:  # the peer or close() ended the connection
            pass

    def close(self):
        self._stop.set()
        self._listener.close()
        with self._lock:
            sockets, threads = list(self._sockets), list(self._threads)
        for sock in sockets:
            shutdown(sock)
        join_all(threads)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


def splice(one, other):
    """Copy bytes both ways on this one thread until either side ends, then end both: an SSLSocket
    must not be read on one thread while another writes it, as two copying threads would."""
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
        shutdown(one)
        shutdown(other)


class EchoServer(TcpServer):
    """A local service that sends back every byte, on as many connections as tunnels reach it."""

    def __init__(self, address=LOCALHOST):
        super().__init__(address=address)

    def serve(self, conn):
        while chunk := conn.recv(65536):
            conn.sendall(chunk)


class ShellServer(TcpServer):
    """/bin/sh on every connection, the socket its stdin, stdout and stderr: an administrator's
    session whose only way in is the tunnel that reaches it. Its commands run as the test's user."""

    def serve(self, conn):
        conn.setblocking(True)  # the shell's descriptor must block, as a terminal's does
        with subprocess.Popen(["/bin/sh"], stdin=conn, stdout=conn, stderr=subprocess.STDOUT) as shell:
            shell.wait()


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
        shutdown(self.sock)


class LocalServer(TcpServer):
    """A TCP service on 127.0.0.1 behind the agent: each connection goes to handler(sock) on its own
    thread (reads and writes time out after IO_TIMEOUT). A connection stays open after its handler
    returns, until close() (unless the handler closed it), as a service that has said its piece but
    has not hung up: the agent's end decides when the tunnel ends."""

    def __init__(self, handler):
        self.connections = []
        self._handler = handler
        self._changed = threading.Condition()
        super().__init__(timeout=IO_TIMEOUT)

    def connection(self, index, timeout=20):
        """The index-th accepted connection (from 0), waiting for it."""
        with self._changed:
            assert self._changed.wait_for(lambda: len(self.connections) > index, timeout), \
                f"127.0.0.1:{self.port} accepted {len(self.connections)} connections, not {index + 1}"
            return self.connections[index]

    def serve(self, conn):
        connection = Connection(conn)
        with self._changed:
            self.connections.append(connection)
            self._changed.notify_all()
        try:
            connection.finish(result=self._handler(conn))
        except Exception as exc:  # handed to the test through outcome()
            connection.finish(error=exc)
        self._stop.wait()  # the connection stays open until close()
