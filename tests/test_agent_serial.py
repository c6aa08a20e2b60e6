"""Serial consoles behind the agent (issue 5), end to end: a user's tool on a real cra-cloud, the
real agent process, and a serial port behind it that a [serial:NAME] section maps an ordinary
configuration's hostname:port to.

The serial line is a pseudo-terminal pair (the agent opens the slave as a real tty device, the test
plays the console on the master) or pyserial's loop://. Everything else is on 127.0.0.1 only.
"""
import hashlib
import os
import re
import socket
import termios

import pytest
import websocket

from toolkit.console import PtyConsole
from toolkit.platform import add_configuration, create_operation
from toolkit.programs import receive_close, wait_for_status
from toolkit.sockets import LOCALHOST, refused_port, ws_recv_exactly
from toolkit.waiting import in_parallel, wait_until

KiB, MiB = 1 << 10, 1 << 20
FRAME = 64 * KiB
TARGET_PORT = 7001  # only a name: nothing listens there, and the agent must not try
A_KEY = "eb5e9d13-1caa-486b-bdda-130ca0d87df8"  # a connection key no user's tool waits on

# Telnet (RFC 854/855), as a web terminal speaks it.
IAC, SB, SE, WILL, WONT, DO, DONT = 0xFF, 0xFA, 0xF0, 0xFB, 0xFC, 0xFD, 0xFE
BINARY, ECHO, SGA, TTYPE, NAWS, COM_PORT = 0, 1, 3, 24, 31, 44


def telnet(*parts):
    """Telnet commands as bytes: telnet(DO, ECHO) == b"\\xff\\xfd\\x01"."""
    return bytes([IAC, *parts])


def escape(data):
    """Data as telnet carries it: each 0xFF doubled."""
    return data.replace(b"\xff", b"\xff\xff")


@pytest.fixture
def consoles():
    """consoles(link=None) -> a PtyConsole; every one hung up after the test."""
    made = []

    def make(link=None):
        made.append(PtyConsole(link))
        return made[-1]

    yield make
    for console in made:
        console.close()


@pytest.fixture
def serial_agent(cloud, make_agent):
    """serial_agent(url, target_port=7001, more={section: options}, **options) -> (agent, config_id): the
    real agent with a [serial:plc] section mapping 127.0.0.1:target_port to `url` (and `more` sections),
    and the ordinary configuration of gw-001 for that hostname:port that users connect to."""

    def start(url, target_port=TARGET_PORT, more=None, **options):
        agent = make_agent(cloud, options={
            "serial:plc": {"target": f"{LOCALHOST}:{target_port}", "url": url, **options}, **(more or {})})
        agent.wait_for_log(r"device gw-001 is managed object")
        return agent, add_configuration(cloud, cloud.device_id(), LOCALHOST, target_port)

    return start


def connect(cloud, users, config_id):
    """A user's tool on the configuration, once the agent has opened its tunnel."""
    user = users.connect(cloud, cloud.device_id(), config_id)
    op = wait_for_status(cloud, user.op_id)
    assert op["status"] == "SUCCESSFUL", op
    return user


def refused(cloud, users, config_id):
    """A user's tool on the configuration whose operation the agent set FAILED: (the user, the reason)."""
    user = users.connect(cloud, cloud.device_id(), config_id)
    op = wait_for_status(cloud, user.op_id)
    assert op["status"] == "FAILED", op
    return user, op["failureReason"]


def assert_told(user, reason):
    """The user's tool was closed with 1011 and the reason (as much of it as a close frame holds: 123 bytes)."""
    assert receive_close(user.ws) == (1011, reason.encode()[:123].decode())


def together(*jobs):
    """Each job's result, the jobs run on threads of their own (joined, bounded); the first exception re-raised."""
    return in_parallel(lambda index: jobs[index](), len(jobs))


def send(ws, data):
    for start in range(0, len(data), FRAME):
        ws.send_binary(data[start:start + FRAME])


