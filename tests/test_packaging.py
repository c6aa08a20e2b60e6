"""The packages as a gateway gets them (issue 6).

The .deb is checked as Debian checks it (lintian) and then used as an integrator uses it: apt
installs it into a throwaway copy of a Debian bookworm root (`make test` keeps one in
.cache/bookworm with the dependencies downloaded, so apt resolves the package's Depends against
Debian's own python3-websocket 1.2.3 and python3-requests, and fetches nothing), the init script starts
the agent against a cra-cloud on 127.0.0.1, the device registers through the bootstrap flow
once the test accepts it, carries a tunnel, stops and starts again on its stored credentials,
and apt removes and purges it. The shell is checked by shellcheck; the .ipk in test_openwrt.py.
"""
import contextlib
import os
import re
import shlex
import shutil
import signal
import stat
import time
from pathlib import Path

import pytest

from toolkit.packages import AGENT_MODULES, TOP, VERSION, build, need, run, with_version
from toolkit.console import PtyConsole
from toolkit.platform import add_configuration, assert_tunnel_works
from toolkit.programs import ADMIN, wait_for_status
from toolkit.servers import ShellServer
from toolkit.sockets import refused_port, ws_recv_exactly
from toolkit.waiting import wait_until

BOOKWORM_ROOT = TOP / ".cache" / "bookworm"
SHELL = ["init.d/cra-agent", "packaging/deb/postinst", "packaging/deb/prerm", "packaging/deb/postrm"]  # OpenWrt's: test_openwrt.py
DEB_DEPENDS = "python3 (>= 3.9), python3-websocket (>= 1.2.3), python3-requests, python3-serial"
SERIAL = "gw-deb-1"  # not in the cloud's seed: the device registers itself
LOG = "/var/log/cra-agent/cra-agent.log"
CONSOLE, CONSOLE_PORT = "/dev/ttyCRA0", 7001  # a serial port of the gateway, owned by group dialout
WAITING = "waiting for the device to be accepted in Device Management"


@pytest.fixture(scope="module")
def deb(tmp_path_factory):
    """The .deb, built from this tree as `make deb` builds it."""
    need("dpkg-deb")
    return build("deb", tmp_path_factory.mktemp("dist"))


def test_shell_scripts_pass_shellcheck():
    need("shellcheck")
    result = run("shellcheck", *SHELL, cwd=TOP)
    assert result.returncode == 0, result.stdout + result.stderr


def test_the_systemd_unit_runs_the_agent_unprivileged_in_a_sandbox():
    """systemd's own rating of the unit's exposure: "OK" is at most 4.9 of 10; a service that runs as
    root with no sandbox gets 9.6 ("UNSAFE")."""
    need("systemd-analyze")
    result = run("systemd-analyze", "security", "--offline=true", "--no-pager", "init.d/cra-agent.service", cwd=TOP)
    exposure = float(re.search(r"Overall exposure level for cra-agent.service: ([\d.]+)", result.stdout).group(1))
    assert exposure <= 2.0, result.stdout
    for held in ("User=", "CapabilityBoundingSet=~CAP_(DAC_*|FOWNER|IPC_OWNER)", "NoNewPrivileges=", "ProtectSystem=",
                 "ProtectHome=", "PrivateTmp="):
        assert re.search(rf"^✓ {re.escape(held)}", result.stdout, re.M), f"{held} not in effect:\n{result.stdout}"


def test_lintian_finds_no_error_in_the_deb(deb):
    need("lintian")
    result = run("lintian", str(deb))
    assert not [line for line in result.stdout.splitlines() if line.startswith("E:")], result.stdout


def test_the_deb_holds_the_agent_only_and_depends_on_debians_own_libraries(deb):
    deb = str(deb)
    names = [line.split()[-1] for line in run("dpkg-deb", "--contents", deb).stdout.splitlines()]
    assert sorted(Path(n).name for n in names if n.startswith("./usr/share/cra-agent/cra/") and n.endswith(".py")) == AGENT_MODULES
    assert not [n for n in names if "cloud" in n or "connect.py" in n]
    for path in ("./usr/bin/cra-agent", "./etc/init.d/cra-agent", "./etc/default/cra-agent",
                 "./lib/systemd/system/cra-agent.service", "./usr/share/doc/cra-agent/copyright"):
        assert path in names
    assert run("dpkg-deb", "--field", deb, "Depends").stdout.strip() == DEB_DEPENDS
    assert run("dpkg-deb", "--field", deb, "Suggests").stdout.strip() == "python3-wsaccel"  # C frame masking
    assert run("dpkg-deb", "--field", deb, "Version", "Architecture").stdout.split() == ["Version:", VERSION, "Architecture:", "all"]
    assert run("dpkg-deb", "--info", deb, "conffiles").stdout.split() == [
        "/etc/cra-agent/cra-agent.conf", "/etc/default/cra-agent", "/etc/init.d/cra-agent"]


