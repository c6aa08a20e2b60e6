"""The real programs the tests run: a cra-cloud and the agent, each in a subprocess, the seed
and the identities the cloud starts with, and the clients tests talk to the cloud with.

The clients are the agent's own libraries (requests, websocket-client), so the tests speak to
the cloud the way the agent and a user's tool do.
"""
import base64
import json
import os
import re
import signal
import subprocess
import sys
import threading
import time
from urllib.parse import urlencode

import requests
import websocket

from cra.cloud import certificates
from toolkit.sockets import rss_kib

ADMIN = ("t100/admin", "admin-pw")
DEVICE = ("t100/device_gw-001", "dev-pw")
OTHER_DEVICE = ("t100/device_gw-002", "dev2-pw")
VIEWER = ("t100/viewer", "viewer-pw")
BOOTSTRAP = ("management/devicebootstrap", "boot-pw")
ADMIN_T200 = ("t200/admin", "admin200-pw")
DEVICE_T200 = ("t200/device_gw-900", "dev900-pw")

SEED = [
    {"tenant": "t100",
     "users": [{"user": "admin", "password": "admin-pw", "roles": ["ROLE_REMOTE_ACCESS_ADMIN"]},
               {"user": "viewer", "password": "viewer-pw"},
               {"user": "device_gw-001", "password": "dev-pw", "device": "gw-001"},
               {"user": "device_gw-002", "password": "dev2-pw", "device": "gw-002"}],
     "bootstrap": {"user": "devicebootstrap", "password": "boot-pw"},
     "devices": [{"externalId": "gw-001", "name": "gw-001",
                  "configurations": [{"name": "ssh", "hostname": "127.0.0.1", "port": 22, "protocol": "PASSTHROUGH"},
                                     {"name": "vnc", "hostname": "10.0.0.67", "port": 5900, "protocol": "VNC"}]},
                 {"externalId": "gw-002", "name": "gw-002"}]},
    {"tenant": "t200",
     "users": [{"user": "admin", "password": "admin200-pw", "roles": ["ROLE_REMOTE_ACCESS_ADMIN"]},
               {"user": "device_gw-900", "password": "dev900-pw", "device": "gw-900"}],
     "devices": [{"externalId": "gw-900", "name": "gw-900",
                  "configurations": [{"name": "ssh", "hostname": "127.0.0.1", "port": 22}]}]},
]


def basic(auth):
    user, password = auth
    return "Basic " + base64.b64encode(f"{user}:{password}".encode()).decode()


