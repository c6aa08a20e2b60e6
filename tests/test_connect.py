"""cra-connect end to end (docs/wire.md sections 4-5): the user's local proxy run as a real process, the
way a user runs it, against a real cra-cloud, with the real agent for gw-001 and an EchoServer
behind it on 127.0.0.1.

What a user meets is checked as a user sees it: the exit code and the line on stderr for every
refusal, the line printed when listening, the bytes that come back, and what the agent logs.
"""
import os
import re
import select
import signal
import socket
import subprocess
import sys
import time
from typing import Callable, NamedTuple, Optional

import pytest
import requests

from toolkit.platform import add_configuration
from toolkit.programs import ADMIN, VIEWER, wait_for_status
from toolkit.servers import EchoServer
from toolkit.sockets import LOCALHOST, recv_exactly
from toolkit.waiting import in_parallel, join_all, start_thread, wait_for_log_count

CRA_CONNECT = os.path.join(os.path.dirname(sys.executable), "cra-connect")
EXIT_OK, EXIT_ERROR, EXIT_USAGE, EXIT_CREDENTIALS, EXIT_ROLE = 0, 1, 2, 3, 4
EXIT_NO_DEVICE, EXIT_NO_CONFIGURATION, EXIT_DEVICE_ABSENT = 5, 6, 7
RUN_TIMEOUT = 30  # a refusal is a few REST calls
EXIT_TIMEOUT = 15  # cra-connect gives its tunnels 3 s once told to stop
IO_TIMEOUT = 20
KiB = 1024
LISTENING = re.compile(r"listening on (?P<host>\S+):(?P<port>\d+) for device (?P<device>\S+), "
                       r"configuration (?P<config>\S+) \((?P<target>[^)]*)\)")


# How a user gives cra-connect the tenant and credentials.

def password_environment(cloud, auth=ADMIN):
    tenant, user = auth[0].split("/")
    return {"C8Y_HOST": cloud.url, "C8Y_TENANT": tenant, "C8Y_USER": user, "C8Y_PASSWORD": auth[1]}


def oauth_token(cloud, auth=ADMIN):
    """A token from the tenant's OAI-Secure login, as a user's browser or tool gets one."""
    answer = requests.post(cloud.url + "/tenant/oauth/token", data={"grant_type": "PASSWORD", "username": auth[0],
                                                                    "password": auth[1]}, timeout=RUN_TIMEOUT)
    assert answer.status_code == 200, answer.text
    return answer.json()["access_token"]


def credentials(cloud, style):
    """(flags, environment) that give ADMIN's credentials in one of the ways cra-connect takes them."""
    tenant, user = ADMIN[0].split("/")
    if style == "environment":
        return [], password_environment(cloud)
    if style == "flags":
        return ["--url", cloud.url, "--tenant", tenant, "--user", user, "--password", ADMIN[1]], {}
    if style == "token flag":
        return ["--url", cloud.url, "--token", oauth_token(cloud)], {}
    if style == "token environment":
        return [], {"C8Y_HOST": cloud.url, "C8Y_TOKEN": oauth_token(cloud)}
    raise ValueError(style)


def environment(given):
    """This process's environment without any C8Y_* of the developer's own shell, and `given`."""
    return {**{k: v for k, v in os.environ.items() if not k.startswith("C8Y_")}, **given}


def run_connect(args, env):
    """cra-connect to its end, with no terminal to ask a password on (stdin not a tty, a session of its own)."""
    return subprocess.run([CRA_CONNECT, *args], env=environment(env), stdin=subprocess.DEVNULL, capture_output=True,
                          text=True, timeout=RUN_TIMEOUT, start_new_session=True)


# Reading a pipe without ever waiting unbounded.

def read_pipe(stream, enough, timeout=IO_TIMEOUT):
    """Bytes from a child's pipe until enough(bytes so far) or the pipe ends; AssertionError past `timeout`."""
    fd, data = stream.fileno(), bytearray()
    deadline = time.monotonic() + timeout
    while not enough(data):
        left = deadline - time.monotonic()
        assert left > 0, f"after {timeout} s the pipe gave {len(data)} bytes: {bytes(data[:200])!r}"
        if select.select([fd], [], [], left)[0]:
            chunk = os.read(fd, 64 * KiB)
            if not chunk:
                break
            data += chunk
    return bytes(data)


