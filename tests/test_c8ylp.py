"""The platform's own local proxy, c8ylp 2.5.0 from PyPI, unchanged, against cra-cloud over TLS.

ssh -> c8ylp -> cra-cloud (https, wss) -> the real agent -> a real sshd: what a user of a real tenant
does with the official tool. c8ylp runs from a venv of its own (`make test` makes .venv-c8ylp) and
verifies TLS: its certifi bundle is made to hold the test cloud's authority as well (`trust`).
It signs in with C8Y_HOST/C8Y_USER/C8Y_PASSWORD as its users do, in some tests without C8Y_TENANT,
so that it learns the tenant from /tenant/loginOptions as it does on a tenant's own domain.
"""
import contextlib
import copy
import functools
import hashlib
import os
import re
import shlex
import subprocess
import time
from pathlib import Path

import pytest

from cra.cloud.demo_targets import LocalSshd
from toolkit.programs import ADMIN, SEED, VIEWER, readline_within
from toolkit.waiting import wait_until

pytestmark = pytest.mark.skipif(not LocalSshd.available(), reason="OpenSSH server not installed (make test installs it)")

ROOT = Path(__file__).resolve().parent.parent
C8YLP_VENV = ROOT / ".venv-c8ylp"
C8YLP = str(C8YLP_VENV / "bin" / "c8ylp")
TIMEOUT = 60  # for any one command; each takes a second or two
SIZE = 4 * 1024 * 1024
MISSING_ROLE = 8  # c8ylp's ExitCodes.MISSING_ROLE_REMOTE_ACCESS_ADMIN
OTHER_CA_BUNDLES = ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE", "WEBSOCKET_CLIENT_CA_BUNDLE")


@functools.lru_cache(maxsize=None)
def certifi_bundle():
    """The CA bundle c8ylp trusts: certifi's, in its own venv (its websocket reads only this one,
    and requests uses it too when REQUESTS_CA_BUNDLE is not set)."""
    where = subprocess.run([str(C8YLP_VENV / "bin" / "python"), "-c", "import certifi; print(certifi.where())"],
                           capture_output=True, text=True, timeout=TIMEOUT, check=True)
    return Path(where.stdout.strip())


def trust(ca_file):
    """Make c8ylp's bundle its original certificates plus `ca_file`. The original is kept beside it
    (cacert.pem.pristine) the first time, and the bundle rewritten from it each time, so it does not grow."""
    bundle = certifi_bundle()
    pristine = bundle.with_name(bundle.name + ".pristine")
    if not pristine.exists():
        _replace(pristine, bundle.read_bytes())
    _replace(bundle, pristine.read_bytes().rstrip(b"\n") + b"\n" + Path(ca_file).read_bytes())


def _replace(path, data):
    staged = path.with_name(path.name + ".tmp")
    staged.write_bytes(data)
    os.replace(staged, path)


def seed(sshd):
    """The default tenants, gw-001 with a PASSTHROUGH configuration 'sshd' to the real sshd (and one
    for VNC, which c8ylp must pass over)."""
    tenants = copy.deepcopy(SEED)
    gateway = next(d for d in tenants[0]["devices"] if d["externalId"] == "gw-001")
    gateway["configurations"] = [
        {"name": "vnc", "hostname": "10.0.0.67", "port": 5900, "protocol": "VNC"},
        {"name": "sshd", "hostname": "127.0.0.1", "port": sshd.port, "protocol": "PASSTHROUGH"}]
    return tenants


@pytest.fixture
def start_platform(make_cloud, make_agent, sshd):
    """start(args=()): a TLS cra-cloud (with `args`) whose gw-001 reaches the real sshd, the agent
    running for gw-001, and c8ylp trusting the cloud's authority."""
    if not os.access(C8YLP, os.X_OK):
        pytest.fail(f"{C8YLP} is missing: `make test` installs c8ylp 2.5.0 there (or `make .venv-c8ylp/.installed`)")

    def start(args=()):
        cloud = make_cloud(tls=True, seed=seed(sshd), args=args)
        make_agent(cloud)
        trust(cloud.ca_file)
        return cloud
    return start