class _Program:
    """A program the tests run: its output in log_path, stopped by a signal."""

    proc = None
    log_path = None

    def stop(self, signum=signal.SIGTERM, timeout=15):
        """The exit code after the signal; killed (and the test told so by -9) past `timeout`."""
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(signum)
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        return self.proc.returncode

    def log(self):
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Cloud(_Program):
    """One cra-cloud process: started on a free port, its stderr kept in a file for assertions.

    With tls, it serves https and wss under a certificate from an authority of its own, ca_file.
    """

    def __init__(self, workdir, seed=SEED, args=(), db=None, env=None, port=0, tls=False):
        self.workdir = workdir
        self.port = port
        self.seed_path = workdir / "seed.json"
        self.seed_path.write_text(json.dumps(seed))
        self.db = str(db or workdir / "cloud.db")
        self.args = list(args)
        self.env = {**os.environ, **(env or {})}
        self.log_path = workdir / "cloud.log"
        self.proc = None
        self.url = None
        self.ca_file = None
        if tls:
            self.ca_file, certfile, keyfile = certificates.issue(workdir / "tls")
            self.args += ["--certfile", certfile, "--keyfile", keyfile]

    def command(self):
        return [sys.executable, "-m", "cra.cloud", "--port", str(self.port), "--db", self.db,
                "--seed", str(self.seed_path), *self.args]

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(self.command(), stdout=subprocess.PIPE, stderr=log, env=self.env, text=True)
        line = readline_within(self.proc.stdout, 30)
        match = re.search(r"https?://\S+", line or "")
        if not match:
            self.proc.kill()
            raise RuntimeError(f"cra-cloud did not start: {line!r}\n{self.log()}")
        self.url = match.group(0)
        return self

    def restart(self):
        self.stop()
        return self.start()

    @property
    def ws_url(self):
        return "ws" + self.url[len("http"):]

    def api(self, auth=ADMIN):
        session = requests.Session()
        session.auth = auth
        session.headers["Accept"] = "application/json"
        return _BaseUrlSession(session, self.url, self.ca_file or True)

    def device_id(self, external_id="gw-001", auth=ADMIN):
        return self.api(auth).get(f"/identity/externalIds/c8y_Serial/{external_id}").json()["managedObject"]["id"]

    def config_id(self, device_id, name="ssh", auth=ADMIN):
        configs = self.api(auth).get(f"/service/remoteaccess/devices/{device_id}/configurations").json()
        return next(c["id"] for c in configs if c["name"] == name)

    def rss_kib(self):
        return rss_kib(self.proc.pid)

    def open_client(self, device_id, config_id, auth=ADMIN, headers=None, query=None, **options):
        """A user's tool connecting to a configuration; creates the PENDING operation. `query`: {name: value}."""
        header = {"Authorization": basic(auth), **(headers or {})} if auth else dict(headers or {})
        url = f"{self.ws_url}/service/remoteaccess/client/{device_id}/configurations/{config_id}"
        if query:
            url += "?" + urlencode(query)
        return websocket.create_connection(url, header=header, timeout=30, **self._tls(options))

    def open_device(self, key, auth=DEVICE, **options):
        """The agent's leg, as docs/wire.md section 4 describes it."""
        url = f"{self.ws_url}/service/remoteaccess/device/{key}"
        return websocket.create_connection(url, header={"Authorization": basic(auth)}, subprotocols=["binary"],
                                           timeout=30, **self._tls(options))

    def _tls(self, options):
        return {"sslopt": {"ca_certs": self.ca_file}, **options} if self.ca_file else options

    def pending_operation(self, device_id, auth=DEVICE, timeout=10):
        """The newest PENDING c8y_RemoteAccessConnect operation of a device, as the agent would poll it."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            ops = self.api(auth).get("/devicecontrol/operations", params={
                "deviceId": device_id, "status": "PENDING", "pageSize": 100, "revert": "true"}).json()["operations"]
            if ops:
                return ops[0]
            time.sleep(0.05)
        raise AssertionError(f"no PENDING operation for device {device_id}")

    def open_tunnel(self, device_id=None, config_id=None, client_options=None, device_options=None):
        """A client and a device joined by the relay: (client, device, operation)."""
        device_id = device_id or self.device_id()
        config_id = config_id or self.config_id(device_id)
        client = self.open_client(device_id, config_id, **(client_options or {}))
        op = self.pending_operation(device_id)
        device = self.open_device(op["c8y_RemoteAccessConnect"]["connectionKey"], **(device_options or {}))
        return client, device, op


# A whole agent configuration naming a cloud it never reaches, for tests that only load() it.
AGENT_CONFIG = """[c8y]
url = https://example.cumulocity.com
tenant = t100
user = device_gw-001
password = s3cret-Pw
external_id = gw-001
[agent]
"""
AGENT_SCRIPT = os.path.join(os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))),
                            "cra_agent.py")


class AgentProcess(_Program):
    """The real agent, `python3 cra_agent.py -c FILE`, against a Cloud; its stderr kept for assertions.

    `options` become INI lines ({"c8y": {...}, "agent": {...}}) over a working default for gw-001.
    `cloud` is anything with a url (a Cloud, or a stand-in); a TLS Cloud's authority becomes [c8y] ca_file.
    `script`: another copy of cra_agent.py, beside the cra/ it is to run.
    """

    def __init__(self, workdir, cloud, options=None, env=None, name="agent", script=AGENT_SCRIPT):
        self.cloud, self.script = cloud, script
        self.config_path = workdir / f"{name}.conf"
        self.log_path = workdir / f"{name}.log"
        self.env = {**os.environ, **(env or {})}
        sections = {"c8y": {"url": cloud.url, "tenant": "t100", "user": DEVICE[0].split("/")[1],
                            "password": DEVICE[1], "external_id": "gw-001", "ca_file": getattr(cloud, "ca_file", None)},
                    "agent": {"poll_interval": "0.2", "max_backoff": "1"}}
        for section, values in (options or {}).items():
            sections.setdefault(section, {}).update(values)
        self.config_path.write_text("".join(
            f"[{section}]\n" + "".join(f"{k} = {v}\n" for k, v in values.items() if v is not None)
            for section, values in sections.items()))
        self.proc = None

    def start(self):
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen([sys.executable, str(self.script), "--foreground", "-c", str(self.config_path)],
                                         stdout=log, stderr=log, env=self.env)
        return self

    def wait_for_log(self, pattern, timeout=20):
        """The first log line matching `pattern`, waiting for it (bounded)."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            for line in self.log().splitlines():
                if re.search(pattern, line):
                    return line
            if self.proc.poll() is not None and not re.search(pattern, self.log()):
                break
            time.sleep(0.05)
        raise AssertionError(f"no agent log line matches {pattern!r}:\n{self.log()}")


def wait_for_status(cloud, op_id, statuses=("SUCCESSFUL", "FAILED"), timeout=20):
    """The operation once its status is one of `statuses` (bounded wait)."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        op = cloud.api(ADMIN).get(f"/devicecontrol/operations/{op_id}").json()
        if op["status"] in statuses:
            return op
        time.sleep(0.05)
    raise AssertionError(f"operation {op_id} is still {op['status']} after {timeout} s")


class _BaseUrlSession:
    """requests.Session with paths relative to the cloud's URL; `verify` per request, where REQUESTS_CA_BUNDLE
    cannot override it."""

    def __init__(self, session, base, verify):
        self.session, self.base, self.verify = session, base, verify

    def __getattr__(self, method):
        return lambda path, **kw: self.session.request(method.upper(), self.base + path, timeout=30, verify=self.verify, **kw)


def receive_close(ws):
    """The close code and reason the peer sent, reading past any data still in flight."""
    while True:
        opcode, frame = ws.recv_data_frame(control_frame=True)
        if opcode == websocket.ABNF.OPCODE_CLOSE:
            data = frame.data
            return (int.from_bytes(data[:2], "big") if len(data) >= 2 else None), data[2:].decode()


def readline_within(stream, timeout):
    result = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), daemon=True)
    reader.start()
    reader.join(timeout)
    return result[0] if result else None
