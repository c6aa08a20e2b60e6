"""SIGUSR2, "restart when idle" (issue 14): how a package upgrade run through the agent's own tunnel
finishes without cutting it. The agent keeps its tunnels and keeps taking operations until none is
open, then runs again as the same process from the program on disk. The real agent, from a copy
of the code the test can change, against a real cra-cloud.
"""
import re
import shutil
import signal
import time
from pathlib import Path

import pytest

from toolkit.platform import add_configuration, assert_tunnel_works
from toolkit.programs import AGENT_SCRIPT, receive_close
from toolkit.servers import EchoServer
from toolkit.waiting import log_lines

ASKED = r"restart asked for \(SIGUSR2\)"
RESTARTING = r"restarting: no tunnel is open"
STARTING = r"cra-agent (\S+) starting for device"


@pytest.fixture
def upgradable(tmp_path, make_agent, cloud):
    """An agent run from its own copy of the code (tmp_path/installed), registered and taking operations."""
    source = Path(AGENT_SCRIPT).parent
    installed = tmp_path / "installed"
    shutil.copytree(source / "cra", installed / "cra", ignore=shutil.ignore_patterns("__pycache__", "cloud"))
    shutil.copy(AGENT_SCRIPT, installed)
    agent = make_agent(cloud, script=installed / "cra_agent.py")
    agent.wait_for_log(r"device gw-001 is managed object")
    agent.installed = installed
    return agent


def upgrade(agent, version):
    """A new version lands on disk where the agent runs from, as a package manager puts it there."""
    init = agent.installed / "cra" / "__init__.py"
    init.write_text(re.sub(r'__version__ = "[^"]+"', f'__version__ = "{version}"', init.read_text()))


def versions_started(agent):
    return [re.search(STARTING, line).group(1) for line in log_lines(agent, STARTING)]


def comm(pid):
    return Path(f"/proc/{pid}/comm").read_text().strip()


def test_an_idle_agent_restarts_at_once_as_the_same_process_with_the_new_code(cloud, users, upgradable):
    agent = upgradable
    old_version = versions_started(agent)[0]
    upgrade(agent, "99.0.1")
    agent.proc.send_signal(signal.SIGUSR2)
    agent.wait_for_log(r"cra-agent 99\.0\.1 starting for device")
    assert versions_started(agent) == [old_version, "99.0.1"]
    assert len(log_lines(agent, RESTARTING)) == 1
    assert agent.proc.poll() is None, "the process that was signalled runs the new version"
    assert comm(agent.proc.pid) == "cra-agent", "init scripts find it by name after the exec too"
    agent.wait_for_log(r"device gw-001 is managed object")
    assert_tunnel_works(cloud, users)
    assert agent.stop() == 0


def test_a_busy_agent_keeps_its_tunnels_serves_new_ones_and_restarts_after_the_last(cloud, users, upgradable):
    agent = upgradable
    device_id = cloud.device_id()
    payload = bytes(range(256)) * 256
    with EchoServer() as echo:
        config_id = add_configuration(cloud, device_id, "127.0.0.1", echo.port)
        first = users.connect(cloud, device_id, config_id)
        assert first.echo(b"before") == b"before"

        upgrade(agent, "99.0.2")
        agent.proc.send_signal(signal.SIGUSR2)
        agent.wait_for_log(ASKED)
        assert first.echo(payload) == payload, "an open tunnel carries on"
        second = users.connect(cloud, device_id, config_id)  # an operation that comes meanwhile is served
        assert second.echo(payload) == payload
        first.close()
        agent.wait_for_log(rf"tunnel {first.op_id} closed")
        time.sleep(1)  # five looks for an idle moment, with the second tunnel open in each
        assert not log_lines(agent, RESTARTING), "restarted with a tunnel open"
        assert second.echo(payload) == payload
        second.close()
        agent.wait_for_log(RESTARTING)
    agent.wait_for_log(r"cra-agent 99\.0\.2 starting for device")
    assert len(versions_started(agent)) == 2 and agent.proc.poll() is None
    agent.wait_for_log(r"device gw-001 is managed object")
    assert_tunnel_works(cloud, users)


def test_a_stop_while_waiting_to_restart_stops_at_once(cloud, users, upgradable):
    agent = upgradable
    device_id = cloud.device_id()
    with EchoServer() as echo:
        user = users.connect(cloud, device_id, add_configuration(cloud, device_id, "127.0.0.1", echo.port))
        assert user.echo(b"open") == b"open"
        agent.proc.send_signal(signal.SIGUSR2)
        agent.wait_for_log(ASKED)
        started = time.monotonic()
        assert agent.stop() == 0
        assert time.monotonic() - started < 5
        assert receive_close(user.ws)[0] == 1001
    assert not log_lines(agent, RESTARTING)
    assert len(versions_started(agent)) == 1
