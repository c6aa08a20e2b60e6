"""[agent] allow end to end (issue 13): the real agent and the real cra-cloud, on loopback only.

A refused target is a loopback address or port the list leaves out, with a listener on it that must
see no connection: the check comes before any connect, so no packet reaches it. The operation ends
FAILED naming [agent] allow, the user's tool hears it, and the agent goes on serving allowed targets.
What the default allows of public addresses is checked in process (test_allow.py), never by sending.
"""
import contextlib
import socket

from toolkit.platform import add_configuration
from toolkit.programs import receive_close, wait_for_status
from toolkit.servers import EchoServer

NOT_ALLOWED = "is not allowed by [agent] allow; the gateway's administrator can add it there"


@contextlib.contextmanager
def watched_port(address="127.0.0.1", outside=None):
    """A listening port on `address` (outside the range `outside`, when given) that nothing may connect to.

    Yields its port and a function that says whether a connection has arrived, accepted or not."""
    listener = socket.create_server((address, 0))
    while outside and outside[0] <= listener.getsockname()[1] <= outside[1]:
        listener.close()
        listener = socket.create_server((address, 0))
    listener.setblocking(False)

    def reached():
        try:
            listener.accept()[0].close()
        except BlockingIOError:
            return False
        return True

    try:
        yield listener.getsockname()[1], reached
    finally:
        listener.close()


def refused(cloud, users, hostname, port):
    """The failure reason of a user's session to hostname:port, checked to be FAILED and told to the user."""
    device_id = cloud.device_id()
    user = users.connect(cloud, device_id, add_configuration(cloud, device_id, hostname, port))
    op = wait_for_status(cloud, user.op_id)
    assert op["status"] == "FAILED", op
    assert receive_close(user.ws) == (1011, op["failureReason"][:123])
    return op["failureReason"]


def served(cloud, users, hostname, port):
    device_id = cloud.device_id()
    user = users.connect(cloud, device_id, add_configuration(cloud, device_id, hostname, port))
    assert user.echo(b"through") == b"through"
    assert wait_for_status(cloud, user.op_id)["status"] == "SUCCESSFUL"


def test_a_target_outside_the_list_is_refused_before_any_packet_and_the_next_is_served(cloud, make_agent, users):
    """Another port of an allowed address and another loopback address: each FAILED with the reason,
    neither listener reached; then the one allowed target works in the same agent."""
    with EchoServer() as echo, watched_port() as (other_port, other_port_reached), \
            watched_port("127.0.0.2") as (other_host_port, other_host_reached):
        agent = make_agent(cloud, options={"agent": {"allow": f"127.0.0.1:{echo.port}"}})
        assert refused(cloud, users, "127.0.0.1", other_port) == f"target 127.0.0.1:{other_port} {NOT_ALLOWED}"
        assert refused(cloud, users, "127.0.0.2", other_host_port) == f"target 127.0.0.2:{other_host_port} {NOT_ALLOWED}"
        assert not other_port_reached() and not other_host_reached()
        served(cloud, users, "127.0.0.1", echo.port)
    assert agent.proc.poll() is None
    assert "Traceback" not in agent.log()
    agent.wait_for_log(rf"FAILED: target 127\.0\.0\.2:{other_host_port} is not allowed by \[agent\] allow")


def test_a_listed_name_is_allowed_and_its_address_is_not(cloud, make_agent, users):
    """`localhost` names the host, whatever it resolves to; the address it resolves to, named by an
    operation, is checked against the address entries, of which there are none."""
    with EchoServer() as echo:
        make_agent(cloud, options={"agent": {"allow": "LocalHost"}})
        served(cloud, users, "localhost", echo.port)
        assert refused(cloud, users, "127.0.0.1", echo.port) == f"target 127.0.0.1:{echo.port} {NOT_ALLOWED}"


def test_a_name_not_listed_is_checked_by_every_address_it_resolves_to(cloud, make_agent, users):
    """localhost resolves to 127.0.0.1 (and maybe ::1): allowed by 127.0.0.0/8 ::1, refused by 127.0.0.2,
    with the addresses outside the list named; the refused one's listener is not reached."""
    with EchoServer() as echo, watched_port() as (port, reached):
        first = make_agent(cloud, options={"agent": {"allow": "127.0.0.0/8, ::1"}}, name="loopback")
        served(cloud, users, "localhost", echo.port)
        assert first.stop() == 0  # one agent for the device at a time
        make_agent(cloud, options={"agent": {"allow": "127.0.0.2"}}, name="other")
        reason = refused(cloud, users, "localhost", port)
        assert reason.startswith(f"target localhost:{port} (it resolves to ") and "127.0.0.1" in reason, reason
        assert reason.endswith(f") {NOT_ALLOWED}"), reason
        assert not reached()


def test_a_port_range_allows_its_ports_and_no_other(cloud, make_agent, users):
    with EchoServer() as low, EchoServer() as high:
        ports = sorted((low.port, high.port))
        with watched_port(outside=ports) as (outside_port, reached):
            make_agent(cloud, options={"agent": {"allow": f"127.0.0.1:{ports[0]}-{ports[1]}"}})
            served(cloud, users, "127.0.0.1", low.port)
            served(cloud, users, "127.0.0.1", high.port)
            assert refused(cloud, users, "127.0.0.1", outside_port) == f"target 127.0.0.1:{outside_port} {NOT_ALLOWED}"
            assert not reached()


def test_any_allows_every_target(cloud, make_agent, users):
    with EchoServer() as echo, EchoServer("127.0.0.3") as other:
        make_agent(cloud, options={"agent": {"allow": "any"}})
        served(cloud, users, "127.0.0.1", echo.port)
        served(cloud, users, "127.0.0.3", other.port)


def test_a_serial_target_is_allowed_by_its_own_section(cloud, make_agent, users):
    """A [serial:NAME] target is no TCP connection: the list does not apply to it (loop:// echoes)."""
    with watched_port("127.0.0.3") as (port, reached):
        make_agent(cloud, options={"agent": {"allow": "127.0.0.2"},
                                   "serial:loop": {"target": f"127.0.0.3:{port}", "url": "loop://"}})
        served(cloud, users, "127.0.0.3", port)
        assert not reached()
