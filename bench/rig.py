"""The processes of a benchmark: the cloud, its TLS front, and the device sides under test.

Every process runs in a session of its own, so stop() ends it and whatever it started (websocat
children) by its process group id, and nothing else. All addresses are 127.0.0.1.

The chain for one device side:
    user's end --ws--> cra-cloud relay <--ws, or wss through stunnel-- device side --tcp--> target
The user's end and the target are the bench's own process (traffic.py), the same for every side.
"""
import base64
import json
import os
import select
import signal
import ssl
import subprocess
import sys
from pathlib import Path

import psutil
import requests

from bench.traffic import tcp, websocket
from cra.cloud.demo_targets import free_port, wait_for_port

ROOT = Path(__file__).resolve().parent.parent
PYTHON = sys.executable
ADMIN = ("t100/admin", "admin-pw")
DEVICES = {"cra-agent": "gw-agent", "cra-agent + wsaccel": "gw-agent-wsaccel", "DeviceProxy": "gw-proxy",
           "websocat": "gw-websocat"}
# The agents of the notifications-against-polling figures (bench/feed.py), a device each, so that
# no Bayeux client an earlier agent left subscribed on the cloud shares their channel.
FEED_DEVICES = [f"gw-{what}-{mode}-{transport}" for what in ("setup", "idle") for mode in ("notifications", "polling")
                for transport in ("ws", "wss")]
# wsaccel, installed apart (make bench: pip install --target), so that only the agent started with it
# on its path masks frames in C; websocket-client picks it up by itself when it can import it.
WSACCEL = Path(sys.executable).parent.parent / "wsaccel"
START_TIMEOUT = 30
# As the agent's init scripts start it (init.d/): glibc keeps two malloc arenas, not one per thread.
# Every process of the bench gets it, the peers too, so the memory figures compare like with like.
MEMORY_ENV = {"MALLOC_ARENA_MAX": "2"}
SYSTEM_CAS = Path("/etc/ssl/certs/ca-certificates.crt")  # Debian's bundle


def basic(user, password):
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class Program:
    """One started process, its output in workdir/NAME.log (stdout kept as a pipe when asked)."""

    def __init__(self, name, argv, workdir, env=None, pipe=False):
        self.name = name
        self.log_path = workdir / f"{name}.log"
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(argv, stdout=subprocess.PIPE if pipe else log, stderr=log, cwd=ROOT,
                                         env={**os.environ, **MEMORY_ENV, **(env or {})}, start_new_session=True)

    def first_line(self, timeout=START_TIMEOUT):
        """The first line the process printed (its port, for the cloud and the floor relay)."""
        ready, _, _ = select.select([self.proc.stdout], [], [], timeout)
        line = self.proc.stdout.readline().decode() if ready else ""
        if not line:
            self.stop()
            raise RuntimeError(f"{self.name} did not start:\n{self.log_path.read_text(errors='replace')[-2000:]}")
        return line

    def processes(self):
        """This process and its descendants, as they are now."""
        try:
            root = psutil.Process(self.proc.pid)
            return [root] + root.children(recursive=True)
        except psutil.NoSuchProcess:
            return []

    def stop(self):
        for signum, wait in ((signal.SIGTERM, 10), (signal.SIGKILL, 10)):
            if self.proc.poll() is not None:
                break
            try:
                os.killpg(self.proc.pid, signum)
            except ProcessLookupError:
                break
            try:
                self.proc.wait(wait)
            except subprocess.TimeoutExpired:
                pass


def usage(processes):
    """CPU seconds, RSS bytes and threads summed over processes (those that ended meanwhile are skipped)."""
    cpu = rss = threads = 0
    for proc in processes:
        try:
            with proc.oneshot():
                times = proc.cpu_times()
                cpu += times.user + times.system
                rss += proc.memory_info().rss
                threads += proc.num_threads()
        except psutil.NoSuchProcess:
            pass
    return {"cpu": cpu, "rss": rss, "threads": threads}


