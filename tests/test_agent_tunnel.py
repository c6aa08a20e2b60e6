"""The agent's tunnels end to end (docs/wire.md section 4, issue 3): a user's tool on the client
endpoint of a real cra-cloud, the real agent process, and real TCP services on 127.0.0.1 behind it.
"""
import hashlib
import os
import re
import signal
import threading
import time

import pytest
import websocket

from toolkit.middleboxes import CloudRelay
from toolkit.programs import ADMIN, DEVICE, basic, receive_close, wait_for_status
from toolkit.sockets import open_fds, recv_exactly, recv_until_eof, tcp_connections_of, threads_of, ws_recv_exactly
from toolkit.waiting import in_parallel, join_all, start_thread, wait_until

MiB = 1 << 20
FRAME = 64 * 1024
CLIENT_TIMEOUT = 20


def echo(sock):
    """A local service that answers every byte with itself until the tunnel ends; returns how many it echoed."""
    echoed = 0
    while chunk := sock.recv(FRAME):
        sock.sendall(chunk)
        echoed += len(chunk)
    return echoed


@pytest.fixture
def wiretap(cloud):
    """wiretap(drop_pongs=...) -> a CloudRelay in front of the cloud, for the agent's [c8y] url."""
    taps = []

    def make(**options):
        taps.append(CloudRelay(cloud.url, **options))
        return taps[-1]

    yield make
    for tap in taps:
        tap.close()


def configure(cloud, port):
    """A configuration of gw-001 for 127.0.0.1:port, as an administrator creates it; its id."""
    device_id = cloud.device_id()
    answer = cloud.api(ADMIN).post(f"/service/remoteaccess/devices/{device_id}/configurations",
                                   json={"name": f"local-{port}", "hostname": "127.0.0.1", "port": port})
    assert answer.status_code == 201, answer.text
    return answer.json()["id"]


def open_user(cloud, config_id):
    """A user's tool connected to a configuration (which creates the operation the agent picks up)."""
    client = cloud.open_client(cloud.device_id(), config_id)
    client.settimeout(CLIENT_TIMEOUT)
    return client


def connect(cloud, config_id):
    """open_user(), and the operation it created: the newest, as long as users connect one at a time."""
    client = open_user(cloud, config_id)
    newest = cloud.api(ADMIN).get("/devicecontrol/operations", params={
        "deviceId": cloud.device_id(), "pageSize": 1, "revert": "true"}).json()["operations"][0]
    return client, newest


def send_frames(ws, data):
    for start in range(0, len(data), FRAME):
        ws.send_binary(data[start:start + FRAME])


def round_trip(client, data):
    send_frames(client, data)
    return ws_recv_exactly(client, len(data))


def session_end(ws):
    """How the peer ended a WebSocket: its close code, or "dropped" when the connection just went."""
    try:
        return receive_close(ws)[0]
    except (websocket.WebSocketConnectionClosedException, ConnectionError):
        return "dropped"


def sha(data):
    return hashlib.sha256(data).hexdigest()


def status_once_closed(cloud, agent, op_id):
    """The operation's status once the agent has logged the end of its tunnel, i.e. is done with it."""
    agent.wait_for_log(rf"tunnel {op_id} closed")
    return wait_for_status(cloud, op_id)["status"]


def test_16_mib_each_way_at_once_cross_intact(cloud, make_agent, serve):
    """Both pumps under full load together: bytes lost, reordered or duplicated in either direction,
    or pumps that stall each other, show here as a digest mismatch or a bounded wait running out."""
    upload, download = os.urandom(16 * MiB), os.urandom(16 * MiB)

    def exchange(sock):
        sender = start_thread(sock.sendall, download, name="server-send")
        received = recv_exactly(sock, len(upload))
        join_all([sender], 60)
        return len(received), sha(received)

    server = serve(exchange)
    make_agent(cloud)
    client, _ = connect(cloud, configure(cloud, server.port))
    sender = start_thread(send_frames, client, upload, name="client-send")
    received = ws_recv_exactly(client, len(download))
    join_all([sender], 60)
    assert (len(received), sha(received)) == (len(download), sha(download))
    assert server.connection(0).outcome(60) == (len(upload), sha(upload))
    client.close()


