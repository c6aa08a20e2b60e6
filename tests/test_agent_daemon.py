"""How the agent runs as a service: where its log goes, --foreground, and SIGHUP (issue 6).

Started by an init script, the agent has no terminal: its log goes to syslog or to a file that
must not fill the gateway's flash. `service cra-agent reload` (SIGHUP) must apply a changed file,
and reopen the log after logrotate moved it, without dropping the sessions users have open; a
file broken by the edit must leave the agent as it was. The real agent and a real cra-cloud on
127.0.0.1, but for syslog, which is tried in-process against a socket the test binds.
"""
import logging
import os
import re
import signal
import socket
import subprocess
import sys
import time

import pytest

from conftest import programs
from toolkit.platform import add_configuration, assert_tunnel_works
from toolkit.programs import AGENT_SCRIPT, AgentProcess, wait_for_status
from toolkit.servers import EchoServer
from toolkit.waiting import log_lines, wait_until

from cra import logs
from cra.config import LogSettings


class Service(AgentProcess):
    """The agent as an init script starts it: no --foreground, standard output not a terminal
    (unless `stdout` is one); log_path is [log] destination, its stderr goes to stderr_path."""

    def __init__(self, workdir, cloud, options=None, stdout=subprocess.DEVNULL):
        options = dict(options or {})
        log_path = workdir / "log" / "agent.log"
        options["log"] = {"destination": str(log_path), **options.get("log", {})}
        super().__init__(workdir, cloud, options, name="service")
        self.log_path, self.stderr_path, self.stdout = log_path, workdir / "service.stderr", stdout

    def start(self):
        with open(self.stderr_path, "ab") as stderr:
            self.proc = subprocess.Popen([sys.executable, AGENT_SCRIPT, "-c", str(self.config_path)],
                                         stdout=self.stdout, stderr=stderr, env=self.env)
        return self


@pytest.fixture
def start_service(tmp_path):
    """start_service(cloud, options=..., stdout=...): a started Service, stopped after the test."""
    with programs(Service, tmp_path) as start:
        yield start



def reload_with(agent, old, new):
    """The administrator edits the agent's file, then runs `service cra-agent reload` (SIGHUP)."""
    text = agent.config_path.read_text()
    assert old in text
    agent.config_path.write_text(text.replace(old, new))
    agent.proc.send_signal(signal.SIGHUP)


# The log of a service


def text(path):
    """What a log file holds; "" while a rotation has it renamed away."""
    try:
        return path.read_text()
    except FileNotFoundError:
        return ""


def test_a_service_logs_to_its_file_and_rotates_it(cloud, start_service, users, tmp_path):
    """The log directory is made, the file is rotated at max_bytes and only `backups` old ones are
    kept, so the log never takes more than (backups + 1) * max_bytes; nothing goes to stderr."""
    service = start_service(cloud, options={"log": {"max_bytes": "300", "backups": "2"}})
    logged = [service.log_path.with_name(name) for name in ("agent.log.2", "agent.log.1", "agent.log")]
    wait_until(lambda: any("device gw-001 is managed object" in text(path) for path in logged), "the device in the log")
    device_id = cloud.device_id()
    with EchoServer() as echo:
        config_id = add_configuration(cloud, device_id, "127.0.0.1", echo.port)
        for _ in range(6):  # two lines each, of about 100 bytes
            user = users.connect(cloud, device_id, config_id)
            assert user.echo(b"ping") == b"ping"
            user.close()
            wait_until(lambda: any(f"tunnel {user.op_id} closed" in text(path) for path in logged),
                       f"tunnel {user.op_id} closing in the log")
    assert sorted(os.listdir(service.log_path.parent)) == ["agent.log", "agent.log.1", "agent.log.2"]
    assert all(path.stat().st_size <= 300 for path in logged)
    assert not any("starting for device" in path.read_text() for path in logged)  # rotated away by now
    assert service.proc.poll() is None
    assert service.stderr_path.read_text() == ""


def test_on_a_terminal_the_log_goes_to_stderr(cloud, start_service, tmp_path):
    """Someone starting the agent by hand at a console reads along, whatever [log] says."""
    console, terminal = os.openpty()
    try:
        service = start_service(cloud, stdout=terminal)
        os.close(terminal)
        wait_until(lambda: "device gw-001 is managed object" in service.stderr_path.read_text(), "the log on stderr")
        assert re.search(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d,\d{3} INFO device gw-001 is managed object \d+",
                         service.stderr_path.read_text(), re.M), service.stderr_path.read_text()
        assert not service.log_path.parent.exists()
        assert service.stop() == 0
    finally:
        os.close(console)


@pytest.fixture
def root_logger():
    """The root logger, given back to pytest with its own handlers after the test."""
    root = logging.getLogger()
    handlers, level = root.handlers[:], root.level
    yield root
    for handler in root.handlers[:]:
        root.removeHandler(handler)
        handler.close()
    for handler in handlers:
        root.addHandler(handler)
    root.setLevel(level)