class Cloud:
    """The real cra-cloud (python -m cra.cloud) with a seed of one device per WebSocket device side,
    each with a configuration "target" that points at the bench's target; and, for wss, stunnel in
    front of it (cra-cloud serves plain HTTP only; docs/cloud.md)."""

    def __init__(self, workdir, target_port, name="cra-cloud", options=()):
        """`options`: more of cra-cloud's flags (--notification-hold for the idle figures)."""
        self.workdir = workdir
        seed = {"tenant": "t100",
                "users": [{"user": "admin", "password": "admin-pw", "roles": ["ROLE_REMOTE_ACCESS_ADMIN"]}]
                + [{"user": f"device_{d}", "password": "dev-pw", "device": d} for d in self.external_ids()],
                "devices": [{"externalId": d, "name": d, "configurations": [
                    {"name": "target", "hostname": "127.0.0.1", "port": target_port, "protocol": "PASSTHROUGH"}]}
                    for d in self.external_ids()]}
        (workdir / f"{name}-seed.json").write_text(json.dumps(seed))
        self.program = Program(name, [PYTHON, "-m", "cra.cloud", "--port", "0", "--db", str(workdir / f"{name}.db"),
                                      "--seed", str(workdir / f"{name}-seed.json"), *options], workdir, pipe=True)
        self.url = self.program.first_line().split()[4]  # "cra-cloud 0.1.0 listening on http://127.0.0.1:PORT ..."
        self.port = int(self.url.rsplit(":", 1)[1])
        try:
            self._front(workdir, name)
        except BaseException:
            self.program.stop()
            raise
        self.api = requests.Session()
        self.api.auth = ADMIN
        self.api.headers["Accept"] = "application/json"

    @staticmethod
    def external_ids():
        return list(DEVICES.values()) + FEED_DEVICES

    def _front(self, workdir, name):
        self.cert, self.key = workdir / f"{name}-cert.pem", workdir / f"{name}-key.pem"
        subprocess.run(["openssl", "req", "-x509", "-newkey", "rsa:2048", "-nodes", "-days", "2", "-subj", "/CN=127.0.0.1",
                        "-addext", "subjectAltName=IP:127.0.0.1", "-keyout", str(self.key), "-out", str(self.cert)],
                       check=True, capture_output=True)
        # What the device sides trust: the system's CAs and the bench's own, as big a file as a
        # real device loads, so that what loading it costs per connection shows.
        self.ca_file = workdir / f"{name}-ca.pem"
        self.ca_file.write_text((SYSTEM_CAS.read_text() if SYSTEM_CAS.exists() else "") + self.cert.read_text())
        self.front, tls_port = self.tls_front(f"{name}-stunnel", self.port)
        self.tls_url = f"https://127.0.0.1:{tls_port}"

    def tls_front(self, name, upstream):
        """stunnel with the cloud's certificate, ending TLS and passing the bytes to 127.0.0.1:upstream
        (the cloud, or a counting relay in front of it): (its Program, its port)."""
        tls_port = free_port()
        (self.workdir / f"{name}.conf").write_text(
            f"foreground = yes\npid =\nsocket = l:TCP_NODELAY=1\nsocket = r:TCP_NODELAY=1\n[cloud]\n"
            f"accept = 127.0.0.1:{tls_port}\nconnect = 127.0.0.1:{upstream}\ncert = {self.cert}\nkey = {self.key}\n")
        front = Program(name, ["stunnel4", str(self.workdir / f"{name}.conf")], self.workdir)
        try:
            wait_for_port(tls_port, front.proc, "stunnel", START_TIMEOUT)
        except BaseException:
            front.stop()
            raise
        return front, tls_port

    def get(self, path):
        response = self.api.get(self.url + path, timeout=30)
        response.raise_for_status()
        return response.json()

    def device(self, external_id):
        """(managed object id, id of its configuration "target")."""
        device_id = self.get(f"/identity/externalIds/c8y_Serial/{external_id}")["managedObject"]["id"]
        return device_id, self.get(f"/service/remoteaccess/devices/{device_id}/configurations")[0]["id"]

    def stop(self):
        self.front.stop()
        self.program.stop()