class ConnectProcess:
    """One running cra-connect; stderr kept in a file, stdout a pipe read with bounded waits."""

    def __init__(self, args, env, log_path, stdin):
        self.log_path = log_path
        with open(log_path, "wb") as log:
            self.proc = subprocess.Popen([CRA_CONNECT, *args], env=environment(env), stdin=stdin,
                                         stdout=subprocess.PIPE, stderr=log, start_new_session=True)

    @property
    def pid(self):
        return self.proc.pid

    def stderr(self):
        return self.log_path.read_text(errors="replace")

    def listening(self):
        """The match of the line --port prints once it listens."""
        line = read_pipe(self.proc.stdout, lambda data: b"\n" in data).decode(errors="replace")
        match = LISTENING.search(line)
        assert match, f"no listening line on stdout: {line!r}\nstderr:\n{self.stderr()}"
        return match

    def wait(self, timeout=EXIT_TIMEOUT):
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise AssertionError(f"cra-connect still runs after {timeout} s:\n{self.stderr()}") from None

    def stop(self, signum=signal.SIGTERM):
        """The exit code after `signum`."""
        self.proc.send_signal(signum)
        return self.wait()

    def close(self):
        if self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(EXIT_TIMEOUT)
        for pipe in (self.proc.stdin, self.proc.stdout):
            if pipe:
                pipe.close()


@pytest.fixture
def start_connect(tmp_path):
    """start_connect(args, env, stdin=...) -> a ConnectProcess; killed after the test if still running."""
    started = []

    def start(args, env, stdin=subprocess.DEVNULL):
        started.append(ConnectProcess(args, env, tmp_path / f"connect-{len(started)}.log", stdin))
        return started[-1]

    yield start
    for process in started:
        process.close()


class Target(NamedTuple):
    device_id: str
    config_id: str
    name: str


@pytest.fixture
def echo():
    with EchoServer() as server:
        yield server


@pytest.fixture
def agent(cloud, make_agent):
    """The real agent for gw-001, registered and polling."""
    process = make_agent(cloud)
    process.wait_for_log(r"device gw-001 is managed object")
    return process


@pytest.fixture
def target(cloud, echo):
    """gw-001's configuration for the echo server, as an administrator creates it."""
    device_id = cloud.device_id()
    config_id = str(add_configuration(cloud, device_id, LOCALHOST, echo.port))
    return Target(device_id, config_id, config_name(cloud, device_id, config_id))


def config_name(cloud, device_id, config_id):
    return cloud.api(ADMIN).get(f"/service/remoteaccess/devices/{device_id}/configurations/{config_id}").json()["name"]


def echo_through(port, payload):
    """What comes back over a new local connection to `port` for `payload`, sent while reading."""
    with socket.create_connection((LOCALHOST, port), timeout=IO_TIMEOUT) as sock:
        sender = start_thread(sock.sendall, payload, name=f"send-{len(payload)}")
        received = recv_exactly(sock, len(payload))
        join_all([sender])
    return received


def listening_addresses(port):
    """The local addresses of every listening TCP socket on `port` (from /proc/net/tcp and tcp6)."""
    addresses = set()
    for table in ("/proc/net/tcp", "/proc/net/tcp6"):
        with open(table) as rows:
            for row in list(rows)[1:]:
                local, state = row.split()[1], row.split()[3]
                address, port_hex = local.split(":")
                if state == "0A" and int(port_hex, 16) == port:
                    addresses.add(socket.inet_ntoa(bytes.fromhex(address)[::-1]) if len(address) == 8 else address)
    return addresses


# Refusals: every one has its exit code and a line that says what to do.

class Refusal(NamedTuple):
    args: list
    credentials: Callable  # cloud -> environment (flags, where needed, are in args)
    code: int
    message: str  # a regular expression, formatted with the seeded configurations' ids {ssh} and {vnc}
    prepare: Optional[Callable] = None  # cloud -> None, run before cra-connect


def admin(cloud):
    return password_environment(cloud)


def without(*names):
    return lambda cloud: {k: v for k, v in password_environment(cloud).items() if k not in names}


def second_passthrough(cloud):
    add_configuration(cloud, cloud.device_id(), LOCALHOST, 2222)


def ssh_configuration(cloud):
    add_configuration(cloud, cloud.device_id(), LOCALHOST, 22, name="shell", protocol="SSH", credentialsType="USER_PASS",
                      credentials={"username": "pi", "password": "pi-pw"})


