"""cra-cloud's relay (docs/wire.md section 4), driven through a real cra-cloud process.

A user's tool and an agent only see what arrives on their WebSocket: the bytes, the close code,
the operation the client created. These tests check exactly that, plus what an operator reads in
the cloud's log and the memory the relay needs while one side does not read.
"""
import hashlib
import json
import os
import re
import socket
import threading
import time
import uuid

import pytest
import websocket

from cra.cloud.relay import MAX_FRAME
from toolkit.programs import ADMIN, ADMIN_T200, DEVICE, basic, receive_close

KiB = 1024
MiB = 1024 * KiB
FRAME = 64 * KiB
JOIN_TIMEOUT = 60
UUID_FORMAT = re.compile(r"[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}")
SMALL_BUFFERS = {"sockopt": ((socket.SOL_SOCKET, socket.SO_SNDBUF, 64 * KiB),
                             (socket.SOL_SOCKET, socket.SO_RCVBUF, 64 * KiB))}
DROPPED = (websocket.WebSocketConnectionClosedException, ConnectionError)


# helpers


class Worker(threading.Thread):
    """A thread whose outcome (value or exception) the test collects after a bounded join,
    so that a failure inside a sender or reader fails the test instead of vanishing."""

    def __init__(self, fn, *args, **kwargs):
        super().__init__(daemon=True)
        self._call = lambda: fn(*args, **kwargs)
        self.value = self.error = None
        self.start()

    def run(self):
        try:
            self.value = self._call()
        except BaseException as exc:  # handed over to the test's thread in result()
            self.error = exc

    def result(self, timeout=JOIN_TIMEOUT):
        self.join(timeout)
        assert not self.is_alive(), f"thread still running after {timeout} s"
        if self.error is not None:
            raise self.error
        return self.value


def sha256(data):
    return hashlib.sha256(data).hexdigest()


def send_stream(ws, data, progress=None):
    """Data as FRAME-sized binary frames; progress[0] counts what the socket has accepted."""
    for offset in range(0, len(data), FRAME):
        ws.send_binary(data[offset:offset + FRAME])
        if progress is not None:
            progress[0] = min(offset + FRAME, len(data))


def receive_stream(ws, size, pause_every=0, pause=0.0, timeout=JOIN_TIMEOUT):
    """(sha256, byte count) of `size` bytes of binary frames; the reader may pause to be slow."""
    digest, received, deadline = hashlib.sha256(), 0, time.monotonic() + timeout
    for frames in range(1, size + 1):
        if received >= size:
            break
        assert time.monotonic() < deadline, f"only {received} of {size} bytes arrived in {timeout} s"
        data = ws.recv()
        assert isinstance(data, bytes) and data, f"expected a binary frame, got {data!r:.80}"
        digest.update(data)
        received += len(data)
        if pause_every and frames % pause_every == 0:
            time.sleep(pause)
    return digest.hexdigest(), received


def ending(ws):
    """The close code a socket receives, or "dropped" when its connection ends without one."""
    try:
        return receive_close(ws)[0]
    except DROPPED:
        return "dropped"


def endings(*sockets):
    """ending() of each socket, read at the same time: the relay closes one side after the
    other and waits for each one's reply, so reading them in turn could wait on the wrong one."""
    readers = [Worker(ending, ws) for ws in sockets]
    return [reader.result(30) for reader in readers]


def hang_up(client, device):
    """End a session cleanly: stopping the cloud would otherwise wait for close replies."""
    client.close()
    assert ending(device) == 1000


def still_open(ws, seconds):
    """True when nothing (no frame, no close, no drop) arrives on ws for `seconds`."""
    ws.settimeout(seconds)
    try:
        ws.recv_data_frame(control_frame=True)
    except websocket.WebSocketTimeoutException:
        return True
    finally:
        ws.settimeout(30)
    return False


def wait_for_stall(progress, quiet=1.0, timeout=30):
    """Where a writer stopped: progress[0] once it has not moved for `quiet` seconds."""
    deadline = time.monotonic() + timeout
    last, since = progress[0], time.monotonic()
    while time.monotonic() < deadline:
        time.sleep(0.05)
        if progress[0] != last:
            last, since = progress[0], time.monotonic()
        elif time.monotonic() - since >= quiet:
            return last
    raise AssertionError(f"the writer kept making progress for {timeout} s (at {progress[0]} bytes)")


