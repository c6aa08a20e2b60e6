"""The local end of a tunnel, behind the small interface the tunnel pumps use.

    read(size, idle)  bytes; b"" once the far end has closed; TimeoutError after `idle` seconds of quiet
    write(data)       all of it, or OSError
    interrupt()       wakes a blocked read or write on another thread, which then ends
    close()           releases the descriptor; called once both pumps are done
    name              what log lines and failure reasons call it
"""
import os
import select
import socket


class EndpointError(Exception):
    pass


class TcpEndpoint:
    def __init__(self, sock, name):
        sock.settimeout(None)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self._sock = sock
        self._poll = select.poll()
        self._poll.register(sock, select.POLLIN)
        self.name = name

    def read(self, size, idle):
        # Waiting in poll() rather than with a socket timeout keeps writes blocking, however slow the reader.
        if not self._poll.poll(idle * 1000):
            raise TimeoutError
        return self._sock.recv(size)

    def write(self, data):
        self._sock.sendall(data)

    def interrupt(self):
        try:
            self._sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass

    def close(self):
        self._sock.close()


def open_tcp(hostname, port, timeout, name):
    """Connect to every address the name resolves to (IPv4 and IPv6) in turn; EndpointError says why not."""
    try:
        sock = socket.create_connection((hostname, port), timeout=timeout)
    except (socket.gaierror, UnicodeError):  # UnicodeError: a name IDNA cannot encode, e.g. a label over 63 characters
        raise EndpointError(f"cannot connect to {name}: host name not found") from None
    except socket.timeout:
        raise EndpointError(f"cannot connect to {name}: no answer within {timeout:g} s") from None
    except ConnectionRefusedError:
        raise EndpointError(f"cannot connect to {name}: connection refused") from None
    except OSError as exc:
        raise EndpointError(f"cannot connect to {name}: {(exc.strerror or str(exc)).lower()}") from None
    return TcpEndpoint(sock, name)


class StdioEndpoint:
    """Standard input and output, for `ssh -o ProxyCommand='cra-connect --stdio ...'`.

    A pipe of its own lets interrupt() wake a read that waits on standard input.
    """

    name = "standard input/output"

    def __init__(self, infd=0, outfd=1):
        self._in, self._out = infd, outfd
        self._wake_read, self._wake_write = os.pipe()
        self._poll = select.poll()
        self._poll.register(infd, select.POLLIN)
        self._poll.register(self._wake_read, select.POLLIN)

    def read(self, size, idle):
        events = self._poll.poll(idle * 1000)
        if not events:
            raise TimeoutError
        if any(fd == self._wake_read for fd, _ in events):
            return b""
        return os.read(self._in, size)

    def write(self, data):
        view = memoryview(data)
        while view:
            view = view[os.write(self._out, view):]

    def interrupt(self):
        try:
            os.write(self._wake_write, b"x")
        except OSError:
            pass

    def close(self):
        os.close(self._wake_read)
        os.close(self._wake_write)