def user_env(cloud, tmp_path, auth=ADMIN, with_tenant=True):
    """A user's environment for c8ylp: host and credentials, its logs in tmp_path; no CA bundle or
    c8ylp setting of the caller's that would change what it trusts or does."""
    tenant, user = auth[0].split("/")
    env = {k: v for k, v in os.environ.items() if not k.startswith(("C8Y_", "C8YLP_")) and k not in OTHER_CA_BUNDLES}
    env.update(C8Y_HOST=cloud.url, C8Y_USER=user, C8Y_PASSWORD=auth[1], C8YLP_LOG_DIR=str(tmp_path / "c8ylp"))
    if with_tenant:
        env["C8Y_TENANT"] = tenant
    return env


def c8ylp(*command):
    """c8ylp COMMAND... for gw-001's configuration 'sshd', never prompting."""
    return [C8YLP, *command, "gw-001", "--config", "sshd", "--disable-prompts"]


def c8ylp_log(tmp_path):
    path = tmp_path / "c8ylp" / "localproxy.log"
    return path.read_text(errors="replace") if path.exists() else ""


@contextlib.contextmanager
def started(command, env=None, cwd=None):
    """A process with its stdout and stderr piped (text), killed when the block ends if still running."""
    process = subprocess.Popen(command, env=env, cwd=cwd, stdin=subprocess.DEVNULL, stdout=subprocess.PIPE,
                               stderr=subprocess.PIPE, text=True)
    try:
        yield process
    finally:
        if process.poll() is None:
            process.kill()
        process.communicate(timeout=TIMEOUT)


def read_until(process, pattern, what, timeout=TIMEOUT):
    """The match of `pattern` in the first line of process's stdout that has it (bounded)."""
    seen = []
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        line = readline_within(process.stdout, deadline - time.monotonic())
        if not line:
            break
        seen.append(line)
        match = re.search(pattern, line)
        if match:
            return match
    process.kill()
    raise AssertionError(f"{what} did not happen within {timeout} s: {''.join(seen)}{process.stderr.read()}")


def test_server_on_a_port_carries_two_ssh_sessions_at_once_then_a_new_connection(start_platform, sshd, tmp_path):
    """`c8ylp server` serves one TCP connection at a time, over one WebSocket of its own. Two ssh
    sessions run at once over one connection (an ssh master, multiplexed); when that has ended, the
    same server takes a new connection.

    Not two TCP connections at once: c8ylp 2.5.0 serves the second only if its WebSocket of the first
    has been reported closed before it takes the second. When ssh ends the first (as it does, before
    the far end), websocket-client reports that close up to 10 s later (its dispatcher waits that long
    on a socket closed under it); until then c8ylp thinks the WebSocket open, drops what the second
    connection sends, and cuts it when the report comes: in 5 of 6 tries here. The new connection
    below waits for that report in c8ylp's log, as its user must wait before reconnecting."""
    cloud = start_platform()
    with started([*c8ylp("server"), "--port", "0"], user_env(cloud, tmp_path)) as server:
        port = read_until(server, r"listening for device .* on localhost:(\d+)", "c8ylp's listening").group(1)
        # The master's control socket is relative to tmp_path: its absolute path may be too long for a socket's.
        ssh = ["ssh", *sshd.client_options(), "-p", port, "-o", "ControlPath=ssh-mux"]
        target = f"{sshd.user}@127.0.0.1"
        with started([*ssh, "-M", "-N", "-o", "PermitLocalCommand=yes", "-o", "LocalCommand=echo master ready",
                      target], cwd=tmp_path) as master:
            read_until(master, r"master ready", "the ssh master's connection through c8ylp")
            with started([*ssh, "-o", "ControlMaster=no", target, "echo session 1: $((1 * 7))"], cwd=tmp_path) as one, \
                    started([*ssh, "-o", "ControlMaster=no", target, "echo session 2: $((2 * 7))"], cwd=tmp_path) as two:
                for number, session in ((1, one), (2, two)):
                    out, err = session.communicate(timeout=TIMEOUT)
                    assert (session.returncode, out) == (0, f"session {number}: {number * 7}\n"), err
            master.terminate()  # ssh ends its connection, before the far end does
            master.wait(TIMEOUT)

        wait_until(lambda: "WebSocket Connection closed" in c8ylp_log(tmp_path), "c8ylp's report of its closed WebSocket",
                   TIMEOUT)
        again = subprocess.run([*ssh, "-o", "ControlPath=none", target, "echo again"], stdin=subprocess.DEVNULL,
                               capture_output=True, text=True, timeout=TIMEOUT)
        assert (again.returncode, again.stdout) == (0, "again\n"), again.stderr
    assert len(re.findall(r"Handling request", c8ylp_log(tmp_path))) == 2