class Bookworm:
    """A throwaway copy of the cached bookworm root with /proc mounted. close() kills every process
    still running in it, unmounts /proc and removes the copy."""

    ENV = {"PATH": "/usr/sbin:/usr/bin:/sbin:/bin", "LANG": "C.UTF-8", "DEBIAN_FRONTEND": "noninteractive"}

    def __init__(self, path):
        self.path = path.resolve()
        self.path.mkdir()
        result = run("cp", "-a", f"{BOOKWORM_ROOT}/.", str(self.path))
        assert result.returncode == 0, result.stderr
        result = run("mount", "-t", "proc", "proc", str(self.path / "proc"))
        assert result.returncode == 0, result.stderr
        # debootstrap's minbase has no init system, so invoke-rc.d would block every action; this
        # root stands in for a booted gateway, where the maintainer scripts' actions run.
        policy = self.file("/usr/sbin/policy-rc.d")
        policy.write_text("#!/bin/sh\nexit 0\n")
        policy.chmod(0o755)
        self._bound = []

    def run(self, *command, timeout=120):
        return run("chroot", str(self.path), *command, timeout=timeout, env=self.ENV)

    def apt_get(self, *arguments):
        with refused_port() as port:
            return self.run(*self.apt_get_command(port, *arguments), timeout=180)

    @staticmethod
    def apt_get_command(refused, *arguments):
        """apt-get that can fetch nothing: its proxy is a local port that refuses every connection."""
        proxy = f"http://127.0.0.1:{refused}"
        return ["apt-get", "-y", "-o", "Dpkg::Use-Pty=0", "-o", f"Acquire::http::Proxy={proxy}",
                "-o", f"Acquire::https::Proxy={proxy}", *arguments]

    def bind(self, host_path, path):
        """host_path shown at path inside the root, as a device node is on a gateway; undone by close()."""
        target = self.file(path)
        target.touch()
        result = run("mount", "--bind", host_path, str(target))
        assert result.returncode == 0, result.stderr
        self._bound.append(target)

    def ids(self, database):
        """{name: id} of the root's /etc/passwd or /etc/group."""
        return {line.split(":")[0]: int(line.split(":")[2]) for line in self.file(f"/etc/{database}").read_text().splitlines()}

    def owner(self, path):
        info = os.stat(self.file(path))
        users, groups = {v: k for k, v in self.ids("passwd").items()}, {v: k for k, v in self.ids("group").items()}
        return users[info.st_uid], groups[info.st_gid]

    def file(self, path):
        return self.path / path.lstrip("/")

    def processes(self):
        """The pids of the processes whose root is this copy."""
        pids = []
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if os.readlink(f"/proc/{pid}/root") == str(self.path):
                    pids.append(int(pid))
        return pids

    def close(self):
        for pid in self.processes():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
        wait_until(lambda: not self.processes(), "the processes left in the root ending", timeout=10)
        for target in self._bound:
            run("umount", str(target))
        run("umount", str(self.path / "proc"))
        assert not os.path.ismount(self.path / "proc"), f"{self.path}/proc is still mounted"
        shutil.rmtree(self.path)


@pytest.fixture
def bookworm(tmp_path):
    if os.geteuid() != 0:
        pytest.skip("chroot and mount need root")
    if not BOOKWORM_ROOT.is_dir():
        pytest.skip(f"no Debian bookworm root in {BOOKWORM_ROOT}: `make .cache/bookworm` makes it")
    root = Bookworm(tmp_path / "root")
    yield root
    root.close()


def agent_config(cloud):
    """The file an integrator writes: the tenant, the serial and the bootstrap password, and a serial
    console on the gateway's port CONSOLE."""
    return (f"[c8y]\nurl = {cloud.url}\nexternal_id = {SERIAL}\n\n"
            f"[agent]\npoll_interval = 0.5\nmax_backoff = 2\n\n"
            f"[bootstrap]\npassword = boot-pw\n\n"
            f"[log]\ndestination = {LOG}\n\n"
            f"[serial:console]\ntarget = 127.0.0.1:{CONSOLE_PORT}\nurl = {CONSOLE}\n")


def process_identity(bookworm, pid):
    """(user, [groups]) a process runs as, named as the root names them."""
    status = dict(line.split(":", 1) for line in Path(f"/proc/{pid}/status").read_text().splitlines())
    users, groups = {v: k for k, v in bookworm.ids("passwd").items()}, {v: k for k, v in bookworm.ids("group").items()}
    return users[int(status["Uid"].split()[0])], sorted(groups[int(gid)] for gid in status["Groups"].split())


