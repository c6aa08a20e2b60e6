"""Operations pushed to the agent the moment a user connects (issue 11): real-time notifications
over Bayeux long polling, against the real cra-cloud and the real agent.

The agents here poll every 300 s when they poll at all: a session served within the test's
bounded wait was served by a notification, or by the one listing after a subscription.
"""
import os
import re
import signal
import time

from toolkit.middleboxes import CloudRelay
from toolkit.platform import add_configuration, assert_tunnel_works
from toolkit.programs import DEVICE, wait_for_status
from toolkit.servers import EchoServer
from toolkit.sockets import free_port
from toolkit.waiting import log_lines, wait_until

LISTENING = r"operations: real-time notifications from "
UNAVAILABLE = r"operations: real-time notifications unavailable"
LISTING = re.compile(r"GET /devicecontrol/operations\?\S*status=PENDING")
QUIET = {"agent": {"poll_interval": "300", "max_backoff": "1"}}


def listening_agent(make_agent, cloud, options=QUIET, **kwargs):
    agent = make_agent(cloud, options=options, **kwargs)
    agent.wait_for_log(LISTENING)
    return agent


def handled_once(agent, op_ids):
    for op_id in op_ids:
        assert len(log_lines(agent, rf"tunnel {op_id} open:")) == 1, agent.log()


def test_a_session_is_served_by_notification_without_polling(make_cloud, make_agent, users):
    """The user's click reaches a quiet agent at once: it polls every 300 s, and it lists no
    operations after the two listings of its start, yet it serves the session."""
    cloud = make_cloud(args=["-v"])
    agent = listening_agent(make_agent, cloud)
    wait_until(lambda: len(LISTING.findall(cloud.log())) >= 2, "the listings at start and after subscribing")
    listed = len(LISTING.findall(cloud.log()))
    handled_once(agent, assert_tunnel_works(cloud, users))
    assert len(LISTING.findall(cloud.log())) == listed
    assert not log_lines(agent, UNAVAILABLE)
    assert "Traceback" not in agent.log()


def test_operations_created_between_two_connects_are_all_served_once(make_cloud, make_agent, users):
    """Five users at once: the first operation answers the held connect, the others are created
    before the agent's next connect arrives, so the cloud must keep them for it; a short hold makes
    connects come and go meanwhile. Each session is handled once, however it reached the agent."""
    cloud = make_cloud(args=["--notification-hold", "0.5"])
    agent = listening_agent(make_agent, cloud)
    handled_once(agent, assert_tunnel_works(cloud, users, count=5))
    time.sleep(1.5)  # three more connects, held and answered empty
    handled_once(agent, assert_tunnel_works(cloud, users, count=2))
    assert not log_lines(agent, UNAVAILABLE)


def test_operations_seen_both_pushed_and_listed_are_handled_once(make_cloud, make_agent, users):
    """The held connect is dropped and sessions are opened before the agent is back: the cloud keeps
    them for the agent's session, which it resumes with a connect answered at once that brings them,
    followed by a listing that has them too. Each is opened once, with one EXECUTING and one
    SUCCESSFUL, and no second EXECUTING is attempted."""
    cloud = make_cloud(args=["-v"])
    device_id = cloud.device_id()
    with CloudRelay(cloud.url) as link, EchoServer() as echo:
        config_id = add_configuration(cloud, device_id, "127.0.0.1", echo.port)
        agent = listening_agent(make_agent, cloud, options={"c8y": {"url": link.url}, **QUIET})
        link.cut()
        opened = [users.connect(cloud, device_id, config_id) for _ in range(3)]
        link.restore()
        for user in opened:
            assert wait_for_status(cloud, user.op_id)["status"] == "SUCCESSFUL"
    handled_once(agent, [user.op_id for user in opened])
    for user in opened:
        assert len(re.findall(rf"PUT /devicecontrol/operations/{user.op_id} ", cloud.log())) == 2
    assert not log_lines(agent, r"\(422\)")  # no second status change refused