def log_lines(cloud, pattern, timeout=10):
    """The lines of the cloud's log that match, once there are any: the end line is written
    only after both sides have answered the close."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        lines = [line for line in cloud.log().splitlines() if re.search(pattern, line)]
        if lines:
            return lines
        time.sleep(0.05)
    raise AssertionError(f"no log line matches {pattern!r}:\n{cloud.log()}")


def connect_device(cloud, key, **options):
    """A device leg free to leave out the subprotocol (programs.Cloud.open_device always offers it)."""
    return websocket.create_connection(f"{cloud.ws_url}/service/remoteaccess/device/{key}",
                                       header={"Authorization": basic(DEVICE)}, timeout=30, **options)


def open_waiting_client(cloud, auth=ADMIN, external_id="gw-001"):
    """A client whose device has not joined yet: (client, its operation)."""
    device_id = cloud.device_id(external_id, auth=auth)
    client = cloud.open_client(device_id, cloud.config_id(device_id, auth=auth), auth=auth)
    newest = cloud.api(auth).get("/devicecontrol/operations", params={
        "deviceId": device_id, "status": "PENDING", "pageSize": 1, "revert": "true"}).json()["operations"]
    assert newest, "connecting a client created no PENDING operation"
    return client, newest[0]


def operation(cloud, op_id, auth=ADMIN):
    return cloud.api(auth).get(f"/devicecontrol/operations/{op_id}").json()


def pending_operations(cloud, device_id):
    return cloud.api(ADMIN).get("/devicecontrol/operations", params={
        "deviceId": device_id, "status": "PENDING", "pageSize": 100}).json()["operations"]


def set_operation_timeout(cloud, auth, seconds):
    answer = cloud.api(auth).post("/tenant/options", json={
        "category": "remoteaccess", "key": "remoteaccess.operation.timeout", "value": seconds})
    assert answer.status_code == 201, answer.text


def key_of(op):
    return op["c8y_RemoteAccessConnect"]["connectionKey"]


def ends(client, device, who):
    """(the socket `who` names, the other one)."""
    return (client, device) if who == "client" else (device, client)


# the operation a client creates


@pytest.mark.parametrize("config_name", ["ssh", "vnc"])
def test_a_client_creates_a_pending_connect_operation_for_its_configuration(cloud, config_name):
    device_id = cloud.device_id()
    config = next(c for c in cloud.api().get(f"/service/remoteaccess/devices/{device_id}/configurations").json()
                  if c["name"] == config_name)
    client = cloud.open_client(device_id, config["id"])
    op = cloud.pending_operation(device_id)
    assert (op["status"], op["deviceId"]) == ("PENDING", str(device_id))
    connect = op["c8y_RemoteAccessConnect"]
    assert (connect["hostname"], connect["port"]) == (config["hostname"], config["port"])
    assert UUID_FORMAT.fullmatch(connect["connectionKey"]), connect["connectionKey"]
    client.close()


def test_each_client_connection_gets_its_own_operation_and_key(cloud):
    """Two users of one configuration must each reach their own session through their own key."""
    first, first_op = open_waiting_client(cloud)
    second, second_op = open_waiting_client(cloud)
    assert first_op["id"] != second_op["id"]
    assert key_of(first_op) != key_of(second_op)
    assert len(pending_operations(cloud, first_op["deviceId"])) == 2
    second_device = cloud.open_device(key_of(second_op))
    first_device = cloud.open_device(key_of(first_op))
    second_device.send_binary(b"for the second")
    first_device.send_binary(b"for the first")
    assert (first.recv(), second.recv()) == (b"for the first", b"for the second")
    hang_up(first, first_device)
    hang_up(second, second_device)


# data


def test_bytes_cross_the_relay_both_ways(cloud):
    client, device, _ = cloud.open_tunnel()
    client.send_binary(b"ping")
    assert device.recv() == b"ping"
    device.send_binary(b"pong")
    assert client.recv() == b"pong"
    device.close()
    assert ending(client) == 1000


def test_what_the_client_sends_before_the_device_joins_is_delivered(cloud):
    """A user's tool speaks as soon as its socket is open; the agent joins seconds later."""
    client, op = open_waiting_client(cloud)
    early = b"".join([b"SSH-2.0-OpenSSH_9.6\r\n", os.urandom(3000), b"third frame"])
    for frame in (early[:21], early[21:3021], early[3021:]):
        client.send_binary(frame)
    device = cloud.open_device(key_of(op))
    assert receive_stream(device, len(early)) == (sha256(early), len(early))
    hang_up(client, device)


