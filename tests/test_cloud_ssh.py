"""SSH configurations (issue 15): cra-cloud is the SSH client, as the platform's microservice is.

A client of an SSH configuration gets a terminal: cra-cloud runs SSH over the device leg with the
configuration's credentials, checks the target's host key, and streams a PTY running the login
shell. The real cra-cloud, the real agent and a real sshd; the test plays the web page.
"""
import json
import os
import re
import secrets
import shutil
import subprocess
import time

import asyncssh
import pytest
import websocket

from cra.cloud.demo_targets import LocalSshd
from toolkit.platform import add_configuration, latest_operation
from toolkit.programs import ADMIN, receive_close, wait_for_status
from toolkit.servers import EchoServer
from toolkit.sockets import LOCALHOST, refused_port, shutdown
from toolkit.waiting import wait_until

pytestmark = pytest.mark.skipif(not LocalSshd.available(), reason="OpenSSH server not installed (make test installs it)")

AUTOSAVE_OPTION = "/tenant/options/remoteaccess/hostkey-autosave"
WAIT = 20  # s: for a terminal's output, a close, a log line


# The web page's side.


class Page:
    """A browser page's WebSocket to an SSH configuration: what the terminal shows, what the user types."""

    def __init__(self, cloud, device_id, config_id, query=None):
        self.ws = cloud.open_client(device_id, config_id, query=query)
        self.ws.settimeout(WAIT)
        self.screen = ""

    def type(self, text):
        self.ws.send_binary(text.encode())

    def resize(self, cols, rows):
        self.ws.send(json.dumps({"resize": {"cols": cols, "rows": rows}}))

    def wait_for(self, pattern, timeout=WAIT):
        """The match of `pattern` in the terminal's output so far, reading frames until it appears (bounded)."""
        deadline = time.monotonic() + timeout
        while not (match := re.search(pattern, self.screen)):
            assert time.monotonic() < deadline, f"{pattern!r} not on the terminal within {timeout} s:\n{self.screen}"
            self.ws.settimeout(max(0.1, deadline - time.monotonic()))
            try:
                opcode, data = self.ws.recv_data(control_frame=False)
            except websocket.WebSocketTimeoutException:
                raise AssertionError(f"{pattern!r} not on the terminal within {timeout} s:\n{self.screen!r}") from None
            assert opcode == websocket.ABNF.OPCODE_BINARY, f"a frame of opcode {opcode} on the terminal: {data!r}"
            self.screen += data.decode("utf-8", "replace")
        return match

    def error(self):
        """The error sentence the page shows: one text frame {"error": ...}, then a close 1011 with the
        sentence cut to 123 bytes."""
        opcode, data = self.ws.recv_data(control_frame=False)
        assert opcode == websocket.ABNF.OPCODE_TEXT, f"expected the error frame, got opcode {opcode}: {data!r}"
        sentence = json.loads(data)["error"]
        code, reason = receive_close(self.ws)
        assert (code, reason) == (1011, sentence.encode()[:123].decode()), (code, reason, sentence)
        return sentence

    def close(self):
        try:
            self.ws.close(timeout=2)
        except (OSError, websocket.WebSocketException):
            pass


@pytest.fixture
def pages():
    opened = []

    def page(*args, **kwargs):
        opened.append(Page(*args, **kwargs))
        return opened[-1]

    yield page
    for each in opened:
        each.close()


@pytest.fixture
def gateway(cloud, make_agent):
    """The agent running for gw-001: its process and its device id."""
    agent = make_agent(cloud)
    agent.wait_for_log(r"operations: (real-time notifications from|polling)")
    return agent, cloud.device_id()


def key_pair_configuration(cloud, device_id, sshd, **credentials):
    return add_configuration(cloud, device_id, LOCALHOST, sshd.port, protocol="SSH", credentialsType="KEY_PAIR",
                             credentials={"username": sshd.user, "privateKey": open(sshd.key).read(), **credentials})


def configuration(cloud, device_id, config_id):
    return cloud.api(ADMIN).get(f"/service/remoteaccess/devices/{device_id}/configurations/{config_id}").json()


def set_autosave(cloud, value):
    answer = cloud.api(ADMIN).post("/tenant/options", json={"category": "remoteaccess", "key": "hostkey-autosave",
                                                            "value": value})
    assert answer.status_code == 201, answer.text


def other_host_key():
    return asyncssh.generate_private_key("ssh-ed25519").export_public_key().decode().strip()


def fingerprint(line):
    return asyncssh.import_public_key(line).get_fingerprint("sha256")