def test_early_bytes_of_either_side_arrive_first_and_in_order(cloud, make_agent, serve):
    """SSH and VNC servers speak first, on accept; a user's tool may write before the agent has even
    seen the operation. Neither may be lost, nor overtaken by what is sent once the tunnel is up."""
    banner = b"SSH-2.0-OpenSSH_9.2p1 Debian-2\r\n"

    def speak_first(sock):
        sock.sendall(banner)
        return recv_until_eof(sock)

    server = serve(speak_first)
    client, _ = connect(cloud, configure(cloud, server.port))
    client.send_binary(b"early-1 ")
    client.send_binary(b"early-2 ")
    make_agent(cloud)  # only now: the early frames were surely sent before the agent joined
    assert ws_recv_exactly(client, len(banner)) == banner
    client.send_binary(b"later")
    client.close()
    assert server.connection(0).outcome() == b"early-1 early-2 later"


@pytest.mark.parametrize("version, advised", [(b"RFB 005.000\n", True), (b"RFB 003.008\n", False)],
                         ids=["RealVNC-5", "RFB-3.8"])
def test_a_vnc_server_offering_rfb_5_is_named_with_the_setting_that_fixes_it(cloud, make_agent, serve, version, advised):
    """RealVNC offers its own RFB 005.000, which the platform's VNC client cannot speak: the session
    fails in the browser with nothing to go on. The agent says, once, which server it was and what to
    set; a server offering RFB 3.8 gets no such line."""
    def vnc_server(sock):
        sock.sendall(version)
        return recv_until_eof(sock)

    server = serve(vnc_server)
    agent = make_agent(cloud)
    client, op = connect(cloud, configure(cloud, server.port))
    assert ws_recv_exactly(client, len(version)) == version
    client.close()
    agent.wait_for_log(rf"tunnel {op['id']} closed")
    advice = [line for line in agent.log().splitlines() if "ProtocolVersion" in line]
    if advised:
        assert len(advice) == 1 and f"127.0.0.1:{server.port} is a VNC server that offers RFB 005.000" in advice[0] \
            and "set the server's ProtocolVersion to 3.8" in advice[0], agent.log()
    else:
        assert advice == [], advice


def test_the_user_closing_ends_the_local_connection_and_the_operation_stays_successful(cloud, make_agent, serve):
    """A user who quits must not leave a session open on the device; and a normal end is no failure."""
    server = serve(recv_until_eof)
    agent = make_agent(cloud)
    client, op = connect(cloud, configure(cloud, server.port))
    assert wait_for_status(cloud, op["id"])["status"] == "SUCCESSFUL"
    client.send_binary(b"exit\n")
    client.close()
    assert server.connection(0).outcome() == b"exit\n"  # recv returned b"": the local service saw EOF
    assert status_once_closed(cloud, agent, op["id"]) == "SUCCESSFUL"


def test_the_local_service_closing_delivers_its_last_bytes_then_closes_the_user_with_1000(cloud, make_agent, serve):
    """A shell that exits says its last words and closes: the user must read them all, then see a normal close."""
    last_words = b"logout\r\n" + os.urandom(3 * FRAME)

    def exit_after_last_words(sock):
        request = recv_exactly(sock, 5)
        sock.sendall(last_words)
        sock.close()
        return request

    server = serve(exit_after_last_words)
    agent = make_agent(cloud)
    client, op = connect(cloud, configure(cloud, server.port))
    client.send_binary(b"exit\n")
    assert sha(ws_recv_exactly(client, len(last_words))) == sha(last_words)
    assert receive_close(client)[0] == 1000
    assert server.connection(0).outcome() == b"exit\n"
    assert status_once_closed(cloud, agent, op["id"]) == "SUCCESSFUL"


@pytest.mark.parametrize("limit, reason", [
    ({"idle_timeout": "1"}, "idle for 1 s ([agent] idle_timeout)"),
    ({"max_session_time": "1.5"}, "session time limit of 1.5 s ([agent] max_session_time)"),
], ids=["idle_timeout", "max_session_time"])
def test_a_session_limit_ends_the_tunnel_and_says_which(cloud, make_agent, serve, limit, reason):
    """The owner's limits on a tunnel: no data either way for idle_timeout, or max_session_time however
    busy it is. The user's tool hears which, with 1001 (going away), and so does the agent's log. The
    session limit is kept busy with echoes every 0.2 s, which the idle limit would have allowed."""
    server = serve(echo)
    agent = make_agent(cloud, options={"agent": limit})
    client, op = connect(cloud, configure(cloud, server.port))
    done = threading.Event()

    def keep_busy():
        try:
            while not done.wait(0.2):
                client.send_binary(b"busy")
        except (websocket.WebSocketException, OSError):
            pass  # the tunnel's end, which this test waits for

    senders = [start_thread(keep_busy, name="keep-busy")] if "max_session_time" in limit else []
    assert receive_close(client) == (1001, reason)
    done.set()
    join_all(senders)
    assert agent.wait_for_log(rf"tunnel {op['id']} closed").endswith(reason)
    assert server.connection(0).outcome() is not None  # the local connection was closed as well


