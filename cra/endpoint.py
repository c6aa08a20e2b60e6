"""The local end of a tunnel (a TCP connection, a serial port, stdin/stdout), behind the small
interface the tunnel pumps use, so the tunnel never knows which it has:

    read(size, idle)  bytes; b"" once the far end has closed; TimeoutError after `idle` seconds of quiet
    write(data, stall)  all of it; TimeoutError when the far end took nothing for `stall` seconds; or OSError
    interrupt()       wakes a blocked read or write on another thread, which then ends
    close()           releases the descriptor; called once both pumps are done
    name              what log lines and failure reasons call it
"""
import os
import select
import socket
import threading
import time

import serial
from serial import rfc2217

from cra.errors import AgentError, os_error_words


class EndpointError(AgentError):
    pass


class Waiter:
    """poll() for a descriptor to be readable or writable, which wake() cuts short from another thread:
    a pipe written once wakes every wait from then on."""

    def __init__(self, readable_fd, writable_fd):
        self._wake_read, self._wake_write = os.pipe()
        self._in, self._out = select.poll(), select.poll()
        self._in.register(readable_fd, select.POLLIN)
        self._out.register(writable_fd, select.POLLOUT)
        for poller in (self._in, self._out):
            poller.register(self._wake_read, select.POLLIN)

    def readable(self, seconds):
        """True once there is something to read; False when woken; TimeoutError after `seconds`."""
        return self._wait(self._in, seconds)

    def writable(self, seconds):
        """True once there is room to write; False when woken; TimeoutError after `seconds`."""
        return self._wait(self._out, seconds)

    def _wait(self, poller, seconds):
        events = poller.poll(seconds * 1000)
        if not events:
            raise TimeoutError
        return not any(fd == self._wake_read for fd, _ in events)

    def wake(self):
        try:
            os.write(self._wake_write, b"x")
        except OSError:  # closed: nothing is waiting any more
            pass

    def close(self):
        os.close(self._wake_read)
        os.close(self._wake_write)


class TcpEndpoint:
    def __init__(self, sock, name):
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._waiter = Waiter(sock.fileno(), sock.fileno())
        self.name = name

    def read(self, size, idle):
        # A receive that does not wait first: in bulk there is nearly always data, and the poll() is a
        # second system call per chunk. Waiting in poll(), not with a socket timeout, keeps writes blocking.
        try:
            return self._sock.recv(size, socket.MSG_DONTWAIT)
        except BlockingIOError:
            pass
        return self._sock.recv(size) if self._waiter.readable(idle) else b""

    def write(self, data, stall):
        # Sends that never wait, and poll() for room when there is none: a reader that stopped reading
        # shows as no room for `stall` seconds, while a socket timeout would also cut short the reads.
        view = memoryview(data)
        while view:
            try:
                view = view[self._sock.send(view, socket.MSG_DONTWAIT):]
            except BlockingIOError:
                if not self._waiter.writable(stall):
                    raise ConnectionAbortedError("the tunnel is ending") from None

    def interrupt(self):
        """Wakes both pumps, and the target reads the end after what was written to it (FIN). Not
        SHUT_RD: a socket shut for reading never opens its receive window again, so a target that
        was sending would wait on it as long as the kernel keeps the closed socket, and longer."""
        self._waiter.wake()
        try:
            self._sock.shutdown(socket.SHUT_WR)
        except OSError:
            pass

    def close(self):
        self._sock.close()
        self._waiter.close()