def test_what_the_device_sends_first_arrives_at_the_client(cloud):
    """Servers such as VNC greet first: the device's bytes come before any from the client."""
    client, device, _ = cloud.open_tunnel()
    device.send_binary(b"RFB 003.008\n")
    assert client.recv() == b"RFB 003.008\n"
    hang_up(client, device)


def test_16_mib_each_way_at_once_arrive_intact_with_a_slow_reader(cloud):
    """Both directions busy while one reader lags is where a relay that drops, repeats or
    reorders a frame under backpressure gives itself away."""
    client, device, _ = cloud.open_tunnel()
    up, down = os.urandom(16 * MiB), os.urandom(16 * MiB)
    senders = [Worker(send_stream, client, up), Worker(send_stream, device, down)]
    at_device = Worker(receive_stream, device, len(up), pause_every=8, pause=0.02)
    at_client = Worker(receive_stream, client, len(down))
    for sender in senders:
        sender.result()
    assert at_device.result() == (sha256(up), len(up))
    assert at_client.result() == (sha256(down), len(down))
    hang_up(client, device)


def test_a_device_that_stops_reading_stalls_the_client_and_the_relay_does_not_queue(cloud):
    """Backpressure must reach the sender: a relay that queued instead would hold whatever a
    fast client sends to a stalled device, here the whole 48 MiB."""
    client, device, _ = cloud.open_tunnel(client_options=SMALL_BUFFERS, device_options=SMALL_BUFFERS)
    data = os.urandom(48 * MiB)
    rss_before = cloud.rss_kib()
    progress = [0]
    writer = Worker(send_stream, client, data, progress)
    stalled_at = wait_for_stall(progress)
    rss_growth_kib = cloud.rss_kib() - rss_before
    arrived = receive_stream(device, len(data))
    writer.result()
    assert stalled_at < len(data) // 3, f"the client could send {stalled_at} of {len(data)} bytes unread"
    assert rss_growth_kib < 16 * KiB, f"the cloud grew by {rss_growth_kib} KiB"
    assert arrived == (sha256(data), len(data))
    hang_up(client, device)


# closing


@pytest.mark.parametrize("closer", ["client", "device"])
@pytest.mark.parametrize("code", [1000, 1001, 4001])
def test_closing_one_side_closes_the_other_with_the_same_code(cloud, closer, code):
    client, device, _ = cloud.open_tunnel()
    closing, other = ends(client, device, closer)
    closing.close(status=code)
    assert ending(other) == code


def test_the_reason_a_device_closes_with_reaches_the_client(cloud):
    """An agent that cannot reach its target says why in its close; the user's tool should read it."""
    client, device, _ = cloud.open_tunnel()
    device.close(status=1011, reason=b"cannot connect to 10.0.0.67:5900: connection refused")
    assert receive_close(client) == (1011, "cannot connect to 10.0.0.67:5900: connection refused")


@pytest.mark.parametrize("dropper", ["device", "client"])
def test_an_abrupt_drop_ends_the_other_side_without_a_close_frame(cloud, dropper):
    """docs/wire.md: the other side sees 1006, which is what a socket that just ends means."""
    client, device, _ = cloud.open_tunnel()
    dropped, other = ends(client, device, dropper)
    dropped.sock.shutdown(socket.SHUT_RDWR)
    dropped.sock.close()
    assert ending(other) == "dropped"


# timeouts


