"""One tunnel: a local endpoint and a WebSocket, joined by two pump threads until either side ends.

Both legs are open before the pumps start, so whatever either side sent early waits in the
kernel's socket buffers: nothing is read before it can be written, so nothing is lost, and no
buffer of ours grows. Each read from the endpoint (up to 64 KiB) goes out as one binary frame;
each frame from the cloud is written to the endpoint whole.

Whichever way a tunnel ends, `_end` records why, once, and wakes the endpoint pump, which owns
sending on the WebSocket: it sends the close frame, gives the cloud CLOSE_WAIT seconds to
answer, and cuts the connection if it does not. The caller's thread is the other pump; when it
returns from run(), both sockets are closed and no thread of the tunnel is left.

Nothing waits for ever: a side that takes no byte for ping_interval seconds (a cloud or a target
that stopped reading) fails the write that waits on it, which ends the tunnel; and the endpoint
pump wakes at least every ping_interval, to ping and to apply the session limits.
"""
import socket
import ssl
import struct
import threading
import time

import websocket
from websocket import ABNF

from cra import frames
from cra.errors import os_error_words
from cra.websocket_leg import CLOSE_REASON_BYTES

CLOSE_WAIT = 2.0
OPENING_BYTES = 16
DATA_OPCODES = (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT, ABNF.OPCODE_CONT)
# What a close frame says happened (RFC 6455 7.4.1).
NORMAL, GOING_AWAY, FAILED = 1000, 1001, 1011


