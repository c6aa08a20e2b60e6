"""The agent end to end, operation by operation (issue 3).

A gateway's first start registers its device, a restart neither duplicates it nor leaves a
session hanging as EXECUTING; every operation ends FAILED with a reason a user can act on
when it cannot be served, the user's tool is told too, and no operation waits on another.
All of it against a real cra-cloud process and the real agent process, on 127.0.0.1 only.
"""
import re

import pytest

from toolkit.platform import add_configuration, create_operation, operation
from toolkit.programs import ADMIN, AgentProcess, Cloud, receive_close, wait_for_status
from toolkit.servers import EchoServer
from toolkit.sockets import refused_port, unanswered_port
from toolkit.waiting import log_lines, wait_for_log_count

PROTOCOLS = ["PASSTHROUGH", "SSH", "VNC", "TELNET"]
ADMIN_SEED = {"user": "admin", "password": "admin-pw", "roles": ["ROLE_REMOTE_ACCESS_ADMIN"]}
A_KEY = "eb5e9d13-1caa-486b-bdda-130ca0d87df8"


@pytest.fixture(scope="module")
def shared(tmp_path_factory):
    """One cloud and one agent for the many operation-level cases: each case is an operation of
    its own, and one agent living through all of them is part of what is tested."""
    workdir = tmp_path_factory.mktemp("shared")
    cloud = Cloud(workdir).start()
    agent = AgentProcess(workdir, cloud).start()
    yield cloud, agent
    agent.stop()
    cloud.stop()


def managed_object(cloud, mo_id):
    return cloud.api(ADMIN).get(f"/inventory/managedObjects/{mo_id}").json()


def restart(agent, serial, mo_id):
    """Stop the agent cleanly and start it again; the line in which it found its device."""
    pattern = rf"device {serial} is managed object {mo_id}\b"
    seen = len(log_lines(agent, pattern))
    assert agent.stop() == 0
    agent.start()
    return wait_for_log_count(agent, pattern, seen + 1)[-1]


def devices_with_serial(cloud, serial):
    """The managed objects that carry c8y_Serial `serial`, however many that is."""
    objects = cloud.api(ADMIN).get("/inventory/managedObjects", params={"pageSize": 2000}).json()["managedObjects"]
    found = []
    for mo in objects:
        ids = cloud.api(ADMIN).get(f"/identity/globalIds/{mo['id']}/externalIds").json()["externalIds"]
        found += [(mo["id"], i["type"], i["externalId"]) for i in ids if i["externalId"] == serial]
    return found


# Registration (docs/wire.md section 2)


@pytest.mark.parametrize("user", [
    {"user": "device_gw-new", "password": "new-pw", "device": "gw-new"},
    {"user": "gateway", "password": "new-pw"},
], ids=["device user without a device", "plain user"])
def test_a_new_device_registers_itself_and_a_restart_finds_it(make_cloud, make_agent, user):
    """The first start creates the device a remote access user can pick; the second must find it,
    or every reboot of the gateway would leave another device behind in the inventory."""
    cloud = make_cloud(seed=[{"tenant": "t100", "users": [ADMIN_SEED, user]}])
    agent = make_agent(cloud, options={"c8y": {"user": user["user"], "password": user["password"],
                                               "external_id": "gw-new"}})
    mo_id = re.search(r"managed object (\d+)", agent.wait_for_log(r"registered new device gw-new")).group(1)
    device = managed_object(cloud, mo_id)
    assert device["c8y_IsDevice"] == {} and device["com_cumulocity_model_Agent"] == {}
    assert device["c8y_SupportedOperations"] == ["c8y_RemoteAccessConnect"]
    assert device["c8y_RemoteAccessSupportedProtocols"] == PROTOCOLS
    assert devices_with_serial(cloud, "gw-new") == [(mo_id, "c8y_Serial", "gw-new")]

    assert "updated" not in restart(agent, "gw-new", mo_id)
    assert devices_with_serial(cloud, "gw-new") == [(mo_id, "c8y_Serial", "gw-new")]
    assert managed_object(cloud, mo_id)["c8y_SupportedOperations"] == ["c8y_RemoteAccessConnect"]
    assert "Traceback" not in agent.log()