@pytest.mark.parametrize("set_by", ["tenant option", "--operation-timeout"])
def test_a_device_that_never_comes_fails_the_operation_and_closes_the_client(make_cloud, set_by):
    if set_by == "tenant option":
        cloud = make_cloud()
        set_operation_timeout(cloud, ADMIN, "1")
    else:
        cloud = make_cloud(args=["--operation-timeout", "1"])
    client, op = open_waiting_client(cloud)
    code, reason = receive_close(client)
    assert code == 1011 and reason
    failed = operation(cloud, op["id"])
    assert failed["status"] == "FAILED"
    assert "timeout" in failed["failureReason"].lower(), failed["failureReason"]
    with pytest.raises(websocket.WebSocketBadStatusException) as answer:
        cloud.open_device(key_of(op))
    assert answer.value.status_code == 404


def test_the_operation_timeout_option_belongs_to_its_tenant(cloud):
    set_operation_timeout(cloud, ADMIN_T200, "1")
    t200_client, _ = open_waiting_client(cloud, auth=ADMIN_T200, external_id="gw-900")
    t100_client, t100_op = open_waiting_client(cloud)
    assert ending(t200_client) == 1011
    assert still_open(t100_client, 1.5)
    assert operation(cloud, t100_op["id"])["status"] == "PENDING"
    device = cloud.open_device(key_of(t100_op))
    device.send_binary(b"late but in time")
    assert t100_client.recv() == b"late but in time"
    hang_up(t100_client, device)


def test_an_idle_session_is_closed_with_1001_on_both_sides(make_cloud):
    cloud = make_cloud(args=["--idle-timeout", "1"])
    client, device, _ = cloud.open_tunnel()
    assert endings(client, device) == [1001, 1001]


@pytest.mark.parametrize("talker", ["client", "device"])
def test_a_session_with_data_flowing_is_not_idle(make_cloud, talker):
    cloud = make_cloud(args=["--idle-timeout", "1"])
    client, device, _ = cloud.open_tunnel()
    sender, receiver = ends(client, device, talker)
    for number in range(7):
        sender.send_binary(b"keepalive %d" % number)
        assert receiver.recv() == b"keepalive %d" % number
        time.sleep(0.3)
    receiver.send_binary(b"still here")
    assert sender.recv() == b"still here"
    hang_up(client, device)


# the device endpoint


@pytest.mark.parametrize("case", ["already used", "unknown", "client left"])
def test_a_connection_key_is_good_for_one_device_while_its_client_waits(cloud, case):
    client, op = open_waiting_client(cloud)
    key, first_device = key_of(op), None
    if case == "already used":
        first_device = cloud.open_device(key)
    elif case == "unknown":
        key = str(uuid.uuid4())
    else:
        client.close()
        log_lines(cloud, r"session \d+ ended")
    with pytest.raises(websocket.WebSocketBadStatusException) as answer:
        cloud.open_device(key)
    assert answer.value.status_code == 404
    assert json.loads(answer.value.resp_body)["error"] == "remoteaccess/Not Found"
    if first_device:
        hang_up(client, first_device)
    else:
        client.close()


@pytest.mark.parametrize("offered", [["binary"], None])
def test_the_device_upgrade_is_answered_with_the_binary_subprotocol(cloud, offered):
    """The real platform answers `binary` even when not offered; agents are built for that."""
    client, op = open_waiting_client(cloud)
    device = connect_device(cloud, key_of(op), **({"subprotocols": offered} if offered else {}))
    assert device.getheaders().get("sec-websocket-protocol") == "binary"
    if offered:
        assert device.getsubprotocol() == "binary"
    device.send_binary(b"works")
    assert client.recv() == b"works"
    hang_up(client, device)


@pytest.mark.parametrize("leg", ["client", "device"])
def test_pings_are_answered_on_both_legs(cloud, leg):
    client, device, _ = cloud.open_tunnel()
    pinger, other = ends(client, device, leg)
    pinger.ping(b"x")
    opcode, frame = pinger.recv_data_frame(control_frame=True)
    assert (opcode, frame.data) == (websocket.ABNF.OPCODE_PONG, b"x")
    pinger.send_binary(b"after the ping")
    assert other.recv() == b"after the ping"
    hang_up(client, device)


# rule breaking


@pytest.mark.parametrize("sender", ["client", "device"])
def test_a_text_frame_ends_the_session_with_1003(cloud, sender):
    client, device, _ = cloud.open_tunnel()
    ends(client, device, sender)[0].send("text is not allowed")
    assert endings(client, device) == [1003, 1003]