def test_a_cloud_that_stops_reading_ends_the_tunnel_within_two_ping_intervals(cloud, make_agent, serve):
    """The cloud (or a middlebox) takes no more of what the agent sends: the agent's send would wait for
    ever; instead the tunnel ends within two ping intervals, the log says the cloud stopped reading,
    and the local connection is closed."""
    download = os.urandom(32 * MiB)  # more than the sockets on the way hold
    cloud_deaf = threading.Event()

    def flood(sock):
        cloud_deaf.wait(30)
        try:
            sock.sendall(download)
        except OSError:
            pass  # the agent closed the connection: what this test waits for
        return recv_until_eof(sock)

    with CloudRelay(cloud.url) as link:
        server = serve(flood)
        agent = make_agent(cloud, options={"c8y": {"url": link.url}, "agent": {"ping_interval": "0.5"}})
        client, op = connect(cloud, configure(cloud, server.port))
        agent.wait_for_log(rf"tunnel {op['id']} open")
        link.stop_reading()
        cloud_deaf.set()
        closed = agent.wait_for_log(rf"tunnel {op['id']} closed", timeout=15)
        assert closed.endswith("the cloud stopped reading: nothing sent for 0.5 s"), closed
        assert server.connection(0).outcome() is not None
        client.close()


def test_twenty_tunnels_at_once_each_carry_their_own_bytes(cloud, make_agent, serve):
    """Twenty users on one gateway at once (the default max_tunnels): no tunnel may lose, mix up or
    be refused another's bytes; an echo through each proves both of its directions. Every user
    waits for all the others before the second half of their data, so all twenty are open together."""
    count = 20
    server = serve(echo)
    make_agent(cloud)
    config_id = configure(cloud, server.port)
    payloads = [os.urandom(100_000) for _ in range(count)]
    all_open = threading.Barrier(count, timeout=30)

    def user(index):
        client = open_user(cloud, config_id)
        half = len(payloads[index]) // 2
        echoed = round_trip(client, payloads[index][:half])
        all_open.wait()
        echoed += round_trip(client, payloads[index][half:])
        client.close()
        return sha(echoed)

    assert in_parallel(user, count) == [sha(p) for p in payloads]
    ops = cloud.api(ADMIN).get("/devicecontrol/operations", params={
        "deviceId": cloud.device_id(), "pageSize": 100}).json()["operations"]
    assert [wait_for_status(cloud, op["id"])["status"] for op in ops] == ["SUCCESSFUL"] * count


def test_no_descriptor_or_thread_outlives_its_tunnel(cloud, make_agent, serve, wiretap):
    """A gateway's agent runs for months: every descriptor and thread a tunnel takes must be given
    back, whichever end closed it. The agent reaches the cloud through the wiretap only so that its
    REST connections, a keep-alive pool that grows with concurrent requests, are not counted."""
    count = 10
    tap = wiretap()
    server = serve(echo)
    agent = make_agent(cloud, options={"c8y": {"url": tap.url}})
    config_id = configure(cloud, server.port)
    agent.wait_for_log(r"operations: real-time notifications from")

    def footprint():
        return open_fds(agent.proc.pid, except_connections=tap.rest), threads_of(agent.proc.pid)

    idle = footprint()
    clients = []
    for index in range(count):
        client, _ = connect(cloud, config_id)
        assert round_trip(client, b"hello %d" % index) == b"hello %d" % index
        clients.append(client)
    fds, threads = footprint()
    assert fds >= idle[0] + 2 * count and threads >= idle[1] + 2 * count, (idle, (fds, threads))
    for index, client in enumerate(clients):
        if index % 2:
            client.close()
        else:
            server.connection(index).hang_up()
            assert receive_close(client)[0] == 1000
    wait_until(lambda: agent.log().count(" closed: ") == count,
               lambda: f"all {count} tunnels closing (the agent's log:\n{agent.log()})", 15)
    wait_until(lambda: footprint() == idle, lambda: f"the agent back to its idle (fds, threads) {idle} (now {footprint()})", 15)