REFUSALS = {
    "device-unknown-external-id": Refusal(
        ["--device", "gw-404", "--config", "ssh", "--stdio"], admin, EXIT_NO_DEVICE, r"device gw-404 not found"),
    "device-unknown-id": Refusal(
        ["--device", "987654", "--config", "ssh", "--stdio"], admin, EXIT_NO_DEVICE, r"device 987654 not found"),
    "configuration-unknown": Refusal(
        ["--device", "gw-001", "--config", "telnet", "--stdio"], admin, EXIT_NO_CONFIGURATION,
        r"configuration 'telnet' not found on device gw-001; it has: ssh \({ssh}\), vnc \({vnc}\)"),
    "no-passthrough-configuration": Refusal(
        ["--device", "gw-002", "--stdio"], admin, EXIT_NO_CONFIGURATION,
        r"device gw-002 has 0 PASSTHROUGH configurations; choose one with --config: none"),
    "two-passthrough-configurations": Refusal(
        ["--device", "gw-001", "--stdio"], admin, EXIT_NO_CONFIGURATION,
        r"device gw-001 has 2 PASSTHROUGH configurations; choose one with --config: ssh \({ssh}\), vnc \({vnc}\), "
        r"target-\w+ \(\d+\)", second_passthrough),
    "ssh-configuration": Refusal(
        ["--device", "gw-001", "--config", "shell", "--stdio"], admin, EXIT_NO_CONFIGURATION,
        r"configuration 'shell' \(\d+\) on device gw-001 cannot be used here: its protocol is SSH, and for SSH "
        r"configurations the platform runs SSH itself \(the web UI's terminal\), so a local proxy gets no SSH to carry; "
        r"create a PASSTHROUGH configuration for the same host and port, and connect to that", ssh_configuration),
    "wrong-password": Refusal(
        ["--device", "gw-001", "--config", "ssh", "--stdio"],
        lambda cloud: {**password_environment(cloud), "C8Y_PASSWORD": "not-the-password"},
        EXIT_CREDENTIALS, r"credentials rejected"),
    "bad-token": Refusal(
        ["--device", "gw-001", "--config", "ssh", "--stdio", "--token", "not.a.token"],
        lambda cloud: {"C8Y_HOST": cloud.url}, EXIT_CREDENTIALS, r"credentials rejected"),
    "missing-role": Refusal(
        ["--device", "gw-001", "--config", "ssh", "--stdio"], lambda cloud: password_environment(cloud, VIEWER),
        EXIT_ROLE, r"access denied \(403\): the user needs the role ROLE_REMOTE_ACCESS_ADMIN: in Administration > "
                   r"Accounts > Users, give the user a global role with Remote access"),
    "no-url": Refusal(
        ["--device", "gw-001", "--config", "ssh", "--stdio"], without("C8Y_HOST"), EXIT_USAGE,
        r"give the tenant's URL with --url or C8Y_HOST"),
    "no-user": Refusal(
        ["--device", "gw-001", "--config", "ssh", "--stdio"], without("C8Y_USER"), EXIT_USAGE,
        r"give --user \(or C8Y_USER\), or a --token"),
    "https-to-a-plain-http-cloud": Refusal(
        ["--device", "gw-001", "--config", "ssh", "--stdio"],
        lambda cloud: {**password_environment(cloud), "C8Y_HOST": cloud.url.replace("http://", "https://")},
        EXIT_ERROR, r"cannot reach https://127\.0\.0\.1:\d+: TLS failed: the server does not speak TLS "
                    r"\(is its URL http:// rather than https://\?\)"),
    "host-without-scheme-is-https": Refusal(
        ["--device", "gw-001", "--config", "ssh", "--stdio"],
        lambda cloud: {**password_environment(cloud), "C8Y_HOST": cloud.url[len("http://"):]},
        EXIT_ERROR, r"cannot reach https://127\.0\.0\.1:\d+: TLS failed: the server does not speak TLS"),
    "no-such-ca-file": Refusal(
        ["--device", "gw-001", "--config", "ssh", "--stdio", "--ca-file", "/nonexistent/ca.pem"], admin, EXIT_USAGE,
        r"no such CA file: /nonexistent/ca\.pem"),
    "no-password-no-terminal": Refusal(
        ["--device", "gw-001", "--config", "ssh", "--stdio"], without("C8Y_PASSWORD"), EXIT_USAGE,
        r"no password: give C8Y_PASSWORD or --password \(there is no terminal to ask on\)"),
    "port-out-of-range": Refusal(
        ["--device", "gw-001", "--config", "ssh", "--port", "70000"], admin, EXIT_USAGE, r"--port"),
    "port-and-stdio": Refusal(
        ["--device", "gw-001", "--config", "ssh", "--stdio", "--port", "0"], admin, EXIT_USAGE,
        r"argument --port: not allowed with argument --stdio"),
}