def shell_prompt(page):
    """The shell is up: a command's output comes back (the prompt itself differs between shells and users)."""
    page.type("echo ready-$((40+2))\n")
    page.wait_for(r"ready-42")


# A password user: sshd checks a password against /etc/shadow itself, which only root can arrange.


@pytest.fixture
def password_user():
    """A throwaway system user with a random password, removed after the test (root only)."""
    if os.geteuid() != 0 or not shutil.which("useradd") or not shutil.which("chpasswd"):
        pytest.skip("a password login needs a system user of the test's own: run as root with useradd and chpasswd")
    name, password = f"cra-t{secrets.token_hex(4)}", "Pw-" + secrets.token_urlsafe(12)
    subprocess.run(["useradd", "--no-create-home", "--home-dir", "/", "--shell", "/bin/sh", name], check=True)
    try:
        subprocess.run(["chpasswd"], input=f"{name}:{password}\n", text=True, check=True)
        yield name, password
    finally:
        subprocess.run(["userdel", name], check=False)


@pytest.fixture
def password_sshd(tmp_path, password_user):
    server = LocalSshd(str(tmp_path / "password"), password_users=[password_user[0]]).start()
    yield server, *password_user
    server.stop()


# A terminal that works.


def test_a_typed_command_runs_in_the_terminal_by_key_pair_and_the_shell_exit_closes_it(cloud, gateway, sshd, pages):
    agent, device_id = gateway
    config_id = key_pair_configuration(cloud, device_id, sshd)
    page = pages(cloud, device_id, config_id)
    page.type("echo $((6*7))\n")
    page.wait_for(r"[\r\n ]42\r\n")
    assert wait_for_status(cloud, latest_operation(cloud, device_id)["id"])["status"] == "SUCCESSFUL"
    page.type("exit 3\n")
    assert receive_close(page.ws) == (1000, "the shell exited (status 3)")
    agent.wait_for_log(r"tunnel \d+ closed")
    private_key = open(sshd.key).read()
    secret_part = private_key.splitlines()[2]  # a line from the key's body
    for log in (cloud.log(), agent.log()):
        assert secret_part not in log and "Traceback" not in log


def test_a_typed_command_runs_in_the_terminal_by_password(cloud, gateway, password_sshd, pages):
    _, device_id = gateway
    sshd, user, password = password_sshd
    config_id = add_configuration(cloud, device_id, LOCALHOST, sshd.port, protocol="SSH", credentialsType="USER_PASS",
                                  credentials={"username": user, "password": password})
    page = pages(cloud, device_id, config_id)
    page.type("echo $((6*7)); id -un\n")
    page.wait_for(rf"[\r\n ]42\r\n{user}\r\n")
    assert password not in cloud.log()


def test_the_terminal_takes_its_size_from_the_query_and_from_resize_messages(cloud, gateway, sshd, pages):
    _, device_id = gateway
    page = pages(cloud, device_id, key_pair_configuration(cloud, device_id, sshd), query={"cols": 100, "rows": 30})
    page.type("stty size\n")
    page.wait_for(r"[\r\n ]30 100\r\n")
    page.resize(132, 43)
    page.type("stty size\n")
    page.wait_for(r"[\r\n ]43 132\r\n")


def test_without_a_size_the_terminal_is_80_by_24(cloud, gateway, sshd, pages):
    _, device_id = gateway
    page = pages(cloud, device_id, key_pair_configuration(cloud, device_id, sshd))
    page.type("stty size\n")
    page.wait_for(r"[\r\n ]24 80\r\n")


def test_a_size_that_is_not_one_is_refused_before_the_upgrade(cloud, gateway, sshd):
    _, device_id = gateway
    config_id = key_pair_configuration(cloud, device_id, sshd)
    with pytest.raises(websocket.WebSocketBadStatusException) as refused:
        cloud.open_client(device_id, config_id, query={"cols": "wide"})
    assert refused.value.status_code == 422
    assert b'\\"cols\\" must be a whole number' in refused.value.resp_body or b'"cols" must' in refused.value.resp_body


def test_a_text_frame_that_is_not_a_resize_ends_the_session_with_1003(cloud, gateway, sshd, pages):
    _, device_id = gateway
    page = pages(cloud, device_id, key_pair_configuration(cloud, device_id, sshd))
    shell_prompt(page)
    page.ws.send("ls\n")
    code, reason = receive_close(page.ws)
    assert code == 1003 and "not {\"resize\"" in reason, (code, reason)


# Failures the page must show.