def both_ways(user, console, size):
    """`size` random bytes from the client to the console and as many back, at the same time; asserts each
    arrives intact (compared by sha256, so that a failure does not print a mebibyte)."""
    to_console, to_client = os.urandom(size), os.urandom(size)
    _, at_client, at_console = together(lambda: send(user.ws, to_console), lambda: ws_recv_exactly(user.ws, size),
                                        lambda: console.exchange(to_client, size))
    assert hashlib.sha256(at_console).hexdigest() == hashlib.sha256(to_console).hexdigest(), "client -> console"
    assert hashlib.sha256(at_client).hexdigest() == hashlib.sha256(to_client).hexdigest(), "console -> client"


def tunnel_closed(agent, op_id, url):
    """The agent's line for the end of an operation's tunnel, which must name the serial port."""
    return agent.wait_for_log(rf"tunnel {op_id} closed: serial port {re.escape(url)}, ")


# Data on a real tty and on loop://


def test_a_pty_carries_a_mebibyte_each_way_unchanged(cloud, users, consoles, serial_agent):
    """Raw mode is a byte pipe: every value, CR/LF, XON/XOFF and 0xFF included, crosses a real tty
    device both ways at once, and nothing is added, lost or reordered."""
    console = consoles()
    agent, config_id = serial_agent(console.url)
    user = connect(cloud, users, config_id)
    both_ways(user, console, MiB)
    agent.wait_for_log(rf"tunnel {user.op_id} open: serial port {re.escape(console.url)} <-> cloud")


def test_loop_url_sends_back_what_the_client_sends(cloud, users, serial_agent):
    """Any pyserial URL is a port: loop:// echoes, so what goes out comes back in order and intact."""
    _, config_id = serial_agent("loop://")
    user = connect(cloud, users, config_id)
    payload = os.urandom(256 * KiB)
    _, echoed = together(lambda: send(user.ws, payload), lambda: ws_recv_exactly(user.ws, len(payload)))
    assert hashlib.sha256(echoed).hexdigest() == hashlib.sha256(payload).hexdigest()


@pytest.mark.parametrize("flow", ["none", "xonxoff", "rtscts"])
def test_the_sections_line_settings_are_applied_to_the_port(cloud, users, consoles, serial_agent, flow):
    """A console at 9600 baud with 2 stop bits only answers when the port is set up as the section says.
    (A pty's kernel driver forces 8 data bits and no parity, so those two cannot be seen here.)"""
    console = consoles()
    _, config_id = serial_agent(console.url, baudrate="9600", stopbits="2", flow=flow)
    connect(cloud, users, config_id)
    fd = os.open(console.device, os.O_RDWR | os.O_NOCTTY)
    try:
        iflag, _, cflag, _, ispeed, ospeed, _ = termios.tcgetattr(fd)
    finally:
        os.close(fd)
    assert (ispeed, ospeed) == (termios.B9600, termios.B9600)
    assert cflag & termios.CSTOPB
    assert bool(iflag & termios.IXON) == bool(iflag & termios.IXOFF) == (flow == "xonxoff")
    assert bool(cflag & termios.CRTSCTS) == (flow == "rtscts")


# Telnet mode