@pytest.mark.parametrize("case", REFUSALS.values(), ids=REFUSALS.keys())
def test_refusal_exit_code_and_message(cloud, case):
    """Each thing a user can get wrong ends cra-connect at once, with its own exit code (scripts branch on
    it) and a line on stderr that names the problem and what to give instead; nothing on stdout, where
    ssh would read it as the session."""
    if case.prepare:
        case.prepare(cloud)
    device_id = cloud.device_id()
    ids = {"ssh": cloud.config_id(device_id, "ssh"), "vnc": cloud.config_id(device_id, "vnc")}
    result = run_connect(case.args, case.credentials(cloud))
    assert (result.returncode, result.stdout) == (case.code, ""), result.stderr
    assert re.search(case.message.format(**ids), result.stderr), result.stderr
    assert "Traceback" not in result.stderr


def test_device_that_never_connects_exits_7(cloud, start_connect):
    """With no agent on gw-001, the cloud gives up after remoteaccess.operation.timeout (1 s here, a
    tenant option) and closes the session with 1011; cra-connect tells the user the device did not
    connect, with exit code 7, rather than ending as if the session had been carried. Standard input
    stays open meanwhile, so it is the cloud and not the end of input that ends the session."""
    answer = cloud.api(ADMIN).post("/tenant/options", json={
        "category": "remoteaccess", "key": "remoteaccess.operation.timeout", "value": "1"})
    assert answer.status_code == 201, answer.text
    connect = start_connect(["--device", "gw-001", "--config", "ssh", "--stdio"], password_environment(cloud),
                            stdin=subprocess.PIPE)
    assert connect.wait() == EXIT_DEVICE_ABSENT, connect.stderr()
    assert re.search(r"the device did not connect", connect.stderr()), connect.stderr()
    assert read_pipe(connect.proc.stdout, lambda data: False) == b""


# Sessions through the agent.

@pytest.mark.parametrize("style, device_as, config_as", [
    ("environment", "external id", "name"),
    ("flags", "managed object id", "id"),
    ("token flag", "managed object id", "name"),
    ("token environment", "external id", "id"),
], ids=["password-environment", "password-flags", "token-flag", "token-environment"])
def test_stdio_session_echoes_through_the_agent(cloud, agent, echo, target, start_connect, style, device_as, config_as):
    """As ssh's ProxyCommand uses it: bytes written to cra-connect's stdin reach the EchoServer behind
    the agent, what the server sends comes out on stdout, and closing stdin ends the session with exit 0.
    Each way of giving credentials (password or token, flags or environment) and of naming the device
    (managed object id or c8y_Serial) and the configuration (name or id) reaches the same target."""
    flags, env = credentials(cloud, style)
    device = {"external id": "gw-001", "managed object id": target.device_id}[device_as]
    config = {"name": target.name, "id": target.config_id}[config_as]
    connect = start_connect(["--device", device, "--config", config, "--stdio", *flags], env, stdin=subprocess.PIPE)
    payload = os.urandom(200 * KiB)

    def feed():
        connect.proc.stdin.write(payload)
        connect.proc.stdin.flush()

    writer = start_thread(feed, name="stdin")
    echoed = read_pipe(connect.proc.stdout, lambda data: len(data) >= len(payload))
    join_all([writer])
    assert echoed == payload, f"{len(echoed)} of {len(payload)} bytes came back intact:\n{connect.stderr()}"
    connect.proc.stdin.close()
    assert connect.wait() == EXIT_OK, connect.stderr()
    agent.wait_for_log(rf"tunnel \d+ closed: 127\.0\.0\.1:{echo.port},")