def test_a_wrong_password_is_said_so_and_never_logged(cloud, gateway, password_sshd, pages):
    agent, device_id = gateway
    sshd, user, _ = password_sshd
    wrong = "Wrong-" + secrets.token_urlsafe(12)
    config_id = add_configuration(cloud, device_id, LOCALHOST, sshd.port, protocol="SSH", credentialsType="USER_PASS",
                                  credentials={"username": user, "password": wrong})
    sentence = pages(cloud, device_id, config_id).error()
    assert sentence.startswith(f"SSH authentication failed for user {user}: the configuration's password was refused"), sentence
    assert "correct it in the configuration" in sentence
    wait_until(lambda: "session 1 ended" in cloud.log(), "the session's end in cra-cloud's log")
    agent.wait_for_log(r"tunnel \d+ closed")
    assert wrong not in cloud.log() and wrong not in agent.log()


def test_a_key_the_target_does_not_authorize_is_said_so(cloud, gateway, sshd, pages):
    _, device_id = gateway
    stranger = asyncssh.generate_private_key("ssh-ed25519").export_private_key().decode()
    config_id = add_configuration(cloud, device_id, LOCALHOST, sshd.port, protocol="SSH", credentialsType="KEY_PAIR",
                                  credentials={"username": sshd.user, "privateKey": stranger})
    sentence = pages(cloud, device_id, config_id).error()
    assert sentence.startswith(f"SSH authentication failed for user {sshd.user}: the configuration's key was refused")
    assert stranger.splitlines()[2] not in cloud.log()


def test_a_target_that_does_not_speak_ssh_is_said_so(cloud, gateway, serve, pages):
    _, device_id = gateway

    def web_server(sock):
        sock.sendall(b"HTTP/1.1 400 Bad Request\r\nContent-Length: 0\r\n\r\n")
        shutdown(sock)

    server = serve(web_server)
    config_id = add_configuration(cloud, device_id, LOCALHOST, server.port, protocol="SSH", credentialsType="USER_PASS",
                                  credentials={"username": "pi", "password": "pw"})
    sentence = pages(cloud, device_id, config_id).error()
    assert sentence == (f"127.0.0.1:{server.port} does not speak SSH: it began with 'HTTP/1.1 400 Bad Request'; check "
                        "the configuration's port, or use a PASSTHROUGH configuration for other services")


def test_a_target_the_agent_cannot_reach_is_said_so_in_the_agents_words(cloud, gateway, pages):
    _, device_id = gateway
    with refused_port() as port:
        config_id = add_configuration(cloud, device_id, LOCALHOST, port, protocol="SSH", credentialsType="USER_PASS",
                                      credentials={"username": "pi", "password": "pw"})
        sentence = pages(cloud, device_id, config_id).error()
    assert f"127.0.0.1:{port}" in sentence and "refused" in sentence, sentence


def test_a_device_that_does_not_connect_is_said_so(cloud, pages):
    """gw-002 has no agent running."""
    ok = cloud.api(ADMIN).post("/tenant/options", json={"category": "remoteaccess",
                                                        "key": "remoteaccess.operation.timeout", "value": "1"})
    assert ok.status_code == 201
    device_id = cloud.device_id("gw-002")
    config_id = add_configuration(cloud, device_id, LOCALHOST, 22, protocol="SSH", credentialsType="USER_PASS",
                                  credentials={"username": "pi", "password": "pw"})
    assert pages(cloud, device_id, config_id).error() == "the device did not connect within 1 s (remoteaccess.operation.timeout)"


def test_ssh_configurations_without_login_credentials_are_said_so(cloud, gateway, sshd, pages):
    _, device_id = gateway
    config_id = add_configuration(cloud, device_id, LOCALHOST, sshd.port, protocol="SSH")
    sentence = pages(cloud, device_id, config_id).error()
    assert sentence.startswith("the configuration's credentialsType is NONE: the platform logs in to SSH with USER_PASS")


# Host keys.


def test_the_first_host_key_is_saved_and_checked_on_the_next_connection(cloud, gateway, sshd, pages):
    _, device_id = gateway
    config_id = key_pair_configuration(cloud, device_id, sshd)
    assert "hostKey" not in configuration(cloud, device_id, config_id)["credentials"]
    first = pages(cloud, device_id, config_id)
    shell_prompt(first)
    assert configuration(cloud, device_id, config_id)["credentials"]["hostKey"] == sshd.host_key_line
    mirrored = cloud.api(ADMIN).get(f"/inventory/managedObjects/{device_id}").json()["c8y_RemoteAccessList"]
    assert [c["credentials"]["hostKey"] for c in mirrored if c["id"] == config_id] == [sshd.host_key_line]
    assert re.search(rf"host key of 127\.0\.0\.1:{sshd.port} saved in configuration {config_id} \(hostkey-autosave\): "
                     rf"ssh-ed25519 {re.escape(fingerprint(sshd.host_key_line))}", cloud.log())
    first.close()
    set_autosave(cloud, "false")  # the next connection cannot be let in by saving: only the stored key does it
    shell_prompt(pages(cloud, device_id, config_id))