def test_server_on_stdio_as_ssh_proxy_command_runs_a_command_and_moves_4_mib_each_way(start_platform, sshd, tmp_path):
    cloud = start_platform()
    env = user_env(cloud, tmp_path, with_tenant=False)
    ssh = ["ssh", *sshd.client_options(), "-o", f"ProxyCommand={shlex.join(c8ylp('server'))} --stdio",
           f"{sshd.user}@gw-001"]

    echo = subprocess.run([*ssh, "echo through c8ylp: $((6 * 7))"], env=env, stdin=subprocess.DEVNULL,
                          capture_output=True, timeout=TIMEOUT)
    assert (echo.returncode, echo.stdout) == (0, b"through c8ylp: 42\n"), echo.stderr

    upload, download = os.urandom(SIZE), tmp_path / "download.bin"
    download.write_bytes(os.urandom(SIZE))
    moved = subprocess.run([*ssh, f"sha256sum && cat {download}"], env=env, input=upload,
                           capture_output=True, timeout=TIMEOUT)
    assert moved.returncode == 0, moved.stderr
    remote_sum, fetched = moved.stdout.split(b"  -\n", 1)
    assert remote_sum.decode() == hashlib.sha256(upload).hexdigest()
    assert hashlib.sha256(fetched).hexdigest() == hashlib.sha256(download.read_bytes()).hexdigest()
    assert "Traceback" not in cloud.log()


def test_connect_ssh_runs_the_command_and_returns_its_exit_code(start_platform, sshd, tmp_path):
    cloud = start_platform()
    result = subprocess.run([*c8ylp("connect", "ssh"), "--ssh-user", sshd.user, "--",
                             *sshd.client_options(), "-o", "AddressFamily=inet", "echo connected: $((6 * 7)); exit 3"],
                            env=user_env(cloud, tmp_path, with_tenant=False), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=TIMEOUT)
    assert "connected: 42\n" in result.stdout, result.stderr
    assert result.returncode == 3, result.stderr
    assert "SSH exited with a non-zero exit code. code=3" in result.stderr


def test_a_user_without_the_remote_access_role_is_told_so(start_platform, tmp_path):
    cloud = start_platform()
    result = subprocess.run([*c8ylp("server"), "--port", "0"], env=user_env(cloud, tmp_path, auth=VIEWER),
                            stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=TIMEOUT)
    assert result.returncode == MISSING_ROLE, result.stderr
    assert "The user is not authorized to use Cloud Remote Access" in result.stderr


def test_a_tenant_not_subscribed_to_remote_access_gets_no_tunnel(start_platform, sshd, tmp_path):
    cloud = start_platform(args=["--unsubscribed-tenant", "t100", "--verbose"])
    result = subprocess.run([*c8ylp("connect", "ssh"), "--ssh-user", sshd.user, "--",
                             *sshd.client_options(), "-o", "AddressFamily=inet", "echo unreachable"],
                            env=user_env(cloud, tmp_path), stdin=subprocess.DEVNULL,
                            capture_output=True, text=True, timeout=TIMEOUT)
    # c8ylp signs in and finds the device; its WebSocket is refused, it closes ssh's connection, and
    # hands on ssh's 255. (It takes 10 s to exit: its server waits that long for a WebSocket to open.)
    assert (result.returncode, result.stdout.count("unreachable")) == (255, 0), result.stderr
    assert "SSH exited with a non-zero exit code. code=255" in result.stderr
    assert re.search(r"WebSocket Error received: Handshake status 404 .*not subscribed by tenant t100",
                     c8ylp_log(tmp_path))
    device_id = cloud.device_id()
    assert re.search(rf"GET /service/remoteaccess/client/{device_id}/configurations/\d+ 404", cloud.log())