def test_after_a_cloud_restart_the_agent_subscribes_again_and_loses_nothing(make_cloud, make_agent, users):
    """The platform restarts and forgets its clients: the agent's next connect is answered
    402::Unknown client, it handshakes and subscribes again, and a session opened before it had
    done so is served all the same."""
    cloud = make_cloud(port=free_port())
    agent = listening_agent(make_agent, cloud, options={"agent": {"poll_interval": "300", "max_backoff": "3"}})
    cloud.stop(signal.SIGKILL)  # no answer to the held connect: the new process is the one to say 402
    cloud.start()
    handled_once(agent, assert_tunnel_works(cloud, users))
    agent.wait_for_log(r"the platform no longer knows the notification session \(/meta/connect: 402::Unknown client\)")
    assert not log_lines(agent, UNAVAILABLE)
    assert "Traceback" not in agent.log()


def test_a_connect_dropped_mid_hold_is_made_again_and_nothing_is_lost(cloud, make_agent, users):
    """A relay on the way drops the held connect: the agent connects again at once, and a session
    opened right after is served."""
    with CloudRelay(cloud.url) as link:
        agent = listening_agent(make_agent, cloud, options={"c8y": {"url": link.url}, **QUIET})
        link.cut()
        link.restore()
        handled_once(agent, assert_tunnel_works(cloud, users))
        assert not log_lines(agent, UNAVAILABLE)


def test_a_connect_that_goes_silent_is_given_up_after_its_hold_and_nothing_is_lost(make_cloud, make_agent, users):
    """A NAT forgets the held connect without a word: nothing arrives, not even the hold's end.
    The agent gives up a little after the hold, connects again and lists what it may have missed,
    so a session opened during the silence is served then."""
    cloud = make_cloud(args=["--notification-hold", "1", "--operation-timeout", "60"])
    with CloudRelay(cloud.url) as link:
        # the agent's idle REST connection goes silent too, and is given up after request_timeout
        agent = listening_agent(make_agent, cloud, options={"c8y": {"url": link.url, "request_timeout": "5"}, **QUIET})
        time.sleep(0.5)  # the first connect, answered at once, and the second, now held
        link.stall()
        device_id = cloud.device_id()
        with EchoServer() as echo:
            user = users.connect(cloud, device_id, add_configuration(cloud, device_id, "127.0.0.1", echo.port))
            # the hold (1 s) and the margin (10 s) pass before the agent knows
            assert wait_for_status(cloud, user.op_id, timeout=45)["status"] == "SUCCESSFUL"
            assert user.echo(b"after the silence") == b"after the silence"
        assert not log_lines(agent, UNAVAILABLE)


def test_the_connections_to_the_cloud_have_tcp_keepalive(cloud, make_agent):
    """A dead link is found by the kernel's keepalive probes within 2 x [c8y] keepalive: the agent's
    sockets to the cloud, the held connect's among them, run the keepalive timer (/proc/net/tcp,
    timer 2), due within those seconds."""
    agent = listening_agent(make_agent, cloud, options={"c8y": {"keepalive": "7"}, **QUIET})
    time.sleep(1)
    port = int(cloud.url.rsplit(":", 1)[1])
    inodes = {os.readlink(f"/proc/{agent.proc.pid}/fd/{fd}") for fd in os.listdir(f"/proc/{agent.proc.pid}/fd")}
    timers = []
    for line in open("/proc/net/tcp").read().splitlines()[1:]:
        fields = line.split()
        remote, state, (timer, when), inode = fields[2], fields[3], fields[5].split(":"), fields[9]
        if int(remote.split(":")[1], 16) == port and state == "01" and f"socket:[{inode}]" in inodes:
            timers.append((int(timer, 16), int(when, 16)))
    assert len(timers) >= 2, "the agent has no REST and held connections to the cloud"
    assert all(timer == 2 and when <= 7 * 100 for timer, when in timers), timers  # in USER_HZ ticks