def test_password_from_environment_stays_off_the_process_list(cloud, start_connect):
    """Any user on the machine can read a process's command line (ps, /proc/<pid>/cmdline); a password
    given in C8Y_PASSWORD must not be copied there while cra-connect runs."""
    connect = start_connect(["--device", "gw-001", "--config", "ssh", "--port", "0"], password_environment(cloud))
    connect.listening()  # signed in: it has read the configurations with that password
    with open(f"/proc/{connect.pid}/cmdline", "rb") as cmdline:
        arguments = cmdline.read().split(b"\0")
    assert b"--port" in arguments, arguments
    assert not any(ADMIN[1].encode() in argument for argument in arguments), arguments


def test_port_carries_concurrent_connections_each_in_its_own_tunnel(cloud, agent, echo, target, start_connect):
    """--port 0 picks a free port and says which, on 127.0.0.1 unless told otherwise (a tunnel into a
    device is not for the whole network). Each local connection is its own session: its own operation,
    its own tunnel on the agent, its own bytes back intact while the others run at the same time."""
    connect = start_connect(["--device", "gw-001", "--config", target.name, "--port", "0"], password_environment(cloud))
    line = connect.listening()
    port = int(line["port"])
    assert (line["host"], line["device"], line["config"], line["target"]) == \
        (LOCALHOST, "gw-001", target.name, f"{LOCALHOST}:{echo.port}")
    assert port > 0 and listening_addresses(port) == {LOCALHOST}

    payloads = [os.urandom(300 * KiB + i) for i in range(3)]
    echoed = in_parallel(lambda i: echo_through(port, payloads[i]), len(payloads))
    for i, (sent, back) in enumerate(zip(payloads, echoed)):
        assert back == sent, f"connection {i}: {len(back)} of {len(sent)} bytes came back intact"

    opened = wait_for_log_count(agent, rf"tunnel \d+ open: 127\.0\.0\.1:{echo.port} ", 3)
    op_ids = {re.search(r"tunnel (\d+) open", line).group(1) for line in opened}
    assert len(op_ids) == 3, opened
    assert {wait_for_status(cloud, op_id)["status"] for op_id in op_ids} == {"SUCCESSFUL"}
    assert connect.stop() == EXIT_OK, connect.stderr()


@pytest.mark.parametrize("signum, close", [
    (signal.SIGTERM, "1001: cra-connect is stopping"),
    (signal.SIGINT, "1001: cra-connect is stopping"),
    (signal.SIGHUP, "1000: cra-connect was hung up on: the program that started it ended"),
], ids=["SIGTERM", "SIGINT", "SIGHUP"])
def test_signal_closes_open_connections_and_exits_0(cloud, agent, echo, target, start_connect, signum, close):
    """Stopping cra-connect (kill, Ctrl-C, or the hang-up ssh sends its ProxyCommand when the session
    ends) with sessions open ends each of them cleanly: the local program sees its connection closed
    rather than hanging, the agent closes those tunnels (so the device's target is released) and its
    log says cra-connect ended them, not that a connection dropped; cra-connect exits 0 without a traceback."""
    connect = start_connect(["--device", "gw-001", "--config", target.config_id, "--port", "0"],
                            password_environment(cloud))
    port = int(connect.listening()["port"])
    sockets = [socket.create_connection((LOCALHOST, port), timeout=IO_TIMEOUT) for _ in range(2)]
    try:
        for i, sock in enumerate(sockets):
            hello = f"hello from connection {i}".encode()
            sock.sendall(hello)
            assert recv_exactly(sock, len(hello)) == hello  # the tunnel is up end to end
        opened = wait_for_log_count(agent, rf"tunnel \d+ open: 127\.0\.0\.1:{echo.port} ", 2)

        assert connect.stop(signum) == EXIT_OK, connect.stderr()
        assert [sock.recv(1) for sock in sockets] == [b"", b""]
    finally:
        for sock in sockets:
            sock.close()
    assert "Traceback" not in connect.stderr(), connect.stderr()
    for line in opened:
        op_id = re.search(r"tunnel (\d+) open", line).group(1)
        agent.wait_for_log(rf"tunnel {op_id} closed: .*: the cloud closed the tunnel \({re.escape(close)}\)")