@pytest.mark.parametrize("sender", ["client", "device"])
def test_a_frame_as_large_as_the_limit_crosses(cloud, sender):
    client, device, _ = cloud.open_tunnel()
    source, target = ends(client, device, sender)
    data = os.urandom(MAX_FRAME)
    source.send_binary(data)
    assert target.recv() == data
    hang_up(client, device)


@pytest.mark.parametrize("sender", ["client", "device"])
def test_a_frame_over_the_limit_ends_the_session_with_1009(cloud, sender):
    """The other side learns why with 1009. The sender itself may see a reset instead of its
    1009: the relay closes with the rest of the frame unread, and the kernel answers that with RST."""
    client, device, _ = cloud.open_tunnel()
    source, target = ends(client, device, sender)
    source.send_binary(os.urandom(MAX_FRAME + 1))
    assert receive_close(target)[0] == 1009


# the client endpoint


@pytest.mark.parametrize("case", ["unknown device", "device id not a number", "unknown configuration",
                                  "another device's configuration"])
def test_a_client_for_something_that_does_not_exist_gets_404_and_no_operation(cloud, case):
    device_id, other_id = cloud.device_id(), cloud.device_id("gw-002")
    config_id = cloud.config_id(device_id)
    path = {"unknown device": (999999, config_id), "device id not a number": ("gw-001", config_id),
            "unknown configuration": (device_id, 999999), "another device's configuration": (other_id, config_id)}
    with pytest.raises(websocket.WebSocketBadStatusException) as answer:
        cloud.open_client(*path[case])
    assert answer.value.status_code == 404
    assert pending_operations(cloud, device_id) == pending_operations(cloud, other_id) == []


# what the operator sees


@pytest.mark.parametrize("args", [[], ["--verbose"]], ids=["default", "verbose"])
def test_the_log_has_a_start_and_an_end_line_per_session_and_masks_the_key(make_cloud, args):
    """The key opens a tunnel to a device while its client waits; a log shows only enough of it
    to match a session with its operation."""
    cloud = make_cloud(args=args)
    client, device, op = cloud.open_tunnel()
    key, device_id = key_of(op), op["deviceId"]
    config_id = cloud.config_id(device_id)
    client.send_binary(b"12345")
    assert device.recv() == b"12345"
    device.send_binary(b"1234567")
    assert client.recv() == b"1234567"
    hang_up(client, device)

    start, = log_lines(cloud, rf"started by admin: .*\boperation {op['id']}\b")
    session = re.search(r"session (\d+)", start).group(1)
    end, = log_lines(cloud, rf"session {session} ended")
    for line in (start, end):
        assert re.search(rf"\bdevice {device_id}\b", line) and re.search(rf"\bconfiguration {config_id}\b", line)
        assert key[:4] in line
    assert "client->device 5 bytes" in end and "device->client 7 bytes" in end
    assert re.search(r"\b\d+(\.\d+)? s\b", end)
    assert "closed (1000)" in end
    assert cloud.stop() == 0
    assert key[4:] not in cloud.log()


def test_a_session_that_ends_while_the_device_is_not_reading_is_closed_and_logged(make_cloud):
    """Ending a session must not depend on the relay's pending write to a stalled side: that is
    the moment backpressure leaves the relay waiting, and the session's end must still be whole."""
    cloud = make_cloud(args=["--idle-timeout", "1"])
    client, device, _ = cloud.open_tunnel(client_options=SMALL_BUFFERS, device_options=SMALL_BUFFERS)
    progress = [0]

    def write_until_closed():
        try:
            send_stream(client, os.urandom(16 * MiB), progress)
        except DROPPED:
            pass

    writer = Worker(write_until_closed)
    wait_for_stall(progress)
    time.sleep(1)  # the idle timeout runs from the last frame that passed, before the stall
    assert endings(client, device) == [1001, 1001]
    writer.result()
    end, = log_lines(cloud, r"session \d+ ended")
    assert "idle" in end


def test_sigterm_closes_open_sessions_with_1001_and_exits_0(cloud):
    client, device, _ = cloud.open_tunnel()
    readers = [Worker(ending, ws) for ws in (client, device)]
    assert cloud.stop() == 0
    assert [reader.result(30) for reader in readers] == [1001, 1001]