def open_tcp(hostname, port, timeout, name, allow):
    """Resolve the name once, refuse it unless `allow` (cra.allow.AllowList) allows what it resolves to, then
    connect to those addresses (IPv4 and IPv6) in turn; EndpointError says why not. The connection goes to
    the addresses checked, never to the name again: a second lookup could answer otherwise."""
    try:
        found = socket.getaddrinfo(hostname, port, type=socket.SOCK_STREAM)
    except (socket.gaierror, UnicodeError):  # UnicodeError: a name IDNA cannot encode, e.g. a label over 63 characters
        raise EndpointError(f"cannot connect to {name}: host name not found") from None
    refusal = allow.refusal(name, hostname, port, [sockaddr[0] for *_, sockaddr in found])
    if refusal:
        raise EndpointError(refusal)
    try:
        sock = _connect_first(found, timeout)
    except socket.timeout:
        raise EndpointError(f"cannot connect to {name}: no answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise EndpointError(f"cannot connect to {name}: connection refused") from None
    except OSError as exc:
        raise EndpointError(f"cannot connect to {name}: {os_error_words(exc)}") from None
    return TcpEndpoint(sock, name)


def _connect_first(found, timeout):
    """A socket connected to the first of getaddrinfo's addresses that answers, each given `timeout`
    seconds (as socket.create_connection does); else the last address's error."""
    error = None
    for family, kind, proto, _, sockaddr in found:
        sock = None
        try:
            sock = socket.socket(family, kind, proto)
            sock.settimeout(timeout)
            sock.connect(sockaddr)
            return sock
        except OSError as exc:
            if sock is not None:
                sock.close()
            error = exc
    raise error


class StdioEndpoint:
    """Standard input and output, for `ssh -o ProxyCommand='cra-connect --stdio ...'`."""

    name = "standard input/output"

    def __init__(self, infd=0, outfd=1):
        self._in, self._out = infd, outfd
        self._waiter = Waiter(infd, outfd)

    def read(self, size, idle):
        return os.read(self._in, size) if self._waiter.readable(idle) else b""

    def write(self, data, stall):
        view = memoryview(data)
        while view:
            if not self._waiter.writable(stall):
                raise ConnectionAbortedError("the tunnel is ending")
            view = view[os.write(self._out, view):]

    def interrupt(self):
        self._waiter.wake()

    def close(self):
        self._waiter.close()


class SerialEndpoint:
    """A serial port. In telnet mode pyserial's RFC 2217 PortManager stands between it and the
    tunnel: it answers the web terminal's option negotiation, takes IAC sequences out of what
    goes to the line, and doubles 0xFF in what comes from it.

    pyserial has no way to wake every kind of port's read, so reads wait POLL seconds at a time
    and look for interrupt() in between.
    """

    POLL = 0.2

    def __init__(self, port, name, release, telnet):
        self._port, self.name, self._release = port, name, release
        self._interrupted = False
        self._telnet_replies = _Outbox() if telnet else None
        self._telnet = rfc2217.PortManager(port, self._telnet_replies) if telnet else None

    def read(self, size, idle):
        deadline = time.monotonic() + idle
        while not self._interrupted:
            replies = self._telnet_replies.take() if self._telnet else b""
            if replies:
                return replies
            data = self._port.read(max(1, min(size, self._port.in_waiting)))
            if data:
                return b"".join(self._telnet.escape(data)) if self._telnet else data
            if time.monotonic() >= deadline:
                raise TimeoutError
        return b""

    def write(self, data, stall):
        if self._telnet:
            try:
                data = b"".join(self._telnet.filter(data))
            except OSError:
                raise
            except Exception as exc:  # pyserial parses what the user's terminal sends: whatever it chokes on ends the session
                raise OSError(f"the telnet client sent a sequence that cannot be parsed ({type(exc).__name__}: {exc})") from None
        if data:
            self._port.write_timeout = stall
            try:
                self._port.write(data)
            except serial.SerialTimeoutException:
                raise TimeoutError from None

    def interrupt(self):
        self._interrupted = True
        cancel_write = getattr(self._port, "cancel_write", None)
        if cancel_write:
            cancel_write()

    def close(self):
        try:
            self._port.close()
        finally:
            self._release()


class _Outbox:
    """Where PortManager's negotiation answers wait for the next read, which sends them to the cloud."""

    def __init__(self):
        self._lock = threading.Lock()
        self._waiting = []

    def write(self, data):
        with self._lock:
            self._waiting.append(bytes(data))

    def take(self):
        with self._lock:
            data, self._waiting = b"".join(self._waiting), []
        return data


class SerialPorts:
    """The serial ports that targets are mapped to ([serial:NAME] sections), one session per port at a time."""

    def __init__(self, settings):
        self.remap(settings)
        self._lock = threading.Lock()
        self._in_use = set()

    def remap(self, settings):
        """New sections for new sessions; a session open on a port keeps it until it ends."""
        self._by_target = {s.target: s for s in settings}

    def mapped(self, hostname, port):
        """The settings of the serial port this target goes to, or None: it is a TCP target."""
        return self._by_target.get((hostname.lower(), port))

    def open(self, settings):
        url = settings.url
        with self._lock:
            if url in self._in_use:
                raise EndpointError(f"serial port {url} is already in use by another session")
            self._in_use.add(url)
        try:
            port = serial.serial_for_url(
                url, baudrate=settings.baudrate, bytesize=settings.bytesize, parity=settings.parity,
                stopbits=settings.stopbits, xonxoff=settings.flow == "xonxoff", rtscts=settings.flow == "rtscts",
                timeout=SerialEndpoint.POLL)
        except (serial.SerialException, ValueError) as exc:
            self._release(url)
            raise EndpointError(f"cannot open serial port {url}: {os_error_words(exc)}") from None
        return SerialEndpoint(port, f"serial port {url}", lambda: self._release(url), settings.mode == "telnet")

    def _release(self, url):
        with self._lock:
            self._in_use.discard(url)