def test_syslog_gets_the_lines_as_the_daemon_facility_with_name_and_pid(tmp_path, monkeypatch, root_logger):
    """`journalctl -t cra-agent` or /var/log/daemon.log: the lines must say who sent them."""
    with socket.socket(socket.AF_UNIX, socket.SOCK_DGRAM) as syslog:
        syslog.bind(str(tmp_path / "log"))
        syslog.settimeout(5)
        monkeypatch.setattr(logs, "SYSLOG_SOCKET", str(tmp_path / "log"))
        logs.setup(LogSettings("syslog", 1048576, 3), foreground=False, verbose=False)
        logging.getLogger("cra.agent").info("tunnel 7 open: 127.0.0.1:22 <-> cloud")
        datagram = syslog.recv(4096).decode()
    # <30>: facility daemon (3) * 8 + severity info (6)
    assert datagram.startswith(f"<30>cra-agent[{os.getpid()}]: "), datagram
    assert "tunnel 7 open: 127.0.0.1:22 <-> cloud" in datagram


def test_without_syslog_the_agent_says_so_and_logs_to_stderr(tmp_path, monkeypatch, root_logger, capsys):
    """A minimal image with no syslog daemon: the lines must not be lost without a word."""
    monkeypatch.setattr(logs, "SYSLOG_SOCKET", str(tmp_path / "no-syslog"))
    logs.setup(LogSettings("syslog", 1048576, 3), foreground=False, verbose=False)
    logging.getLogger("cra.agent").info("tunnel 7 open: 127.0.0.1:22 <-> cloud")
    stderr = capsys.readouterr().err
    assert re.search(rf"WARNING syslog is not available \({re.escape(str(tmp_path / 'no-syslog'))}: ", stderr), stderr
    assert re.search(r"INFO tunnel 7 open: 127.0.0.1:22 <-> cloud$", stderr, re.M), stderr


# SIGHUP


def test_sighup_reopens_a_log_file_that_was_moved_away(cloud, start_service):
    """logrotate renames the file and sends SIGHUP: the lines after it go to a new file."""
    service = start_service(cloud)
    service.wait_for_log(r"device gw-001 is managed object")
    moved = service.log_path.rename(service.log_path.with_name("agent.log.rotated"))
    service.proc.send_signal(signal.SIGHUP)
    service.wait_for_log(r"INFO configuration reloaded$")
    assert "configuration reloaded" not in moved.read_text()
    assert service.proc.poll() is None


def test_sighup_applies_a_changed_file_and_keeps_open_tunnels(cloud, make_agent, users):
    """A user's session survives the administrator lowering max_tunnels, which holds at once."""
    agent = make_agent(cloud)
    agent.wait_for_log(r"device gw-001 is managed object")
    device_id = cloud.device_id()
    with EchoServer() as echo:
        config_id = add_configuration(cloud, device_id, "127.0.0.1", echo.port)
        open_session = users.connect(cloud, device_id, config_id)
        assert open_session.echo(b"before") == b"before"

        reload_with(agent, "[agent]\n", "[agent]\nmax_tunnels = 1\n")
        agent.wait_for_log(r"configuration reloaded")
        payload = bytes(range(256)) * 256
        assert open_session.echo(payload) == payload
        second = users.connect(cloud, device_id, config_id)
        refused = wait_for_status(cloud, second.op_id)
        assert refused["status"] == "FAILED" and "too many tunnels" in refused["failureReason"], refused
        assert open_session.echo(b"after") == b"after"


def test_sighup_with_a_broken_file_leaves_the_agent_as_it_was(cloud, make_agent, users):
    """A typo in the edit must not stop the gateway's remote access: the log says what is wrong
    and that nothing changed, and sessions keep coming through."""
    agent = make_agent(cloud)
    agent.wait_for_log(r"device gw-001 is managed object")
    reload_with(agent, "poll_interval = 0.2", "poll_interval = fast")
    line = agent.wait_for_log(r"configuration not reloaded, the agent goes on as it was")
    assert f"{agent.config_path}: [agent] poll_interval: must be a positive number" in line, line
    assert_tunnel_works(cloud, users)
    assert agent.proc.poll() is None


def test_sighup_with_another_device_registers_it_and_keeps_the_old_tunnel(cloud, make_agent, users):
    """The gateway is given another identity: the agent signs in and registers as gw-002, and the
    session a user had open through gw-001 goes on."""
    agent = make_agent(cloud)
    agent.wait_for_log(r"device gw-001 is managed object")
    device_id = cloud.device_id()
    with EchoServer() as echo:
        old_session = users.connect(cloud, device_id, add_configuration(cloud, device_id, "127.0.0.1", echo.port))
        assert old_session.echo(b"as gw-001") == b"as gw-001"

        reload_with(agent, "user = device_gw-001\npassword = dev-pw\nexternal_id = gw-001\n",
                    "user = device_gw-002\npassword = dev2-pw\nexternal_id = gw-002\n")
        agent.wait_for_log(rf"device gw-002 is managed object {cloud.device_id('gw-002')}")
        assert old_session.echo(b"still open") == b"still open"
    assert_tunnel_works(cloud, users, "gw-002")


def test_sigterm_after_sighup_stops_the_agent_promptly(cloud, make_agent):
    agent = make_agent(cloud)
    agent.wait_for_log(r"device gw-001 is managed object")
    agent.proc.send_signal(signal.SIGHUP)
    agent.wait_for_log(r"configuration reloaded")
    started = time.monotonic()
    assert agent.stop() == 0
    assert time.monotonic() - started < 5
    assert len(log_lines(agent, r"configuration reloaded")) == 1
