"""The tunnel's two pumps in process (cra/tunnel.py): a real TCP connection on 127.0.0.1 as the
endpoint, and the cloud's end of the WebSocket played by this test over a socket pair, frame by
frame, so that every way a tunnel ends can be caused exactly and quickly.
"""
import os
import socket
import time

import pytest
import websocket

from cra.endpoint import TcpEndpoint
from cra.tunnel import FAILED, GOING_AWAY, NORMAL, Tunnel
from toolkit.sockets import LOCALHOST, recv_exactly, recv_until_eof, split_frames
from toolkit.waiting import join_all, start_thread, wait_until

OPCODE_BINARY, OPCODE_CLOSE, OPCODE_PING, OPCODE_PONG = 0x2, 0x8, 0x9, 0xA
PING = 0.4  # seconds: the tunnel's ping_interval, which also bounds a stalled write
STALL_BOUND = 2 * PING + 0.5  # a stalled side ends the tunnel within 2 x ping_interval; room for a busy machine


class CloudEnd:
    """The cloud's side of the tunnel's WebSocket: unmasked frames out, masked frames in, unmasked."""

    def __init__(self, sock):
        self.sock = sock
        self._buffer = b""

    def send(self, opcode, data=b""):
        size = len(data)
        if size < 126:
            header = bytes((0x80 | opcode, size))
        elif size < 65536:
            header = bytes((0x80 | opcode, 126)) + size.to_bytes(2, "big")
        else:
            header = bytes((0x80 | opcode, 127)) + size.to_bytes(8, "big")
        self.sock.sendall(header + data)

    def receive(self):
        """The next frame from the tunnel as (opcode, payload); None once it has closed its end."""
        while True:
            frames, self._buffer = split_frames(self._buffer)
            if frames:
                (opcode, raw), rest = frames[0], b"".join(r for _, r in frames[1:])
                self._buffer = rest + self._buffer
                return opcode, _unmasked(raw)
            chunk = self.sock.recv(1 << 16)
            if not chunk:
                return None
            self._buffer += chunk

    def data(self, size):
        """`size` bytes of binary frames; pings are answered, as the cloud does."""
        received = b""
        while len(received) < size:
            opcode, payload = self.receive()
            if opcode == OPCODE_PING:
                self.send(OPCODE_PONG, payload)
            else:
                assert opcode == OPCODE_BINARY, f"expected data, got opcode {opcode}: {payload!r}"
                received += payload
        return received

    def close_frame(self):
        """(code, reason) of the tunnel's close frame, past any data and pings still coming."""
        while True:
            frame = self.receive()
            assert frame is not None, "the tunnel dropped the WebSocket without a close frame"
            if frame[0] == OPCODE_CLOSE:
                return int.from_bytes(frame[1][:2], "big"), frame[1][2:].decode()


def _unmasked(raw):
    length, offset = raw[1] & 0x7F, 2
    offset += {126: 2, 127: 8}.get(length, 0)
    assert raw[1] & 0x80, "a frame from the device side must be masked"
    key, payload = raw[offset:offset + 4], raw[offset + 4:]
    return bytes(b ^ key[i % 4] for i, b in enumerate(payload))


def tcp_pair():
    """(the target's end, the agent's end) of one TCP connection on 127.0.0.1."""
    with socket.create_server((LOCALHOST, 0)) as listener:
        target = socket.create_connection(listener.getsockname())
        return target, listener.accept()[0]


@pytest.fixture
def tunnel_parts():
    """Build a tunnel on fresh sockets: make(**limits) -> (tunnel, target socket, CloudEnd); the
    tunnel runs on its own thread, `tunnel.runner`, which the test joins."""
    opened, runners = [], []

    def make(**limits):
        target, endpoint_sock = tcp_pair()
        cloud_sock, ws_sock = socket.socketpair()
        ws = websocket.WebSocket()
        ws.sock, ws.connected = ws_sock, True
        tunnel = Tunnel(TcpEndpoint(endpoint_sock, "the target"), ws, "tunnel-1", PING, **limits)
        tunnel.runner = start_thread(tunnel.run, name="tunnel-1")
        opened.extend((target, cloud_sock))
        runners.append(tunnel.runner)
        return tunnel, target, CloudEnd(cloud_sock)

    yield make
    for sock in opened:
        sock.close()
    join_all(runners)


