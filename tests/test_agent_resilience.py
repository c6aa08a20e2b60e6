"""The agent against a cloud that refuses, goes away, or answers nonsense (issue 3).

A gateway's agent runs unattended for months: whatever the platform or the network does, it
keeps running, says in one clear log line what is wrong, backs off, and picks up where it left
off, with no PENDING operation lost. Against a real cra-cloud process, or a scripted HTTP
server where the cloud cannot be made to misbehave; all on 127.0.0.1.
"""
import json
import re
import time
import uuid

import pytest

from toolkit.middleboxes import CloudRelay
from toolkit.platform import (DROP, HANG, ScriptedPlatform, add_configuration, assert_tunnel_works, cloud_access,
                              json_answer, operation, text_answer)
from toolkit.programs import DEVICE, SEED, wait_for_status
from toolkit.servers import EchoServer
from toolkit.sockets import free_port, refused_port
from toolkit.waiting import assert_logged_in_order, log_lines, wait_for_log_count, wait_until

from cra.registration import PROTOCOLS
from cra.c8y import C8y, CloudError, CloudUnreachable
from cra.websocket_leg import WebSocketLegError, open_device_websocket



def test_an_agent_with_a_bearer_token_registers_and_carries_tunnels(cloud, make_agent, users):
    """Devices with certificates get a token instead of a password (docs/wire.md section 1): REST and
    the tunnel's upgrade must both carry it."""
    token = cloud.api(None).post("/tenant/oauth/token", data={
        "grant_type": "PASSWORD", "username": DEVICE[0], "password": DEVICE[1]}).json()["access_token"]
    agent = make_agent(cloud, options={"c8y": {"tenant": None, "user": None, "password": None, "token": token}})
    agent.wait_for_log("device gw-001 is managed object")
    assert_tunnel_works(cloud, users)
    assert token not in agent.log() and token[-16:] not in agent.log()


# The device leg's refusals, as the agent's WebSocket code reports them.


def test_a_wrong_device_password_is_named_when_the_tunnel_is_refused(cloud, users, tmp_path):
    """With a wrong password the REST calls fail too, but a tunnel refused with 401 must say
    "credentials", not blame the key, or the user hunts for a session problem."""
    user = users.waiting_key(cloud)
    with pytest.raises(WebSocketLegError) as refused:
        open_device_websocket(cloud_access(tmp_path, cloud.url, password="wrong-pw"), user.connection_key, 5)
    assert str(refused.value).startswith("cloud refused the tunnel (401): check the device credentials")

    ws = open_device_websocket(cloud_access(tmp_path, cloud.url), user.connection_key, 5)  # the key itself was good
    try:
        ws.send_binary(b"credentials fixed")
        assert user.ws.recv() == b"credentials fixed"
    finally:
        ws.close()


def test_an_unknown_connection_key_is_named_when_the_tunnel_is_refused(cloud, tmp_path):
    """A key is refused when the user's session ended before the agent came: the reason says so."""
    with pytest.raises(WebSocketLegError) as refused:
        open_device_websocket(cloud_access(tmp_path, cloud.url), str(uuid.uuid4()), 5)
    assert str(refused.value).startswith("cloud refused the tunnel (404): the connection key is unknown or used")


# The cloud going away.


def test_the_agent_outlives_the_cloud_going_away_and_coming_back(make_cloud, make_agent, users):
    """A platform upgrade or a network outage must not need someone at the gateway afterwards."""
    cloud = make_cloud(port=free_port())
    agent = make_agent(cloud)
    agent.wait_for_log(r"device gw-001 is managed object")
    cloud.stop()
    # Backing off: the delay logged doubles from poll_interval 0.2 s up to max_backoff 1 s.
    wait_for_log_count(agent, rf"cannot reach {re.escape(cloud.url)}: connection refused; retrying in 1 s", 2)
    assert agent.proc.poll() is None

    cloud.start()
    agent.wait_for_log(r"the cloud answers again")
    assert_tunnel_works(cloud, users)
    assert "Traceback" not in agent.log()