def test_telnet_mode_negotiates_and_keeps_iac_off_the_line(cloud, users, consoles, serial_agent):
    """A web terminal speaks telnet: the agent offers its options first, answers the terminal's,
    keeps every IAC sequence (split across frames or not) off the serial line, and escapes 0xFF
    both ways, so that a console's binary data crosses intact."""
    console = consoles()
    _, config_id = serial_agent(console.url, mode="telnet")
    user = connect(cloud, users, config_id)

    offers = ws_recv_exactly(user.ws, 12)
    assert {offers[i:i + 3] for i in range(0, 12, 3)} == {
        telnet(WILL, ECHO), telnet(WILL, SGA), telnet(DO, BINARY), telnet(WILL, COM_PORT)}, offers.hex(" ")

    line_data = bytes(range(256)) * 16  # sixteen 0xFF among every other value
    escaped = escape(line_data)
    stream = (b"login: " + telnet(DO, ECHO) + telnet(DO, SGA) + telnet(WONT, BINARY) + telnet(DONT, COM_PORT)
              + escape(line_data[:1000]) + telnet(WILL, NAWS) + telnet(SB, NAWS, 0, 80, 0, 24, IAC, SE)
              + escape(line_data[1000:]) + telnet(DO, TTYPE) + b"\r\n")
    # Frame boundaries inside the sequences: between IAC and its command, between a doubled IAC's halves.
    cuts = [0, 8, stream.index(telnet(WONT)) + 1, stream.index(b"\xff\xff") + 1, stream.index(telnet(SB, NAWS)) + 3,
            len(stream) - 3, len(stream)]
    for start, end in zip(cuts, cuts[1:]):
        user.ws.send_binary(stream[start:end])

    expected_line = b"login: " + line_data + b"\r\n"
    assert console.read(len(expected_line)) == expected_line
    # Only the options it does not know are answered (refused); the others were its own offers.
    assert ws_recv_exactly(user.ws, 6) == telnet(DONT, NAWS) + telnet(WONT, TTYPE)

    console.write(line_data)
    assert ws_recv_exactly(user.ws, len(escaped)) == escaped


def test_a_malformed_telnet_subnegotiation_does_not_wedge_the_session(cloud, users, serial_agent):
    """Whatever a client sends, the tunnel either carries on or ends with a reason that the agent logs;
    it must not stop writing to the line while it holds the port and the user still waits.
    Here an RFC 2217 SET-BAUDRATE that carries 2 of its 4 bytes."""
    agent, config_id = serial_agent("loop://", mode="telnet")
    user = connect(cloud, users, config_id)
    ws_recv_exactly(user.ws, 12)  # the offers
    user.ws.send_binary(telnet(SB, COM_PORT, 1, 0x25, 0x80, IAC, SE))
    user.ws.send_binary(b"still there?")
    user.ws.settimeout(5)
    try:
        opcode, data = user.ws.recv_data(control_frame=True)
    except websocket.WebSocketTimeoutException:
        pytest.fail("neither the echo nor a close within 5 s: the session is wedged")
    assert (opcode, data) == (websocket.ABNF.OPCODE_BINARY, b"still there?") or opcode == websocket.ABNF.OPCODE_CLOSE
    user.close()
    tunnel_closed(agent, user.op_id, "loop://")
    assert "Traceback" not in agent.log()


# One session per port; ports that cannot be opened


@pytest.mark.parametrize("second_config", ["the same configuration", "another section's, on the same url"])
def test_a_busy_port_fails_the_second_session_and_keeps_the_first(cloud, users, serial_agent, second_config):
    """Two sessions on one line would interleave their bytes: the second is refused, however many
    sections name the port (say, one raw for PASSTHROUGH and one telnet for the web terminal)."""
    other_port = TARGET_PORT + 1
    _, config_id = serial_agent("loop://", more={
        "serial:plc-web": {"target": f"{LOCALHOST}:{other_port}", "url": "loop://", "mode": "telnet"}})
    first = connect(cloud, users, config_id)
    assert first.echo(b"first session") == b"first session"

    if second_config != "the same configuration":
        config_id = add_configuration(cloud, cloud.device_id(), LOCALHOST, other_port)
    second, reason = refused(cloud, users, config_id)
    assert reason == "serial port loop:// is already in use by another session"
    assert_told(second, reason)

    assert first.echo(b"still mine") == b"still mine"


