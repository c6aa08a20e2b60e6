"""Bootstrap registration and `cra-agent --check` (issue 6).

A gateway is often installed with no credentials of its own: the agent asks the platform for
them with the tenant's bootstrap user until an administrator accepts the device, and keeps them.
The platform hands them out once, so losing them means registering the device again by hand: the
agent must store them safely, never overwrite a file it cannot use, and never ask before it
knows it can keep the answer. `--check` is what the person installing the gateway runs first; its
exit code and its one line must say what is wrong. A real cra-cloud and the real agent, on 127.0.0.1.
"""
import json
import os
import re
import stat
import subprocess
import sys
from types import SimpleNamespace

import pytest

from toolkit.platform import assert_tunnel_works
from toolkit.programs import ADMIN, AGENT_SCRIPT, AgentProcess
from toolkit.sockets import refused_port
from toolkit.waiting import log_lines, wait_for_log_count, wait_until

WAITING = r"waiting for the device to be accepted in Device Management"
ASKED = "POST /devicecontrol/deviceCredentials"  # in the log of a cloud started with -v


def bootstrapping(credentials_file, password="boot-pw", external_id="gw-new"):
    """The options of a gateway installed with the bootstrap password and no device credentials."""
    return {"c8y": {"tenant": None, "user": None, "password": None, "external_id": external_id},
            "bootstrap": {"password": password, "credentials_file": str(credentials_file)}}


def request_status(cloud, serial="gw-new"):
    """The new device request's status, as an administrator sees it under Devices > Registration."""
    return cloud.api(ADMIN).get(f"/devicecontrol/newDeviceRequests/{serial}").json()["status"]


def register(cloud, serial="gw-new"):
    """The administrator registers the device's serial (Devices > Registration)."""
    assert cloud.api(ADMIN).post("/devicecontrol/newDeviceRequests", json={"id": serial}).status_code == 201


def accept(cloud, serial="gw-new"):
    """The administrator accepts the device once it has asked for its credentials."""
    wait_until(lambda: request_status(cloud, serial) == "PENDING_ACCEPTANCE", f"{serial} asking for its credentials")
    answer = cloud.api(ADMIN).put(f"/devicecontrol/newDeviceRequests/{serial}", json={"status": "ACCEPTED"})
    assert answer.status_code == 200, answer.text



def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def test_a_new_device_waits_to_be_accepted_then_keeps_its_credentials(make_cloud, make_agent, users, tmp_path):
    """The administrator registers the serial, sees the device ask, accepts it, and finds it in
    the inventory with working tunnels; the gateway's log says what it waits for, once, not every
    poll, and never shows the password it was given."""
    cloud = make_cloud(args=["-v"])
    credentials = tmp_path / "state" / "credentials"
    agent = make_agent(cloud, options=bootstrapping(credentials))
    agent.wait_for_log(WAITING + ": register external id gw-new there", timeout=10)
    register(cloud)
    wait_until(lambda: request_status(cloud) == "PENDING_ACCEPTANCE", "the device asking for its credentials")
    wait_until(lambda: cloud.log().count(ASKED) >= 6, "six requests for the credentials")
    assert len(log_lines(agent, WAITING)) == 1, agent.log()
    assert not credentials.exists()

    accept(cloud)
    agent.wait_for_log(r"device credentials received: user device_gw-new of tenant t100")
    agent.wait_for_log(r"registered new device gw-new as managed object \d+")
    stored = json.loads(credentials.read_text())
    assert set(stored) == {"tenant", "user", "password"}
    assert (stored["tenant"], stored["user"]) == ("t100", "device_gw-new")
    assert (mode(credentials), mode(credentials.parent)) == (0o600, 0o700)
    assert cloud.api(ADMIN).get("/identity/externalIds/c8y_Serial/gw-new").status_code == 200
    assert_tunnel_works(cloud, users, "gw-new")
    assert stored["password"] not in agent.log()