def test_an_operation_created_while_the_agent_is_cut_off_is_served_when_it_is_back(cloud, make_agent, users):
    """The user connects while the gateway's uplink is down: the operation waits on the platform,
    and the agent must serve it once the uplink is back, within the platform's 30 s."""
    device_id = cloud.device_id()
    with CloudRelay(cloud.url) as link, EchoServer() as echo:
        agent = make_agent(cloud, options={"c8y": {"url": link.url}})
        agent.wait_for_log(r"device gw-001 is managed object")
        config_id = add_configuration(cloud, device_id, "127.0.0.1", echo.port)
        link.cut()
        agent.wait_for_log(r"cannot reach .*: connection refused")

        user = users.connect(cloud, device_id, config_id)
        failures = len(log_lines(agent, r"cannot reach "))
        wait_for_log_count(agent, r"cannot reach ", failures + 2)
        assert operation(cloud, user.op_id)["status"] == "PENDING"  # the cut is real: the agent has not seen it

        link.restore()
        assert wait_for_status(cloud, user.op_id)["status"] == "SUCCESSFUL"
        assert user.echo(b"served after the outage") == b"served after the outage"


def test_rejected_credentials_are_logged_once_and_the_agent_recovers(make_cloud, make_agent):
    """A wrong password fails every poll; one line says so (not one per poll, filling the flash of
    a gateway), and the agent comes back by itself once the platform accepts the password."""
    cloud = make_cloud(port=free_port(), args=["-v"])
    agent = make_agent(cloud, options={"c8y": {"password": "new-dev-pw"}})
    agent.wait_for_log(r"credentials rejected by .*: check \[c8y\] tenant, user and password")
    rejected = r"GET /identity/externalIds/c8y_Serial/gw-001 401"
    wait_until(lambda: len(re.findall(rejected, cloud.log())) >= 4, "four refused attempts")
    assert len(log_lines(agent, r"credentials rejected")) == 1
    assert agent.proc.poll() is None

    cloud.stop()
    seed = json.loads(json.dumps(SEED))
    next(u for u in seed[0]["users"] if u["user"] == DEVICE[0].split("/")[1])["password"] = "new-dev-pw"
    cloud.seed_path.write_text(json.dumps(seed))
    cloud.start()
    agent.wait_for_log(r"device gw-001 is managed object")
    agent.wait_for_log(r"the cloud answers again")  # logged once the step that registered it has returned
    assert len(log_lines(agent, r"credentials rejected")) == 1
    assert "Traceback" not in agent.log()


# Answers that are not what the platform would send.

REGISTERED = {
    "/identity/externalIds/c8y_Serial/gw-001": json_answer(200, {
        "externalId": "gw-001", "type": "c8y_Serial", "managedObject": {"id": "4711"}}),
    "/inventory/managedObjects/4711": json_answer(200, {
        "id": "4711", "c8y_IsDevice": {}, "com_cumulocity_model_Agent": {},
        "c8y_SupportedOperations": ["c8y_RemoteAccessConnect"], "c8y_RemoteAccessSupportedProtocols": PROTOCOLS}),
    "/devicecontrol/operations": json_answer(200, {"operations": [], "statistics": {"pageSize": 100}}),
}
PLATFORM_ERROR = json_answer(500, {"error": "general/Internal Server Error", "message": "The server failed."})


class Misbehaving:
    """A platform on which the device is registered, but whose first answers on some paths are bad."""

    def __init__(self, bad):
        self.bad = {path: list(answers) for path, answers in bad.items()}
        self.good_polls = 0

    def __call__(self, method, path, query):
        route = f"{path}?status={query['status']}" if "status" in query else path
        if self.bad.get(route):
            return self.bad[route].pop(0)
        if route.endswith("status=PENDING"):
            self.good_polls += 1
        return REGISTERED.get(path, json_answer(404, {"error": "general/Not Found", "message": "no such path"}))