def test_a_burst_of_operations_leaves_no_more_than_a_small_pool_of_rest_connections(cloud, make_agent, serve, wiretap):
    """Thirty users at once: the agent's status updates share a small pool of REST connections (four,
    and the notification feed's own) rather than opening one each and keeping ten idle for good."""
    count = 30
    tap = wiretap()
    server = serve(echo)
    agent = make_agent(cloud, options={"c8y": {"url": tap.url}, "agent": {"max_tunnels": str(count)}})
    config_id = configure(cloud, server.port)
    agent.wait_for_log(r"operations: real-time notifications from")
    clients = in_parallel(lambda index: open_user(cloud, config_id), count)
    for index, client in enumerate(clients):
        assert round_trip(client, b"hello %d" % index) == b"hello %d" % index
        client.close()
    wait_until(lambda: agent.log().count(" closed: ") == count,
               lambda: f"all {count} tunnels closing (the agent's log:\n{agent.log()})", 20)
    rest = [connection for connection in tcp_connections_of(agent.proc.pid) if connection in tap.rest]
    assert len(rest) <= 5, rest
    assert "Connection pool is full" not in agent.log()


def quiet_tunnel_through(tap, cloud, make_agent, serve):
    """An echo tunnel that has carried data once, from an agent that reaches the cloud through the
    wiretap and pings every 0.5 s while its local side is quiet: (local server, agent, client, operation)."""
    server = serve(echo)
    agent = make_agent(cloud, options={"c8y": {"url": tap.url}, "agent": {"ping_interval": "0.5"}})
    client, op = connect(cloud, configure(cloud, server.port))
    assert round_trip(client, b"before") == b"before"
    return server, agent, client, op


def test_a_quiet_tunnel_pings_the_cloud_and_still_carries_data_afterwards(cloud, make_agent, serve, wiretap):
    """NAT and proxies drop quiet connections: an idle tunnel pings the cloud, and the cloud's
    answers keep the tunnel up through four intervals (2 s) of silence and more."""
    tap = wiretap()
    _, agent, client, op = quiet_tunnel_through(tap, cloud, make_agent, serve)
    wait_until(lambda: tap.pings >= 4 and tap.pongs >= 4, lambda: f"four pings and pongs (now {tap.pings}, {tap.pongs})",
               timeout=10)
    assert round_trip(client, b"after") == b"after"
    assert f"tunnel {op['id']} closed" not in agent.log()
    client.close()


def test_a_cloud_that_stops_answering_pings_ends_the_tunnel(cloud, make_agent, serve, wiretap):
    """A connection that died without a FIN (a NAT that forgot it, a cloud host gone) shows only as
    pings without pongs; the wiretap swallows the pongs while everything else still flows. The
    agent must end the tunnel and free the local session, rather than hold it open for good."""
    tap = wiretap(drop_pongs=True)
    server, agent, client, op = quiet_tunnel_through(tap, cloud, make_agent, serve)
    assert server.connection(0).outcome() == len(b"before")  # the local connection was ended
    assert tap.pings >= 1
    assert re.search(r"ping", agent.wait_for_log(rf"tunnel {op['id']} closed")), agent.log()
    assert session_end(client)  # and the user's tool learns it, by a close or a drop


def test_a_local_service_slow_to_read_is_not_taken_for_a_dead_cloud(cloud, make_agent, serve):
    """A local service may read slowly (a busy program, a slow serial line, flow control) while the
    user uploads: the tunnel waits for it as long as it takes something every ping interval. The
    cloud answers every ping meanwhile, so the tunnel must not be ended as if the cloud had stopped
    answering, though its reader spends most of the time waiting on the service."""
    upload = os.urandom(4 * MiB)  # more than the sockets between the agent and the service hold

    def slow_reader(sock):
        received = bytearray()
        while len(received) < len(upload):
            time.sleep(0.3)  # several ping intervals in all
            received += sock.recv(256 * 1024)
        return len(received), sha(bytes(received))

    server = serve(slow_reader)
    agent = make_agent(cloud, options={"agent": {"ping_interval": "0.5"}})
    client, op = connect(cloud, configure(cloud, server.port))
    sender = start_thread(send_frames, client, upload, name="client-send")
    assert server.connection(0).outcome(60) == (len(upload), sha(upload)), agent.log()
    join_all([sender], 30)
    assert f"tunnel {op['id']} closed" not in agent.log()
    client.close()


