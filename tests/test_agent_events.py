"""The agent's audit trail end to end (issue 13): the real agent, a real cra-cloud and a real TCP
service behind the gateway. Each tunnel leaves two c8y_RemoteAccessSession events on its device,
one when it opens and one when it ends; `[agent] session_events = false` leaves none; and a
cloud whose event API fails never holds a tunnel, its start or its end.
"""
import json
import os
import re
import sys

import pytest

from toolkit.platform import add_configuration, assert_tunnel_works
from toolkit.programs import ADMIN, DEVICE, Cloud, wait_for_status
from toolkit.servers import EchoServer
from toolkit.sockets import recv_exactly, recv_until_eof, ws_recv_exactly
from toolkit.waiting import log_lines, wait_until

EVENT_TYPE = "c8y_RemoteAccessSession"
BANNER, REPLY = os.urandom(7001), b"ok"  # what the service sends: bytes to the cloud
UPLOAD = os.urandom(12345)  # what the user sends: bytes from the cloud


def session_events(cloud, device_id):
    """The device's session events, oldest first."""
    answer = cloud.api(ADMIN).get("/event/events", params={
        "source": device_id, "type": EVENT_TYPE, "pageSize": 100, "revert": "true"})
    assert answer.status_code == 200, answer.text
    return answer.json()["events"]


def talker(sock):
    """A service that speaks first (7001 bytes, as SSH and VNC servers do), takes the user's upload,
    answers it, and ends when the tunnel does; what it received."""
    sock.sendall(BANNER)
    received = recv_exactly(sock, len(UPLOAD))
    sock.sendall(REPLY)
    return received + recv_until_eof(sock)


def one_session(cloud, agent, target_port):
    """A user's session through the agent with known bytes each way, closed by the user: (operation
    id, the agent's "tunnel closed" log line)."""
    device_id = cloud.device_id()
    client = cloud.open_client(device_id, add_configuration(cloud, device_id, "127.0.0.1", target_port))
    client.settimeout(20)
    op_id = cloud.api(ADMIN).get("/devicecontrol/operations", params={
        "deviceId": device_id, "pageSize": 1, "revert": "true"}).json()["operations"][0]["id"]
    assert ws_recv_exactly(client, len(BANNER)) == BANNER
    for start in range(0, len(UPLOAD), 5000):
        client.send_binary(UPLOAD[start:start + 5000])
    assert ws_recv_exactly(client, len(REPLY)) == REPLY
    client.close()
    return op_id, agent.wait_for_log(rf"tunnel {op_id} closed")


def test_a_session_leaves_an_open_and_an_end_event_with_its_bytes_duration_and_reason(cloud, make_agent, serve):
    server = serve(talker)
    agent = make_agent(cloud)
    op_id, closed_line = one_session(cloud, agent, server.port)
    assert server.connection(0).outcome() == UPLOAD
    device_id = cloud.device_id()
    wait_until(lambda: len(session_events(cloud, device_id)) >= 2, "the end event")
    opened, ended = events = session_events(cloud, device_id)
    target = f"127.0.0.1:{server.port}"

    assert opened["text"] == f"Remote access session to {target} opened (operation {op_id})"
    assert opened[EVENT_TYPE] == {"operationId": op_id, "target": target, "status": "OPEN"}

    seconds, reason = re.search(r", (\d+\.\d) s: (.+)$", closed_line).groups()
    fragment = ended[EVENT_TYPE]
    assert fragment == {"operationId": op_id, "target": target, "status": "CLOSED",
                        "bytesToCloud": len(BANNER) + len(REPLY), "bytesFromCloud": len(UPLOAD),
                        "durationSeconds": fragment["durationSeconds"], "reason": reason}
    assert type(fragment["bytesToCloud"]) is int and type(fragment["bytesFromCloud"]) is int
    assert isinstance(fragment["durationSeconds"], float) and fragment["durationSeconds"] == round(float(seconds), 1)
    assert ended["text"] == f"Remote access session to {target} closed after {float(seconds):.1f} s: {reason}"
    assert reason and "cloud closed" in reason, closed_line  # the user ended it

    for event in events:
        assert event["source"]["id"] == device_id and event["type"] == EVENT_TYPE
        assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}(Z|[+-]\d\d:\d\d)", event["time"]), event["time"]
    assert opened["time"] <= ended["time"]
    key = wait_for_status(cloud, op_id)["c8y_RemoteAccessConnect"]["connectionKey"]
    everything = json.dumps(events)
    assert key not in everything and key[:4] + "..." not in everything and DEVICE[1] not in everything
    assert not log_lines(agent, r"session event"), agent.log()

    # exactly two: nothing else comes later for this session
    with EchoServer() as echo:
        second = echo_session(cloud, agent, echo.port)
    wait_until(lambda: len(session_events(cloud, device_id)) >= 4, "the second session's events")
    assert [(e[EVENT_TYPE]["operationId"], e[EVENT_TYPE]["status"]) for e in session_events(cloud, device_id)] == \
        [(op_id, "OPEN"), (op_id, "CLOSED"), (second, "OPEN"), (second, "CLOSED")]