def test_an_existing_device_keeps_the_operations_it_already_supports(cloud, make_agent):
    """Other software on the gateway declared its own operations; remote access joins them and
    must not take them away, on the first start or any later one."""
    device_id = cloud.device_id()
    cloud.api(ADMIN).put(f"/inventory/managedObjects/{device_id}",
                         json={"c8y_SupportedOperations": ["c8y_Restart", "c8y_Command"]}).raise_for_status()
    agent = make_agent(cloud)
    agent.wait_for_log(rf"device gw-001 is managed object {device_id}; updated .*c8y_SupportedOperations")
    merged = ["c8y_Restart", "c8y_Command", "c8y_RemoteAccessConnect"]
    device = managed_object(cloud, device_id)
    assert device["c8y_SupportedOperations"] == merged
    assert device["c8y_RemoteAccessSupportedProtocols"] == PROTOCOLS

    assert "updated" not in restart(agent, "gw-001", device_id)
    assert managed_object(cloud, device_id)["c8y_SupportedOperations"] == merged
    assert devices_with_serial(cloud, "gw-001") == [(device_id, "c8y_Serial", "gw-001")]


def test_a_session_left_executing_by_the_previous_run_is_failed(cloud, make_agent):
    """A tunnel dies with the agent; an operation that still says EXECUTING would tell the user
    the session is alive."""
    op_id = create_operation(cloud, cloud.device_id(), {"hostname": "127.0.0.1", "port": 22, "connectionKey": A_KEY})
    cloud.api(ADMIN).put(f"/devicecontrol/operations/{op_id}", json={"status": "EXECUTING"}).raise_for_status()
    make_agent(cloud)
    op = wait_for_status(cloud, op_id)
    assert (op["status"], op.get("failureReason")) == ("FAILED", "agent restarted; the session was lost")


# Malformed operations: each names what is wrong, and the agent goes on.

MISSING = object()
WHOLE_FRAGMENT = "c8y_RemoteAccessConnect"


def malformed(field, value):
    """A good fragment with one field changed (MISSING drops it); WHOLE_FRAGMENT replaces all of it."""
    if field == WHOLE_FRAGMENT:
        return value
    fragment = {"hostname": "127.0.0.1", "port": 22, "connectionKey": A_KEY}
    if value is MISSING:
        del fragment[field]
    else:
        fragment[field] = value
    return fragment


def shown(value):
    return repr(None if value is MISSING else value)


MALFORMED = {
    "fragment null": (WHOLE_FRAGMENT, None, [WHOLE_FRAGMENT]),
    "fragment a string": (WHOLE_FRAGMENT, "connect me", [WHOLE_FRAGMENT]),
    "fragment a list": (WHOLE_FRAGMENT, [{"hostname": "127.0.0.1", "port": 22}], [WHOLE_FRAGMENT]),
    **{f"hostname {name}": ("hostname", value, ["hostname", shown(value)])
       for name, value in [("missing", MISSING), ("empty", ""), ("a number", 10), ("a list", ["127.0.0.1"]),
                           ("with a NUL byte", "127.0.0.1\x00x"), ("with a control character", "127.0.0.1\x1b"),
                           ("with a DEL", "gateway\x7f")]},
    **{f"port {name}": ("port", value, ["port", shown(value)])
       for name, value in [("0", 0), ("70000", 70000), ("abc", "abc"), ("22.5", 22.5), ("true", True),
                           ("missing", MISSING), ("negative string", "-22")]},
    **{f"connectionKey {name}": ("connectionKey", value, ["connectionKey"])
       for name, value in [("missing", MISSING), ("too short", "eb5e9d1"), ("with a slash", "eb5e9d13/../../client"),
                           ("with a question mark", "eb5e9d13-1caa?x=1"), ("with spaces", "eb5e9d13 1caa 486b"),
                           ("a number", 12345678)]},
}