def mode(path):
    return stat.S_IMODE(os.stat(path).st_mode)


def pid_alive(pid):
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    return True


def accept_when_asked(cloud):
    """The administrator registers the serial, waits for the device to ask, accepts it."""
    admin = cloud.api(ADMIN)
    assert admin.post("/devicecontrol/newDeviceRequests", json={"id": SERIAL}).status_code == 201
    wait_until(lambda: admin.get(f"/devicecontrol/newDeviceRequests/{SERIAL}").json()["status"] == "PENDING_ACCEPTANCE",
               f"{SERIAL} asking for its credentials")
    assert admin.put(f"/devicecontrol/newDeviceRequests/{SERIAL}", json={"status": "ACCEPTED"}).status_code == 200



def test_the_deb_on_debian_bookworm_registers_carries_a_tunnel_and_stops(deb, bookworm, cloud, users):
    shutil.copy(deb, bookworm.file("/tmp"))
    installed = bookworm.apt_get("install", f"/tmp/{deb.name}")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    assert "Need to get 0 B" in installed.stdout, installed.stdout
    assert "fill in /etc/cra-agent/cra-agent.conf, then run: service cra-agent start" in installed.stdout
    assert bookworm.run("python3", "-c", "import websocket; print(websocket.__version__)").stdout.strip() == "1.2.3"
    assert bookworm.run("id", "-nG", "cra-agent").stdout.split() == ["cra-agent", "dialout"]
    assert (bookworm.owner("/var/lib/cra-agent"), mode(bookworm.file("/var/lib/cra-agent"))) == (("cra-agent", "cra-agent"), 0o700)
    assert (bookworm.owner("/etc/cra-agent/cra-agent.conf"), mode(bookworm.file("/etc/cra-agent/cra-agent.conf"))) == \
        (("root", "cra-agent"), 0o640)  # it may hold a password: the agent reads it, nobody else
    console = PtyConsole()
    os.chown(console.device, 0, bookworm.ids("group")["dialout"])
    os.chmod(console.device, 0o660)
    bookworm.bind(console.device, CONSOLE)
    unconfigured = bookworm.run("/etc/init.d/cra-agent", "start")
    assert unconfigured.returncode == 1 and "[c8y] url: required" in unconfigured.stderr, unconfigured.stderr

    bookworm.file("/etc/cra-agent/cra-agent.conf").write_text(agent_config(cloud))
    log = bookworm.file(LOG)
    started = bookworm.run("/etc/init.d/cra-agent", "start")
    assert started.returncode == 0, started.stdout + started.stderr
    wait_until(lambda: log.exists() and WAITING in log.read_text(), "the agent waiting to be accepted")
    accept_when_asked(cloud)
    admin = cloud.api(ADMIN)
    wait_until(lambda: admin.get(f"/identity/externalIds/c8y_Serial/{SERIAL}").status_code == 200,
               "the device registering itself", timeout=30)
    credentials = "/var/lib/cra-agent/credentials"
    assert (bookworm.owner(credentials), mode(bookworm.file(credentials))) == (("cra-agent", "cra-agent"), 0o600)
    pid = int(bookworm.file("/run/cra-agent.pid").read_text())
    assert process_identity(bookworm, pid) == ("cra-agent", ["cra-agent", "dialout"])
    assert_tunnel_works(cloud, users, SERIAL, log)

    device_id = cloud.device_id(SERIAL)
    user = users.connect(cloud, device_id, add_configuration(cloud, device_id, "127.0.0.1", CONSOLE_PORT))
    assert wait_for_status(cloud, user.op_id)["status"] == "SUCCESSFUL", log.read_text()
    user.ws.send_binary(b"AT\r")
    assert console.read(3) == b"AT\r"
    console.write(b"OK\r\n")
    assert ws_recv_exactly(user.ws, 4) == b"OK\r\n"
    user.close()
    console.hang_up()

    status = bookworm.run("/etc/init.d/cra-agent", "status")
    assert status.returncode == 0 and "running" in status.stdout, status.stdout
    assert b"MALLOC_ARENA_MAX=2" in Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")  # small-device default
    assert bookworm.run("/etc/init.d/cra-agent", "reload").returncode == 0
    wait_until(lambda: "configuration reloaded" in log.read_text(), "the agent re-reading its file on reload")
    stopped = bookworm.run("/etc/init.d/cra-agent", "stop")
    assert stopped.returncode == 0, stopped.stdout + stopped.stderr
    assert not pid_alive(pid) and not bookworm.file("/run/cra-agent.pid").exists()
    assert "stopping: closing tunnels" in log.read_text()
    assert bookworm.run("/etc/init.d/cra-agent", "status").returncode == 3

    assert bookworm.run("/etc/init.d/cra-agent", "start").returncode == 0
    assert_tunnel_works(cloud, users, SERIAL, log)
    assert log.read_text().count(WAITING) == 1, log.read_text()

    pid = int(bookworm.file("/run/cra-agent.pid").read_text())
    removed = bookworm.apt_get("remove", "cra-agent")
    assert removed.returncode == 0, removed.stdout + removed.stderr
    assert not pid_alive(pid), removed.stdout + removed.stderr
    assert bookworm.file("/var/lib/cra-agent/credentials").exists()  # only a purge forgets the device
    purged = bookworm.apt_get("purge", "cra-agent")
    assert purged.returncode == 0, purged.stdout + purged.stderr
    for gone in ("/var/lib/cra-agent", "/var/log/cra-agent", "/etc/cra-agent", "/usr/share/cra-agent"):
        assert not bookworm.file(gone).exists(), gone
    assert not list(bookworm.path.glob("etc/rc?.d/*cra-agent"))