def test_a_changed_host_key_is_refused(cloud, gateway, sshd, pages):
    _, device_id = gateway
    stored = other_host_key()
    config_id = key_pair_configuration(cloud, device_id, sshd, hostKey=stored)
    sentence = pages(cloud, device_id, config_id).error()
    assert sentence.startswith(f"the host key of 127.0.0.1:{sshd.port} changed: expected {fingerprint(stored)}, "
                               f"got {fingerprint(sshd.host_key_line)} (ssh-ed25519); "), sentence
    assert configuration(cloud, device_id, config_id)["credentials"]["hostKey"] == stored


def test_with_autosave_off_an_unknown_host_key_is_refused(cloud, gateway, sshd, pages):
    _, device_id = gateway
    set_autosave(cloud, "false")
    assert cloud.api(ADMIN).get(AUTOSAVE_OPTION).json()["value"] == "false"
    config_id = key_pair_configuration(cloud, device_id, sshd)
    sentence = pages(cloud, device_id, config_id).error()
    assert sentence == (f"the host key of 127.0.0.1:{sshd.port} is not known: the configuration has none and the tenant "
                        f"option remoteaccess/hostkey-autosave is false; the target presented ssh-ed25519 "
                        f"{fingerprint(sshd.host_key_line)}; if that is the target's key, put it in the configuration's "
                        f"hostKey, or set the option to true")
    assert "hostKey" not in configuration(cloud, device_id, config_id)["credentials"]


def test_the_autosave_option_takes_true_or_false_only(cloud):
    api = cloud.api(ADMIN)
    refused = api.post("/tenant/options", json={"category": "remoteaccess", "key": "hostkey-autosave", "value": "yes"})
    assert refused.status_code == 422 and 'must be "true" or "false"' in refused.json()["message"]
    set_autosave(cloud, "true")
    changed = api.put(AUTOSAVE_OPTION, json={"value": "false"})
    assert changed.status_code == 200 and changed.json()["value"] == "false"


# The session's end.


def test_the_client_closing_ends_the_ssh_session_and_the_tunnel(cloud, gateway, sshd, pages):
    agent, device_id = gateway
    page = pages(cloud, device_id, key_pair_configuration(cloud, device_id, sshd))
    shell_prompt(page)
    op_id = latest_operation(cloud, device_id)["id"]
    page.ws.close(status=1000)
    agent.wait_for_log(rf"tunnel {op_id} closed")
    wait_until(lambda: re.search(r"session \d+ ended: the client closed \(1000\)", cloud.log()),
               "the session's end in cra-cloud's log")


# Other protocols stay raw relays.


@pytest.mark.parametrize("protocol", ["PASSTHROUGH", "TELNET"])
def test_other_protocols_are_still_relayed_byte_for_byte(cloud, gateway, users, protocol):
    _, device_id = gateway
    with EchoServer() as echo:
        user = users.connect(cloud, device_id, add_configuration(cloud, device_id, LOCALHOST, echo.port, protocol=protocol))
        assert wait_for_status(cloud, user.op_id)["status"] == "SUCCESSFUL"
        payload = bytes(range(256)) * 16
        assert user.echo(payload) == payload


def test_a_target_that_says_nothing_is_given_up_after_the_operation_timeout(cloud, gateway, serve, pages):
    """The SSH login has the operation timeout's seconds, from the device's joining to a shell."""
    _, device_id = gateway
    ok = cloud.api(ADMIN).post("/tenant/options", json={"category": "remoteaccess",
                                                        "key": "remoteaccess.operation.timeout", "value": "3"})
    assert ok.status_code == 201
    server = serve(lambda sock: None)  # accepts, and never says a word
    config_id = add_configuration(cloud, device_id, LOCALHOST, server.port, protocol="SSH", credentialsType="USER_PASS",
                                  credentials={"username": "pi", "password": "pw"})
    page = pages(cloud, device_id, config_id)
    started = time.monotonic()
    assert page.error() == (f"127.0.0.1:{server.port} did not complete the SSH login within 3 s "
                            "(remoteaccess.operation.timeout); check that an SSH server answers there")
    assert 2.5 < time.monotonic() - started < 10