class Tunnel:
    def __init__(self, endpoint, ws, name, ping_interval, idle_timeout=0.0, max_session_time=0.0):
        """idle_timeout and max_session_time: seconds, 0 for no limit."""
        self.endpoint, self.ws, self.name = endpoint, ws, name
        self.sent = self.received = 0
        self.opening = b""  # the endpoint's first bytes, by which a target's protocol can be told
        self.reason = None
        self.cloud_close = None  # (code, text) of the cloud's close frame, when it closed the tunnel
        self._ping_interval = ping_interval
        self._idle_timeout, self._max_session_time = idle_timeout, max_session_time
        self._close_code = None
        self._lock = threading.Lock()
        self._cloud_reader_done = threading.Event()
        self._pinged_at = None
        self._started = self._heard_at = self._active_at = self._up_at = time.monotonic()
        self._writing = False
        _fail_writes_after(ws.sock, ping_interval)

    def run(self):
        """Pump both ways until the tunnel ends; returns why it ended."""
        up = threading.Thread(target=self._endpoint_to_cloud, name=f"{self.name}-up", daemon=True)
        up.start()
        try:
            self._cloud_to_endpoint()
        finally:
            self._cloud_reader_done.set()
            up.join()
            self.endpoint.close()
            self.ws.shutdown()
        return self.reason

    def stop(self, code, reason):
        """End the tunnel from outside (the agent stopping); returns at once."""
        self._end(reason, code)

    def cut(self):
        """Wake every blocked pump, whatever it waits for: the last resort of a stopping agent."""
        self.endpoint.interrupt()
        _shutdown(self.ws.sock)

    def _end(self, reason, close_code):
        with self._lock:
            if self.reason is not None:
                return
            self.reason, self._close_code = reason, close_code
        self.endpoint.interrupt()

    def _endpoint_to_cloud(self):
        try:
            self._pump_up()
        finally:
            if self._close_code is not None:
                try:
                    frames.send(self.ws, frames.OPCODE_CLOSE,
                                self._close_code.to_bytes(2, "big") + self.reason.encode()[:CLOSE_REASON_BYTES])
                except OSError:
                    pass
            if not self._cloud_reader_done.wait(CLOSE_WAIT):
                _shutdown(self.ws.sock)

    def _pump_up(self):
        while self.reason is None and not self._over_a_limit():
            try:
                data = self.endpoint.read(frames.CHUNK, self._until_next_duty())
            except TimeoutError:
                if time.monotonic() - self._up_at >= self._ping_interval:
                    self._keepalive()
                continue
            except OSError as exc:
                return self._end(f"{self.endpoint.name} failed: {os_error_words(exc)}", FAILED)
            if not data:
                return self._end(f"{self.endpoint.name} closed the connection", NORMAL)
            if not self.sent:
                self.opening = data[:OPENING_BYTES]
            self._up_at = self._active_at = time.monotonic()
            try:
                frames.send_binary(self.ws, data)
            except (BlockingIOError, ssl.SSLWantWriteError):
                return self._end(f"the cloud stopped reading: nothing sent for {self._ping_interval:g} s", None)
            except OSError as exc:
                return self._end(f"the cloud connection failed: {os_error_words(exc)}", None)
            self.sent += len(data)

    def _until_next_duty(self):
        """Seconds until the next ping or limit is due, for the endpoint read to wait at most."""
        now = time.monotonic()
        due = [self._up_at + self._ping_interval]
        if self._idle_timeout:
            due.append(self._active_at + self._idle_timeout)
        if self._max_session_time:
            due.append(self._started + self._max_session_time)
        return max(0.0, min(due) - now)

    def _over_a_limit(self):
        """End the tunnel, and say so, when a session limit is reached."""
        now = time.monotonic()
        if self._idle_timeout and now - self._active_at >= self._idle_timeout:
            self._end(f"idle for {self._idle_timeout:g} s ([agent] idle_timeout)", GOING_AWAY)
        elif self._max_session_time and now - self._started >= self._max_session_time:
            self._end(f"session time limit of {self._max_session_time:g} s ([agent] max_session_time)", GOING_AWAY)
        return self.reason is not None

    def _keepalive(self):
        """A ping when the endpoint has been quiet; the end when nothing at all came back for a whole
        interval after one. Any frame counts as an answer, and so does a reader that is busy writing
        to a slow endpoint: it cannot read the pong meanwhile, and the cloud is not to blame."""
        now = self._up_at = time.monotonic()
        unanswered = self._pinged_at is not None and self._heard_at < self._pinged_at and not self._writing
        if unanswered and now - self._pinged_at >= self._ping_interval:
            return self._end("the cloud stopped answering keepalive pings", None)
        try:
            frames.send(self.ws, frames.OPCODE_PING, b"")
        except (BlockingIOError, ssl.SSLWantWriteError):
            return self._end(f"the cloud stopped reading: nothing sent for {self._ping_interval:g} s", None)
        except OSError as exc:
            return self._end(f"the cloud connection failed: {os_error_words(exc)}", None)
        if not unanswered:
            self._pinged_at = now

    def _cloud_to_endpoint(self):
        while True:
            try:
                opcode, frame = self.ws.recv_data_frame(True)
            except (OSError, websocket.WebSocketException) as exc:
                return self._end(f"the cloud connection dropped: {os_error_words(exc)}", None)
            self._heard_at = time.monotonic()
            if opcode in DATA_OPCODES:
                self._active_at = self._heard_at
                self._writing = True
                try:
                    self.endpoint.write(frame.data, self._ping_interval)
                except TimeoutError:
                    return self._end(f"{self.endpoint.name} stopped reading: nothing taken for {self._ping_interval:g} s",
                                     FAILED)
                except OSError as exc:
                    return self._end(f"{self.endpoint.name} failed: {os_error_words(exc)}", FAILED)
                finally:
                    self._writing = False
                self.received += len(frame.data)
            elif opcode == ABNF.OPCODE_CLOSE:
                code = int.from_bytes(frame.data[:2], "big") if len(frame.data) >= 2 else None
                text = frame.data[2:].decode("utf-8", "replace")
                self.cloud_close = (code, text)
                return self._end(f"the cloud closed the tunnel ({code or 'no code'}{': ' + text if text else ''})", None)


def _shutdown(sock):
    if sock is not None:
        try:
            sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass


def _fail_writes_after(sock, seconds):
    """A send that can place no byte for `seconds` fails (EAGAIN) instead of waiting: SO_SNDTIMEO, so that
    the reader thread's receives on the same socket still wait as long as they must."""
    whole = int(seconds)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDTIMEO, struct.pack("ll", whole, int((seconds - whole) * 1e6)))