def device_config(cloud):
    """A gateway that has its credentials already (gw-001 of the seed)."""
    return (f"[c8y]\nurl = {cloud.url}\ntenant = t100\nuser = device_gw-001\npassword = dev-pw\nexternal_id = gw-001\n\n"
            f"[agent]\npoll_interval = 0.5\nmax_backoff = 2\n\n[log]\ndestination = {LOG}\n")


def shell_output(session, until, timeout=240):
    """What the administrator's shell prints through the tunnel, up to the first match of `until`."""
    output, deadline = b"", time.monotonic() + timeout
    while not re.search(until, output):
        assert time.monotonic() < deadline, f"no {until!r} from the shell within {timeout} s:\n{output.decode(errors='replace')}"
        frame = session.ws.recv()
        assert isinstance(frame, bytes) and frame, f"the session ended; the shell's last words:\n{output.decode(errors='replace')}"
        output += frame
    return output.decode(errors="replace")


def test_an_upgrade_run_through_the_agents_own_tunnel_finishes_and_the_new_version_takes_over_after(
        deb, bookworm, cloud, users, tmp_path):
    """The administrator's only way into the gateway is a shell through the agent: apt upgrades the
    agent from that shell, the session survives it, and the new version runs once the session ends."""
    new_version = f"{VERSION}.1"
    new_deb = with_version(deb, new_version, tmp_path)
    for package in (deb, new_deb):
        shutil.copy(package, bookworm.file("/tmp"))
    installed = bookworm.apt_get("install", f"/tmp/{deb.name}")
    assert installed.returncode == 0, installed.stdout + installed.stderr
    bookworm.file("/etc/cra-agent/cra-agent.conf").write_text(device_config(cloud))
    assert bookworm.run("/etc/init.d/cra-agent", "start").returncode == 0
    log = bookworm.file(LOG)
    wait_until(lambda: log.exists() and "is managed object" in log.read_text(), "the agent taking operations")
    pid = int(bookworm.file("/run/cra-agent.pid").read_text())

    device_id = cloud.device_id()
    with ShellServer() as shell, refused_port() as refused:
        session = users.connect(cloud, device_id, add_configuration(cloud, device_id, "127.0.0.1", shell.port))
        session.ws.settimeout(60)
        upgrade = shlex.join(["env", "-i", *(f"{k}={v}" for k, v in bookworm.ENV.items()), "chroot", str(bookworm.path),
                              *bookworm.apt_get_command(refused, "install", f"/tmp/{new_deb.name}")])
        session.ws.send_binary(f"{upgrade} 2>&1; echo upgrade exit code $?\n".encode())
        output = shell_output(session, rb"upgrade exit code \d+")
        assert "upgrade exit code 0" in output and f"Unpacking cra-agent ({new_version})" in output, output
        assert "cra-agent restarts with the new version once no tunnel is open" in output, output
        session.ws.send_binary(f"chroot {bookworm.path} dpkg-query -W cra-agent; echo session still open\n".encode())
        assert f"cra-agent\t{new_version}" in shell_output(session, rb"session still open")
        assert re.search(r"restart asked for \(SIGUSR2\)", log.read_text())
        assert f"cra-agent {new_version} starting" not in log.read_text(), "restarted with the session open"
        session.close()

    wait_until(lambda: f"cra-agent {new_version} starting" in log.read_text(), "the new version starting")
    assert int(bookworm.file("/run/cra-agent.pid").read_text()) == pid and pid_alive(pid)
    status = bookworm.run("/etc/init.d/cra-agent", "status")
    assert status.returncode == 0 and "running" in status.stdout, status.stdout
    assert_tunnel_works(cloud, users, "gw-001", log)
