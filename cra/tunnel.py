"""One tunnel: a local endpoint and a WebSocket, joined by two pump threads until either side ends.

Both legs are open before the pumps start, so whatever either side sent early waits in the
kernel's socket buffers: nothing is read before it can be written, so nothing is lost, and no
buffer of ours grows. Each read from the endpoint (up to 64 KiB) goes out as one binary frame;
each frame from the cloud is written to the endpoint whole.

Whichever way a tunnel ends, `_end` records why, once, and wakes the endpoint pump, which owns
sending on the WebSocket: it sends the close frame, gives the cloud CLOSE_WAIT seconds to
answer, and cuts the connection if it does not. The caller's thread is the other pump; when it
returns from run(), both sockets are closed and no thread of the tunnel is left.
"""
import socket
import threading
import time

import websocket
from websocket import ABNF

from cra.frames import CHUNK, send_binary
from cra.websocket_leg import CLOSE_REASON_BYTES

CLOSE_WAIT = 2.0
OPENING_BYTES = 16
DATA_OPCODES = (ABNF.OPCODE_BINARY, ABNF.OPCODE_TEXT, ABNF.OPCODE_CONT)


class Tunnel:
    def __init__(self, endpoint, ws, name, ping_interval):
        self.endpoint, self.ws, self.name = endpoint, ws, name
        self.sent = self.received = 0
        self.opening = b""  # the endpoint's first bytes, by which a target's protocol can be told
        self.reason = None
        self.cloud_close = None  # (code, text) of the cloud's close frame, when it closed the tunnel
        self._ping_interval = ping_interval
        self._close_code = None
        self._lock = threading.Lock()
        self._cloud_reader_done = threading.Event()
        self._pinged_at = None
        self._heard_at = time.monotonic()
        self._writing = False

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
                    self.ws.send_close(self._close_code, self.reason.encode()[:CLOSE_REASON_BYTES])
                except (OSError, websocket.WebSocketException):
                    pass
            if not self._cloud_reader_done.wait(CLOSE_WAIT):
                _shutdown(self.ws.sock)

    def _pump_up(self):
        while self.reason is None:
            try:
                data = self.endpoint.read(CHUNK, self._ping_interval)
            except TimeoutError:
                self._keepalive()
                continue
            except OSError as exc:
                return self._end(f"{self.endpoint.name} failed: {_words(exc)}", 1000)
            if not data:
                return self._end(f"{self.endpoint.name} closed the connection", 1000)
            if not self.sent:
                self.opening = data[:OPENING_BYTES]
            try:
                send_binary(self.ws, data)
            except (OSError, websocket.WebSocketException) as exc:
                return self._end(f"the cloud connection failed: {_words(exc)}", None)
            self.sent += len(data)

    def _keepalive(self):
        """A ping when the endpoint has been quiet; the end when nothing at all came back for a whole
        interval after one. Any frame counts as an answer, and so does a reader that is busy writing
        to a slow endpoint: it cannot read the pong meanwhile, and the cloud is not to blame."""
        now = time.monotonic()
        unanswered = self._pinged_at is not None and self._heard_at < self._pinged_at and not self._writing
        if unanswered and now - self._pinged_at >= self._ping_interval:
            return self._end("the cloud stopped answering keepalive pings", None)
        try:
            self.ws.ping()
        except (OSError, websocket.WebSocketException) as exc:
            return self._end(f"the cloud connection failed: {_words(exc)}", None)
        if not unanswered:
            self._pinged_at = now

    def _cloud_to_endpoint(self):
        while True:
            try:
                opcode, frame = self.ws.recv_data_frame(True)
            except (OSError, websocket.WebSocketException) as exc:
                return self._end(f"the cloud connection dropped: {_words(exc)}", None)
            self._heard_at = time.monotonic()
            if opcode in DATA_OPCODES:
                self._writing = True
                try:
                    self.endpoint.write(frame.data)
                except OSError as exc:
                    return self._end(f"{self.endpoint.name} failed: {_words(exc)}", 1000)
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


def _words(exc):
    return (getattr(exc, "strerror", None) or str(exc) or type(exc).__name__).lower()