def ended(tunnel, within=10):
    """The tunnel's reason, once its run() has returned (both pumps done, both sockets closed)."""
    tunnel.runner.join(within)
    assert not tunnel.runner.is_alive(), f"the tunnel still runs {within} s on"
    return tunnel.reason


def test_bytes_cross_both_ways_intact_and_are_counted(tunnel_parts):
    tunnel, target, cloud = tunnel_parts()
    up, down = os.urandom(300_000), os.urandom(200_000)
    cloud.send(OPCODE_BINARY, up[:100_000])
    cloud.send(OPCODE_BINARY, up[100_000:])
    assert recv_exactly(target, len(up)) == up
    target.sendall(down)
    assert cloud.data(len(down)) == down
    target.close()
    assert cloud.close_frame() == (NORMAL, "the target closed the connection")
    cloud.send(OPCODE_CLOSE, NORMAL.to_bytes(2, "big"))
    assert ended(tunnel) == "the target closed the connection"
    assert (tunnel.sent, tunnel.received) == (len(down), len(up))
    assert tunnel.opening == down[:16]


def test_the_cloud_closing_ends_the_local_connection_after_what_it_sent(tunnel_parts):
    tunnel, target, cloud = tunnel_parts()
    cloud.send(OPCODE_BINARY, b"last words")
    cloud.send(OPCODE_CLOSE, (1000).to_bytes(2, "big") + b"the user left")
    assert ended(tunnel) == "the cloud closed the tunnel (1000: the user left)"
    assert tunnel.cloud_close == (1000, "the user left")
    target.settimeout(5)
    assert recv_until_eof(target) == b"last words"


def test_a_target_that_resets_is_reported_with_1011_not_1000(tunnel_parts):
    tunnel, target, cloud = tunnel_parts()
    target.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, (1).to_bytes(4, "little") + (0).to_bytes(4, "little"))
    target.close()  # linger 0: a reset, not a close
    code, reason = cloud.close_frame()
    assert code == FAILED and reason.startswith("the target failed: "), reason
    cloud.send(OPCODE_CLOSE, FAILED.to_bytes(2, "big"))
    ended(tunnel)


def test_a_cloud_that_stops_reading_ends_the_tunnel_within_two_ping_intervals(tunnel_parts):
    tunnel, target, cloud = tunnel_parts()
    flood = start_thread(_flood, target, name="flood")
    wait_until(lambda: tunnel.reason, "the tunnel's end", timeout=STALL_BOUND)
    assert ended(tunnel) == f"the cloud stopped reading: nothing sent for {PING:g} s"
    join_all([flood])


def test_a_target_that_stops_reading_ends_the_tunnel_with_1011_naming_it(tunnel_parts):
    tunnel, target, cloud = tunnel_parts()
    flood = start_thread(_flood_frames, cloud, name="flood")
    wait_until(lambda: tunnel.reason, "the tunnel's end", timeout=STALL_BOUND)
    assert cloud.close_frame() == (FAILED, f"the target stopped reading: nothing taken for {PING:g} s")
    ended(tunnel)
    join_all([flood])


def test_a_quiet_tunnel_pings_and_a_cloud_that_never_answers_ends_it(tunnel_parts):
    tunnel, target, cloud = tunnel_parts()
    assert cloud.receive() == (OPCODE_PING, b"")
    cloud.send(OPCODE_PONG)
    assert cloud.receive() == (OPCODE_PING, b""), "a ping answered is followed by the next one"
    wait_until(lambda: tunnel.reason, "the tunnel's end", timeout=STALL_BOUND)
    assert ended(tunnel) == "the cloud stopped answering keepalive pings"


