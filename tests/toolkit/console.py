"""The device at the far end of a serial line, for the agent's serial tunnels."""
import contextlib
import os
import select
import time
import tty


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