def echo_session(cloud, agent, port):
    """A short session to an echo service, to its end in the agent's log; its operation id."""
    device_id = cloud.device_id()
    client = cloud.open_client(device_id, add_configuration(cloud, device_id, "127.0.0.1", port))
    client.settimeout(20)
    op_id = cloud.api(ADMIN).get("/devicecontrol/operations", params={
        "deviceId": device_id, "pageSize": 1, "revert": "true"}).json()["operations"][0]["id"]
    client.send_binary(b"again")
    assert ws_recv_exactly(client, 5) == b"again"
    client.close()
    agent.wait_for_log(rf"tunnel {op_id} closed")
    return op_id


def test_session_events_false_posts_none(cloud, make_agent, serve):
    agent = make_agent(cloud, options={"agent": {"session_events": "false"}})
    op_id, _ = one_session(cloud, agent, serve(talker).port)
    # the events of a session come within moments of its end (the test above); give them as long again
    with EchoServer() as echo:
        echo_session(cloud, agent, echo.port)
    assert session_events(cloud, cloud.device_id()) == []
    assert wait_for_status(cloud, op_id)["status"] == "SUCCESSFUL"
    assert not log_lines(agent, r"session event"), agent.log()


# A cra-cloud whose event API fails: POST /event/events answers with EVENTS_STATUS, after waiting
# for the file EVENTS_RELEASE to exist when one is named (a cloud too slow to answer, as long as
# the test wants; at most a minute). Everything else is the real cra-cloud.
FAILING_EVENTS = """
import asyncio, os, time
from aiohttp import web
from cra.cloud import events
from cra.cloud.cli import main
from cra.cloud.errors import ApiError

async def refuse(request):
    release, deadline = os.environ.get("EVENTS_RELEASE"), time.monotonic() + 60
    while release and not os.path.exists(release) and time.monotonic() < deadline:
        await asyncio.sleep(0.05)
    raise ApiError(int(os.environ["EVENTS_STATUS"]), "event/Refused", "events are refused here")

events.routes = web.RouteTableDef()
events.routes.post("/event/events")(refuse)
raise SystemExit(main())
"""


class CloudFailingEvents(Cloud):
    def command(self):
        return [sys.executable, "-c", FAILING_EVENTS, *super().command()[3:]]  # instead of: -m cra.cloud


@pytest.fixture
def failing_cloud(tmp_path):
    """failing_cloud(status, release=None) -> a running CloudFailingEvents; stopped (and released) after the test."""
    started = []

    def start(status, release=None):
        env = {"EVENTS_STATUS": str(status), **({"EVENTS_RELEASE": str(release)} if release else {})}
        started.append((CloudFailingEvents(tmp_path, env=env).start(), release))
        return started[-1][0]

    yield start
    for cloud, release in started:
        if release:
            release.touch()
        cloud.stop()


@pytest.mark.parametrize("status, slow", [(403, False), (500, False), (503, True)],
                         ids=["refused-403", "failing-500", "unanswered-then-503"])
def test_a_cloud_failing_events_never_holds_a_tunnel(failing_cloud, make_agent, users, serve, tmp_path, status, slow):
    """With a slow cloud, the open event's POST is still unanswered (the agent waits 30 s for it) while
    the whole session runs: the tunnel starts, carries its bytes both ways and ends all the same."""
    release = tmp_path / "release-events" if slow else None
    cloud = failing_cloud(status, release)
    agent = make_agent(cloud)
    server = serve(talker)
    op_id, _ = one_session(cloud, agent, server.port)
    assert server.connection(0).outcome() == UPLOAD
    assert wait_for_status(cloud, op_id)["status"] == "SUCCESSFUL"
    if slow:
        assert not log_lines(agent, r"session event"), "the session ran while its first event was unanswered"
        release.touch()
    warning = agent.wait_for_log(rf"session event for operation {op_id} \(opened\) not posted, dropped")
    assert f"({status})" in warning and "WARNING" in warning, warning
    assert_tunnel_works(cloud, users, log=agent.log_path)  # and the next session too
    wait_until(lambda: len(log_lines(agent, r"tunnel \d+ closed")) == 2, "the second tunnel's end")
    assert len(log_lines(agent, r"session event")) == 1, agent.log()  # once; the rest at debug level
    assert agent.proc.poll() is None
    assert agent.stop() == 0
    assert "Traceback" not in agent.log()