def test_server_errors_and_garbage_are_logged_and_outlived(make_agent):
    """A proxy's HTML error page, a truncated answer, a body nested 20,000 deep or a platform bug must
    cost one log line each and a wait that grows, never the agent."""
    script = Misbehaving({
        "/identity/externalIds/c8y_Serial/gw-001": [
            PLATFORM_ERROR, text_answer(200, "<html>login</html>"), json_answer(200, {"managedObject": {}})],
        "/devicecontrol/operations?status=PENDING": [
            text_answer(502, "<html>Bad Gateway</html>"), json_answer(200, []),
            json_answer(200, {"operations": "none"}), json_answer(200, {"operations": [1, 2]}),
            (503, "text/plain", b""), (200, "application/json", b"[" * 20000 + b"]" * 20000)],
    })
    with ScriptedPlatform(script) as platform:
        agent = make_agent(platform)
        wait_for_log_count(agent, r"the cloud answers again", 2)
        wait_until(lambda: script.good_polls >= 3, "three good polls after the garbage")
        assert agent.proc.poll() is None
    assert_logged_in_order(agent, [
        r"GET /identity/externalIds/c8y_Serial/gw-001 refused: The server failed\. \(500\); retrying in 0\.2 s$",
        r"GET /identity/externalIds/c8y_Serial/gw-001: the answer is not a JSON object \(HTTP 200, 18 bytes\); "
        r"retrying in 0\.4 s$",
        r"the answer has no managedObject\.id; retrying in 0\.8 s$",
        r"the cloud answers again",
        r"GET /devicecontrol/operations refused: Bad Gateway \(502\); retrying in 0\.2 s$",
        r"GET /devicecontrol/operations: the answer is not a JSON object \(HTTP 200, 2 bytes\); retrying in 0\.4 s$",
        r"the operation list has no list of operations in it; retrying in 0\.8 s$",
        r"the operation list has no list of operations in it; retrying in 1 s$",
        r"GET /devicecontrol/operations refused: Service Unavailable \(503\); retrying in 1 s$",
        r"GET /devicecontrol/operations: the answer is not a JSON object \(HTTP 200, 40000 bytes\); retrying in 1 s$",
        r"the cloud answers again",
    ])
    assert "Traceback" not in agent.log()


FORGETFUL = json_answer(200, [  # every message's reply at once: a session opens, and each connect is 402
    {"channel": "/meta/handshake", "successful": True, "clientId": "c1", "advice": {"reconnect": "retry"}},
    {"channel": "/meta/subscribe", "successful": True, "subscription": "/4711"},
    {"channel": "/meta/connect", "successful": False, "error": "402::Unknown client",
     "advice": {"reconnect": "handshake", "interval": 0}}])


@pytest.mark.parametrize("notifications, reason", [
    (PLATFORM_ERROR, r"POST /notification/operations refused: The server failed\. \(500\)"),
    (FORGETFUL, r"/meta/connect: 402::Unknown client"),
], ids=["500 every time", "402 after every subscription"])
def test_notifications_that_keep_failing_make_the_agent_poll_without_a_storm(make_agent, notifications, reason):
    """An endpoint that always fails, or a platform that forgets every session it opens (a load
    balancer without sticky sessions), costs five tries with growing waits, one warning, and then
    polling with a try at notifications each max_backoff or longer: never a loop without a wait."""
    script = Misbehaving({})
    with ScriptedPlatform(lambda method, path, query: notifications if path == "/notification/operations"
                          else script(method, path, query)) as platform:
        agent = make_agent(platform)
        line = agent.wait_for_log(r"operations: real-time notifications unavailable")
        assert re.search(reason, line), line
        wait_until(lambda: script.good_polls >= 5, "five polls after the fallback")
        time.sleep(2)  # the first retry of notifications, after max_backoff (1 s), fails again
        tries = sum(1 for _, path, _ in platform.requests if path == "/notification/operations")
    assert 5 <= tries <= 5 * 3 + 3 * 3, tries  # five sessions tried (3 requests each at most), then a retry a second or more
    assert len(log_lines(agent, r"real-time notifications unavailable")) == 1
    assert not log_lines(agent, r"work again")  # a session the platform forgets at once is no comeback
    assert agent.proc.poll() is None and "Traceback" not in agent.log()