@pytest.mark.parametrize("limits, code, reason", [
    (dict(idle_timeout=0.3), GOING_AWAY, "idle for 0.3 s ([agent] idle_timeout)"),
    (dict(max_session_time=0.6), GOING_AWAY, "session time limit of 0.6 s ([agent] max_session_time)"),
], ids=["idle", "session-time"])
def test_a_session_limit_closes_with_1001_and_says_which(tunnel_parts, limits, code, reason):
    began = time.monotonic()
    tunnel, target, cloud = tunnel_parts(**limits)
    if "max_session_time" in limits:  # data flowing does not hold a session past its limit
        cloud.send(OPCODE_BINARY, b"busy")
        target.sendall(b"busy")
    assert cloud.close_frame() == (code, reason)
    cloud.send(OPCODE_CLOSE, code.to_bytes(2, "big"))
    assert ended(tunnel) == reason
    assert time.monotonic() - began >= max(limits.values())


def test_traffic_keeps_an_idle_limit_away(tunnel_parts):
    tunnel, target, cloud = tunnel_parts(idle_timeout=0.5)
    for _ in range(6):  # 0.9 s of traffic, each gap shorter than the limit
        time.sleep(0.15)
        target.sendall(b"x")
        assert cloud.data(1) == b"x"
    assert tunnel.reason is None
    target.close()
    assert cloud.close_frame() == (NORMAL, "the target closed the connection")


def test_stop_from_outside_closes_with_the_given_code_and_reason(tunnel_parts):
    tunnel, target, cloud = tunnel_parts()
    tunnel.stop(GOING_AWAY, "the agent is stopping")
    assert cloud.close_frame() == (GOING_AWAY, "the agent is stopping")
    cloud.send(OPCODE_CLOSE, GOING_AWAY.to_bytes(2, "big"))
    assert ended(tunnel) == "the agent is stopping"
    target.settimeout(5)
    assert recv_until_eof(target) == b""


def test_a_cloud_that_never_answers_the_close_is_cut_after_close_wait(tunnel_parts):
    tunnel, target, cloud = tunnel_parts()
    target.close()
    assert cloud.close_frame()[0] == NORMAL
    assert ended(tunnel, within=5) == "the target closed the connection"
    assert cloud.receive() is None, "the WebSocket is shut once the close wait runs out"


def _flood(sock):
    """Write until the socket fails: the far end closed or was cut."""
    block = bytes(1 << 16)
    try:
        while True:
            sock.sendall(block)
    except OSError:
        pass


def _flood_frames(cloud):
    try:
        while True:
            cloud.send(OPCODE_BINARY, bytes(1 << 16))
    except OSError:
        pass


def test_a_target_still_sending_when_the_tunnel_ends_is_not_left_waiting():
    """The end of a tunnel whose target was sending into a full window: the target learns at once.
    A socket shut for reading (SHUT_RDWR) never reopens its window; drained and closed, the kernel
    kept it answering "no room" for a minute, and the target sat blocked: the connection the bench
    found open after its tunnel."""
    target, agent_end = tcp_pair()
    endpoint = TcpEndpoint(agent_end, "the target")
    failed = []

    def keep_sending():
        try:
            _flood(target)
        finally:
            failed.append(time.monotonic())

    flood = start_thread(keep_sending, name="flood")
    time.sleep(0.3)  # the agent reads nothing meanwhile: the window is full, the target blocked
    endpoint.interrupt()
    deadline = time.monotonic() + 0.3  # the pump's last reads
    while time.monotonic() < deadline:
        try:
            if not endpoint.read(1 << 16, 0.05):
                break
        except TimeoutError:
            break
    endpoint.close()
    flood.join(5)
    target.close()
    assert failed, "the target is still blocked sending 5 s after its tunnel's end"
