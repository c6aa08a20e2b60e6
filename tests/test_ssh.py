"""Real SSH through the whole system: ssh/scp -> cra-connect -> cra-cloud -> cra-agent -> sshd.

What a user of a real tenant does with their own tools; the files are large enough (32 MiB) that a
lost, duplicated or reordered chunk anywhere on the way would change the checksum.
"""
import hashlib
import os
import re
import signal
import subprocess
import sys
import threading

import pytest

from cra.cloud.demo_targets import LocalSshd
from toolkit.programs import ADMIN
from toolkit.waiting import wait_for_log_count

pytestmark = pytest.mark.skipif(not LocalSshd.available(), reason="OpenSSH server not installed (make test installs it)")

CRA_CONNECT = os.path.join(os.path.dirname(sys.executable), "cra-connect")
SIZE = 32 * 1024 * 1024
SESSIONS = 4


@pytest.fixture
def ssh_target(cloud, make_agent, sshd):
    """The agent running for gw-001, and a configuration 'sshd' pointing at the real sshd: PASSTHROUGH, as ssh and
    scp bring their own SSH (for an SSH configuration the platform is the SSH client: test_cloud_ssh.py)."""
    make_agent(cloud)
    device_id = cloud.device_id()
    response = cloud.api(ADMIN).post(f"/service/remoteaccess/devices/{device_id}/configurations", json={
        "name": "sshd", "hostname": "127.0.0.1", "port": sshd.port, "protocol": "PASSTHROUGH"})
    assert response.status_code == 201, response.text
    return sshd


def user_env(cloud):
    return {**os.environ, "C8Y_HOST": cloud.url, "C8Y_TENANT": "t100", "C8Y_USER": ADMIN[0].split("/")[1],
            "C8Y_PASSWORD": ADMIN[1]}


def random_file(path):
    data = os.urandom(SIZE)
    path.write_bytes(data)
    return hashlib.sha256(data).hexdigest()


def sha256(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run(command, env, timeout=180):
    result = subprocess.run(command, capture_output=True, text=True, env=env, timeout=timeout)
    assert result.returncode == 0, f"{command[0]} failed ({result.returncode}): {result.stderr}"
    return result.stdout


def copy_both_ways(scp, workdir, tag, env):
    """Upload one random file and download another with scp; both checksums must hold."""
    up, down = workdir / f"up-{tag}.bin", workdir / f"down-{tag}.bin"
    sent_up, sent_down = random_file(up), random_file(down)
    run([*scp, str(up), f"target:{workdir}/arrived-{tag}.bin"], env)
    run([*scp, f"target:{down}", str(workdir / f"fetched-{tag}.bin")], env)
    assert sha256(workdir / f"arrived-{tag}.bin") == sent_up
    assert sha256(workdir / f"fetched-{tag}.bin") == sent_down


def test_ssh_through_proxy_command_runs_a_command_and_copies_32_mib_each_way(cloud, ssh_target, tmp_path):
    proxy = f"ProxyCommand={CRA_CONNECT} --stdio --device gw-001 --config sshd"
    options = [*ssh_target.client_options(), "-o", proxy]
    env = user_env(cloud)
    target = f"{ssh_target.user}@target"

    assert run(["ssh", *options, target, "echo through the tunnel: $((6 * 7))"], env) == "through the tunnel: 42\n"
    copy_both_ways(["scp", *options, "-o", f"User={ssh_target.user}"], tmp_path, "stdio", env)
    assert "Traceback" not in cloud.log()
    # ssh hangs up on its ProxyCommand as it exits: each session still ends with a close, not a drop.
    ended = wait_for_log_count(cloud, r"session \d+ ended", 3)
    assert not [line for line in ended if "dropped" in line], ended


def test_four_concurrent_ssh_sessions_through_the_port_listener(cloud, ssh_target, tmp_path):
    env = user_env(cloud)
    listener = subprocess.Popen([CRA_CONNECT, "--device", "gw-001", "--config", "sshd", "--port", "0"],
                                stdout=subprocess.PIPE, stderr=subprocess.PIPE, env=env, text=True)
    try:
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", listener.stdout.readline()).group(1)
        scp = ["scp", *ssh_target.client_options(), "-P", port, "-o", "HostKeyAlias=target",
               "-o", f"User={ssh_target.user}"]
        failures = []

        def session(number):
            try:
                copy_both_ways([*scp, "-o", "Hostname=127.0.0.1"], tmp_path, f"port-{number}", env)
            except BaseException as exc:  # collected and re-raised in the test's thread
                failures.append(exc)

        threads = [threading.Thread(target=session, args=(n,)) for n in range(SESSIONS)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join(240)
        assert not any(t.is_alive() for t in threads), "an scp session did not finish in time"
        assert not failures, failures
    finally:
        listener.terminate()
        assert listener.wait(15) == 0
    closed = re.findall(r"connection from 127\.0\.0\.1:\d+ closed", listener.stderr.read())
    assert len(closed) == 2 * SESSIONS  # each session: one scp up, one scp down, each its own tunnel


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_every_stop_is_taken_with_ssh_sessions_open(cloud, make_agent, ssh_target, tmp_path, signum):
    """A service manager's stop must stop the agent and cra-connect every time, whatever their threads
    are doing: here eight times each, with two ssh sessions open through them, each stop within the
    documented few seconds (exit code 0, not killed), and every ssh session ended with it."""
    env = user_env(cloud)
    for round_number in range(8):
        agent = make_agent(cloud, name=f"agent-{round_number}")
        agent.wait_for_log(r"operations: real-time notifications from")
        listener = subprocess.Popen([CRA_CONNECT, "--device", "gw-001", "--config", "sshd", "--port", "0"],
                                    stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, env=env, text=True)
        port = re.search(r"listening on 127\.0\.0\.1:(\d+)", listener.stdout.readline()).group(1)
        ssh = ["ssh", *ssh_target.client_options(), "-p", port, f"{ssh_target.user}@127.0.0.1"]
        sessions = [subprocess.Popen([*ssh, "echo up; sleep 60"], stdout=subprocess.PIPE, stdin=subprocess.DEVNULL,
                                     stderr=subprocess.DEVNULL, text=True) for _ in range(2)]
        try:
            assert [session.stdout.readline() for session in sessions] == ["up\n", "up\n"]
            for name, process in (("agent", agent.proc), ("cra-connect", listener))[::1 if round_number % 2 else -1]:
                process.send_signal(signum)
                try:
                    assert process.wait(10) == 0, f"round {round_number}: {name} exited {process.returncode}"
                except subprocess.TimeoutExpired:
                    raise AssertionError(f"round {round_number}: {name} did not stop in 10 s\n{agent.log()}") from None
            for session in sessions:
                session.wait(15)  # the tunnel's end ends ssh
        finally:
            for process in (listener, *sessions):
                if process.poll() is None:
                    process.kill()
                    process.wait()