def test_an_operation_without_an_id_is_skipped_once_and_the_agent_goes_on(make_agent):
    """A middlebox or a faulty integration lists an operation with no id: nothing can be set on it,
    so the agent says so once, however often it is listed, touches nothing, and keeps polling."""
    nameless = json_answer(200, {"operations": [
        {"status": "PENDING", "c8y_RemoteAccessConnect": {"hostname": "127.0.0.1", "port": 22, "connectionKey": "eb5e9d13-1caa-486b-bdda-130ca0d87df8"}},
        {"id": {"nested": 1}, "status": "PENDING", "c8y_RemoteAccessConnect": {}}]})
    script = Misbehaving({"/devicecontrol/operations?status=PENDING": [nameless] * 5})
    with ScriptedPlatform(script) as platform:
        agent = make_agent(platform, options={"agent": {"operations": "polling"}})
        wait_until(lambda: script.good_polls >= 3, "three polls after the nameless ones")
        assert [path for method, path, _ in platform.requests if method != "GET"] == []
    assert len(log_lines(agent, r"an operation without an id was skipped")) == 2  # one line for each of the two
    assert "eb5e9d13" not in agent.log()
    assert agent.proc.poll() is None and "Traceback" not in agent.log()


def find_device(c8y):
    return c8y.find_device("gw-001")


def poll(c8y):
    return c8y.connect_operations("10200", "PENDING")


@pytest.mark.parametrize("answer, call, error, status, sentence", [
    (PLATFORM_ERROR, find_device, CloudError, 500,
     r"^GET /identity/externalIds/c8y_Serial/gw-001 refused: The server failed\. \(500\)$"),
    (json_answer(401, {"error": "security/Unauthorized", "message": "Invalid credentials! : Bad credentials"}),
     poll, CloudError, 401, r"^GET /devicecontrol/operations refused: Invalid credentials! : Bad credentials \(401\)$"),
    (text_answer(503, "<html>maintenance</html>"), poll, CloudError, 503,
     r"^GET /devicecontrol/operations refused: Service Unavailable \(503\)$"),
    (text_answer(200, "<html>login</html>"), find_device, CloudUnreachable, None,
     r"^GET /identity/externalIds/c8y_Serial/gw-001: the answer is not a JSON object \(HTTP 200, 18 bytes\)$"),
    (json_answer(200, ["a", "list"]), poll, CloudUnreachable, None, r"the answer is not a JSON object \(HTTP 200, "),
    (json_answer(200, {"managedObject": {"id": True}}), find_device, CloudUnreachable, None,
     r"^the answer has no managedObject\.id$"),
    (json_answer(200, {"operations": [{"id": "1"}, "2"]}), poll, CloudUnreachable, None,
     r"^the operation list has no list of operations in it$"),
    (DROP, find_device, CloudUnreachable, None, r"^cannot reach http://127\.0\.0\.1:\d+: the server closed the connection without an answer$"),
    (HANG, poll, CloudUnreachable, None, r"^cannot reach http://127\.0\.0\.1:\d+: no answer in time$"),
    (text_answer(200, "[" * 20000 + "]" * 20000, "application/json"), find_device, CloudUnreachable, None,
     r"^GET /identity/externalIds/c8y_Serial/gw-001: the answer is not a JSON object \(HTTP 200, 40000 bytes\)$"),
    (text_answer(500, '{"message":' * 20000 + "1" + "}" * 20000, "application/json"), poll, CloudError, 500,
     r"^GET /devicecontrol/operations refused: Internal Server Error \(500\)$"),
], ids=["500 platform error", "401", "503 html", "200 html", "200 json list", "no managed object id",
        "operations not objects", "connection dropped", "no answer", "200 nested 20000 deep", "500 nested 20000 deep"])
def test_the_rest_client_turns_every_bad_answer_into_a_sentence(tmp_path, answer, call, error, status, sentence):
    """The agent logs these exceptions as they are: their text is what the operator reads, and a
    401 must keep its status, since the agent reports rejected credentials differently."""
    with ScriptedPlatform(lambda *request: answer) as platform:
        c8y = C8y(cloud_access(tmp_path, platform.url, request_timeout="0.5"))
        with pytest.raises(error) as raised:
            call(c8y)
    assert re.search(sentence, str(raised.value)), str(raised.value)
    assert getattr(raised.value, "status", None) == status


def test_the_rest_client_names_a_refused_connection(tmp_path):
    with refused_port() as port:
        with pytest.raises(CloudUnreachable, match=rf"^cannot reach http://127\.0\.0\.1:{port}: connection refused$"):
            find_device(C8y(cloud_access(tmp_path, f"http://127.0.0.1:{port}")))