def test_polling_takes_over_when_the_endpoint_is_missing_and_hands_back(make_cloud, make_agent, users):
    """A tenant or a proxy without the endpoint (404): the agent says so once, polls every
    poll_interval, and tries notifications again with backoff until they work."""
    cloud = make_cloud(port=free_port(), args=["-v", "--without-notifications"])
    agent = make_agent(cloud, options={"agent": {"poll_interval": "0.2", "max_backoff": "1"}})
    line = agent.wait_for_log(UNAVAILABLE)
    assert "404" in line and "polling every 0.2 s and trying notifications again in 1 s" in line, line
    assert_tunnel_works(cloud, users)
    time.sleep(2.5)  # two more tries, refused
    assert len(log_lines(agent, UNAVAILABLE)) == 1

    cloud.args = ["-v"]
    cloud.restart()
    agent.wait_for_log(r"operations: real-time notifications work again; polling stopped", timeout=30)
    time.sleep(0.5)
    listed = len(LISTING.findall(cloud.log()))
    time.sleep(1)
    assert len(LISTING.findall(cloud.log())) == listed  # no more polling every 0.2 s
    handled_once(agent, assert_tunnel_works(cloud, users))


def test_operations_polling_never_asks_for_notifications(make_cloud, make_agent, users):
    """[agent] operations = polling keeps the agent of before: a listing every poll_interval."""
    cloud = make_cloud(args=["-v"])
    agent = make_agent(cloud, options={"agent": {"operations": "polling"}})
    agent.wait_for_log(r"operations: polling every 0.2 s")
    assert_tunnel_works(cloud, users)
    wait_until(lambda: len(LISTING.findall(cloud.log())) >= 5, "five listings")
    assert "/notification/operations" not in cloud.log()


def test_a_session_ended_by_the_platform_s_connection_limit_is_not_fought_over(cloud, make_agent, users):
    """The platform keeps 10 notification clients per user and channel and ends the oldest past
    that, advising it not to reconnect: the agent polls instead, saying why, rather than pushing
    another client out at once, and serves sessions meanwhile."""
    agent = listening_agent(make_agent, cloud, options={"agent": {"poll_interval": "0.2", "max_backoff": "30"}})
    session = cloud.api(DEVICE)
    for _ in range(10):
        client_id = bayeux(session, {"channel": "/meta/handshake", "version": "1.0",
                                     "supportedConnectionTypes": ["long-polling"]})["clientId"]
        assert bayeux(session, {"channel": "/meta/subscribe", "clientId": client_id,
                                "subscription": f"/{cloud.device_id()}"})["successful"] is True
    line = agent.wait_for_log(UNAVAILABLE)
    assert "advises not to reconnect" in line and "do other agents use these credentials?" in line, line
    handled_once(agent, assert_tunnel_works(cloud, users))
    assert len(log_lines(agent, LISTENING)) == 1


def bayeux(session, message):
    answer = session.post("/notification/operations", json=[message])
    assert answer.status_code == 200, answer.text
    return next(m for m in answer.json() if m["channel"] == message["channel"])


def test_a_reload_to_polling_ends_the_notification_session_and_serves_on(make_cloud, make_agent, users):
    """SIGHUP with operations = polling: the agent ends its notification session on the platform
    (its held connect is answered and its thread ends), polls, and handles each session once."""
    cloud = make_cloud(args=["-v"])
    agent = listening_agent(make_agent, cloud, options={"agent": {"poll_interval": "0.2", "max_backoff": "1"}})
    handled_once(agent, assert_tunnel_works(cloud, users))
    text = agent.config_path.read_text()
    agent.config_path.write_text(text.replace("[agent]\n", "[agent]\noperations = polling\n"))
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for_log(r"operations: polling every 0.2 s")
    wait_until(lambda: re.search(r"notification client \S+ of t100/device_gw-001: disconnect", cloud.log()),
               "the notification session ended on the cloud")
    handled_once(agent, assert_tunnel_works(cloud, users, count=2))
    assert not log_lines(agent, UNAVAILABLE) and "Traceback" not in agent.log()