def test_the_only_passthrough_configuration_is_chosen(cloud, make_agent, start_connect):
    """Without --config, a device with exactly one PASSTHROUGH configuration (among others) needs no
    choosing: cra-connect says which one it took and carries the session to it. The device is a new
    one, registered by its own agent, with a PASSTHROUGH configuration for an echo server and a VNC one."""
    with EchoServer() as echo:
        agent = make_agent(cloud, options={"c8y": {"external_id": "gw-003"}}, name="agent-gw-003")
        device_id = re.search(r"as managed object (\d+)", agent.wait_for_log(r"registered new device gw-003")).group(1)
        add_configuration(cloud, device_id, "10.0.0.67", 5900, protocol="VNC")
        config_id = add_configuration(cloud, device_id, LOCALHOST, echo.port)
        name = config_name(cloud, device_id, config_id)

        connect = start_connect(["--device", "gw-003", "--port", "0"], password_environment(cloud))
        line = connect.listening()
        assert (line["config"], line["target"]) == (name, f"{LOCALHOST}:{echo.port}")
        payload = os.urandom(64 * KiB)
        assert echo_through(int(line["port"]), payload) == payload
        assert connect.stop() == EXIT_OK, connect.stderr()


def test_without_a_tenant_the_tenants_login_options_name_it(cloud, agent, echo, target, start_connect):
    """Like c8ylp, cra-connect needs only the URL, user and password: the tenant id is the one the
    tenant's public login options name."""
    connect = start_connect(["--device", "gw-001", "--config", target.name, "--port", "0"],
                            {k: v for k, v in password_environment(cloud).items() if k != "C8Y_TENANT"})
    payload = os.urandom(64 * KiB)
    assert echo_through(int(connect.listening()["port"]), payload) == payload
    assert connect.stop() == EXIT_OK, connect.stderr()


def test_over_tls_the_authority_comes_from_the_environment_and_is_required(make_cloud, make_agent, start_connect):
    """Against a tenant with a private authority (as make_run's cloud has), CRA_C8Y_CA_FILE, the same
    variable the agent reads, makes cra-connect trust it for REST and the tunnel; without it the
    certificate is refused, and the user is told why and what to give."""
    cloud = make_cloud(tls=True)
    make_agent(cloud).wait_for_log(r"device gw-001 is managed object")
    with EchoServer() as echo:
        config_id = add_configuration(cloud, cloud.device_id(), LOCALHOST, echo.port)
        args = ["--device", "gw-001", "--config", str(config_id), "--port", "0"]

        refused = run_connect(args, password_environment(cloud))
        assert refused.returncode == EXIT_ERROR, refused.stderr
        assert re.search(r"cannot reach https://127\.0\.0\.1:\d+: TLS verification failed: the server's certificate "
                         r"is not trusted \(unable to get local issuer certificate\): give the authority that signed it "
                         r"as the CA file", refused.stderr), refused.stderr

        connect = start_connect(args, {**password_environment(cloud), "CRA_C8Y_CA_FILE": cloud.ca_file})
        payload = os.urandom(64 * KiB)
        assert echo_through(int(connect.listening()["port"]), payload) == payload
        assert connect.stop() == EXIT_OK, connect.stderr()


def test_a_tenant_without_remote_access_is_named_with_the_fix(make_cloud):
    """A tenant not subscribed to Cloud Remote Access answers 404 to every remote access request: the
    user is told that, and what to subscribe, not that a configuration is missing."""
    cloud = make_cloud(args=["--unsubscribed-tenant", "t100"])
    result = run_connect(["--device", "gw-001", "--config", "ssh", "--stdio"], password_environment(cloud))
    assert result.returncode == EXIT_ERROR, result.stderr
    assert "remote access refused (404): the tenant is not subscribed to Cloud Remote Access: subscribe the " \
           "cloud-remote-access microservice" in result.stderr, result.stderr


def test_a_certificate_for_another_host_is_named_as_such(make_cloud):
    """Trusting the authority is not enough when the certificate names other hosts (here 127.0.0.1 and
    localhost, while the cloud is reached at 127.0.0.2): the user is told to use the host it was issued for."""
    cloud = make_cloud(tls=True, args=["--host", "127.0.0.2"])
    result = run_connect(["--device", "gw-001", "--config", "ssh", "--stdio", "--ca-file", cloud.ca_file],
                         password_environment(cloud))
    assert result.returncode == EXIT_ERROR, result.stderr
    assert re.search(r"^cra-connect: cannot reach https://127\.0\.0\.2:\d+: TLS verification failed: the server's "
                     r"certificate is for another host \(.*match.*\): use the host name in the URL that the certificate "
                     r"was issued for$", result.stderr), result.stderr
    assert len(result.stderr.splitlines()) == 1, result.stderr