@pytest.mark.parametrize("make_path, words", [
    (lambda path: None, "no such file or directory"),
    (lambda path: path.mkdir(), "is a directory"),
    (lambda path: path.write_text("not a tty"), "inappropriate ioctl for device"),
], ids=["missing", "directory", "regular-file"])
def test_a_port_that_cannot_be_opened_fails_until_it_is_plugged_in(cloud, users, consoles, serial_agent, tmp_path,
                                                                   make_path, words):
    """The reason is the OS error in words, told to the platform and to the user's tool; the failed
    open leaves the port free, so that once the adapter is plugged in the next session works."""
    path = tmp_path / "ttyUSB0"
    make_path(path)
    _, config_id = serial_agent(str(path))
    user, reason = refused(cloud, users, config_id)
    assert reason == f"cannot open serial port {path}: {words}"
    assert_told(user, reason)

    if path.is_dir():
        path.rmdir()
    console = consoles(link=path)
    both_ways(connect(cloud, users, config_id), console, 4 * KiB)


@pytest.mark.parametrize("scheme", ["socket", "rfc2217"])
def test_a_network_port_that_refuses_fails_with_the_os_error_in_words(cloud, users, serial_agent, scheme):
    """A serial server's port is a port like /dev/ttyUSB0: the reason is the OS error, not pyserial's text."""
    with refused_port() as port:
        url = f"{scheme}://{LOCALHOST}:{port}"
        _, config_id = serial_agent(url)
        _, reason = refused(cloud, users, config_id)
        assert reason == f"cannot open serial port {url}: connection refused"


# The end of a session


@pytest.mark.parametrize("ender", ["client", "console"])
def test_the_port_is_closed_and_released_when_either_side_ends(cloud, users, consoles, serial_agent, tmp_path, ender):
    """Whether the user leaves or the device hangs up (pyserial then fails the read), the agent closes
    the tty and frees the port: the next session on the same configured port works."""
    link = tmp_path / "ttyPLC"
    console = consoles(link=link)
    agent, config_id = serial_agent(console.url)
    user = connect(cloud, users, config_id)
    both_ways(user, console, 4 * KiB)
    assert console.held_by(agent.proc.pid) == 1

    if ender == "client":
        user.close()
    else:
        console.hang_up()
        code, text = receive_close(user.ws)
        assert code == 1011 and text.startswith(f"serial port {console.url} failed: "), (code, text)
    tunnel_closed(agent, user.op_id, console.url)
    wait_until(lambda: console.held_by(agent.proc.pid) == 0, "the agent closing the tty", timeout=10)

    if ender == "console":
        console = consoles(link=link)  # plugged in again: a new tty behind the same configured port
    again = connect(cloud, users, config_id)
    both_ways(again, console, 4 * KiB)


def test_a_port_opened_for_a_tunnel_the_cloud_refuses_is_released(cloud, users, consoles, serial_agent):
    """The port and the cloud leg are opened at once; when the cloud refuses its leg (the user's tool
    is gone, the key unknown), the port opened for nothing is closed, and free for the next session."""
    console = consoles()
    agent, config_id = serial_agent(console.url)
    op = wait_for_status(cloud, create_operation(cloud, cloud.device_id(), {
        "hostname": LOCALHOST, "port": TARGET_PORT, "connectionKey": A_KEY}))
    assert op["status"] == "FAILED" and op["failureReason"].startswith("cloud refused the tunnel (404)"), op
    assert console.held_by(agent.proc.pid) == 0
    both_ways(connect(cloud, users, config_id), console, 4 * KiB)


def test_a_mapped_target_never_opens_a_tcp_connection(cloud, users, serial_agent):
    """The target is only a name for the port: even when something does listen there, it sees nothing."""
    with socket.create_server((LOCALHOST, 0)) as listener:
        _, config_id = serial_agent("loop://", target_port=listener.getsockname()[1])
        user = connect(cloud, users, config_id)
        assert user.echo(b"from the serial side") == b"from the serial side"
        listener.setblocking(False)
        with pytest.raises(BlockingIOError):  # nothing in the accept queue: no connection was ever made
            listener.accept()