def test_a_local_service_that_stops_reading_ends_the_tunnel_and_frees_its_slot(cloud, make_agent, serve):
    """A service that takes nothing more jams nothing: within two ping intervals the tunnel ends, the
    user's tool hears why with 1011, the log names the side, and the slot is free for the next user."""
    upload = os.urandom(16 * MiB)
    stop_reading = threading.Event()

    def stops_reading(sock):
        stop_reading.wait(30)

    server = serve(stops_reading)
    agent = make_agent(cloud, options={"agent": {"ping_interval": "0.5", "max_tunnels": "1"}})
    client, op = connect(cloud, configure(cloud, server.port))

    def send_until_closed():
        try:
            send_frames(client, upload)
        except (websocket.WebSocketException, OSError):
            pass  # the tunnel's end, which this test waits for

    sender = start_thread(send_until_closed, name="client-send")
    closed = agent.wait_for_log(rf"tunnel {op['id']} closed", timeout=10)
    assert re.search(rf"127\.0\.0\.1:{server.port} stopped reading: nothing taken for 0\.5 s$", closed), closed
    assert receive_close(client) == (1011, f"127.0.0.1:{server.port} stopped reading: nothing taken for 0.5 s")
    stop_reading.set()
    join_all([sender], 30)
    echo_server = serve(echo)
    again, _ = connect(cloud, configure(cloud, echo_server.port))
    assert round_trip(again, b"the slot is free") == b"the slot is free"
    again.close()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_closes_every_tunnel_with_1001_and_the_agent_exits_0(cloud, make_agent, serve, signum):
    """A service manager stopping the agent: users learn the device went away (1001), local
    sessions are ended, and the exit code says the stop was clean."""
    server = serve(echo)
    agent = make_agent(cloud)
    config_id = configure(cloud, server.port)
    clients = [connect(cloud, config_id)[0] for _ in range(3)]
    for index, client in enumerate(clients):
        assert round_trip(client, b"up %d" % index) == b"up %d" % index
    assert agent.stop(signum, timeout=30) == 0
    assert [receive_close(client)[0] for client in clients] == [1001] * 3
    assert [server.connection(i).outcome() for i in range(3)] == [len(b"up 0")] * 3
    log = agent.log()
    assert log.count(" closed: ") == 3, log
    assert [line for line in log.splitlines()
            if re.search(r"\bstopp(ing|ed)\b", line) and not re.search(r"tunnel \d+ closed", line)], log


@pytest.mark.parametrize("closer, reason", [
    ("user", r"\bcloud closed"),
    ("local service", r":\d+ closed"),  # the target, not the cloud
])
def test_the_log_tells_each_tunnel_in_two_lines_without_secrets(cloud, make_agent, serve, closer, reason):
    """The log is what an operator reads about a session: one line when it opens and one when it
    closes, with the target, the bytes each way, how long and why; never the key or password whole."""
    upload, download = os.urandom(3000), os.urandom(70_000)  # the download takes more than one 64 KiB read

    def exchange(sock):
        sock.sendall(download)
        received = recv_exactly(sock, len(upload))
        if closer == "local service":
            sock.close()
        return received

    server = serve(exchange)
    agent = make_agent(cloud)
    client, op = connect(cloud, configure(cloud, server.port))
    send_frames(client, upload)
    assert sha(ws_recv_exactly(client, len(download))) == sha(download)
    assert server.connection(0).outcome() == upload
    if closer == "user":
        client.close()
    else:
        assert receive_close(client)[0] == 1000
    op_id, target = op["id"], f"127.0.0.1:{server.port}"
    closed = agent.wait_for_log(rf"tunnel {op_id} closed")
    log = agent.log()
    opened = [line for line in log.splitlines() if f"tunnel {op_id} open" in line]
    assert len(opened) == 1 and log.count(f"tunnel {op_id} closed") == 1, log
    key = op["c8y_RemoteAccessConnect"]["connectionKey"]
    assert target in opened[0] and key[:4] in opened[0]
    assert target in closed
    assert re.search(rf"\b{len(download)} bytes to the cloud\b", closed), closed
    assert re.search(rf"\b{len(upload)} bytes from the cloud\b", closed), closed
    assert re.search(r"\b\d+(\.\d+)? s\b", closed), closed
    assert re.search(reason, closed), closed
    assert not [key[i:i + 6] for i in range(len(key) - 5) if key[i:i + 6] in log], log
    assert DEVICE[1] not in log and basic(DEVICE).split()[1] not in log