def test_after_a_restart_the_stored_credentials_are_used(cloud, make_agent, users, tmp_path):
    """A reboot of an accepted gateway needs nobody in Device Management again."""
    options = bootstrapping(tmp_path / "state" / "credentials")
    register(cloud)
    first = make_agent(cloud, options=options)
    accept(cloud)
    first.wait_for_log(r"registered new device gw-new as managed object")
    assert first.stop() == 0

    restarted = make_agent(cloud, options=options, name="restarted")
    restarted.wait_for_log(r"device gw-new is managed object \d+")
    assert not log_lines(restarted, WAITING)
    assert_tunnel_works(cloud, users, "gw-new")


def test_stored_credentials_the_platform_rejects_are_kept_and_not_replaced(make_cloud, make_agent, tmp_path):
    """The device's user was changed or removed on the platform: the log says which file holds the
    rejected credentials and that it is kept; the agent retries and never asks for new ones (the
    platform would give none: only the administrator can start registration over)."""
    cloud = make_cloud(args=["-v"])
    credentials = tmp_path / "state" / "credentials"
    credentials.parent.mkdir(mode=0o700)
    credentials.write_text(json.dumps({"tenant": "t100", "user": "device_gw-002", "password": "wrong-pw"}))
    before = credentials.read_bytes()
    agent = make_agent(cloud, options=bootstrapping(credentials, external_id="gw-002"))
    line = agent.wait_for_log(r"credentials rejected by")
    assert cloud.url in line and str(credentials) in line and "kept" in line, line
    wait_until(lambda: cloud.log().count("GET /identity/externalIds/c8y_Serial/gw-002 401") >= 4, "four more attempts")
    assert len(log_lines(agent, r"credentials rejected")) == 1
    assert agent.proc.poll() is None
    assert credentials.read_bytes() == before
    assert ASKED not in cloud.log() and not log_lines(agent, WAITING)
    assert "wrong-pw" not in agent.log()


def test_a_credentials_file_that_is_not_credentials_is_named_and_left_alone(make_cloud, make_agent, tmp_path):
    """Someone put another file there, or it was cut short: the error says which file and what to do
    with it, the file stays as it is (it may be the only copy), and the agent keeps running."""
    cloud = make_cloud(args=["-v"])
    credentials = tmp_path / "state" / "credentials"
    credentials.parent.mkdir(mode=0o700)
    credentials.write_text('{"tenant": "t100", "user": "device_gw-new", "passw')
    before = credentials.read_bytes()
    agent = make_agent(cloud, options=bootstrapping(credentials))
    lines = wait_for_log_count(agent, re.escape(str(credentials)), 2)  # told again at the next attempt
    assert "ERROR" in lines[0] and "restore it" in lines[0] and "remove it" in lines[0], lines[0]
    assert agent.proc.poll() is None
    assert credentials.read_bytes() == before
    assert ASKED not in cloud.log()


def test_a_wrong_bootstrap_password_is_logged_once(make_cloud, make_agent, tmp_path):
    """A mistyped bootstrap password fails every request: one line says which options to check,
    and the agent goes on trying (a fixed file and SIGHUP, or a restart, brings it through)."""
    cloud = make_cloud(args=["-v"])
    agent = make_agent(cloud, options=bootstrapping(tmp_path / "state" / "credentials", password="wrong-pw"))
    agent.wait_for_log(rf"credentials rejected by {re.escape(cloud.url)}: "
                       r"check \[bootstrap\] user, password and tenant")
    wait_until(lambda: cloud.log().count(f"{ASKED} 401") >= 4, "four refused requests")
    assert len(log_lines(agent, r"credentials rejected")) == 1
    assert not log_lines(agent, WAITING)
    assert agent.proc.poll() is None
    assert "wrong-pw" not in agent.log()