@pytest.mark.parametrize("field, value, named", MALFORMED.values(), ids=MALFORMED)
def test_a_malformed_operation_fails_with_a_reason_naming_the_problem(shared, field, value, named):
    """Whoever created the operation reads failureReason to fix it: it must say which field is
    wrong and how, and never repeat a connection key, which is a secret."""
    cloud, agent = shared
    op = wait_for_status(cloud, create_operation(cloud, cloud.device_id(), malformed(field, value)))
    reason = op.get("failureReason", "")
    assert op["status"] == "FAILED"
    assert reason.startswith("invalid operation")
    for words in named:
        assert words in reason
    keys = [A_KEY] + ([value] if field == "connectionKey" and isinstance(value, str) else [])
    assert not [key for key in keys if key in reason], "a connection key is a secret"
    assert agent.proc.poll() is None


@pytest.mark.parametrize("hostname, listen_on, port_type", [
    ("127.0.0.1", "127.0.0.1", str),
    ("::1", "::1", int),
    ("localhost", "127.0.0.1", int),
], ids=["port as a string", "IPv6 address", "host name"])
def test_a_target_by_address_or_name_and_a_port_as_number_or_string(shared, users, hostname, listen_on, port_type):
    """One table of the platform's documentation gives port as a string: "22" must work like 22.
    Targets are IPv4 or IPv6 addresses or names (localhost: resolved from /etc/hosts, no DNS query)."""
    cloud, _ = shared
    user = users.waiting_key(cloud)
    with EchoServer(listen_on) as echo:
        op_id = create_operation(cloud, cloud.device_id(), {
            "hostname": hostname, "port": port_type(echo.port), "connectionKey": user.connection_key})
        assert wait_for_status(cloud, op_id)["status"] == "SUCCESSFUL"
        assert user.echo(b"reached") == b"reached"


def test_the_agent_serves_a_good_operation_after_malformed_ones(shared, users):
    """A malformed operation is one user's problem: it must not stop the agent serving the next."""
    cloud, agent = shared
    device_id = cloud.device_id()
    bad = create_operation(cloud, device_id, malformed("port", True))
    assert wait_for_status(cloud, bad)["status"] == "FAILED"
    with EchoServer() as echo:
        user = users.connect(cloud, device_id, add_configuration(cloud, device_id, "127.0.0.1", echo.port))
        assert user.echo(b"still here") == b"still here"
        assert wait_for_status(cloud, user.op_id)["status"] == "SUCCESSFUL"
    assert agent.proc.poll() is None
    assert "Traceback" not in agent.log()


# Targets that cannot be reached, or are not host names at all: the operation says why, and the
# user's tool is closed at once. The two names are refused by the agent before any lookup (a label
# over 63 characters; a backslash, which glibc would try to read as an escape). Only 127.0.0.1 is
# ever contacted.


@pytest.mark.parametrize("hostname, why", [
    ("127.0.0.1", "cannot connect to 127.0.0.1:{port}: connection refused"),
    ("x" * 64 + ".example", "invalid operation: hostname must be a host name or address, not 'x"),
    ("a\\999.example", "invalid operation: hostname must be a host name or address, not 'a"),
], ids=["port refused", "label longer than 63", "not a host name"])
def test_an_unreachable_target_fails_the_operation_and_closes_the_user(cloud, make_agent, users, hostname, why):
    """The user waiting in their SSH or VNC client should hear at once that the target is not
    there, not after the platform's 30 s timeout; the operation keeps the reason for later."""
    agent = make_agent(cloud)
    device_id = cloud.device_id()
    with refused_port() as port:
        user = users.connect(cloud, device_id, add_configuration(cloud, device_id, hostname, port))
        op = wait_for_status(cloud, user.op_id)
        assert op["status"] == "FAILED" and op.get("failureReason", "").startswith(why.format(port=port)), op
        assert receive_close(user.ws) == (1011, op["failureReason"][:123])
    assert "Traceback" not in agent.log()