class Side:
    """One way to reach the target: connect() opens the user's end of a new chain, processes() is
    what is measured as the device side."""

    programs = ()

    def processes(self):
        return [p for program in self.programs for p in program.processes()]

    def stop(self):
        for program in self.programs:
            program.stop()


class Direct(Side):
    """No tunnel at all: the user's end talks to the target; the reference for round trips."""

    name = "direct TCP"

    def __init__(self, target_port):
        self.connect = lambda: tcp(target_port)


class Floor(Side):
    name = "Python TCP relay"

    def __init__(self, workdir, cloud, target_port, tls):
        argv, wrap = [PYTHON, "-m", "bench.floor", "--target", str(target_port)], None
        if tls:
            argv += ["--tls", str(cloud.cert), str(cloud.key)]
            context = ssl.create_default_context(cafile=str(cloud.cert))
            wrap = lambda sock: context.wrap_socket(sock, server_hostname="127.0.0.1")  # noqa: E731
        program = Program(f"floor-{'wss' if tls else 'ws'}", argv, workdir, pipe=True)
        self.programs = (program,)
        port = int(program.first_line().split()[-1])
        self.connect = lambda: tcp(port, wrap)


class WebSocketSide(Side):
    """A device side behind cra-cloud: each user's end is a WebSocket to the relay's client endpoint
    for the device's configuration, so a new session and a new operation. `operations` sets the
    agent's [agent] operations (None: its default, notifications); `device` another external id
    than the side's own."""

    def __init__(self, name, workdir, cloud, tls, poll, max_tunnels, operations=None, device=None):
        self.name = name
        external_id = device or DEVICES[name]
        device_id, config_id = cloud.device(external_id)
        url, ca_file = (cloud.tls_url, str(cloud.ca_file)) if tls else (cloud.url, None)
        tag = f"{external_id}-{'wss' if tls else 'ws'}-{poll:g}"
        path = f"/service/remoteaccess/client/{device_id}/configurations/{config_id}"
        self.connect = lambda: websocket(cloud.port, path, basic(*ADMIN))
        if name.startswith("cra-agent"):
            agent = {"poll_interval": f"{poll:g}", "max_tunnels": max_tunnels, **({"operations": operations} if operations else {})}
            device = agent_program(workdir, tag, url, external_id, ca_file, agent,
                                   env={"PYTHONPATH": str(WSACCEL)} if name.endswith("wsaccel") else None)
        else:
            device = Program(tag, [PYTHON, "-m", "bench.driver", "--kind", name.lower(), "--url", url,
                                   "--user", f"t100/device_{external_id}", "--password", "dev-pw",
                                   "--device-id", device_id, "--poll", f"{poll:g}"]
                             + (["--ca-file", ca_file] if ca_file else []), workdir)
        self.programs = (device,)


def agent_program(workdir, tag, url, external_id, ca_file, agent_options, env=None):
    """The real cra-agent (cra_agent.py -c FILE --foreground) for a seeded device, its [agent]
    section from `agent_options`; its log is workdir/TAG.log."""
    conf = workdir / f"{tag}.conf"
    conf.write_text(f"[c8y]\nurl = {url}\ntenant = t100\nuser = device_{external_id}\npassword = dev-pw\n"
                    f"external_id = {external_id}\n" + (f"ca_file = {ca_file}\n" if ca_file else "")
                    + "[agent]\n" + "".join(f"{key} = {value}\n" for key, value in agent_options.items()))
    return Program(tag, [PYTHON, str(ROOT / "cra_agent.py"), "-c", str(conf), "--foreground"], workdir, env=env)