@pytest.mark.parametrize("in_the_way", ["regular file", "unmounted storage"])
def test_credentials_are_not_asked_for_when_they_could_not_be_kept(cloud, make_agent, tmp_path, in_the_way):
    """The platform gives the credentials once: asking while their directory cannot be made would
    lose them. Here a file is where the directory should be, or the directory is a link to storage
    that is not mounted: the error names the path, and the device's request stays untouched."""
    directory = tmp_path / "state"
    if in_the_way == "regular file":
        directory.write_text("a regular file where a directory should be\n")
    else:
        directory.symlink_to(tmp_path / "unmounted" / "cra-agent")
    register(cloud)
    agent = make_agent(cloud, options=bootstrapping(directory / "credentials"))
    lines = wait_for_log_count(agent, re.escape(str(directory)), 2)  # told again at the next attempt
    assert "ERROR" in lines[0], lines[0]
    assert request_status(cloud) == "WAITING_FOR_CONNECTION"
    assert agent.proc.poll() is None
    assert directory.is_symlink() or directory.read_text().startswith("a regular file")


# cra-agent --check


def check(config_path):
    return subprocess.run([sys.executable, AGENT_SCRIPT, "--check", "-c", str(config_path)],
                          capture_output=True, text=True, timeout=60)


def config_file(tmp_path, url, options=None):
    """The agent's file for the cloud at `url`, `options` over a working one for gw-001 (not started)."""
    return AgentProcess(tmp_path, SimpleNamespace(url=url), options, name="check").config_path


def test_check_with_good_credentials_names_the_managed_object(cloud, tmp_path):
    result = check(config_file(tmp_path, cloud.url))
    assert result.returncode == 0, result.stderr
    assert f"device gw-001 is managed object {cloud.device_id()}" in result.stdout
    assert "dev-pw" not in result.stdout + result.stderr


def test_check_with_a_wrong_password_says_what_to_check(cloud, tmp_path):
    result = check(config_file(tmp_path, cloud.url, {"c8y": {"password": "wrong-pw"}}))
    assert result.returncode == 1
    assert f"credentials rejected by {cloud.url}: check [c8y] tenant, user and password" in result.stderr, \
        result.stderr
    assert "wrong-pw" not in result.stdout + result.stderr


def test_check_against_a_cloud_that_is_not_running_says_it_cannot_reach_it(tmp_path):
    with refused_port() as port:
        result = check(config_file(tmp_path, f"http://127.0.0.1:{port}"))
    assert result.returncode == 1
    assert f"cannot reach http://127.0.0.1:{port}: connection refused" in result.stderr


def test_check_of_a_bad_file_names_the_file_and_the_option(tmp_path):
    path = config_file(tmp_path, "http://127.0.0.1:9", {"agent": {"poll_interval": "fast"}})
    result = check(path)
    assert result.returncode == 1
    assert f"{path}: [agent] poll_interval: must be a positive number" in result.stderr


def test_check_gets_and_stores_the_credentials_once_the_device_is_accepted(cloud, make_agent, tmp_path):
    """The installer runs --check before the device is accepted (it says so), then after, which
    stores the credentials; the agent started afterwards goes straight to work with them."""
    credentials = tmp_path / "state" / "credentials"
    options = bootstrapping(credentials)
    register(cloud)
    waiting = check(config_file(tmp_path, cloud.url, options))
    assert waiting.returncode == 1
    assert re.search(WAITING, waiting.stderr), waiting.stderr
    assert not credentials.exists()

    accept(cloud)
    accepted = check(config_file(tmp_path, cloud.url, options))
    assert accepted.returncode == 0, accepted.stderr
    assert "device gw-new is not registered yet" in accepted.stdout
    assert mode(credentials) == 0o600
    assert json.loads(credentials.read_text())["password"] not in accepted.stdout + accepted.stderr

    agent = make_agent(cloud, options=options)
    agent.wait_for_log(r"registered new device gw-new as managed object")
    assert not log_lines(agent, WAITING)