def test_the_tunnel_cap_refuses_one_more_until_a_tunnel_closes(cloud, make_agent, users):
    """max_tunnels protects a small gateway; the refused user must learn why, and the cap must
    free up again when a tunnel ends."""
    agent = make_agent(cloud, options={"agent": {"max_tunnels": "2"}})
    device_id = cloud.device_id()
    with EchoServer() as echo:
        config_id = add_configuration(cloud, device_id, "127.0.0.1", echo.port)
        first, second = [users.connect(cloud, device_id, config_id) for _ in range(2)]
        for user in (first, second):
            assert user.echo(b"up") == b"up"
            assert wait_for_status(cloud, user.op_id)["status"] == "SUCCESSFUL"

        third = users.connect(cloud, device_id, config_id)
        op = wait_for_status(cloud, third.op_id)
        assert (op["status"], op.get("failureReason")) == (
            "FAILED", "too many tunnels: all 2 are in use ([agent] max_tunnels)")
        assert receive_close(third.ws) == (1011, op["failureReason"])

        first.close()
        agent.wait_for_log(rf"tunnel {first.op_id} closed")
        fourth = users.connect(cloud, device_id, config_id)
        assert fourth.echo(b"room again") == b"room again"
        assert wait_for_status(cloud, fourth.op_id)["status"] == "SUCCESSFUL"
        assert second.echo(b"second still up") == b"second still up"


def test_a_connect_that_hangs_does_not_hold_up_another_operation(cloud, make_agent, users):
    """A target that never answers costs its own operation connect_timeout seconds, and no other
    user waits for it."""
    make_agent(cloud, options={"agent": {"connect_timeout": "5"}})
    device_id = cloud.device_id()
    with unanswered_port() as slow_port, EchoServer() as echo:
        slow = users.connect(cloud, device_id, add_configuration(cloud, device_id, "127.0.0.1", slow_port))
        wait_for_status(cloud, slow.op_id, statuses=("EXECUTING",), timeout=5)

        quick = users.connect(cloud, device_id, add_configuration(cloud, device_id, "127.0.0.1", echo.port))
        assert quick.echo(b"not held up") == b"not held up"
        assert wait_for_status(cloud, quick.op_id)["status"] == "SUCCESSFUL"
        assert operation(cloud, slow.op_id)["status"] == "EXECUTING"

        op = wait_for_status(cloud, slow.op_id, timeout=15)
        assert (op["status"], op.get("failureReason")) == (
            "FAILED", f"cannot connect to 127.0.0.1:{slow_port}: no answer within 5 s")
        assert receive_close(slow.ws)[0] == 1011


def test_in_a_tenant_without_remote_access_the_failure_names_the_subscription(make_cloud, make_agent):
    """A tenant not subscribed to Cloud Remote Access answers the device's WebSocket with 404 as well: the
    operation's failure reason names that fix from the platform's troubleshooting table beside the usual
    cause (a session that ended), and the agent goes on."""
    cloud = make_cloud(args=["--unsubscribed-tenant", "t100"])
    agent = make_agent(cloud)
    agent.wait_for_log(r"device gw-001 is managed object")
    with EchoServer() as echo:
        op_id = create_operation(cloud, cloud.device_id(), {
            "hostname": "127.0.0.1", "port": echo.port, "connectionKey": "3f6c1a52-8d1e-4a57-9a0b-6f2d8e1c4b7a"})
        reason = wait_for_status(cloud, op_id)["failureReason"]
    assert reason.startswith("cloud refused the tunnel (404): the connection key is unknown or used"), reason
    assert "or the tenant is not subscribed to Cloud Remote Access: subscribe the cloud-remote-access microservice" \
        in reason, reason
    assert agent.proc.poll() is None
